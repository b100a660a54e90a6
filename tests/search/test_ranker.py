"""Learning-to-rank guidance: grades, encoding, and that the ranker orders unseen architectures well."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau
from sklearn.metrics import ndcg_score

from recpipe.models.spec import INPUTS, ArchSpec, dlrm_spec
from recpipe.search.encoding import encode, encode_many, encoding_size, feature_names
from recpipe.search.ranker import ArchRanker, RankerConfig, quality_grades
from recpipe.search.space import SearchSpace, SpaceConfig

SEED = 7
TRAIN_SIZE = 60  # a realistic history size when the ranker switches on
TEST_SIZE = 150
MIN_TAU = 0.4  # the hidden objective is smooth in the encoding; a useless ranker scores ~0
RANDOM_TRIALS = 20


def _space() -> SearchSpace:
    return SearchSpace(SpaceConfig(embedding_dim=8), num_dense=5, num_sparse=6)


def hidden_quality(space: SearchSpace, spec: ArchSpec) -> float:
    """A synthetic 'NE' (lower is better): FM/dot blocks help, huge graphs hurt, depth helps a little."""
    types = [b.type for b in spec.blocks]
    return (1.0 - 0.08 * min(types.count("fm") + types.count("dot"), 2) + 0.02 * np.log1p(space.complexity(spec))
            - 0.01 * len(spec.blocks))


def test_quality_grades_hand_case():
    # NE-like (lower better): 0.9 is worst, 0.7 next, the two 0.5 tie for best.
    assert quality_grades(np.array([0.9, 0.5, 0.7, 0.5]), 4, higher_is_better=False).tolist() == [0, 3, 1, 3]
    assert quality_grades(np.array([0.9, 0.5, 0.7, 0.5]), 4, higher_is_better=True).tolist() == [3, 0, 2, 0]
    with pytest.raises(ValueError, match="non-finite"):
        quality_grades(np.array([0.1, np.nan]), 4, higher_is_better=True)


def test_encoding_fixed_length_and_name_invariant():
    space = _space()
    a = dlrm_spec(embedding_dim=8, bottom=(16,), top=(16,))
    renamed = ArchSpec(embedding_dim=8, blocks=tuple(
        b.replace(name=f"x{b.name}", inputs=tuple(s if s in INPUTS else f"x{s}" for s in b.inputs)) for b in a.blocks))
    ea, er = encode(space, a), encode(space, renamed)
    assert ea.shape == (encoding_size(7),) == (len(feature_names(7)),)
    np.testing.assert_array_equal(ea, er)
    rng = np.random.default_rng(SEED)
    specs = [space.random_spec(rng) for _ in range(30)]
    x = encode_many(space, specs)
    distinct_graphs = len({s.canonical() for s in specs})
    assert len({row.tobytes() for row in x}) == distinct_graphs
    # the adjacency part reads the graph: dlrm's 'interact' (slot 1) reads block 0 and sparse
    names = feature_names(7)
    assert ea[names.index("s1_in_b0")] == 1 and ea[names.index("s1_in_sparse")] == 1
    assert ea[names.index("s1_in_dense")] == 0 and ea[names.index("s1_dot")] == 1


def test_ranker_orders_unseen_architectures_better_than_random():
    space = _space()
    rng = np.random.default_rng(SEED)
    train = [space.random_spec(rng) for _ in range(TRAIN_SIZE)]
    test = [space.random_spec(rng) for _ in range(TEST_SIZE)]
    noise = np.random.default_rng(SEED + 1).normal(0.0, 0.01, TRAIN_SIZE)  # measurement noise of trials
    q_train = np.array([hidden_quality(space, s) for s in train]) + noise
    q_test = np.array([hidden_quality(space, s) for s in test])
    ranker = ArchRanker(space, RankerConfig(n_estimators=60)).fit(train, q_train, higher_is_better=False)
    scores = ranker.score(test)
    tau_ranker = kendalltau(scores, -q_test).statistic
    relevance = quality_grades(q_test, 8, higher_is_better=False)[None, :]
    ndcg_ranker = ndcg_score(relevance, scores[None, :], k=10)
    perm = np.random.default_rng(SEED + 2)
    random_scores = [perm.permutation(TEST_SIZE).astype(float) for _ in range(RANDOM_TRIALS)]
    tau_random = np.mean([kendalltau(r, -q_test).statistic for r in random_scores])
    ndcg_random = np.mean([ndcg_score(relevance, r[None, :], k=10) for r in random_scores])
    assert tau_ranker > MIN_TAU > abs(tau_random) + 0.2, (tau_ranker, tau_random)
    assert ndcg_ranker > ndcg_random + 0.1, (ndcg_ranker, ndcg_random)
    assert ranker.top_features(3)  # it split on something


def test_ranker_requires_fit_and_matching_lengths():
    space = _space()
    spec = dlrm_spec(embedding_dim=8)
    with pytest.raises(RuntimeError, match="before fit"):
        ArchRanker(space).score([spec])
    with pytest.raises(ValueError, match="one quality each"):
        ArchRanker(space).fit([spec, spec], [0.5], higher_is_better=False)
