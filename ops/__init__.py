"""recpipe.ops: custom operators under the ``recpipe::`` torch.library namespace.

Each op family lives in ``ops/<family>.py`` (schema, pure-PyTorch CPU reference kernel, fake/meta kernel,
autograd, typed public wrapper) with its CUDA kernels in ``cuda/<family>.cu`` (``TORCH_LIBRARY_IMPL`` only).
Importing this package registers every op; CUDA kernels are compiled and loaded lazily when CUDA is present
(see :func:`load_cuda_kernels`), so CPU machines never need a compiler.
"""
from __future__ import annotations

from recpipe.ops import _lib  # noqa: F401  (defines the namespace first)
from recpipe.ops import embedding_bag, quant  # noqa: F401  (register the op families)
from recpipe.ops._build import cuda_kernels_loaded, load_cuda_kernels

__all__ = ["cuda_kernels_loaded", "load_cuda_kernels", "embedding_bag", "quant"]
