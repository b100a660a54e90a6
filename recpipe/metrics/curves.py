"""Curve data for plots and KFP artifacts: ROC points and the calibration (reliability) curve.

Inputs follow :mod:`recpipe.metrics.functional`: ``preds``, ``labels``, ``weights`` are (B,) with ``preds``
probabilities in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recpipe.metrics import functional as F


@dataclass(frozen=True)
class RocCurve:
    """ROC points at every distinct threshold, descending: row i predicts positive when ``score >= thresholds[i]``.

    The first point is (0, 0) with threshold ``max(score) + 1`` (nothing predicted positive): a finite stand-in
    for +inf so the lists survive JSON and KFP's ClassificationMetrics.
    """

    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"fpr": self.fpr, "tpr": self.tpr, "thresholds": self.thresholds}


def roc_curve(preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
              max_points: int | None = 200) -> RocCurve:
    """Weighted ROC curve.

    Args:
        max_points: keep at most this many points (evenly spaced by index, first and last kept) so artifacts
            stay small on millions of rows; ``None`` keeps every distinct threshold.

    Raises:
        ValueError: if the rows hold only one class (the curve is undefined).
    """
    p, y, w = F.as_vectors(preds, labels, weights)
    sorted_p, order = torch.sort(p, descending=True, stable=True)
    ys, ws = y[order], w[order]
    tp = torch.cumsum(ws * ys, 0)
    fp = torch.cumsum(ws * (1.0 - ys), 0)
    if p.numel() == 0 or float(tp[-1]) <= 0 or float(fp[-1]) <= 0:
        raise ValueError("roc_curve needs rows of both classes")
    # last row of each run of equal scores: the point after admitting the whole tie group
    last = torch.ones_like(sorted_p, dtype=torch.bool)
    last[:-1] = sorted_p[1:] != sorted_p[:-1]
    idx = torch.nonzero(last).reshape(-1)
    fpr = torch.cat([torch.zeros(1, dtype=F.DTYPE), fp[idx] / fp[-1]])
    tpr = torch.cat([torch.zeros(1, dtype=F.DTYPE), tp[idx] / tp[-1]])
    thr = torch.cat([sorted_p[:1] + 1.0, sorted_p[idx]])
    if max_points is not None and fpr.numel() > max_points:
        keep = torch.unique(torch.linspace(0, fpr.numel() - 1, max(max_points, 2)).round().long())
        fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
    return RocCurve(fpr.tolist(), tpr.tolist(), thr.tolist())


def quantiles(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Quantiles with linear interpolation (``numpy.quantile``'s default, ``torch.quantile``'s ``"linear"``)
    read off one sort, so they work at any size (``torch.quantile`` refuses inputs above 2**24 elements).

    Args:
        values: (R,) values, R >= 1.
        q: (Q,) probabilities in [0, 1].

    Returns:
        (Q,) quantiles in ``values``' dtype.
    """
    v = values.reshape(-1)
    if v.numel() == 0:
        raise ValueError("quantiles of an empty tensor are undefined")
    if bool(((q < 0) | (q > 1)).any()):
        raise ValueError(f"quantile probabilities must lie in [0, 1], got {q.tolist()}")
    s = torch.sort(v).values
    pos = q.to(torch.float64) * (v.numel() - 1)  # (Q,) fractional rank
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo.to(torch.float64)).to(s.dtype)
    return s[lo] + (s[hi] - s[lo]) * frac


@dataclass(frozen=True)
class CalibrationCurve:
    """Reliability diagram data for non-empty bins: mean prediction vs observed label rate per bin."""

    bin_low: list[float]
    bin_high: list[float]
    mean_pred: list[float]
    label_rate: list[float]
    weight: list[float]
    count: list[int]

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return {"bin_low": self.bin_low, "bin_high": self.bin_high, "mean_pred": self.mean_pred,
                "label_rate": self.label_rate, "weight": self.weight, "count": self.count}


def calibration_curve(preds: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                      num_bins: int = 10, strategy: str = "uniform") -> CalibrationCurve:
    """Bins predictions and compares each bin's weighted mean prediction with its weighted label rate.

    Args:
        num_bins: number of bins.
        strategy: ``"uniform"`` (equal-width bins on [0, 1], right edge inclusive in the last bin) or
            ``"quantile"`` (edges at prediction quantiles: CTR predictions crowd near 0, so uniform bins
            leave most bins empty).
    """
    if strategy not in ("uniform", "quantile"):
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    p, y, w = F.as_vectors(preds, labels, weights)
    if strategy == "uniform" or p.numel() == 0:
        edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=F.DTYPE)
    else:
        edges = quantiles(p, torch.linspace(0.0, 1.0, num_bins + 1, dtype=F.DTYPE))
        edges[0], edges[-1] = 0.0, 1.0
    # bin b holds edges[b] <= p < edges[b + 1]; p == 1 goes to the last bin
    bins = (torch.searchsorted(edges, p, right=True) - 1).clamp(0, num_bins - 1)
    sw = torch.zeros(num_bins, dtype=F.DTYPE).index_add_(0, bins, w)
    sp = torch.zeros(num_bins, dtype=F.DTYPE).index_add_(0, bins, w * p)
    sy = torch.zeros(num_bins, dtype=F.DTYPE).index_add_(0, bins, w * y)
    cnt = torch.bincount(bins, minlength=num_bins)
    keep = torch.nonzero((cnt > 0) & (sw > 0)).reshape(-1)
    return CalibrationCurve(edges[keep].tolist(), edges[keep + 1].tolist(), (sp[keep] / sw[keep]).tolist(),
                            (sy[keep] / sw[keep]).tolist(), sw[keep].tolist(), cnt[keep].tolist())
