"""JIT build of the CUDA kernels (``cuda/*.cu``, installed as package ``recpipe.csrc``) on first use.

The kernels only ``m.impl`` the ``recpipe::`` ops defined in ``ops/*.py``; loading the built shared library
registers them for the CUDA dispatch key. Nothing is compiled without CUDA: :func:`load_cuda_kernels` returns
False at once when ``torch.cuda.is_available()`` is False, so CPU machines never need a compiler.

Environment:
    RECPIPE_CUDA_ARCH: compute capability to build for, e.g. ``90`` (default, H100/H200), ``90a``, ``80``,
        ``8.6``; several separated by commas or semicolons.
    RECPIPE_CUDA_BUILD_DIR: build cache folder (default ``~/.cache/recpipe/cuda/<torch version>-<arch>``).
        The torch extension loader rebuilds only when a source or flag changed.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCES = ("embedding_bag.cu", "quant.cu")
"""The CUDA translation units, in ``recpipe.csrc`` (the repository's ``cuda/`` folder)."""
EXTENSION_NAME = "recpipe_cuda_ops"
DEFAULT_ARCH = "90"

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "tried": False, "error": None}


def cuda_kernels_loaded() -> bool:
    """True once the CUDA kernels were built (or found cached) and registered in this process."""
    return bool(_state["loaded"])


def cuda_build_error() -> str | None:
    """The error text of the last failed build in this process, or None."""
    err = _state["error"]
    return None if err is None else str(err)


def source_dir() -> Path:
    """Folder of the CUDA sources (package ``recpipe.csrc``), located without importing it as a module."""
    spec = importlib.util.find_spec("recpipe.csrc")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package recpipe.csrc (the cuda/ folder) is not installed")
    return Path(spec.origin).parent


def _arch_flags(spec: str) -> tuple[list[str], str]:
    """Turns ``"90"``, ``"9.0"``, ``"sm_90a"`` or a list of them into nvcc -gencode flags and a cache tag."""
    flags, tags = [], []
    for item in re.split(r"[,;\s]+", spec.strip()):
        if not item:
            continue
        cc = item.lower().removeprefix("sm_").removeprefix("compute_").replace(".", "")
        if not re.fullmatch(r"\d{2,3}[af]?", cc):
            raise ValueError(f"RECPIPE_CUDA_ARCH: cannot read compute capability {item!r} (e.g. 90, 9.0, sm_90a)")
        flags.append(f"-gencode=arch=compute_{cc},code=sm_{cc}")
        tags.append(cc)
    if not flags:
        raise ValueError(f"RECPIPE_CUDA_ARCH: no compute capability in {spec!r}")
    return flags, "_".join(tags)


def _failing_sources(message: str, sources: list[str]) -> list[str]:
    """The sources an nvcc/ninja error text names (all of them when it names none)."""
    named = [s for s in sources if Path(s).stem in message]
    return named or sources


def load_cuda_kernels(verbose: bool = False) -> bool:
    """Builds (first time, cached afterwards) and loads the CUDA kernels of every recpipe op.

    Args:
        verbose: show the compiler's command lines and output.

    Returns:
        True when the kernels are registered; False without CUDA or when the build failed (a warning names the
        failing source files and the error; :func:`cuda_build_error` returns its text). A failed build is not
        retried in the same process.
    """
    with _lock:
        if _state["loaded"]:
            return True
        if not torch.cuda.is_available():
            logger.debug("recpipe CUDA kernels: no CUDA device, nothing built")
            return False
        if _state["tried"]:
            return False
        _state["tried"] = True
        sources: list[str] = []
        try:
            folder = source_dir()
            sources = [str(folder / name) for name in SOURCES]
            missing = [s for s in sources if not Path(s).is_file()]
            if missing:
                raise FileNotFoundError(f"missing CUDA sources: {missing}")
            arch_flags, tag = _arch_flags(os.environ.get("RECPIPE_CUDA_ARCH", DEFAULT_ARCH))
            build_dir = Path(os.environ.get("RECPIPE_CUDA_BUILD_DIR") or
                             Path.home() / ".cache" / "recpipe" / "cuda" / f"{torch.__version__}-{tag}")
            build_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils import cpp_extension  # noqa: PLC0415  (imported only when a build is needed)

            cpp_extension.load(
                name=EXTENSION_NAME,
                sources=sources,
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", "-lineinfo", *arch_flags],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=verbose,
            )
        except (RuntimeError, OSError, ValueError, ImportError, subprocess.CalledProcessError) as exc:
            message = str(exc)
            _state["error"] = message
            failing = _failing_sources(message, sources) if sources else ["recpipe.csrc"]
            logger.warning("recpipe CUDA kernels: build/load of %s failed; the CUDA ops are unavailable "
                           "(the CPU reference kernels still work): %s", ", ".join(failing), message)
            return False
        _state["loaded"] = True
        logger.info("recpipe CUDA kernels loaded from %s", build_dir)
        return True
