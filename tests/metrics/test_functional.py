"""Batch metric definitions against scikit-learn and hand-computed references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from recpipe.metrics import functional as F

FLOAT64_TOL = 1e-10  # float64 sums over <= 10^4 rows: rounding error is far below this


def _data(n: int = 2000, seed: int = 0, ties: bool = False, weighted: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + 1.2 * y - 1.0)))
    if ties:
        p = np.round(p, 1)  # ~10 distinct scores: heavy ties across classes
    w = rng.uniform(0.1, 3.0, size=n) if weighted else None
    return p, y, w


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_auc_matches_sklearn(ties, weighted):
    p, y, w = _data(ties=ties, weighted=weighted)
    got = F.auc(torch.tensor(p), torch.tensor(y), None if w is None else torch.tensor(w))
    assert got == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=FLOAT64_TOL)


def test_soft_labels_equal_split_rows():
    # a row with label y counts as a positive of weight y plus a negative of weight 1 - y
    rng = np.random.default_rng(3)
    p = np.round(rng.random(200), 1)
    y = rng.choice([0.0, 0.25, 1.0], size=200)
    w = rng.uniform(0.5, 2.0, size=200)
    split_p = np.concatenate([p, p])
    split_y = np.concatenate([np.ones(200), np.zeros(200)])
    split_w = np.concatenate([w * y, w * (1 - y)])
    expected = roc_auc_score(split_y, split_p, sample_weight=split_w)
    assert F.auc(torch.tensor(p), torch.tensor(y), torch.tensor(w)) == pytest.approx(expected, abs=FLOAT64_TOL)


def test_auc_hand_cases():
    # all four scores tied: every (pos, neg) pair counts one half
    assert F.auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), torch.tensor([1.0, 0.0, 1.0, 0.0])) == 0.5
    # perfect and inverted rankings
    assert F.auc(torch.tensor([0.1, 0.9]), torch.tensor([0.0, 1.0])) == 1.0
    assert F.auc(torch.tensor([0.9, 0.1]), torch.tensor([0.0, 1.0])) == 0.0
    # pairs: (pos .8 vs neg .2, .8) -> 1 + .5 ; (pos .2 vs neg .2, .8) -> .5 + 0 => 2 / 4
    assert F.auc(torch.tensor([0.8, 0.2, 0.2, 0.8]), torch.tensor([1.0, 1.0, 0.0, 0.0])) == 0.5
    assert math.isnan(F.auc(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 1.0])))
    assert math.isnan(F.auc(torch.zeros(0), torch.zeros(0)))


@pytest.mark.parametrize("weighted", [False, True])
def test_log_loss_matches_sklearn(weighted):
    p, y, w = _data(weighted=weighted)
    got = F.log_loss(torch.tensor(p), torch.tensor(y), None if w is None else torch.tensor(w))
    assert got == pytest.approx(sk_log_loss(y, p, sample_weight=w), abs=FLOAT64_TOL)


def test_ne_uses_empirical_base_rate_of_same_rows():
    p, y, w = _data(weighted=True)
    rate = np.sum(w * y) / np.sum(w)
    entropy = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    expected = sk_log_loss(y, p, sample_weight=w) / entropy
    got = F.normalized_entropy(torch.tensor(p), torch.tensor(y), torch.tensor(w))
    assert got == pytest.approx(expected, abs=FLOAT64_TOL)
    # predicting the empirical rate everywhere gives NE exactly 1
    const = torch.full((len(y),), float(rate), dtype=torch.float64)
    assert F.normalized_entropy(const, torch.tensor(y), torch.tensor(w)) == pytest.approx(1.0, abs=FLOAT64_TOL)
    assert math.isnan(F.normalized_entropy(torch.tensor([0.3, 0.4]), torch.tensor([0.0, 0.0])))


def test_calibration_and_summary_hand_computed():
    p = torch.tensor([0.2, 0.4, 0.6])
    y = torch.tensor([0.0, 1.0, 1.0])
    w = torch.tensor([1.0, 2.0, 1.0])
    # sum(w p) = .2 + .8 + .6 = 1.6 ; sum(w y) = 3
    assert F.calibration(p, y, w) == pytest.approx(1.6 / 3.0)
    s = F.summary(p, y, w)
    assert s["mean_pred"] == pytest.approx(1.6 / 4.0)
    assert s["label_rate"] == pytest.approx(3.0 / 4.0)
    assert s["count"] == 3.0 and s["weight"] == 4.0
    assert s["auc"] == pytest.approx(roc_auc_score(y.numpy(), p.numpy(), sample_weight=w.numpy()))
    assert math.isnan(F.calibration(p, torch.zeros(3)))


def test_extreme_predictions_are_clipped_not_infinite():
    ll = F.log_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert ll == pytest.approx(-math.log(F.PROB_EPS), rel=1e-6)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="labels has 2"):
        F.auc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="weights has 1"):
        F.log_loss(torch.tensor([0.1, 0.2]), torch.tensor([0.0, 1.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="element 1 is 2.5"):
        F.auc(torch.tensor([0.1, 2.5]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        F.auc(torch.tensor([0.1, 0.5]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, -1.0]))
