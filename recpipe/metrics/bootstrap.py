"""Bootstrap confidence intervals on AUC, NE and log loss, and PAIRED intervals on differences between models
scored on the same rows.

Method: the classic (multinomial) bootstrap, vectorised. Resample s draws R row indices uniformly with
replacement from a seeded ``torch.Generator``; row i gets weight ``w_i * k_si`` where ``k_si`` counts its
draws (a ``bincount``). Resamples are processed ``chunk`` at a time as dense (S_chunk, R) weight matrices.
AUC needs no re-sort per resample: the ranking of a model's scores is fixed, only weights change, so
:class:`recpipe.metrics.functional.AucPlan` is built once per model and each resample costs two column gathers
and one cumulative sum. Log loss and NE per resample are matrix-vector products. The draws are consumed in
resample order, so the result does not depend on ``chunk``.

Pairing: every model is evaluated under the SAME resample weights, so ``challenger - champion`` per resample
keeps the correlation between the two models' errors on shared rows; its interval is much tighter than one
built from two independent intervals.

Intervals are percentile intervals of the resample values (nan resamples, e.g. a resample without positives,
are dropped).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from recpipe.metrics import functional as F

BOOTSTRAP_METRICS = ("auc", "ne", "logloss")
CHUNK_BYTES = 32 << 20
"""Size of one chunk's float64 resample-weight matrix (S_chunk × R × 8 bytes); peak memory is a few times this
(draws, counts, per-model gathers)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate (on the full data) with a bootstrap percentile interval and standard error."""

    estimate: float
    low: float
    high: float
    std: float
    confidence: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "std": self.std,
                "confidence": self.confidence}


def point_metrics(preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
                  ) -> dict[str, float]:
    """The :data:`BOOTSTRAP_METRICS` on the full data (the intervals' point estimates)."""
    return {"auc": F.auc(preds, labels, weights), "ne": F.normalized_entropy(preds, labels, weights),
            "logloss": F.log_loss(preds, labels, weights)}


def percentile_interval(samples: torch.Tensor, estimate: float, confidence: float) -> Interval:
    """Percentile interval of (S,) resample values around ``estimate``; nan bounds if no finite sample."""
    s = samples[torch.isfinite(samples)].to(F.DTYPE)
    if s.numel() == 0:
        return Interval(estimate, math.nan, math.nan, math.nan, confidence)
    alpha = (1.0 - confidence) / 2.0
    q = torch.quantile(s, torch.tensor([alpha, 1.0 - alpha], dtype=F.DTYPE))
    std = float(s.std()) if s.numel() > 1 else 0.0
    return Interval(estimate, float(q[0]), float(q[1]), std, confidence)


@dataclass
class BootstrapResult:
    """Per-resample values ``samples[model][metric]`` (S,) and point estimates ``estimates[model][metric]``."""

    samples: dict[str, dict[str, torch.Tensor]]
    estimates: dict[str, dict[str, float]]
    confidence: float

    def interval(self, model: str, metric: str) -> Interval:
        return percentile_interval(self.samples[model][metric], self.estimates[model][metric], self.confidence)

    def delta(self, model: str, baseline: str, metric: str) -> Interval:
        """Paired interval of ``metric(model) - metric(baseline)`` over the shared resamples."""
        est = self.estimates[model][metric] - self.estimates[baseline][metric]
        return percentile_interval(self.samples[model][metric] - self.samples[baseline][metric], est,
                                   self.confidence)

    def to_dict(self, baseline: str | None = None) -> dict[str, object]:
        """JSON-able: intervals per model and metric, plus paired deltas against ``baseline`` if given."""
        out: dict[str, object] = {
            m: {k: self.interval(m, k).to_dict() for k in self.samples[m]} for m in self.samples}
        if baseline is not None and baseline in self.samples:
            out["delta"] = {m: {k: self.delta(m, baseline, k).to_dict() for k in self.samples[m]}
                            for m in self.samples if m != baseline}
        return out


def bootstrap(preds: Mapping[str, torch.Tensor], labels: torch.Tensor, weights: torch.Tensor | None = None, *,
              num_samples: int = 200, confidence: float = 0.95, seed: int = 0,
              chunk: int | None = None) -> BootstrapResult:
    """Bootstrap of AUC, NE and log loss for one or more models on the same rows.

    Args:
        preds: model name → (R,) probabilities; every model is scored on the same resamples (paired).
        labels: (R,) labels in {0, 1}.
        weights: optional (R,) example weights.
        num_samples: S, the number of resamples.
        confidence: interval coverage, e.g. 0.95.
        seed: seed of the resampling (same seed, same data → identical result, whatever ``chunk``).
        chunk: resamples per dense weight matrix; default fits :data:`CHUNK_BYTES`.

    Returns:
        A :class:`BootstrapResult`; NE per resample uses that resample's own weighted label rate.
    """
    if not preds:
        raise ValueError("bootstrap needs at least one model's predictions")
    if num_samples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need num_samples >= 1 and 0 < confidence < 1, got {num_samples}, {confidence}")
    plans: dict[str, tuple[F.AucPlan, torch.Tensor]] = {}
    y = w = None
    for name, p in preds.items():
        p, y, w = F.as_vectors(p, labels, weights)
        plans[name] = (F.AucPlan.build(p, y), F.row_log_loss(p, y))
    assert y is not None and w is not None
    r = y.numel()
    if r == 0:
        raise ValueError("bootstrap needs at least one row")
    chunk = chunk or max(1, min(num_samples, CHUNK_BYTES // (8 * r)))
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, list[torch.Tensor]]] = {m: {k: [] for k in BOOTSTRAP_METRICS} for m in plans}
    done = 0
    while done < num_samples:
        c = min(chunk, num_samples - done)
        draws = torch.randint(0, r, (c, r), generator=gen)  # (S_chunk, R) row ids drawn with replacement
        flat = (draws + torch.arange(c).unsqueeze(1) * r).reshape(-1)  # resample s counts into [s*R, (s+1)*R)
        wc = torch.bincount(flat, minlength=c * r).reshape(c, r).to(F.DTYPE) * w  # (S_chunk, R)
        total = wc.sum(1)
        entropy = F.binary_entropy((wc @ y) / total)
        for name, (plan, ll) in plans.items():
            logloss = (wc @ ll) / total
            out[name]["auc"].append(plan.auc(wc))
            out[name]["logloss"].append(logloss)
            out[name]["ne"].append(torch.where(entropy > 0, logloss / entropy, torch.full_like(logloss, math.nan)))
        done += c
    samples = {m: {k: torch.cat(v) for k, v in d.items()} for m, d in out.items()}
    estimates = {m: point_metrics(preds[m], labels, weights) for m in plans}
    return BootstrapResult(samples, estimates, confidence)
