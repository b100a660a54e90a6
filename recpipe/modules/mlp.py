"""Multi-layer perceptron: Linear + ReLU per width."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def dlrm_init_(linear: nn.Linear) -> None:
    """DLRM's Linear initialisation: weight ~ N(0, sqrt(2 / (in + out))), bias ~ N(0, sqrt(1 / out))."""
    out_f, in_f = linear.weight.shape
    with torch.no_grad():
        linear.weight.normal_(0.0, math.sqrt(2.0 / max(in_f + out_f, 1)))
        if linear.bias is not None:
            linear.bias.normal_(0.0, math.sqrt(1.0 / max(out_f, 1)))


class MLP(nn.Module):
    """``Linear(W, u0) → ReLU → Linear(u0, u1) → ReLU → ...``.

    Args:
        in_features: W, the input width.
        units: output width of each layer (at least one).
        activate_last: apply ReLU after the last layer too (True for spec blocks, whose outputs feed other
            blocks; the final logit layer is a separate Linear).
    """

    def __init__(self, in_features: int, units: Sequence[int], activate_last: bool = True) -> None:
        super().__init__()
        if not units:
            raise ValueError("MLP: needs at least one layer width")
        layers: list[nn.Module] = []
        width = in_features
        for i, u in enumerate(units):
            lin = nn.Linear(width, int(u))
            dlrm_init_(lin)
            layers.append(lin)
            if activate_last or i < len(units) - 1:
                layers.append(nn.ReLU())
            width = int(u)
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, W) -> (B, units[-1])."""
        return self.layers(x)
