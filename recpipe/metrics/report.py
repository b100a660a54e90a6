"""Model evaluation on held-out rows: several models scored on the SAME rows, overall and per slice, with
bootstrap intervals and paired deltas against a baseline (the champion).

:class:`EvalAccumulator` keeps, per row, the label, weight, every model's prediction and every slice key
(so intervals can be paired across models); :meth:`EvalAccumulator.report` turns them into a JSON-able dict::

    {"rows": R, "models": [...], "baseline": "champion" | None,
     "metrics":   {model: {"overall": summary, "slices": {dim: {value: summary}}}},
     "intervals": {"overall": bootstrap dict, "slices": {dim: {value: bootstrap dict}}},
     "curves":    {model: {"roc": {fpr, tpr, thresholds}, "calibration": {...}}}}

``summary`` is :func:`recpipe.metrics.functional.summary`; a ``bootstrap dict`` is
:meth:`recpipe.metrics.bootstrap.BootstrapResult.to_dict` (per model and metric ``estimate/low/high/std``,
plus ``delta[model][metric]`` = model − baseline on shared resamples).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from recpipe.metrics import functional as F
from recpipe.metrics.bootstrap import bootstrap
from recpipe.metrics.collection import slice_groups
from recpipe.metrics.curves import calibration_curve, roc_curve

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportOptions:
    """How :meth:`EvalAccumulator.report` summarises rows.

    Attributes:
        max_slices: per slice dimension, report the largest this many slices.
        min_slice_count: slices with fewer rows are not reported (too noisy to gate on).
        bootstrap_samples: S resamples for intervals (0 disables intervals).
        slice_bootstrap: also bootstrap every reported slice (costs S·R per slice dimension).
        confidence: interval coverage.
        seed: bootstrap seed.
        roc_points: max ROC points kept per model.
        calibration_bins: reliability-diagram bins (quantile bins: CTR predictions crowd near 0).
    """

    max_slices: int = 20
    min_slice_count: int = 100
    bootstrap_samples: int = 200
    slice_bootstrap: bool = True
    confidence: float = 0.95
    seed: int = 0
    roc_points: int = 200
    calibration_bins: int = 10


class EvalAccumulator:
    """Row store for a paired multi-model evaluation.

    Args:
        models: model names; every :meth:`update` gives a prediction for each.
        slice_dims: names of the slice dimensions; every :meth:`update` gives a key tensor for each.
    """

    def __init__(self, models: Sequence[str], slice_dims: Sequence[str] = ()) -> None:
        if not models:
            raise ValueError("EvalAccumulator needs at least one model name")
        self.models = tuple(models)
        self.slice_dims = tuple(slice_dims)
        self._labels: list[torch.Tensor] = []
        self._weights: list[torch.Tensor] = []
        self._preds: dict[str, list[torch.Tensor]] = {m: [] for m in self.models}
        self._keys: dict[str, list[torch.Tensor]] = {d: [] for d in self.slice_dims}

    @property
    def num_rows(self) -> int:
        return sum(int(t.numel()) for t in self._labels)

    def update(self, labels: torch.Tensor, preds: Mapping[str, torch.Tensor],
               keys: Mapping[str, torch.Tensor] | None = None, weights: torch.Tensor | None = None) -> None:
        """Adds a batch.

        Args:
            labels: (B,) labels.
            preds: model name → (B,) probabilities (every model of the accumulator).
            keys: slice dimension → (B,) int64 slice value of each row (every dimension).
            weights: optional (B,) weights.
        """
        missing = set(self.models) - set(preds)
        if missing:
            raise ValueError(f"update: no predictions for models {sorted(missing)}")
        keys = keys or {}
        missing = set(self.slice_dims) - set(keys)
        if missing:
            raise ValueError(f"update: no slice keys for dimensions {sorted(missing)}")
        y = None
        w = None
        for m in self.models:
            p, y, w = F.as_vectors(preds[m], labels, weights)
            self._preds[m].append(p)
        assert y is not None and w is not None
        self._labels.append(y)
        self._weights.append(w)
        for d in self.slice_dims:
            k = torch.as_tensor(keys[d]).reshape(-1).to("cpu", torch.int64)
            if k.numel() != y.numel():
                raise ValueError(f"update: slice {d!r} keys have {k.numel()} elements, labels {y.numel()}")
            self._keys[d].append(k)

    def merge(self, other: "EvalAccumulator") -> "EvalAccumulator":
        """Appends ``other``'s rows (e.g. another worker's shard) after this one's; returns ``self``.

        Raises:
            ValueError: when the two accumulators differ in models or slice dimensions.
        """
        if other.models != self.models or other.slice_dims != self.slice_dims:
            raise ValueError(f"cannot merge an accumulator of models {list(other.models)} / slices "
                             f"{list(other.slice_dims)} into one of {list(self.models)} / {list(self.slice_dims)}")
        self._labels += other._labels
        self._weights += other._weights
        for m in self.models:
            self._preds[m] += other._preds[m]
        for d in self.slice_dims:
            self._keys[d] += other._keys[d]
        return self

    def columns(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(labels, weights, {model: preds}, {dim: keys}), each (R,), concatenated over updates."""
        def cat(ts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
            return torch.cat(ts) if ts else torch.zeros(0, dtype=dtype)

        return (cat(self._labels, F.DTYPE), cat(self._weights, F.DTYPE),
                {m: cat(v, F.DTYPE) for m, v in self._preds.items()},
                {d: cat(v, torch.int64) for d, v in self._keys.items()})

    def report(self, options: ReportOptions = ReportOptions(), baseline: str | None = None,
               key_names: Mapping[str, Mapping[int, str]] | None = None) -> dict[str, Any]:
        """Metrics, intervals and curves (see module docstring).

        Args:
            options: summarising options.
            baseline: model the paired deltas are taken against (e.g. ``"champion"``), or None.
            key_names: per slice dimension, display names of key values (e.g. day index → ISO date).
        """
        if baseline is not None and baseline not in self.models:
            raise ValueError(f"baseline {baseline!r} is not one of the models {list(self.models)}")
        y, w, preds, keys = self.columns()
        if y.numel() == 0:
            raise ValueError("no rows to evaluate")
        names = key_names or {}
        groups = {}
        for d in self.slice_dims:
            dim_names = names.get(d, {})
            groups[d] = [(dim_names.get(k, str(k)), idx)
                         for k, idx in slice_groups(keys[d], options.max_slices, options.min_slice_count)]
        metrics = {m: {"overall": F.summary(preds[m], y, w),
                       "slices": {d: {v: F.summary(preds[m][idx], y[idx], w[idx]) for v, idx in groups[d]}
                                  for d in self.slice_dims}}
                   for m in self.models}
        intervals: dict[str, Any] = {"overall": {}, "slices": {d: {} for d in self.slice_dims}}
        if options.bootstrap_samples > 0:
            intervals["overall"] = self._bootstrap(preds, y, w, options, baseline, options.seed)
            if options.slice_bootstrap:
                for d in self.slice_dims:
                    for i, (v, idx) in enumerate(groups[d]):
                        intervals["slices"][d][v] = self._bootstrap(
                            {m: p[idx] for m, p in preds.items()}, y[idx], w[idx], options, baseline,
                            options.seed + 1 + i)
        curves: dict[str, Any] = {}
        for m in self.models:
            curves[m] = {"calibration": calibration_curve(preds[m], y, w, options.calibration_bins,
                                                          "quantile").to_dict()}
            try:
                curves[m]["roc"] = roc_curve(preds[m], y, w, options.roc_points).to_dict()
            except ValueError as e:
                logger.warning("no ROC curve for model %r: %s", m, e)
        return {"rows": int(y.numel()), "models": list(self.models), "baseline": baseline, "metrics": metrics,
                "intervals": intervals, "curves": curves}

    @staticmethod
    def _bootstrap(preds: Mapping[str, torch.Tensor], y: torch.Tensor, w: torch.Tensor, options: ReportOptions,
                   baseline: str | None, seed: int) -> dict[str, Any]:
        res = bootstrap(preds, y, w, num_samples=options.bootstrap_samples, confidence=options.confidence,
                        seed=seed)
        return res.to_dict(baseline=baseline)


def flat_metrics(report: Mapping[str, Any], model: str, prefix: str = "eval/",
                 include_slices: bool = False) -> dict[str, float]:
    """Scalar metrics of one model of a :meth:`EvalAccumulator.report` as flat, tracker-ready keys.

    Keys: ``{prefix}{metric}``, ``{prefix}{metric}_ci_low/_ci_high`` (bootstrapped metrics),
    ``{prefix}delta/{metric}`` and ``..._ci_low/_ci_high`` (against the report's baseline), and with
    ``include_slices`` ``{prefix}slice/{dim}/{value}/{metric}``. nan values are left out (trackers reject them).
    """
    out: dict[str, float] = {}
    for k, v in report["metrics"][model]["overall"].items():
        out[f"{prefix}{k}"] = v
    overall = report["intervals"].get("overall") or {}
    for k, iv in (overall.get(model) or {}).items():
        out[f"{prefix}{k}_ci_low"], out[f"{prefix}{k}_ci_high"] = iv["low"], iv["high"]
    for k, iv in ((overall.get("delta") or {}).get(model) or {}).items():
        out[f"{prefix}delta/{k}"] = iv["estimate"]
        out[f"{prefix}delta/{k}_ci_low"], out[f"{prefix}delta/{k}_ci_high"] = iv["low"], iv["high"]
    if include_slices:
        for dim, values in report["metrics"][model]["slices"].items():
            for value, summ in values.items():
                for k, v in summ.items():
                    out[f"{prefix}slice/{dim}/{value}/{k}"] = v
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}
