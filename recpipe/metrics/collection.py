"""All eval metrics at once (:class:`MetricCollection`) and the slice grouping (:func:`slice_groups`).

``MetricCollection(prefix="eval/").compute()`` gives ``eval/auc, eval/logloss, eval/ne, eval/calibration,
eval/mean_pred, eval/label_rate, eval/count, eval/weight``. One :class:`~recpipe.metrics.streaming.Moments`
and one exact :class:`~recpipe.metrics.streaming.AUC` back every key, so no row is stored twice.

A *slice* is the set of rows sharing one value of an integer key: a categorical feature's id, or the day index
of :class:`recpipe.data.batch.Batch`. :func:`slice_groups` groups rows by key with one sort and keeps the
``max_slices`` largest slices holding at least ``min_count`` rows (a 1 M-bucket feature would otherwise produce
a million tiny, noisy slices); :class:`recpipe.metrics.report.EvalAccumulator` is the one row store that
reports per-slice metrics (several models on the same rows, with intervals).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from recpipe.metrics import functional as F
from recpipe.metrics.streaming import AUC, Moments, StreamingMetric

ALL_METRICS = ("auc", "logloss", "ne", "calibration", "mean_pred", "label_rate", "count", "weight")


class MetricCollection(StreamingMetric):
    """Streaming AUC, log loss, NE, calibration, mean prediction, label rate and count.

    Args:
        prefix: prepended to every key (``"eval/"`` gives ``eval/auc``; ``"eval/day/"`` etc. also fine).
        metrics: which of :data:`ALL_METRICS` to report; leaving out ``"auc"`` drops the per-row storage,
            making the collection constant-memory.
    """

    def __init__(self, prefix: str = "eval/", metrics: Sequence[str] = ALL_METRICS) -> None:
        unknown = set(metrics) - set(ALL_METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; known: {list(ALL_METRICS)}")
        self.prefix = prefix
        self.names = tuple(metrics)
        self.moments = Moments()
        self.auc = AUC() if "auc" in self.names else None

    def update(self, preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        p, y, w = F.as_vectors(preds, labels, weights)
        self.moments.add_checked(p, y, w)
        if self.auc is not None:
            self.auc.add_checked(p, y, w)

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        """``{prefix + name: value}`` for every requested metric (nan where undefined)."""
        values = self.moments.metrics()
        if self.auc is not None:
            values["auc"] = self.auc.compute()
        return {f"{self.prefix}{k}": values[k] for k in self.names}

    def reset(self) -> None:
        self.moments.reset()
        if self.auc is not None:
            self.auc.reset()

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"moments.{k}": v for k, v in self.moments.state_dict().items()}
        if self.auc is not None:
            out.update({f"auc.{k}": v for k, v in self.auc.state_dict().items()})
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.reset()
        self.merge_state(state)

    def merge_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.moments.merge_state({"sums": state["moments.sums"]})
        if self.auc is not None:
            if "auc.preds" not in state:
                raise ValueError("cannot merge a collection without AUC rows into one that computes auc")
            self.auc.merge_state({k[4:]: v for k, v in state.items() if k.startswith("auc.")})


def slice_groups(keys: torch.Tensor, max_slices: int, min_count: int = 1) -> list[tuple[int, torch.Tensor]]:
    """Groups rows by slice key with one sort.

    Args:
        keys: (R,) int64 slice value of each row.
        max_slices: keep the largest this many slices (by row count; ties: smaller key first).
        min_count: drop slices with fewer rows.

    Returns:
        (key, row indices) per kept slice, largest first; indices ascending within a slice.
    """
    if keys.numel() == 0:
        return []
    uniq, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    keep = torch.nonzero(counts >= min_count).reshape(-1)
    # largest first; torch.unique sorts keys ascending, so a stable sort breaks count ties by key
    keep = keep[torch.sort(-counts[keep], stable=True).indices][:max_slices]
    order = torch.argsort(inverse, stable=True)  # rows grouped by key, ascending
    starts = torch.cumsum(counts, 0) - counts
    return [(int(uniq[g]), order[int(starts[g]): int(starts[g]) + int(counts[g])]) for g in keep.tolist()]
