"""Gate decisions on hand-built reports: pass, fail (absolute / relative / slice), first run, override."""
from __future__ import annotations

import math

import pytest

from recpipe.metrics.gate import (AbsoluteThreshold, GateConfig, GateConfigError, Override, RelativeThreshold,
                                  decide)


def _summ(auc, ne, cal=1.0):
    return {"auc": auc, "ne": ne, "logloss": 0.5 * ne, "calibration": cal, "mean_pred": 0.1, "label_rate": 0.1,
            "count": 1000.0, "weight": 1000.0}


def _iv(est, lo, hi):
    return {"estimate": est, "low": lo, "high": hi, "std": (hi - lo) / 4, "confidence": 0.95}


def _report(ch_auc=0.75, ch_ne=0.80, champ_auc=0.75, champ_ne=0.80, d_auc=(-0.004, 0.004),
            d_ne=(-0.004, 0.004), days=None, cal=1.0):
    days = days or {"2026-01-01": (_summ(0.74, 0.81), _summ(0.74, 0.81)),
                    "2026-01-02": (_summ(0.76, 0.79), _summ(0.76, 0.79))}
    return {
        "models": ["challenger", "champion"], "baseline": "champion",
        "metrics": {
            "challenger": {"overall": _summ(ch_auc, ch_ne, cal),
                           "slices": {"day": {d: a for d, (a, _) in days.items()}}},
            "champion": {"overall": _summ(champ_auc, champ_ne),
                         "slices": {"day": {d: b for d, (_, b) in days.items()}}},
        },
        "intervals": {
            "overall": {"delta": {"challenger": {"auc": _iv(ch_auc - champ_auc, *d_auc),
                                                 "ne": _iv(ch_ne - champ_ne, *d_ne)}}},
            "slices": {"day": {}},
        },
    }


ONLY_OVERALL = GateConfig(relative=(RelativeThreshold("auc", 0.002), RelativeThreshold("ne", 0.002)))


def test_pass_when_all_thresholds_hold():
    b = decide(GateConfig(), _report(), "challenger", "champion")
    assert b["blessed"] and b["decision"] == "pass" and b["rule"] == "champion_comparison"
    assert b["reasons"] == [] and b["failed_checks"] == 0
    relative = [c for c in b["checks"] if c["kind"] == "relative"]
    # overall auc + ne, and ne on each of the 2 days
    assert len(relative) == 4 and all(c["passed"] for c in relative)


def test_fail_absolute_names_metric_and_bound():
    b = decide(GateConfig(), _report(ch_ne=1.02, champ_ne=1.02), "challenger", "champion")
    assert not b["blessed"] and b["decision"] == "fail"
    assert any("absolute ne [overall]" in r and "outside" in r for r in b["reasons"])


def test_relative_ci_basis_needs_a_significant_regression():
    # point estimate 0.004 worse in AUC, but the interval reaches +0.001: not significant -> pass on "ci"
    rep = _report(ch_auc=0.746, d_auc=(-0.009, 0.001))
    assert decide(ONLY_OVERALL, rep, "challenger", "champion")["blessed"]
    est = GateConfig(relative=(RelativeThreshold("auc", 0.002, basis="estimate"),))
    b = decide(est, rep, "challenger", "champion")
    assert not b["blessed"] and "exceeds tolerance 0.002" in b["reasons"][0]
    # whole interval below -0.002: significant regression -> fail on "ci" too
    rep = _report(ch_auc=0.74, d_auc=(-0.015, -0.005))
    b = decide(ONLY_OVERALL, rep, "challenger", "champion")
    assert not b["blessed"] and b["reasons"][0].startswith("relative auc [overall]")
    # NE is lower-is-better: a higher NE interval is the regression
    rep = _report(ch_ne=0.81, d_ne=(0.005, 0.015))
    assert not decide(ONLY_OVERALL, rep, "challenger", "champion")["blessed"]
    rep = _report(ch_ne=0.79, d_ne=(-0.015, -0.005))
    assert decide(ONLY_OVERALL, rep, "challenger", "champion")["blessed"]


def test_slice_regression_fails_and_nan_slice_is_skipped():
    days = {"2026-01-01": (_summ(0.74, 0.83), _summ(0.74, 0.81)),  # 0.02 worse NE on one day
            "2026-01-02": (_summ(0.76, math.nan), _summ(0.76, math.nan))}  # a day without clicks
    b = decide(GateConfig(), _report(days=days), "challenger", "champion")
    assert not b["blessed"]
    assert b["reasons"] == [r for r in b["reasons"] if "[day=2026-01-01]" in r] and len(b["reasons"]) == 1
    skipped = [c for c in b["checks"] if c["skipped"]]
    assert [c["slice"] for c in skipped] == ["day=2026-01-02"]
    # a single named slice
    one = GateConfig(absolute=(AbsoluteThreshold("ne", max=0.82, slice="day=2026-01-01"),), relative=())
    assert not decide(one, _report(days=days), "challenger", "champion")["blessed"]


def test_overall_nan_fails():
    b = decide(ONLY_OVERALL, _report(ch_auc=math.nan), "challenger", "champion")
    assert not b["blessed"] and any("undefined" in r for r in b["reasons"])


def test_calibration_relative_uses_distance_from_one():
    cfg = GateConfig(absolute=(), relative=(RelativeThreshold("calibration", 0.05),))
    assert decide(cfg, _report(cal=0.97), "challenger", "champion")["blessed"]  # |0.03| vs |0|: within 0.05
    b = decide(cfg, _report(cal=1.08), "challenger", "champion")
    assert not b["blessed"] and "|calibration-1|" in b["reasons"][0]


def test_first_run_decides_on_absolute_thresholds_only():
    bad_vs_champion = _report(ch_auc=0.70, d_auc=(-0.06, -0.04))  # would fail relative checks
    b = decide(GateConfig(), bad_vs_champion, "challenger", None)
    assert b["blessed"] and b["rule"] == "first_run"
    assert all(c["skipped"] for c in b["checks"] if c["kind"] == "relative")
    assert any("first run" in r for r in b["reasons"])
    assert not decide(GateConfig(), _report(ch_ne=1.1), "challenger", None)["blessed"]
    strict = GateConfig(allow_first_run=False)
    b = decide(strict, _report(), "challenger", None)
    assert not b["blessed"] and "needs a manual override" in b["reasons"][-1]


def test_override_is_recorded_and_wins():
    cfg = GateConfig(override=Override(who="alice", why="holiday traffic, approved in INC-42"))
    b = decide(cfg, _report(ch_ne=1.02, champ_ne=1.02), "challenger", "champion")
    assert b["blessed"] and b["decision"] == "pass" and b["automatic_decision"] == "fail"
    assert b["override"] == {"who": "alice", "why": "holiday traffic, approved in INC-42", "decision": "pass",
                             "automatic_decision": "fail"}
    assert any("manual override by alice" in r for r in b["reasons"])
    block = GateConfig(override=Override("bob", "freeze week", decision="fail"))
    assert not decide(block, _report(), "challenger", "champion")["blessed"]
    with pytest.raises(GateConfigError, match="who"):
        decide(GateConfig(override=Override(" ", "x")), _report(), "challenger", "champion")


def test_config_validation_and_json_round_trip():
    with pytest.raises(GateConfigError, match="gate.relative\\[0\\]"):
        GateConfig(relative=(RelativeThreshold("acc", 0.1),)).validate()
    with pytest.raises(GateConfigError, match="needs min or max"):
        GateConfig(absolute=(AbsoluteThreshold("auc"),)).validate()
    cfg = GateConfig(override=Override("a", "b"))
    assert GateConfig.from_json(cfg.to_json()) == cfg
