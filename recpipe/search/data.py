"""In-memory rows for search trials: random access, subsampling, capped hash sizes, re-batching.

Trials train many small models on the same few ten-thousand rows, so the rows are read once (from the
streaming loader's :class:`~recpipe.data.batch.Batch` es) into :class:`TensorRows`, a jagged
feature-major layout that supports multi-hot features::

    values[f]          (nnz_f,) int64   ids of feature f, rows in order
    lengths            (F, R)  int64   bag length of feature f in row r
    row_starts         (F, R + 1)      cumulative lengths (where row r's bag of feature f starts)

It is saved with ``torch.save`` (tensors and ints only; loaded with ``weights_only=True``), which is how the
parent hands the trial data to spawned worker processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from recpipe.data.batch import Batch


@dataclass
class TensorRows:
    """R rows held in memory.

    Attributes:
        dense: (R, N) float32.
        labels: (R,) float32.
        values: F tensors, ``values[f]`` (nnz_f,) int64 ids of feature f in row order.
        lengths: (F, R) int64 bag lengths.
        table_sizes: F table sizes (ids of feature f lie in ``[0, table_sizes[f])``).
    """

    dense: torch.Tensor
    labels: torch.Tensor
    values: list[torch.Tensor]
    lengths: torch.Tensor
    table_sizes: list[int]

    def __post_init__(self) -> None:
        r = self.labels.shape[0]
        f = len(self.table_sizes)
        if self.dense.shape[0] != r or tuple(self.lengths.shape) != (f, r) or len(self.values) != f:
            raise ValueError(f"TensorRows: inconsistent shapes dense {tuple(self.dense.shape)}, labels ({r},), "
                             f"lengths {tuple(self.lengths.shape)}, {len(self.values)} value tensors, "
                             f"{f} table sizes")
        for i, v in enumerate(self.values):
            if v.numel() != int(self.lengths[i].sum()):
                raise ValueError(f"TensorRows: feature {i} has {v.numel()} ids but lengths sum to "
                                 f"{int(self.lengths[i].sum())}")
        zero = torch.zeros(f, 1, dtype=torch.int64)
        self.row_starts = torch.cat([zero, torch.cumsum(self.lengths, dim=1)], dim=1)  # (F, R + 1)

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_dense(self) -> int:
        return int(self.dense.shape[1])

    @property
    def num_sparse(self) -> int:
        return len(self.table_sizes)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_batches(cls, batches: Iterable[Batch], table_sizes: list[int], *, max_rows: int | None = None
                     ) -> "TensorRows":
        """Collects batches (any sizes) into rows, stopping once ``max_rows`` rows are held."""
        f = len(table_sizes)
        dense, labels, lengths = [], [], []
        values: list[list[torch.Tensor]] = [[] for _ in range(f)]
        rows = 0
        for i, b in enumerate(batches):
            if b.num_sparse != f:
                raise ValueError(f"batch {i}: {b.num_sparse} sparse features, expected {f}")
            take = b.batch_size if max_rows is None else min(b.batch_size, max_rows - rows)
            dense.append(b.dense[:take])
            labels.append(b.labels[:take])
            lens = []
            for j in range(f):
                idx, off = b.feature_bags(j)
                values[j].append(idx[: int(off[take])])
                lens.append(off[1: take + 1] - off[:take])
            lengths.append(torch.stack(lens) if lens else torch.zeros(0, take, dtype=torch.int64))
            rows += take
            if max_rows is not None and rows >= max_rows:
                break
        if not labels:
            raise ValueError("TensorRows.from_batches: no rows")
        return cls(dense=torch.cat(dense).float(), labels=torch.cat(labels).float(),
                   values=[torch.cat(v).long() if v else torch.zeros(0, dtype=torch.int64) for v in values],
                   lengths=torch.cat(lengths, dim=1).long(), table_sizes=list(table_sizes))

    # ------------------------------------------------------------------ row selection
    def take(self, rows: torch.Tensor) -> "TensorRows":
        """The rows at positions ``rows`` (1-D int64, any order, repeats allowed)."""
        rows = rows.long()
        lens = self.lengths[:, rows]  # (F, R')
        values = []
        for f in range(self.num_sparse):
            starts = self.row_starts[f, rows]
            n = lens[f]
            total = int(n.sum())
            # position k of the output bag of row i reads values[f][starts[i] + k]
            base = torch.repeat_interleave(starts - (torch.cumsum(n, 0) - n), n)
            values.append(self.values[f][base + torch.arange(total)])
        return TensorRows(self.dense[rows], self.labels[rows], values, lens, list(self.table_sizes))

    def slice(self, start: int, stop: int) -> "TensorRows":
        return self.take(torch.arange(start, min(stop, self.num_rows)))

    def subsample(self, n: int, seed: int) -> "TensorRows":
        """``n`` rows drawn without replacement (seeded), kept in their original order (all rows if n >= R)."""
        if n >= self.num_rows:
            return self
        g = torch.Generator().manual_seed(seed)
        rows = torch.sort(torch.randperm(self.num_rows, generator=g)[:n]).values
        return self.take(rows)

    def split(self, valid_fraction: float) -> tuple["TensorRows", "TensorRows"]:
        """(first rows, last ``valid_fraction`` of rows): the tail is later in time, like the eval days."""
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"split: valid_fraction must be in (0, 1), got {valid_fraction}")
        cut = self.num_rows - max(1, int(round(self.num_rows * valid_fraction)))
        return self.slice(0, cut), self.slice(cut, self.num_rows)

    def capped(self, cap: int | None) -> "TensorRows":
        """Hash sizes capped at ``cap`` by taking ids modulo ``cap`` (low-fidelity trials); None: unchanged."""
        if cap is None:
            return self
        if cap < 1:
            raise ValueError(f"capped: cap must be >= 1, got {cap}")
        values = [v % cap if size > cap else v for v, size in zip(self.values, self.table_sizes)]
        sizes = [min(size, cap) for size in self.table_sizes]
        return TensorRows(self.dense, self.labels, values, self.lengths, sizes)

    # ------------------------------------------------------------------ batching
    def batch(self, start: int, stop: int) -> Batch:
        """Rows ``[start, stop)`` as a :class:`Batch` (TBE feature-major offsets)."""
        stop = min(stop, self.num_rows)
        lens = self.lengths[:, start:stop]  # (F, B)
        indices = torch.cat([self.values[f][self.row_starts[f, start]: self.row_starts[f, stop]]
                             for f in range(self.num_sparse)]) if self.num_sparse else torch.zeros(0, dtype=torch.int64)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens.reshape(-1), 0)])  # (F*B + 1,)
        return Batch(dense=self.dense[start:stop], indices=indices, offsets=offsets, labels=self.labels[start:stop])

    def batches(self, batch_size: int, *, shuffle_seed: int | None = None, drop_last: bool = False
                ) -> Iterator[Batch]:
        """One pass in batches; with ``shuffle_seed`` the rows are permuted first (seeded)."""
        src = self
        if shuffle_seed is not None:
            g = torch.Generator().manual_seed(shuffle_seed)
            src = self.take(torch.randperm(self.num_rows, generator=g))
        stop = src.num_rows - (src.num_rows % batch_size if drop_last else 0)
        for s in range(0, stop, batch_size):
            yield src.batch(s, s + batch_size)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        torch.save({"dense": self.dense, "labels": self.labels, "values": self.values, "lengths": self.lengths,
                    "table_sizes": list(self.table_sizes)}, os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TensorRows":
        d = torch.load(os.fspath(path), weights_only=True)
        try:
            return cls(d["dense"], d["labels"], list(d["values"]), d["lengths"], [int(x) for x in d["table_sizes"]])
        except KeyError as e:
            raise ValueError(f"{os.fspath(path)}: not a TensorRows file (missing {e})") from e


def planted_rows(num_rows: int, *, num_dense: int = 4, table_sizes: tuple[int, ...] = (50, 50, 20, 20),
                 latent_dim: int = 4, interaction_scale: float = 2.0, seed: int = 0) -> TensorRows:
    """Single-hot rows with a planted, learnable click model (tests and the fallback benchmark data).

    ``logit = -1 + (dense - 0.5) @ w + sum_f effect_f[id_f] + interaction_scale * <u[id_0], v[id_1]>``: a linear part
    any model learns, plus a pairwise interaction between features 0 and 1 that rewards dot / FM / deep
    interaction blocks. Labels are Bernoulli(sigmoid(logit)); the base rate is roughly 25-30%.
    """
    if len(table_sizes) < 2:
        raise ValueError("planted_rows: need at least 2 sparse features for the planted interaction")
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(num_rows, num_dense, generator=g)  # (R, N)
    ids = torch.stack([torch.randint(0, s, (num_rows,), generator=g) for s in table_sizes])  # (F, R)
    w = torch.randn(num_dense, generator=g)
    effects = [0.5 * torch.randn(s, generator=g) for s in table_sizes]
    u = torch.randn(table_sizes[0], latent_dim, generator=g) / latent_dim ** 0.5
    v = torch.randn(table_sizes[1], latent_dim, generator=g) / latent_dim ** 0.5
    logit = -1.0 + (dense - 0.5) @ w + sum(e[i] for e, i in zip(effects, ids))
    logit = logit + interaction_scale * (u[ids[0]] * v[ids[1]]).sum(-1)
    labels = torch.bernoulli(torch.sigmoid(logit), generator=g)
    values = [ids[f].clone() for f in range(len(table_sizes))]
    return TensorRows(dense=dense.float(), labels=labels.float(), values=values,
                      lengths=torch.ones(len(table_sizes), num_rows, dtype=torch.int64), table_sizes=list(table_sizes))
