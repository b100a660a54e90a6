"""Mixed precision: the size rule and the measured greedy search against hand-worked cases."""
from __future__ import annotations

import pytest

from recpipe.quant.mixed import MixedPrecisionConfig, measured_bits, rule_bits


def test_rule_bits() -> None:
    rule = ((0, 8), (1000, 4), (10**6, 2))
    assert rule_bits([1, 999, 1000, 50_000, 10**6, 10**7], rule) == [8, 8, 4, 4, 2, 2]
    assert rule_bits([5], ((0, 4),)) == [4]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="min_rows 0"):
        MixedPrecisionConfig(rule=((10, 4),))
    with pytest.raises(ValueError, match="mode"):
        MixedPrecisionConfig(mode="auto")
    with pytest.raises(ValueError, match="candidates"):
        MixedPrecisionConfig(candidates=(3,))
    cfg = MixedPrecisionConfig(mode="rule", rule=((0, 8), (100, 2)))
    assert MixedPrecisionConfig.from_json(cfg.to_json()) == cfg


def _additive_ne(costs: dict[tuple[int, int], float], base: float = 1.0):
    """NE = base + sum of a per-(table, bits) cost: a hand-checkable stand-in for a model evaluation."""
    calls = []

    def evaluate(assignment):
        calls.append(tuple(assignment))
        return base + sum(costs[(f, b)] for f, b in enumerate(assignment) if b is not None)

    return evaluate, calls


def test_measured_cheapest_within_cumulative_budget() -> None:
    # table 0 is the biggest and is visited first; tolerance 0.01 relative to NE 1.0
    costs = {(0, 2): 0.02, (0, 4): 0.004, (0, 8): 0.0,
             (1, 2): 0.005, (1, 4): 0.001, (1, 8): 0.0,
             (2, 2): 0.0, (2, 4): 0.0, (2, 8): 0.0}
    evaluate, calls = _additive_ne(costs)
    out = measured_bits([1000, 500, 10], evaluate, (8, 4, 2), 0.01)
    # table 0: 2 bits costs 0.02 > 0.01, 4 bits 0.004 ok; table 1: 2 bits -> 0.009 ok; table 2: 2 bits free
    assert out.bits == [4, 2, 2]
    assert out.float_ne == 1.0 and out.final_ne == pytest.approx(1.009)
    assert out.over_budget == []
    assert [t["bits"] for t in out.trials if t["table"] == 0] == [2, 4]
    assert len(set(calls)) == len(calls)  # each assignment evaluated once (cached)


def test_measured_budget_already_spent_and_over_budget() -> None:
    costs = {(0, 2): 0.009, (0, 4): 0.009, (0, 8): 0.009, (1, 2): 0.005, (1, 4): 0.002, (1, 8): 0.0005}
    evaluate, _ = _additive_ne(costs)
    out = measured_bits([10, 20], evaluate, (2, 4, 8), 0.01)
    # table 1 first (bigger): 2 bits ok (0.005); table 0 then: +0.009 exceeds at every width -> widest, flagged
    assert out.bits == [8, 2] and out.over_budget == [0]


def test_measured_rejects_degenerate_float_ne() -> None:
    with pytest.raises(ValueError, match="float NE"):
        measured_bits([1], lambda a: float("nan"), (4,), 0.01)
