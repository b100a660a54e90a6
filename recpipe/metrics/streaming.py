"""Streaming metrics: ``update(preds, labels, weights=None)`` per batch, ``compute()`` at the end, ``reset()``,
``merge(other)`` to combine shards, and ``state_dict()`` / ``load_state_dict()`` (plain tensors) so workers of a
distributed evaluation can ship their state to one process (:func:`sync_distributed`).

Two kinds of state:

* :class:`Moments` — five float64 sums (rows, weight, weighted labels, weighted predictions, weighted log loss);
  constant memory. LogLoss, NE, Calibration, MeanPrediction, LabelRate and Count are views of it.
* :class:`AUC` — EXACT: it keeps every (pred, label, weight) row (24 bytes per row in float64) and sorts once in
  ``compute()``; no histogram approximation. 10 M eval rows take ~240 MB.

Shapes: ``preds``, ``labels``, ``weights`` are (B,) (any shape is flattened); see
:mod:`recpipe.metrics.functional` for the conventions (probabilities, not logits).
"""
from __future__ import annotations

import abc
import math
from typing import Mapping, TypeVar

import torch

from recpipe.metrics import functional as F

M = TypeVar("M", bound="StreamingMetric")


class StreamingMetric(abc.ABC):
    """Base class: subclasses implement update / compute / reset / state_dict / load_state_dict / merge_state;
    :meth:`merge` is defined through state dicts so every subclass merges the same way."""

    @abc.abstractmethod
    def update(self, preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Adds a batch: ``preds``, ``labels``, ``weights`` are (B,)."""

    @abc.abstractmethod
    def compute(self) -> float:
        """The metric over every row added since the last reset."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forgets every row."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state as plain tensors (picklable, shippable between processes)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replaces the state by ``state``."""

    @abc.abstractmethod
    def merge_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Adds the rows summarised by ``state``."""

    def merge(self: M, other: M) -> M:
        """Adds ``other``'s rows to this metric (as if all its updates had been made here); returns self."""
        if not isinstance(other, type(self)):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        self.merge_state(other.state_dict())
        return self


MOMENT_KEYS = ("count", "weight", "label", "pred", "logloss")


class Moments(StreamingMetric):
    """Sufficient statistics of every non-ranking metric: float64 sums over rows of
    1, w, w*y, w*p, w*logloss(p, y)."""

    def __init__(self) -> None:
        self.sums = torch.zeros(len(MOMENT_KEYS), dtype=F.DTYPE)

    def update(self, preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        self.add_checked(*F.as_vectors(preds, labels, weights))

    def add_checked(self, p: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> None:
        """:meth:`update` for vectors already validated by :func:`~recpipe.metrics.functional.as_vectors`."""
        self.sums += torch.stack([
            torch.tensor(float(p.numel()), dtype=F.DTYPE), w.sum(), (w * y).sum(), (w * p).sum(),
            (w * F.row_log_loss(p, y)).sum(),
        ])

    def value(self, key: str) -> float:
        """One raw sum by name (one of :data:`MOMENT_KEYS`)."""
        return float(self.sums[MOMENT_KEYS.index(key)])

    def compute(self) -> float:
        return self.value("count")

    def metrics(self) -> dict[str, float]:
        """logloss, ne, calibration, mean_pred, label_rate, count, weight from the sums."""
        n, w, y, p, ll = (float(v) for v in self.sums)
        logloss = ll / w if w > 0 else math.nan
        rate = y / w if w > 0 else math.nan
        h = float(F.binary_entropy(rate)) if not math.isnan(rate) else math.nan
        return {
            "logloss": logloss,
            "ne": logloss / h if h > 0 and not math.isnan(logloss) else math.nan,
            "calibration": p / y if y > 0 else math.nan,
            "mean_pred": p / w if w > 0 else math.nan,
            "label_rate": rate,
            "count": n,
            "weight": w,
        }

    def reset(self) -> None:
        self.sums.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.sums = state["sums"].to(F.DTYPE).clone()

    def merge_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.sums += state["sums"].to(F.DTYPE)


class _MomentView(Moments):
    key = "count"

    def compute(self) -> float:
        return self.metrics()[self.key]


class LogLoss(_MomentView):
    """Weighted mean binary cross-entropy in nats."""

    key = "logloss"


class NormalizedEntropy(_MomentView):
    """NE = log loss / H(p̂), where p̂ is the EMPIRICAL weighted label rate of the same rows that were
    updated into this metric (not a training-set or prior rate). nan with a single class."""

    key = "ne"


class Calibration(_MomentView):
    """sum(w * pred) / sum(w * label); nan with no positive label."""

    key = "calibration"


class MeanPrediction(_MomentView):
    """Weighted mean prediction."""

    key = "mean_pred"


class LabelRate(_MomentView):
    """Weighted label rate (the empirical CTR)."""

    key = "label_rate"


class Count(_MomentView):
    """Number of rows updated (unweighted)."""

    key = "count"


class AUC(StreamingMetric):
    """Exact ROC AUC over every row seen (ties count one half; weighted). Keeps all rows; see module doc."""

    def __init__(self) -> None:
        self._chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        self.add_checked(*F.as_vectors(preds, labels, weights))

    def add_checked(self, p: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> None:
        """:meth:`update` for vectors already validated by :func:`~recpipe.metrics.functional.as_vectors`."""
        if p.numel():
            self._chunks.append((p, y, w))

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All rows seen so far as (preds, labels, weights), each (R,), float64, in update order."""
        if not self._chunks:
            e = torch.zeros(0, dtype=F.DTYPE)
            return e, e.clone(), e.clone()
        if len(self._chunks) > 1:  # compact so repeated compute() calls do not re-concatenate
            self._chunks = [tuple(torch.cat(c) for c in zip(*self._chunks))]  # type: ignore[list-item]
        return self._chunks[0]

    def compute(self) -> float:
        return F.auc(*self.rows())

    def reset(self) -> None:
        self._chunks = []

    def state_dict(self) -> dict[str, torch.Tensor]:
        p, y, w = self.rows()
        return {"preds": p.clone(), "labels": y.clone(), "weights": w.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.reset()
        self.merge_state(state)

    def merge_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if state["preds"].numel():
            self._chunks.append((state["preds"].to(F.DTYPE), state["labels"].to(F.DTYPE),
                                 state["weights"].to(F.DTYPE)))


def sync_distributed(metric: StreamingMetric) -> StreamingMetric:
    """Merges every rank's state into ``metric`` in place (all ranks end equal); no-op outside
    ``torch.distributed``. Uses ``all_gather_object`` because AUC states differ in length between ranks."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return metric
    states: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(states, metric.state_dict())
    metric.reset()
    for s in states:
        if s is not None:
            metric.merge_state(s)
    return metric
