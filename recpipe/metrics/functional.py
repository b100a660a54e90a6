"""Batch (non-streaming) binary-classification metrics on tensors: the single definitions every streaming class,
slice and bootstrap in :mod:`recpipe.metrics` reduces to.

Conventions shared by every function here:

* ``preds``: (B,) predicted click probabilities in [0, 1] (NOT logits).
* ``labels``: (B,) in {0, 1} (a value in between acts as a fractional positive: weight ``y`` positive,
  ``1 - y`` negative).
* ``weights``: optional (B,) non-negative example weights; ``None`` means all ones.
* Computation is in float64; an undefined metric (e.g. AUC with one class only) is ``nan``, never an error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PROB_EPS = 1e-7
"""Predictions are clipped to [PROB_EPS, 1 - PROB_EPS] before taking logs: a float32 sigmoid rounds to exactly
0 or 1 for |logit| > ~17, and an infinite log loss from one row would make the whole day's figure useless."""

DTYPE = torch.float64


def as_vectors(preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validates and flattens inputs to float64 CPU vectors; returns (preds, labels, weights), each (B,).

    Raises:
        ValueError: naming the argument whose length differs, or a prediction outside [0, 1].
    """
    p = torch.as_tensor(preds).detach().reshape(-1).to("cpu", DTYPE)
    y = torch.as_tensor(labels).detach().reshape(-1).to("cpu", DTYPE)
    if y.shape != p.shape:
        raise ValueError(f"labels has {y.numel()} elements but preds has {p.numel()}")
    if weights is None:
        w = torch.ones_like(p)
    else:
        w = torch.as_tensor(weights).detach().reshape(-1).to("cpu", DTYPE)
        if w.shape != p.shape:
            raise ValueError(f"weights has {w.numel()} elements but preds has {p.numel()}")
        if bool((w < 0).any()):
            raise ValueError("weights must be non-negative")
    bad = ~((p >= 0) & (p <= 1))  # also true for nan
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"preds must be probabilities in [0, 1]; element {i} is {float(p[i])} "
                         "(pass sigmoid(logits), not logits)")
    return p, y, w


def row_log_loss(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row binary cross-entropy in nats, (B,), predictions clipped by :data:`PROB_EPS`."""
    p = preds.to(DTYPE).clamp(PROB_EPS, 1.0 - PROB_EPS)
    y = labels.to(DTYPE)
    return -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p))


def binary_entropy(rate: torch.Tensor | float) -> torch.Tensor:
    """Entropy in nats of a Bernoulli(rate); 0 at rate 0 or 1 (any shape in, same shape out)."""
    r = torch.as_tensor(rate, dtype=DTYPE)
    # xlogy gives 0 * log 0 = 0, so degenerate base rates yield entropy 0 (and NE nan), not nan entropy.
    return -(torch.xlogy(r, r) + torch.xlogy(1.0 - r, 1.0 - r))


def _safe_div(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def log_loss(preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Weighted mean binary cross-entropy (nats): sum(w * ll) / sum(w)."""
    p, y, w = as_vectors(preds, labels, weights)
    return _safe_div(float((w * row_log_loss(p, y)).sum()), float(w.sum()))


def normalized_entropy(preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """NE = log loss / H(base rate), where the base rate is the EMPIRICAL (weighted) label rate of these same
    rows, sum(w * y) / sum(w). NE < 1 means the model beats always predicting that rate; nan when the rows hold
    one class only (H = 0)."""
    p, y, w = as_vectors(preds, labels, weights)
    ll = log_loss(p, y, w)
    h = float(binary_entropy(_safe_div(float((w * y).sum()), float(w.sum()))))
    return _safe_div(ll, h) if not math.isnan(ll) and not math.isnan(h) else math.nan


def calibration(preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """sum(w * pred) / sum(w * label): 1 is calibrated on average, > 1 over-predicts; nan with no positives."""
    p, y, w = as_vectors(preds, labels, weights)
    return _safe_div(float((w * p).sum()), float((w * y).sum()))


@dataclass(frozen=True)
class AucPlan:
    """Everything about the ranking of one model's scores that does not depend on row weights, so AUC under
    many weightings (bootstrap resamples) costs gathers and one cumulative sum each, never a re-sort.

    A row with label y contributes a positive entry of mass y and a negative entry of mass 1 - y (hard labels
    give one entry). With P positive and M negative entries:

    Attributes:
        pos_rows: (P,) row index of each positive entry.
        pos_mass: (P,) its label y.
        neg_rows: (M,) row index of each negative entry, in ascending score order.
        neg_mass: (M,) its 1 - y.
        below: (P,) negative entries scoring strictly lower than each positive entry.
        upto: (P,) negative entries scoring lower or equal (``upto - below`` = ties, counted one half).
    """

    pos_rows: torch.Tensor
    pos_mass: torch.Tensor
    neg_rows: torch.Tensor
    neg_mass: torch.Tensor
    below: torch.Tensor
    upto: torch.Tensor

    @classmethod
    def build(cls, preds: torch.Tensor, labels: torch.Tensor) -> "AucPlan":
        """From (R,) scores and (R,) labels (float64, validated by :func:`as_vectors`)."""
        pos = torch.nonzero(labels > 0).reshape(-1)
        neg_all = torch.nonzero(labels < 1).reshape(-1)
        neg_scores, o = torch.sort(preds[neg_all], stable=True)
        neg = neg_all[o]
        p_scores = preds[pos]
        return cls(pos, labels[pos], neg, 1.0 - labels[neg],
                   torch.searchsorted(neg_scores, p_scores, right=False),
                   torch.searchsorted(neg_scores, p_scores, right=True))

    def auc(self, weights: torch.Tensor) -> torch.Tensor:
        """AUC under row weights.

        Args:
            weights: (S, R) non-negative weights, one weighting of the R rows per line.

        Returns:
            (S,) P(score of a positive > score of a negative) + 0.5 P(tie), pairs weighted by the product of
            their weights: the area under the ROC curve with linear interpolation across tied scores (what
            scikit-learn's roc_auc_score computes). nan where either class has zero weight.
        """
        wp = torch.index_select(weights, 1, self.pos_rows) * self.pos_mass  # (S, P)
        wn = torch.index_select(weights, 1, self.neg_rows) * self.neg_mass  # (S, M), ascending score
        cum = torch.nn.functional.pad(torch.cumsum(wn, dim=1), (1, 0))  # (S, M + 1): cum[:, k] = first k
        neg_below = 0.5 * (torch.index_select(cum, 1, self.below) + torch.index_select(cum, 1, self.upto))
        num = (wp * neg_below).sum(dim=1)
        den = wp.sum(dim=1) * cum[:, -1]
        return torch.where(den > 0, num / den.clamp_min(torch.finfo(DTYPE).tiny), torch.full_like(num, math.nan))


def auc(preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Exact weighted ROC AUC with ties counted one half (matches ``sklearn.metrics.roc_auc_score``).

    O(R log R) time via one sort of the negatives plus binary searches; exact, no histogram approximation.
    nan when one class has zero weight (or no rows).
    """
    p, y, w = as_vectors(preds, labels, weights)
    return float(AucPlan.build(p, y).auc(w.unsqueeze(0))[0])


def summary(preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, float]:
    """All scalar metrics of one set of rows: ``auc, logloss, ne, calibration, mean_pred, label_rate, count,
    weight`` (``count`` = rows, ``weight`` = sum of weights; rates and means are weighted)."""
    p, y, w = as_vectors(preds, labels, weights)
    sw = float(w.sum())
    return {
        "auc": auc(p, y, w),
        "logloss": log_loss(p, y, w),
        "ne": normalized_entropy(p, y, w),
        "calibration": calibration(p, y, w),
        "mean_pred": _safe_div(float((w * p).sum()), sw),
        "label_rate": _safe_div(float((w * y).sum()), sw),
        "count": float(p.numel()),
        "weight": sw,
    }
