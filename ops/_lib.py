"""The single torch.library namespace ``recpipe`` every op family defines its schemas on."""
from __future__ import annotations

import torch

LIB = torch.library.Library("recpipe", "DEF")
"""Define op schemas here: ``LIB.define("name(Tensor x, ...) -> Tensor")``. CUDA kernels only ``m.impl``."""
