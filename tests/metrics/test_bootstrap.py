"""Bootstrap: per-resample values vs scikit-learn, determinism, pairing, and CI coverage."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from recpipe.metrics import bootstrap
from recpipe.metrics.functional import DTYPE

TOL = 1e-10  # float64 arithmetic on <= 1000 rows
CONFIDENCE = 0.95
# 100 simulated datasets, 95% intervals: the binomial std of the observed coverage is ~2.2 points, and the
# percentile bootstrap under-covers a little at small n, so [0.86, 0.995] accepts a correct method and
# rejects a broken one (e.g. intervals that ignore resampling noise, or use the wrong quantiles).
COVERAGE_LOW, COVERAGE_HIGH = 0.86, 0.995


def _sim(n, seed, mu=1.0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.3).double()
    score = torch.randn(n, generator=g, dtype=DTYPE) + mu * y
    return torch.sigmoid(score - 1.0), y


def test_resample_values_match_sklearn_on_explicit_resamples():
    p, y = _sim(300, seed=0)
    p = (torch.round(p * 20) / 20).clamp(0.05, 0.95)  # ties; away from 0/1 where clipping rules differ
    w = torch.linspace(0.5, 1.5, 300, dtype=DTYPE)
    res = bootstrap({"m": p}, y, w, num_samples=5, seed=7, chunk=5)
    draws = torch.randint(0, 300, (5, 300), generator=torch.Generator().manual_seed(7))
    for s in range(5):
        idx = draws[s].numpy()  # the resample as explicit rows; sklearn sees repeated rows, not weights
        yi, pi, ws = y.numpy()[idx], p.numpy()[idx], w.numpy()[idx]
        assert float(res.samples["m"]["auc"][s]) == pytest.approx(roc_auc_score(yi, pi, sample_weight=ws), abs=TOL)
        ll = sk_log_loss(yi, pi, sample_weight=ws)
        rate = float((ws * yi).sum() / ws.sum())
        assert float(res.samples["m"]["logloss"][s]) == pytest.approx(ll, abs=TOL)
        ne = ll / -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
        assert float(res.samples["m"]["ne"][s]) == pytest.approx(ne, abs=TOL)
    assert res.estimates["m"]["auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=TOL)


def test_chunking_and_seed_determinism():
    p, y = _sim(500, seed=1)
    a = bootstrap({"m": p}, y, num_samples=50, seed=3, chunk=50)
    b = bootstrap({"m": p}, y, num_samples=50, seed=3, chunk=50)
    c = bootstrap({"m": p}, y, num_samples=50, seed=4, chunk=50)
    assert torch.equal(a.samples["m"]["auc"], b.samples["m"]["auc"])
    assert not torch.equal(a.samples["m"]["auc"], c.samples["m"]["auc"])
    d = bootstrap({"m": p}, y, num_samples=50, seed=3, chunk=7)  # chunks draw the same stream in order
    torch.testing.assert_close(a.samples["m"]["auc"], d.samples["m"]["auc"], atol=TOL, rtol=0)


def test_paired_delta_is_exact_zero_for_same_model_and_tighter_than_unpaired():
    p, y = _sim(2000, seed=2)
    g = torch.Generator().manual_seed(9)
    better = torch.sigmoid(torch.logit(p) + 0.3 * (2 * y - 1) + 0.05 * torch.randn(len(p), generator=g, dtype=DTYPE))
    res = bootstrap({"champion": p, "challenger": better, "same": p.clone()}, y, num_samples=200, seed=0)
    same = res.delta("same", "champion", "auc")
    assert same.low == same.high == same.estimate == 0.0
    d = res.delta("challenger", "champion", "auc")
    assert d.estimate == pytest.approx(res.estimates["challenger"]["auc"] - res.estimates["champion"]["auc"])
    assert d.low > 0  # a real improvement is detected
    unpaired_std = math.hypot(res.interval("challenger", "auc").std, res.interval("champion", "auc").std)
    assert d.std < 0.5 * unpaired_std
    out = res.to_dict(baseline="champion")
    assert set(out["delta"]) == {"challenger", "same"}
    assert out["challenger"]["ne"]["low"] <= out["challenger"]["ne"]["high"]


def test_auc_interval_coverage_on_simulated_data():
    mu = 1.0
    true_auc = 0.5 * (1.0 + math.erf(mu / 2.0))  # binormal: Phi(mu / sqrt 2)
    hits = 0
    for seed in range(100):
        p, y = _sim(400, seed=1000 + seed, mu=mu)
        iv = bootstrap({"m": p}, y, num_samples=200, confidence=CONFIDENCE, seed=seed).interval("m", "auc")
        hits += iv.contains(true_auc)
    assert COVERAGE_LOW <= hits / 100 <= COVERAGE_HIGH


def test_ne_interval_coverage_on_simulated_data():
    # calibrated model: p = sigmoid(x), x ~ N(-1.5, 1), y ~ Bernoulli(p). Population NE = E[H(p)] / H(E[p]),
    # computed by Gauss-Hermite quadrature (independent of the code under test).
    nodes, wts = np.polynomial.hermite_e.hermegauss(80)
    wts = wts / wts.sum()
    pq = 1 / (1 + np.exp(-(nodes - 1.5)))
    h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))  # noqa: E731
    true_ne = float((wts * h(pq)).sum() / h((wts * pq).sum()))
    hits = 0
    for seed in range(100):
        g = torch.Generator().manual_seed(5000 + seed)
        p = torch.sigmoid(torch.randn(1000, generator=g, dtype=DTYPE) - 1.5)
        y = (torch.rand(1000, generator=g, dtype=DTYPE) < p).double()
        iv = bootstrap({"m": p}, y, num_samples=200, confidence=CONFIDENCE, seed=seed).interval("m", "ne")
        hits += iv.contains(true_ne)
    assert COVERAGE_LOW <= hits / 100 <= COVERAGE_HIGH


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one model"):
        bootstrap({}, torch.zeros(3))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap({"m": torch.full((3,), 0.5)}, torch.tensor([0.0, 1.0, 1.0]), confidence=1.5)
