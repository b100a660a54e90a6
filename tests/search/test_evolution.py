"""Evolution: survival rule, de-duplication, ranker switch-on, resumability, nested trial runs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from recpipe.models.spec import ArchSpec, dlrm_spec
from recpipe.search.evolution import EvolutionConfig
from recpipe.search.evolution import EvolutionarySearch, ranked, survive
from recpipe.search.history import HistoryError, TrialOutcome, TrialRecord, load_history
from recpipe.search.ranker import RankerConfig
from recpipe.search.space import SearchSpace, SpaceConfig
from recpipe.tracking.base import MemoryTracker

FAST_RANKER = RankerConfig(n_estimators=30)  # enough to rank a synthetic objective; keeps each fit ~0.05 s
SEEDS = (0, 1, 2, 3)


def _space() -> SearchSpace:
    return SearchSpace(SpaceConfig(embedding_dim=8), num_dense=5, num_sparse=6)


def objective(space: SearchSpace, spec: ArchSpec) -> float:
    """A synthetic NE with a known good region: FM + dot interactions and a mid-sized MLP, little else."""
    types = [b.type for b in spec.blocks]
    mlp_w = max([b.units[-1] for b in spec.blocks if b.type == "mlp"] or [0])
    return (1.0 - 0.05 * ("fm" in types) - 0.05 * ("dot" in types) - 0.04 * (mlp_w == 64)
            + 0.03 * types.count("crossnet") + 0.01 * len(spec.blocks))


def _evaluator(space: SearchSpace, calls: list[int] | None = None):
    def evaluate(specs):
        if calls is not None:
            calls.append(len(specs))
        return [TrialOutcome(metrics={"eval/ne": objective(space, s), "eval/auc": 0.7}, wall_s=0.01,
                             train_examples=100) for s in specs]
    return evaluate


def _cfg(**kw) -> EvolutionConfig:
    base = dict(budget=32, initial_population=8, population_size=8, batch_size=4, tournament_size=3, max_age=16,
                ranker_min_history=12, ranker_candidates=16, ranker=FAST_RANKER)
    base.update(kw)
    return EvolutionConfig(**base)


def _rec(trial: int, quality: float, complexity: int = 100) -> TrialRecord:
    spec = dlrm_spec(embedding_dim=8)
    return TrialRecord(trial=trial, generation=trial, fingerprint=f"f{trial}", spec=spec.to_dict(), quality=quality,
                       complexity=complexity, origin="random")


def test_survival_ageing_quality_and_complexity():
    cfg = _cfg(population_size=2, max_age=10, age_weight=0.0, complexity_weight=0.1)
    # trial 0 is the best but too old at now=12; of the rest the worst quality (trial 5) dies.
    pop = [_rec(0, 0.1), _rec(3, 0.5), _rec(5, 0.9), _rec(7, 0.4)]
    assert [r.trial for r in survive(pop, 12, cfg)] == [3, 7]
    # equal quality: the costlier graph dies
    pop = [_rec(3, 0.5, complexity=10_000), _rec(5, 0.5, complexity=10), _rec(7, 0.4)]
    assert [r.trial for r in survive(pop, 12, cfg)] == [5, 7]
    # with a heavy age weight the older of two equals dies
    aged = _cfg(population_size=1, max_age=10, age_weight=1.0, complexity_weight=0.0)
    assert [r.trial for r in survive([_rec(3, 0.5), _rec(9, 0.5)], 12, aged)] == [9]


def test_search_dedups_and_switches_ranker_on(tmp_path):
    space = _space()
    calls: list[int] = []
    tracker = MemoryTracker("search")
    cfg = _cfg()
    hist = EvolutionarySearch(space, cfg, _evaluator(space, calls), history_path=tmp_path / "h.jsonl",
                              tracker=tracker).run()
    assert len(hist) == cfg.budget and calls == [4] * 8
    assert len({r.arch().canonical() for r in hist}) == len(hist)  # never the same graph twice
    assert all(r.origin == "random" for r in hist[:8]) and all(r.origin != "random" for r in hist[8:])
    first_guided = min(r.trial for r in hist if r.guided)
    assert first_guided >= cfg.ranker_min_history and all(r.guided for r in hist[first_guided:])
    parents = {r.fingerprint for r in hist}
    assert all(r.parent in parents for r in hist[8:])
    # one nested run per trial, holding its spec and metrics
    assert len(tracker.children) == cfg.budget
    child = tracker.children[5]
    assert child.dicts["spec.json"] == hist[5].spec and child.last("eval/ne") == hist[5].quality
    assert tracker.last("search/trials") == cfg.budget


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    space = _space()
    straight = EvolutionarySearch(space, _cfg(budget=28), _evaluator(space), history_path=tmp_path / "a.jsonl").run()
    EvolutionarySearch(space, _cfg(budget=16), _evaluator(space), history_path=tmp_path / "b.jsonl").run()
    with open(tmp_path / "b.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"trial": 16, "generation": 4, "fingerp')  # a writer killed mid-line
    resumed = EvolutionarySearch(space, _cfg(budget=28), _evaluator(space), history_path=tmp_path / "b.jsonl").run()
    key = lambda r: (r.trial, r.generation, r.fingerprint, r.origin, r.parent, r.guided, r.quality)  # noqa: E731
    assert [key(r) for r in resumed] == [key(r) for r in straight]
    assert [key(r) for r in load_history(tmp_path / "b.jsonl")] == [key(r) for r in straight]


def test_corrupt_history_line_names_file_and_line(tmp_path):
    path = tmp_path / "h.jsonl"
    space = _space()
    EvolutionarySearch(space, _cfg(budget=4), _evaluator(space), history_path=path).run()
    lines = path.read_text().splitlines()
    lines[1] = "{not json}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HistoryError, match=r"h\.jsonl:2"):
        load_history(path)


def test_failed_trials_are_recorded_but_never_parents(tmp_path):
    space = _space()

    def evaluate(specs):
        out = []
        for s in specs:
            if any(b.type == "crossnet" for b in s.blocks):
                out.append(TrialOutcome(error="diverged: loss nan at step 3"))
            else:
                out.append(TrialOutcome(metrics={"eval/ne": objective(space, s)}))
        return out

    search = EvolutionarySearch(space, _cfg(budget=24), evaluate)
    hist = search.run()
    failed = [r for r in hist if not r.ok]
    assert failed and all(math.isnan(r.quality) for r in failed)
    failed_fps = {r.fingerprint for r in failed}
    assert not failed_fps & {r.parent for r in hist}
    assert not failed_fps & {r.fingerprint for r in search.population}
    assert all(r.ok for r in ranked(hist, higher_is_better=False))
    line = json.loads(failed[0].to_json())
    assert line["quality"] is None and line["outcome"]["error"].startswith("diverged")


def test_evolution_beats_random_search_at_equal_budget():
    """On the synthetic objective, evolution + ranker finds better graphs than random sampling, on average."""
    space = _space()
    gains = []
    for seed in SEEDS:
        hist = EvolutionarySearch(space, _cfg(budget=40, seed=seed), _evaluator(space)).run()
        evo_best = ranked(hist, higher_is_better=False)[0].quality
        rng = np.random.default_rng(1000 + seed)
        rand_best = min(objective(space, space.random_spec(rng)) for _ in range(40))
        gains.append(rand_best - evo_best)
    assert np.mean(gains) > 0.0 and sum(g >= 0 for g in gains) >= len(SEEDS) - 1, gains
