"""Trials: low-fidelity training with early stop, failures, parallel == inline, and a real search on tiny data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recpipe.models.spec import dlrm_spec
from recpipe.search.data import planted_rows
from recpipe.search.evolution import EvolutionConfig, EvolutionarySearch, ranked
from recpipe.search.ranker import RankerConfig
from recpipe.search.space import SearchSpace, SpaceConfig
from recpipe.search.trials import TrialConfig, TrialRunner, evaluate_rows, fit
from recpipe.train.optim import OptimConfig

TINY = TrialConfig(max_train_rows=None, max_valid_rows=None, hash_cap=None, embedding_dim=4, batch_size=64,
                   max_steps=80, eval_every=20, patience=2, optim=OptimConfig(dense_lr=3e-3, sparse_lr=0.1))
MIN_AUC = 0.6  # the planted signal allows ~0.75; 80 small steps on 2400 rows reach ~0.64, chance is 0.5
AUC_TOL = 1e-6  # our AUC vs scikit-learn's on the same predictions (float64 both)


@pytest.fixture(scope="module")
def data():
    rows = planted_rows(3000, seed=11)
    return rows.split(0.2)


def test_fit_learns_and_reports_consistent_metrics(data):
    train, valid = data
    spec = dlrm_spec(embedding_dim=8, bottom=(8,), top=(8,))
    out = fit(spec, train, valid, TINY, test=valid)
    assert not out.error
    m = out.metrics
    assert m["eval/auc"] > MIN_AUC and m["eval/ne"] < 1.0
    assert m["test/ne"] == pytest.approx(m["eval/ne"])  # best weights restored before scoring `test`
    assert 0 < m["train/best_step"] <= m["train/steps"] <= TINY.max_steps
    per_epoch = -(-train.num_rows // TINY.batch_size)  # batches per epoch, the last one partial
    assert m["train/steps"] == TINY.max_steps > 2 * per_epoch  # 80 steps = 2 full epochs + 4 batches
    assert out.train_examples == 2 * train.num_rows + (TINY.max_steps - 2 * per_epoch) * TINY.batch_size
    torch.manual_seed(0)
    from recpipe.models.graph import GraphModel
    model = GraphModel(spec.replace(embedding_dim=4), train.num_dense, train.table_sizes)
    with torch.no_grad():
        p = torch.sigmoid(model(valid.batch(0, valid.num_rows)))
    assert evaluate_rows(model, valid)["auc"] == pytest.approx(roc_auc_score(valid.labels, p), abs=AUC_TOL)


def test_early_stop_halts_an_overfitting_run():
    small = planted_rows(1500, seed=3)
    train, valid = small.split(0.3)
    cfg = TINY.replace(max_steps=2000, eval_every=10, patience=2, optim=OptimConfig(dense_lr=0.01, sparse_lr=0.3))
    out = fit(dlrm_spec(embedding_dim=4, bottom=(32,), top=(32,)), train, valid, cfg)
    assert not out.error
    m = out.metrics
    assert m["train/steps"] < cfg.max_steps  # 1050 rows, 50-id tables: validation NE turns up within ~5 epochs
    assert m["train/best_step"] > cfg.eval_every  # it did improve after the first pass
    assert m["train/steps"] - m["train/best_step"] == (cfg.patience + 1) * cfg.eval_every


def test_non_finite_data_is_a_failed_trial_not_a_crash(data):
    train, valid = data
    bad = train.take(torch.arange(train.num_rows))
    bad.dense[0, 0] = float("nan")
    out = fit(dlrm_spec(embedding_dim=4), bad, valid, TINY.replace(batch_size=train.num_rows))
    assert out.error.startswith("diverged") and not out.metrics


def test_low_fidelity_prepare_subsamples_and_caps():
    rows = planted_rows(500, table_sizes=(40, 9), seed=0)
    cfg = TrialConfig(max_train_rows=100, hash_cap=16)
    low = cfg.prepare(rows, valid=False)
    assert low.num_rows == 100 and low.table_sizes == [16, 9]
    assert int(low.values[0].max()) < 16


@pytest.mark.slow
def test_parallel_workers_give_the_same_results_as_inline(data):
    train, valid = data
    space = SearchSpace(SpaceConfig(embedding_dim=4, mlp_widths=(8, 16)), train.num_dense, train.num_sparse)
    rng = np.random.default_rng(0)
    specs = [space.random_spec(rng) for _ in range(4)]
    cfg = TINY.replace(max_steps=20, eval_every=10)
    with TrialRunner(train, valid, cfg, workers=1) as inline:
        a = inline(specs)
    with TrialRunner(train, valid, cfg, workers=2) as pool:
        b = pool(specs)
    assert [o.metrics for o in a] == [o.metrics for o in b]


def test_search_on_tiny_data_beats_random_architectures(data, tmp_path):
    """A short real search (low-fidelity trials) ends better than the typical random architecture."""
    train, valid = data
    space = SearchSpace(SpaceConfig(embedding_dim=4, mlp_widths=(8, 16, 32), max_blocks=5, init_max_blocks=3),
                        train.num_dense, train.num_sparse)
    cfg = TINY.replace(max_steps=60)
    evo = EvolutionConfig(budget=20, initial_population=8, population_size=8, batch_size=4, max_age=16,
                          ranker_min_history=12, ranker_candidates=16, ranker=RankerConfig(n_estimators=30))
    with TrialRunner(train, valid, cfg, workers=1) as runner:
        hist = EvolutionarySearch(space, evo, runner, history_path=tmp_path / "h.jsonl").run()
        rng = np.random.default_rng(99)
        random_ne = [o.metrics["eval/ne"] for o in runner([space.random_spec(rng) for _ in range(8)])]
    best = ranked(hist, higher_is_better=False)[0]
    assert best.quality < float(np.median(random_ne)), (best.quality, sorted(random_ne))
    assert best.quality <= min(r.quality for r in hist[:8])  # never worse than its own random start
