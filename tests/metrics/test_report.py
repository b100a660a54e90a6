"""EvalAccumulator: per-model and per-slice summaries vs direct computation; paired deltas; flat keys."""
from __future__ import annotations

import math

import pytest
import torch

from recpipe.metrics import EvalAccumulator, ReportOptions, flat_metrics, summary

TOL = 1e-12  # float64, same rows in a different order


def _data(n=1200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.3).double()
    good = torch.sigmoid(2 * y - 1 + torch.randn(n, generator=g, dtype=torch.float64))
    bad = torch.sigmoid(torch.randn(n, generator=g, dtype=torch.float64) - 0.8)
    day = torch.randint(0, 3, (n,), generator=g)
    feat = torch.randint(0, 10, (n,), generator=g)
    return y, good, bad, day, feat


def test_report_matches_direct_summaries():
    y, good, bad, day, feat = _data()
    acc = EvalAccumulator(["challenger", "champion"], ["day", "c0"])
    for idx in torch.split(torch.arange(len(y)), 250):
        acc.update(y[idx], {"challenger": good[idx], "champion": bad[idx]}, {"day": day[idx], "c0": feat[idx]})
    opts = ReportOptions(max_slices=4, min_slice_count=50, bootstrap_samples=50, seed=1)
    rep = acc.report(opts, baseline="champion", key_names={"day": {0: "2026-01-01", 1: "2026-01-02"}})
    assert rep["rows"] == len(y)
    for name, p in (("challenger", good), ("champion", bad)):
        for k, v in summary(p, y).items():
            assert rep["metrics"][name]["overall"][k] == pytest.approx(v, abs=TOL)
        for d in range(3):
            label = {0: "2026-01-01", 1: "2026-01-02"}.get(d, str(d))
            m = day == d
            assert rep["metrics"][name]["slices"]["day"][label]["auc"] == pytest.approx(
                summary(p[m], y[m])["auc"], abs=TOL)
    assert len(rep["metrics"]["challenger"]["slices"]["c0"]) == 4  # max_slices
    delta = rep["intervals"]["overall"]["delta"]["challenger"]["auc"]
    assert delta["estimate"] == pytest.approx(rep["metrics"]["challenger"]["overall"]["auc"]
                                              - rep["metrics"]["champion"]["overall"]["auc"], abs=TOL)
    assert delta["low"] > 0  # a clearly better model
    assert set(rep["intervals"]["slices"]["day"]) == {"2026-01-01", "2026-01-02", "2"}
    roc = rep["curves"]["challenger"]["roc"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"]) <= opts.roc_points
    flat = flat_metrics(rep, "challenger", include_slices=True)
    assert flat["eval/auc"] == rep["metrics"]["challenger"]["overall"]["auc"]
    assert "eval/delta/ne_ci_high" in flat and "eval/slice/day/2026-01-01/ne" in flat
    assert all(not math.isnan(v) for v in flat.values())


def test_update_errors_name_the_missing_piece():
    acc = EvalAccumulator(["a", "b"], ["day"])
    y = torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="models \\['b'\\]"):
        acc.update(y, {"a": y}, {"day": torch.zeros(2)})
    with pytest.raises(ValueError, match="dimensions \\['day'\\]"):
        acc.update(y, {"a": y, "b": y})
    with pytest.raises(ValueError, match="no rows"):
        acc.report()
    with pytest.raises(ValueError, match="baseline 'c'"):
        acc.report(baseline="c")


def test_weighted_slices_match_naive_loop_and_merge_equals_one_stream():
    """Per-slice summaries of weighted rows vs a naive mask loop: top ``max_slices`` by count (ties: smaller
    key), non-contiguous key values, display names, ``min_slice_count``; two merged shards == one stream."""
    g = torch.Generator().manual_seed(4)
    n = 2000
    y = (torch.rand(n, generator=g) < 0.25).double()
    p = torch.round(torch.sigmoid(torch.randn(n, generator=g, dtype=torch.float64) + y - 1.0) * 50) / 50  # ties
    w = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    keys = torch.randint(0, 7, (n,), generator=g)
    keys[keys == 6] = 100  # a non-contiguous key value
    opts = ReportOptions(max_slices=4, min_slice_count=1, bootstrap_samples=0)
    names = {"c1": {100: "hundred"}}
    one = EvalAccumulator(["m"], ["c1"])
    for chunk in torch.split(torch.arange(n), 300):
        one.update(y[chunk], {"m": p[chunk]}, {"c1": keys[chunk]}, weights=w[chunk])
    got = one.report(opts, key_names=names)["metrics"]["m"]["slices"]["c1"]
    counts = {int(k): int((keys == k).sum()) for k in keys.unique()}
    top = sorted(counts, key=lambda k: (-counts[k], k))[:4]
    label = {k: ("hundred" if k == 100 else str(k)) for k in top}
    assert list(got) == [label[k] for k in top]
    for k in top:
        mask = keys == k
        for metric, v in summary(p[mask], y[mask], w[mask]).items():
            assert got[label[k]][metric] == pytest.approx(v, abs=TOL)
    none = one.report(ReportOptions(min_slice_count=10 ** 6, bootstrap_samples=0))
    assert none["metrics"]["m"]["slices"]["c1"] == {}
    a, b = EvalAccumulator(["m"], ["c1"]), EvalAccumulator(["m"], ["c1"])
    a.update(y[:500], {"m": p[:500]}, {"c1": keys[:500]}, weights=w[:500])
    b.update(y[500:], {"m": p[500:]}, {"c1": keys[500:]}, weights=w[500:])
    merged = a.merge(b).report(opts, key_names=names)["metrics"]["m"]["slices"]["c1"]
    assert list(merged) == list(got)
    for name in got:
        assert merged[name] == pytest.approx(got[name], abs=TOL)
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(EvalAccumulator(["m", "x"], ["c1"]))
