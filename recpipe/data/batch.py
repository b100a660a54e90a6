"""The Batch type every loader yields and every model consumes.

Sparse features use the table-batched ("TBE") jagged layout, feature-major::

    bag (f, b) = indices[offsets[f * B + b] : offsets[f * B + b + 1]]

so one kernel launch can serve all F tables. ``indices`` are ids local to each feature's table
(``0 <= id < num_embeddings[f]``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """A mini-batch.

    Attributes:
        dense: (B, N) float32 dense features (already transformed, e.g. log1p).
        indices: (T,) int64 sparse ids, T = total ids in the batch.
        offsets: (F * B + 1,) int64 bag boundaries, feature-major (see module docstring).
        labels: (B,) float32 in {0, 1}.
        day: (B,) int32 day index inside the read (0 = first day read), or None.
    """

    dense: torch.Tensor
    indices: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor
    day: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_sparse(self) -> int:
        b = self.batch_size
        return (int(self.offsets.shape[0]) - 1) // b if b else 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(mv(self.dense), mv(self.indices), mv(self.offsets), mv(self.labels), mv(self.day))

    def pin_memory(self) -> "Batch":
        pm = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return Batch(pm(self.dense), pm(self.indices), pm(self.offsets), pm(self.labels), pm(self.day))

    def feature_bags(self, f: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (indices, offsets) of feature ``f`` alone, offsets rebased to 0 with B + 1 entries."""
        b = self.batch_size
        off = self.offsets[f * b: (f + 1) * b + 1]
        return self.indices[off[0]: off[-1]], off - off[0]
