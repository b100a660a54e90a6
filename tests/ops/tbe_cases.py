"""Random table-batched inputs and naive per-bag loop references for the embedding-bag op tests."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Case:
    """A TBE problem: F tables of ``sizes`` rows in one flat (R, D) weight, B bags per table."""

    weight: torch.Tensor  # (R, D)
    table_offsets: torch.Tensor  # (F + 1,)
    indices: torch.Tensor  # (T,)
    offsets: torch.Tensor  # (F * B + 1,)
    batch: int

    @property
    def num_tables(self) -> int:
        return self.table_offsets.numel() - 1

    def to(self, device: str) -> "Case":
        return Case(self.weight.to(device), self.table_offsets.to(device), self.indices.to(device),
                    self.offsets.to(device), self.batch)


def make_case(sizes: list[int], batch: int, dim: int, max_len: int, seed: int, dtype=torch.float32,
              hot: int | None = None) -> Case:
    """Random bags of 0..max_len ids; ``hot`` limits ids to the first ``hot`` rows of each table (duplicates)."""
    g = torch.Generator().manual_seed(seed)
    table_offsets = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.int64)
    weight = torch.randn(int(table_offsets[-1]), dim, generator=g, dtype=torch.float64).to(dtype)
    lengths = torch.randint(0, max_len + 1, (len(sizes) * batch,), generator=g)
    ids = []
    for f, size in enumerate(sizes):
        n = int(lengths[f * batch:(f + 1) * batch].sum())
        high = min(size, hot) if hot else size
        ids.append(torch.randint(0, high, (n,), generator=g))
    indices = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return Case(weight, table_offsets, indices, offsets, batch)


def naive_forward(case: Case, pooling: int) -> torch.Tensor:
    """(B, F, D) float64 pooled rows, one bag at a time."""
    w = case.weight.double()
    out = torch.zeros(case.batch, case.num_tables, w.shape[1], dtype=torch.float64)
    for f in range(case.num_tables):
        for b in range(case.batch):
            lo, hi = int(case.offsets[f * case.batch + b]), int(case.offsets[f * case.batch + b + 1])
            for p in range(lo, hi):
                out[b, f] += w[int(case.table_offsets[f]) + int(case.indices[p])]
            if pooling == 1 and hi > lo:
                out[b, f] /= hi - lo
    return out


def naive_dense_grad(case: Case, grad_output: torch.Tensor, pooling: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense float64 weight gradient (R, D) and a (R,) bool mask of touched rows, one index at a time."""
    rows, dim = case.weight.shape
    grad = torch.zeros(rows, dim, dtype=torch.float64)
    touched = torch.zeros(rows, dtype=torch.bool)
    go = grad_output.double()
    for f in range(case.num_tables):
        for b in range(case.batch):
            lo, hi = int(case.offsets[f * case.batch + b]), int(case.offsets[f * case.batch + b + 1])
            for p in range(lo, hi):
                r = int(case.table_offsets[f]) + int(case.indices[p])
                grad[r] += go[b, f] / ((hi - lo) if pooling == 1 else 1)
                touched[r] = True
    return grad, touched


def naive_adagrad(case: Case, state: torch.Tensor, grad_output: torch.Tensor, pooling: int, lr: float, eps: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise Adagrad from the dense gradient in float64: returns (new weight, new state)."""
    grad, touched = naive_dense_grad(case, grad_output, pooling)
    new_state = state.double() + torch.where(touched, grad.pow(2).mean(dim=1), torch.zeros(()))
    step = lr / (new_state.sqrt() + eps)
    new_w = case.weight.double() - torch.where(touched[:, None], step[:, None] * grad, torch.zeros(()))
    return new_w, new_state


class Densify(torch.autograd.Function):
    """Identity whose backward turns the op's sparse gradient dense (gradcheck compares strided layouts)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.to_dense() if grad.is_sparse else grad
