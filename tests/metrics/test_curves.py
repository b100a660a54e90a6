"""ROC points and calibration bins against scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve as sk_calibration_curve
from sklearn.metrics import auc as sk_trapezoid_area
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from recpipe.metrics import calibration_curve, roc_curve

TOL = 1e-10  # float64 cumulative sums over 1000 rows


def _data(n=1000, seed=1):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.float64)
    p = np.round(1 / (1 + np.exp(-(rng.normal(size=n) + y))), 2)  # ties
    w = rng.uniform(0.5, 2.0, size=n)
    return p, y, w


def test_roc_matches_sklearn_points():
    p, y, w = _data()
    got = roc_curve(torch.tensor(p), torch.tensor(y), torch.tensor(w), max_points=None)
    fpr, tpr, thr = sk_roc_curve(y, p, sample_weight=w, drop_intermediate=False)
    np.testing.assert_allclose(got.fpr, fpr, atol=TOL)
    np.testing.assert_allclose(got.tpr, tpr, atol=TOL)
    np.testing.assert_allclose(got.thresholds[1:], thr[1:], atol=TOL)
    assert got.thresholds[0] == pytest.approx(p.max() + 1.0)
    assert sk_trapezoid_area(got.fpr, got.tpr) == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=TOL)


def test_roc_downsampling_keeps_ends_and_monotone():
    p, y, w = _data(n=5000, seed=2)
    p = p + np.random.default_rng(0).uniform(0, 1e-3, size=len(p))  # many distinct thresholds
    got = roc_curve(torch.tensor(np.clip(p, 0, 1)), torch.tensor(y), max_points=50)
    assert len(got.fpr) <= 50
    assert (got.fpr[0], got.tpr[0]) == (0.0, 0.0) and (got.fpr[-1], got.tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(got.fpr) >= 0) and np.all(np.diff(got.tpr) >= 0)
    with pytest.raises(ValueError, match="both classes"):
        roc_curve(torch.tensor([0.2, 0.3]), torch.tensor([1.0, 1.0]))


def test_calibration_curve_uniform_matches_sklearn():
    p, y, _ = _data()
    p = np.clip(p + np.random.default_rng(5).uniform(-4e-3, 4e-3, size=len(p)), 0, 1)  # off bin edges: the
    # two conventions differ only for a prediction exactly on an edge (sklearn puts it in the lower bin)
    got = calibration_curve(torch.tensor(p), torch.tensor(y), num_bins=10)
    prob_true, prob_pred = sk_calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(got.label_rate, prob_true, atol=TOL)
    np.testing.assert_allclose(got.mean_pred, prob_pred, atol=TOL)
    assert sum(got.count) == len(p)


def test_calibration_curve_quantile_bins_are_balanced():
    rng = np.random.default_rng(3)
    p = rng.beta(1, 30, size=4000)  # CTR-like: crowded near 0
    y = (rng.random(4000) < p).astype(float)
    got = calibration_curve(torch.tensor(p), torch.tensor(y), num_bins=8, strategy="quantile")
    assert len(got.count) == 8 and all(c == 500 for c in got.count)
    uniform = calibration_curve(torch.tensor(p), torch.tensor(y), num_bins=8)
    assert uniform.count[0] > 3000  # why quantile bins exist


QUANTILE_TOL = 1e-12  # float64 linear interpolation; numpy's lerp formula differs only in the last bits


def test_quantiles_match_numpy():
    from recpipe.metrics.curves import quantiles

    rng = np.random.default_rng(7)
    for n in (1, 2, 5, 1001):
        v = rng.beta(1, 30, size=n)
        q = np.linspace(0, 1, 11)
        got = quantiles(torch.tensor(v), torch.tensor(q)).numpy()
        np.testing.assert_allclose(got, np.quantile(v, q), rtol=0, atol=QUANTILE_TOL)
    with pytest.raises(ValueError, match="empty"):
        quantiles(torch.zeros(0), torch.tensor([0.5]))


@pytest.mark.slow  # ~4 s on a 2-core box: 2**24 + 1 float64 rows through the calibration path
def test_quantile_calibration_above_torch_quantile_limit():
    """torch.quantile raises "input tensor is too large" above 2**24 rows; the quantile bins must not.
    Already-sorted input keeps the sort cheap; the quantiles of 0..n-1 are exactly q * (n - 1)."""
    from recpipe.metrics.curves import quantiles

    n = 2 ** 24 + 1
    v = torch.arange(n, dtype=torch.float64)
    q = torch.linspace(0, 1, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="too large"):
        torch.quantile(v, q)  # the limitation this guards against (fails if torch lifts it: then drop this)
    assert quantiles(v, q).tolist() == (q * (n - 1)).tolist()
    p = v / (n - 1)  # predictions uniform on [0, 1]
    got = calibration_curve(p, (v % 2 == 0).double(), num_bins=4, strategy="quantile")
    assert sum(got.count) == n and len(got.count) == 4
    assert got.bin_low == [0.0, 0.25, 0.5, 0.75]
