"""All eval metrics at once (:class:`MetricCollection`) and per slice (:class:`SlicedMetrics`).

``MetricCollection(prefix="eval/").compute()`` gives ``eval/auc, eval/logloss, eval/ne, eval/calibration,
eval/mean_pred, eval/label_rate, eval/count, eval/weight``. One :class:`~recpipe.metrics.streaming.Moments`
and one exact :class:`~recpipe.metrics.streaming.AUC` back every key, so no row is stored twice.

A *slice* is the set of rows sharing one value of an integer key: a categorical feature's id, or the day index
of :class:`recpipe.data.batch.Batch`. :class:`SlicedMetrics` keeps (key, pred, label, weight) rows and, in
``compute()``, groups them with one sort and reports the ``max_slices`` largest slices holding at least
``min_count`` rows (a 1 M-bucket feature would otherwise produce a million tiny, noisy slices).
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


class SlicedMetrics(StreamingMetric):
    """Metrics per value of an integer slice key (categorical feature id or day index).

    Args:
        name: the slice dimension's name (e.g. ``"day"`` or ``"C1"``), used in result keys.
        max_slices: report at most this many slices, the largest by row count (ties: smaller key first).
        min_count: ignore slices with fewer rows.
    """

    def __init__(self, name: str, max_slices: int = 20, min_count: int = 1) -> None:
        self.name = name
        self.max_slices = max_slices
        self.min_count = min_count
        self._keys: list[torch.Tensor] = []
        self._rows = AUC()  # reused as an exact row store (preds, labels, weights)

    def update(self, preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
               keys: torch.Tensor | None = None) -> None:
        """Adds a batch; ``keys`` is (B,) int64, the slice value of each row (required)."""
        if keys is None:
            raise ValueError(f"SlicedMetrics({self.name!r}).update needs keys (the slice value of each row)")
        p, y, w = F.as_vectors(preds, labels, weights)
        k = torch.as_tensor(keys).detach().reshape(-1).to("cpu", torch.int64)
        if k.numel() != p.numel():
            raise ValueError(f"slice {self.name!r}: keys has {k.numel()} elements but preds has {p.numel()}")
        self._keys.append(k)
        self._rows.add_checked(p, y, w)

    def groups(self) -> list[tuple[int, torch.Tensor]]:
        """The reported slices as (key, row indices into :meth:`rows`), largest first."""
        return slice_groups(self.rows()[0], self.max_slices, self.min_count)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys, preds, labels, weights), each (R,)."""
        keys = torch.cat(self._keys) if self._keys else torch.zeros(0, dtype=torch.int64)
        self._keys = [keys]
        return (keys, *self._rows.rows())

    def compute(  # type: ignore[override]
            self, key_names: Mapping[int, str] | None = None) -> dict[str, dict[str, float]]:
        """``{slice value: summary}`` (see :func:`recpipe.metrics.functional.summary`), largest slices first.

        Args:
            key_names: optional display names of key values (e.g. day index → ISO date).
        """
        _, p, y, w = self.rows()
        names = key_names or {}
        return {names.get(k, str(k)): F.summary(p[idx], y[idx], w[idx]) for k, idx in self.groups()}

    def reset(self) -> None:
        self._keys = []
        self._rows.reset()

    def state_dict(self) -> dict[str, torch.Tensor]:
        keys, p, y, w = self.rows()
        return {"keys": keys.clone(), "preds": p.clone(), "labels": y.clone(), "weights": w.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.reset()
        self.merge_state(state)

    def merge_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self._keys.append(state["keys"].to(torch.int64))
        self._rows.merge_state(state)
