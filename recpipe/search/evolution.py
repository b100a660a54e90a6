"""Evolutionary architecture search with ranker guidance (AutoCTR, arXiv 2007.06434).

Loop, one *generation* at a time (a batch of trials evaluated together, in parallel by the evaluator):

1. The first ``initial_population`` trials are random architectures.
2. Afterwards each child comes from a parent chosen by tournament selection (best quality of
   ``tournament_size`` random members) through ONE single-token mutation. Once ``ranker_min_history``
   trials succeeded, the ranker is refitted on the whole history every generation and each child is the
   best-scored of ``ranker_candidates`` distinct mutations of its parent.
3. Identical graphs (same ``canonical()``) are never evaluated twice.
4. Survival: members older than ``max_age`` trials die; if the population still exceeds
   ``population_size``, the members with the lowest
   ``quality_percentile - age_weight * age / max_age - complexity_weight * complexity_percentile`` die.

Everything random comes from ``numpy.random.default_rng([seed, generation])`` and the population is a pure
function of the history, so a search resumed from ``history.jsonl`` continues exactly as if uninterrupted.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from recpipe.config import JsonConfig
from recpipe.models.spec import ArchSpec
from recpipe.search.history import (TrialOutcome, TrialRecord, append_history, load_history, rewrite_history)
from recpipe.search.mutations import mutate, neighbours
from recpipe.search.ranker import ArchRanker, RankerConfig
from recpipe.search.space import SearchSpace
from recpipe.tracking.base import MemoryTracker, Tracker

logger = logging.getLogger(__name__)

Evaluator = Callable[[Sequence[ArchSpec]], Sequence[TrialOutcome]]
"""Evaluates a batch of architectures (possibly in parallel) and returns one outcome per spec, in order."""


@dataclass(frozen=True)
class EvolutionConfig(JsonConfig):
    """Search schedule and the selection / survival rule.

    Attributes:
        budget: total trials (the search stops when the history holds this many).
        initial_population: random architectures evaluated first.
        population_size: most members kept alive.
        batch_size: trials per generation (evaluated together; use a multiple of the worker count).
        tournament_size: members compared to pick a parent.
        max_age: members born more than this many trials ago die.
        age_weight: weight of age in the survival score.
        complexity_weight: weight of complexity in the survival score (prefers cheaper graphs).
        ranker_min_history: successful trials needed before the ranker guides mutations.
        ranker_candidates: mutations of a parent the ranker scores per child.
        objective: metric key whose value is the quality (from the trial's metrics).
        higher_is_better: True for AUC-like objectives, False for NE / log loss.
        seed: base seed.
        ranker: LightGBM settings.
    """

    budget: int = 48
    initial_population: int = 12
    population_size: int = 12
    batch_size: int = 4
    tournament_size: int = 4
    max_age: int = 32
    age_weight: float = 0.25
    complexity_weight: float = 0.1
    ranker_min_history: int = 16
    ranker_candidates: int = 32
    objective: str = "eval/ne"
    higher_is_better: bool = False
    seed: int = 0
    ranker: RankerConfig = field(default_factory=RankerConfig)

    def __post_init__(self) -> None:
        if min(self.budget, self.initial_population, self.population_size, self.batch_size,
               self.tournament_size, self.ranker_candidates) < 1:
            raise ValueError(f"EvolutionConfig: counts must be >= 1: {self.to_dict()}")
        if self.max_age < self.batch_size:
            raise ValueError(f"EvolutionConfig: max_age ({self.max_age}) must be >= batch_size "
                             f"({self.batch_size}) or a generation could die at birth")


@dataclass(frozen=True)
class Proposal:
    """An architecture to evaluate and where it came from (see :class:`TrialRecord` for the fields)."""

    spec: ArchSpec
    origin: str
    detail: str = ""
    parent: str = ""
    guided: bool = False


def _percentile(values: np.ndarray) -> np.ndarray:
    """Rank of each value in [0, 1] (0 smallest, 1 largest; ties averaged)."""
    n = values.size
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    for v in np.unique(values):
        m = values == v
        ranks[m] = ranks[m].mean()
    return ranks / max(n - 1, 1)


def survive(population: list[TrialRecord], now: int, cfg: EvolutionConfig) -> list[TrialRecord]:
    """Applies the ageing + quality + complexity survival rule.

    Args:
        population: current members (successful trials).
        now: trials evaluated so far (a member's age is ``now - member.trial``).
        cfg: weights and sizes.

    Returns:
        The survivors, in trial order.
    """
    alive = [r for r in population if now - r.trial <= cfg.max_age]
    if len(alive) <= cfg.population_size:
        return alive
    q = np.array([r.quality for r in alive])
    q_pct = _percentile(q if cfg.higher_is_better else -q)  # 1 = best
    c_pct = _percentile(np.log1p(np.array([r.complexity for r in alive], dtype=np.float64)))  # 1 = costliest
    age = np.array([now - r.trial for r in alive], dtype=np.float64)
    score = q_pct - cfg.age_weight * age / cfg.max_age - cfg.complexity_weight * c_pct
    keep = set(np.argsort(-score, kind="stable")[: cfg.population_size].tolist())
    return [r for i, r in enumerate(alive) if i in keep]


def ranked(history: Sequence[TrialRecord], *, higher_is_better: bool) -> list[TrialRecord]:
    """Successful trials, best first (ties broken by lower complexity, then earlier trial)."""
    ok = [r for r in history if r.ok]
    sign = -1.0 if higher_is_better else 1.0
    return sorted(ok, key=lambda r: (sign * r.quality, r.complexity, r.trial))


class EvolutionarySearch:
    """Runs (or resumes) the search.

    Args:
        space: the search space.
        cfg: schedule and survival settings.
        evaluate: trains + scores a batch of specs (see :mod:`recpipe.search.trials`).
        history_path: ``history.jsonl``; read first (resume), appended after every generation. None: in memory.
        tracker: parent run; each trial is logged as a nested run ``trial-<n>-<fingerprint>``.
    """

    def __init__(self, space: SearchSpace, cfg: EvolutionConfig, evaluate: Evaluator, *,
                 history_path: str | os.PathLike[str] | None = None, tracker: Tracker | None = None) -> None:
        self.space = space
        self.cfg = cfg
        self.evaluate = evaluate
        self.history_path = None if history_path is None else os.fspath(history_path)
        self.tracker = tracker or MemoryTracker("search")
        self.history: list[TrialRecord] = []
        self.population: list[TrialRecord] = []
        self.ranker = ArchRanker(space, cfg.ranker)
        self._next_generation = 0

    # ------------------------------------------------------------------ state
    def _resume(self) -> int:
        """Loads the history and replays survival; returns the next generation number."""
        if self.history_path is None or not os.path.exists(self.history_path):
            return 0
        self.history = load_history(self.history_path)
        rewrite_history(self.history_path, self.history)  # drops a torn tail before we append
        gens = sorted({r.generation for r in self.history})
        for g in gens:
            self.population = survive(self.population + [r for r in self.history if r.generation == g and r.ok],
                                      max(r.trial for r in self.history if r.generation == g) + 1, self.cfg)
        if self.history:
            logger.info("resumed search from %s: %d trials, %d alive, next generation %d", self.history_path,
                        len(self.history), len(self.population), gens[-1] + 1)
        return gens[-1] + 1 if gens else 0

    def _seen(self) -> set[str]:
        return {r.arch().canonical() for r in self.history}

    # ------------------------------------------------------------------ proposals
    def _tournament(self, rng: np.random.Generator) -> TrialRecord:
        k = min(self.cfg.tournament_size, len(self.population))
        idx = rng.choice(len(self.population), size=k, replace=False)
        contenders = [self.population[i] for i in idx]
        return ranked(contenders, higher_is_better=self.cfg.higher_is_better)[0]

    def _propose(self, generation: int, n: int) -> list[Proposal]:
        """``n`` new, distinct, never-evaluated architectures with their provenance."""
        rng = np.random.default_rng([self.cfg.seed, generation])
        seen = self._seen()
        n_ok = sum(r.ok for r in self.history)
        use_ranker = n_ok >= self.cfg.ranker_min_history and bool(self.population)
        if use_ranker:
            ok = [r for r in self.history if r.ok]
            self.ranker.fit([r.arch() for r in ok], [r.quality for r in ok],
                            higher_is_better=self.cfg.higher_is_better)
            logger.debug("generation %d: ranker top features %s", generation, self.ranker.top_features(5))
        out: list[Proposal] = []
        for _ in range(50 * n):
            if len(out) >= n:
                break
            if len(self.history) + len(out) < self.cfg.initial_population or not self.population:
                spec = self.space.random_spec(rng)
                prop = Proposal(spec, "random")
            else:
                parent = self._tournament(rng)
                if use_ranker:
                    cands = neighbours(self.space, parent.arch(), rng, self.cfg.ranker_candidates, exclude=seen)
                    if not cands:
                        continue
                    best = int(np.argmax(self.ranker.score([m.spec for m in cands])))
                    m, guided = cands[best], True
                else:
                    m, guided = mutate(self.space, parent.arch(), rng), False
                spec = m.spec
                prop = Proposal(spec, m.kind, m.detail, parent.fingerprint, guided)
            key = spec.canonical()
            if key in seen:
                continue
            seen.add(key)
            out.append(prop)
        if len(out) < n:
            logger.warning("generation %d: only %d of %d new architectures found (space exhausted?)",
                           generation, len(out), n)
        return out

    # ------------------------------------------------------------------ main loop
    def resume(self) -> int:
        """Loads the history (if any) and rebuilds the population; returns the next generation number."""
        self.history, self.population = [], []
        self._next_generation = self._resume()
        return self._next_generation

    def propose_next(self) -> tuple[int, list[Proposal]]:
        """The next generation's proposals (empty once the budget is spent). Call :meth:`resume` first."""
        remaining = self.cfg.budget - len(self.history)
        if remaining <= 0:
            return self._next_generation, []
        gen = self._next_generation
        return gen, self._propose(gen, min(self.cfg.batch_size, remaining))

    def commit(self, generation: int, props: Sequence[Proposal], outcomes: Sequence[TrialOutcome]) -> list[TrialRecord]:
        """Records evaluated proposals: appends to the history file, logs child runs, applies survival."""
        if len(outcomes) != len(props):
            raise RuntimeError(f"evaluator returned {len(outcomes)} outcomes for {len(props)} specs")
        if generation != self._next_generation:
            raise RuntimeError(f"commit: generation {generation} but the search expects {self._next_generation}")
        records = [self._record(len(self.history) + i, generation, p, o)
                   for i, (p, o) in enumerate(zip(props, outcomes))]
        if self.history_path is not None:
            append_history(self.history_path, records)
        self.history.extend(records)
        for r in records:
            self._log_trial(r)
        self.population = survive(self.population + [r for r in records if r.ok], len(self.history), self.cfg)
        best = ranked(self.history, higher_is_better=self.cfg.higher_is_better)
        metrics = {"search/trials": float(len(self.history)), "search/population": float(len(self.population))}
        if best:
            metrics["search/best_quality"] = best[0].quality
        self.tracker.log_metrics(metrics, step=len(self.history))
        logger.info("generation %d: %d trials, best %s = %s", generation, len(self.history),
                    self.cfg.objective, best[0].quality if best else "n/a")
        self._next_generation = generation + 1
        return records

    def run(self) -> list[TrialRecord]:
        """Resumes from the history file, evaluates generations until the budget is spent, returns the history."""
        self.resume()
        while True:
            generation, props = self.propose_next()
            if not props:
                break
            self.commit(generation, props, list(self.evaluate([p.spec for p in props])))
        return self.history

    def _record(self, trial: int, generation: int, prop: Proposal, outcome: TrialOutcome) -> TrialRecord:
        spec = prop.spec
        q = outcome.metrics.get(self.cfg.objective, float("nan")) if not outcome.error else float("nan")
        if not outcome.error and not math.isfinite(q):
            outcome.error = f"objective {self.cfg.objective!r} missing or not finite in {sorted(outcome.metrics)}"
        return TrialRecord(trial=trial, generation=generation, fingerprint=spec.fingerprint(),
                           spec=spec.to_dict(), quality=float(q), complexity=self.space.complexity(spec),
                           origin=prop.origin, detail=prop.detail, parent=prop.parent, guided=prop.guided,
                           outcome=outcome)

    def _log_trial(self, r: TrialRecord) -> None:
        with self.tracker.child(f"trial-{r.trial:04d}-{r.fingerprint}") as t:
            t.log_params({"fingerprint": r.fingerprint, "generation": r.generation, "origin": r.origin,
                          "parent": r.parent, "guided": r.guided, "complexity": r.complexity,
                          "num_blocks": len(r.spec["blocks"]), "canonical": r.arch().canonical()})
            t.log_dict(r.spec, "spec.json")
            t.log_metrics({**r.outcome.metrics, "trial/wall_s": r.outcome.wall_s,
                           "trial/train_examples": float(r.outcome.train_examples)})
            t.set_tags({"status": "failed" if not r.ok else "ok", "error": r.outcome.error[:500]})
