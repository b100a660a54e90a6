"""Feature-interaction layers over K fields of dim D: dot (DLRM), FM, EFC (AutoCTR), CrossNet (DCN-V2)."""
from __future__ import annotations

import math

import torch
from torch import nn


class DotInteraction(nn.Module):
    """Pairwise dot products of K fields, upper triangle without the diagonal (DLRM's interaction).

    Output column order is row-major over pairs ``(i, j)``, ``i < j``: (0,1), (0,2), ..., (1,2), ...

    Args:
        num_fields: K.
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        self.num_fields = int(num_fields)
        rows, cols = torch.triu_indices(self.num_fields, self.num_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def out_features(self) -> int:
        """K (K - 1) / 2."""
        return self.num_fields * (self.num_fields - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, D) -> (B, K(K-1)/2)."""
        gram = torch.bmm(x, x.transpose(1, 2))  # (B, K, K)
        return gram[:, self.rows, self.cols]  # (B, K(K-1)/2)


class FMInteraction(nn.Module):
    """Factorization-machine second-order term kept as a vector: ``0.5 * ((sum_k v_k)^2 - sum_k v_k^2)``.

    Summing the output over D gives the classic FM scalar ``sum_{i<j} <v_i, v_j>``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, D) -> (B, D)."""
        s = x.sum(dim=1)  # (B, D)
        return 0.5 * (s * s - (x * x).sum(dim=1))


class EFC(nn.Module):
    """Efficient fully-connected block (AutoCTR): a Linear over the FIELD axis, K fields → M fields.

    ``out[b, m, d] = sum_k W[m, k] x[b, k, d] + bias[m]``; each embedding dimension is mixed the same way.

    Args:
        in_fields: K.
        out_fields: M.
    """

    def __init__(self, in_fields: int, out_fields: int) -> None:
        super().__init__()
        self.in_fields = int(in_fields)
        self.out_fields = int(out_fields)
        bound = 1.0 / math.sqrt(max(self.in_fields, 1))
        self.weight = nn.Parameter(torch.empty(self.out_fields, self.in_fields).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(self.out_fields).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, D) -> (B, M, D)."""
        return torch.einsum("mk,bkd->bmd", self.weight, x) + self.bias[None, :, None]


class CrossNet(nn.Module):
    """DCN-V2 cross network: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` with full (W, W) matrices.

    Args:
        width: W, the input width (and output width).
        layers: number of cross layers.
    """

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"CrossNet: layers must be >= 1, got {layers}")
        self.width = int(width)
        self.linears = nn.ModuleList(nn.Linear(self.width, self.width) for _ in range(layers))
        for lin in self.linears:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    @property
    def out_features(self) -> int:
        """W."""
        return self.width

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, W) -> (B, W)."""
        x = x0
        for lin in self.linears:
            x = x0 * lin(x) + x
        return x
