"""The promotion gate: absolute and relative-to-champion thresholds per metric and slice, the first-run rule
and an audited manual override, producing a "blessing" (decision + reasons + every check).

Semantics:

* **Absolute** (:class:`AbsoluteThreshold`): the served model's metric must lie in ``[min, max]``.
* **Relative** (:class:`RelativeThreshold`): the served model may be worse than the champion by at most
  ``max_regression`` in the metric's own units. "Worse" follows the metric's direction: lower AUC; higher NE /
  log loss; calibration further from 1 (``|c - 1|`` grows). With ``basis="ci"`` a regression counts only when
  the WHOLE paired bootstrap interval of the delta is beyond the tolerance (a statistically significant
  regression); with ``basis="estimate"`` the point delta decides. Calibration has no interval, so it always
  uses the estimate.
* **Slices**: ``slice=""`` is the overall metric; ``slice="day"`` applies to every reported slice of that
  dimension; ``slice="day=2026-01-02"`` to one slice. A slice whose metric is undefined (nan: e.g. a slice
  without clicks) or that was not reported is recorded as *skipped*; the overall metric being undefined FAILS.
* **First run** (no champion): relative checks are skipped with that reason; the decision is the absolute
  checks' (``allow_first_run=True``), or fail (``allow_first_run=False``: the first model needs an override).
* **Override** (:class:`Override`): a person (``who``) with a reason (``why``) forces ``decision``; the
  automatic decision, the reasons it had and the override are all kept in the blessing for audit.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any, Mapping

from recpipe.config import JsonConfig

HIGHER_IS_BETTER = {"auc": True, "ne": False, "logloss": False}
RELATIVE_METRICS = ("auc", "ne", "logloss", "calibration")
ABSOLUTE_METRICS = ("auc", "ne", "logloss", "calibration", "mean_pred", "label_rate", "count")
BASES = ("ci", "estimate")


class GateConfigError(ValueError):
    """A threshold names an unknown metric, basis or an invalid override; the message names it."""


@dataclass(frozen=True)
class AbsoluteThreshold(JsonConfig):
    """``min <= metric <= max`` for the served model (either bound may be None)."""

    metric: str
    min: float | None = None
    max: float | None = None
    slice: str = ""


@dataclass(frozen=True)
class RelativeThreshold(JsonConfig):
    """The served model may regress against the champion by at most ``max_regression`` (metric units)."""

    metric: str
    max_regression: float = 0.0
    slice: str = ""
    basis: str = "ci"


@dataclass(frozen=True)
class Override(JsonConfig):
    """A manual, audited decision: ``who`` and ``why`` are required and end up in the blessing and tags."""

    who: str
    why: str
    decision: str = "pass"


@dataclass(frozen=True)
class GateConfig(JsonConfig):
    """Thresholds of the gate. Defaults: the model must beat the base rate (NE < 1), rank better than chance
    by a margin (AUC >= 0.55), be calibrated within 20 %, and not significantly regress against the champion
    by more than 0.002 AUC / NE overall or 0.01 NE on any reported day."""

    absolute: tuple[AbsoluteThreshold, ...] = (
        AbsoluteThreshold("ne", max=1.0),
        AbsoluteThreshold("auc", min=0.55),
        AbsoluteThreshold("calibration", min=0.8, max=1.2),
    )
    relative: tuple[RelativeThreshold, ...] = (
        RelativeThreshold("auc", 0.002),
        RelativeThreshold("ne", 0.002),
        RelativeThreshold("ne", 0.01, slice="day"),
    )
    allow_first_run: bool = True
    override: Override | None = None

    def validate(self) -> None:
        """Raises :class:`GateConfigError` naming the first bad threshold or override."""
        for i, t in enumerate(self.absolute):
            if t.metric not in ABSOLUTE_METRICS:
                raise GateConfigError(f"gate.absolute[{i}]: metric {t.metric!r} not in {ABSOLUTE_METRICS}")
            if t.min is None and t.max is None:
                raise GateConfigError(f"gate.absolute[{i}] ({t.metric}): needs min or max")
        for i, r in enumerate(self.relative):
            if r.metric not in RELATIVE_METRICS:
                raise GateConfigError(f"gate.relative[{i}]: metric {r.metric!r} not in {RELATIVE_METRICS}")
            if r.basis not in BASES:
                raise GateConfigError(f"gate.relative[{i}] ({r.metric}): basis {r.basis!r} not in {BASES}")
            if r.max_regression < 0:
                raise GateConfigError(f"gate.relative[{i}] ({r.metric}): max_regression must be >= 0")
        if self.override is not None:
            o = self.override
            if not o.who.strip() or not o.why.strip():
                raise GateConfigError("gate.override: both 'who' and 'why' must be non-empty (audit trail)")
            if o.decision not in ("pass", "fail"):
                raise GateConfigError(f"gate.override: decision {o.decision!r} must be 'pass' or 'fail'")


def _targets(report: Mapping[str, Any], model: str, slice_spec: str) -> list[tuple[str, Mapping[str, float] | None,
                                                                                   Mapping[str, Any] | None]]:
    """(slice label, metric summary or None, interval dict or None) for each slice a threshold covers."""
    metrics = report["metrics"][model]
    intervals = report.get("intervals") or {}
    if not slice_spec:
        return [("overall", metrics["overall"], intervals.get("overall"))]
    dim, _, value = slice_spec.partition("=")
    dim_metrics = metrics["slices"].get(dim, {})
    dim_iv = (intervals.get("slices") or {}).get(dim, {})
    if value:
        return [(slice_spec, dim_metrics.get(value), dim_iv.get(value))]
    return [(f"{dim}={v}", s, dim_iv.get(v)) for v, s in dim_metrics.items()] or [(f"{dim}=*", None, None)]


def _check(kind: str, metric: str, where: str, value: float | None, threshold: Any, passed: bool | None,
           reason: str) -> dict[str, Any]:
    return {"kind": kind, "metric": metric, "slice": where, "value": value, "threshold": threshold,
            "passed": passed, "skipped": passed is None, "reason": reason}


def _absolute_checks(cfg: GateConfig, report: Mapping[str, Any], model: str) -> list[dict[str, Any]]:
    out = []
    for t in cfg.absolute:
        bound = {"min": t.min, "max": t.max}
        for where, summ, _ in _targets(report, model, t.slice):
            v = None if summ is None else summ.get(t.metric)
            if v is None or math.isnan(v):
                undefined = "not reported" if summ is None else "undefined (nan)"
                if where == "overall":
                    out.append(_check("absolute", t.metric, where, v, bound, False, f"{t.metric} is {undefined}"))
                else:
                    out.append(_check("absolute", t.metric, where, v, bound, None,
                                      f"skipped: {t.metric} {undefined} on this slice"))
                continue
            ok = (t.min is None or v >= t.min) and (t.max is None or v <= t.max)
            rng = f"[{'-inf' if t.min is None else t.min}, {'inf' if t.max is None else t.max}]"
            out.append(_check("absolute", t.metric, where, v, bound, ok,
                              f"{t.metric}={v:.6g} {'within' if ok else 'outside'} {rng}"))
    return out


def _relative_checks(cfg: GateConfig, report: Mapping[str, Any], model: str, champion: str
                     ) -> list[dict[str, Any]]:
    out = []
    for r in cfg.relative:
        champ_by_slice = {w: s for w, s, _ in _targets(report, champion, r.slice)}
        for where, summ, iv in _targets(report, model, r.slice):
            champ = champ_by_slice.get(where)
            thr = {"max_regression": r.max_regression, "basis": r.basis}
            if summ is None or champ is None:
                out.append(_check("relative", r.metric, where, None, thr, False if where == "overall" else None,
                                  "metric not reported for both models"))
                continue
            a, b = summ.get(r.metric, math.nan), champ.get(r.metric, math.nan)
            if math.isnan(a) or math.isnan(b):
                out.append(_check("relative", r.metric, where, None, thr, False if where == "overall" else None,
                                  f"{r.metric} undefined (nan) for the model or the champion"))
                continue
            if r.metric == "calibration":
                regression, basis = abs(a - 1.0) - abs(b - 1.0), "estimate"
                detail = f"|calibration-1| {abs(a - 1.0):.6g} vs champion {abs(b - 1.0):.6g}"
            else:
                sign = -1.0 if HIGHER_IS_BETTER[r.metric] else 1.0
                delta = ((iv or {}).get("delta") or {}).get(model, {}).get(r.metric)
                if r.basis == "ci" and delta is not None and not math.isnan(delta["low"]):
                    # the bound of the delta's interval closest to "no regression"
                    lo_reg, hi_reg = sorted((sign * delta["low"], sign * delta["high"]))
                    regression, basis = lo_reg, "ci"
                    detail = (f"delta {a - b:+.6g} (CI [{delta['low']:+.6g}, {delta['high']:+.6g}]); "
                              f"regression at least {lo_reg:.6g}, at most {hi_reg:.6g}")
                else:
                    regression, basis = sign * (a - b), "estimate"
                    detail = f"delta {a - b:+.6g} ({r.metric} {a:.6g} vs champion {b:.6g})"
            ok = regression <= r.max_regression
            thr["basis_used"] = basis
            out.append(_check("relative", r.metric, where, a - b, thr, ok,
                              f"{detail}; {'within' if ok else 'exceeds'} tolerance {r.max_regression:g}"))
    return out


def decide(cfg: GateConfig, report: Mapping[str, Any], model: str, champion: str | None,
           now: _dt.datetime | None = None) -> dict[str, Any]:
    """Runs the gate on an evaluation report (:meth:`recpipe.metrics.report.EvalAccumulator.report`).

    Args:
        cfg: thresholds, first-run rule, override.
        report: the evaluation report; must contain ``model`` (and ``champion`` when given).
        model: the served (candidate) model's name in the report.
        champion: the champion's name in the report, or None on the first run.
        now: decision time (UTC now by default) recorded in the blessing.

    Returns:
        The blessing: ``blessed`` (bool), ``decision`` / ``automatic_decision`` ("pass" | "fail"), ``rule``
        ("first_run" | "champion_comparison"), ``reasons`` (one line per failed check, or the first-run /
        override notes), ``checks`` (every check, passed, failed or skipped), ``override`` and ``decided_at``.
    """
    cfg.validate()
    checks = _absolute_checks(cfg, report, model)
    notes: list[str] = []
    if champion is None:
        rule = "first_run"
        for r in cfg.relative:
            checks.append(_check("relative", r.metric, r.slice or "overall", None,
                                 {"max_regression": r.max_regression, "basis": r.basis}, None,
                                 "skipped: first run, no champion to compare with"))
        if cfg.allow_first_run:
            notes.append("first run: no champion, decided on absolute thresholds only")
        else:
            notes.append("first run: no champion and allow_first_run is false (needs a manual override)")
    else:
        rule = "champion_comparison"
        checks += _relative_checks(cfg, report, model, champion)
    failures = [f"{c['kind']} {c['metric']} [{c['slice']}]: {c['reason']}" for c in checks if c["passed"] is False]
    automatic = "pass" if not failures and (champion is not None or cfg.allow_first_run) else "fail"
    decision = automatic
    override = None
    if cfg.override is not None:
        decision = cfg.override.decision
        override = {"who": cfg.override.who, "why": cfg.override.why, "decision": cfg.override.decision,
                    "automatic_decision": automatic}
        notes.append(f"manual override by {cfg.override.who}: {cfg.override.decision} ({cfg.override.why}); "
                     f"automatic decision was {automatic}")
    return {
        "blessed": decision == "pass",
        "decision": decision,
        "automatic_decision": automatic,
        "rule": rule,
        "reasons": failures + notes,
        "failed_checks": len(failures),
        "checks": checks,
        "override": override,
        "decided_at": (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(),
    }
