"""Full-fidelity comparison: the search's top architectures against hand-crafted baselines, same budget.

Every contender is trained by the same :func:`recpipe.search.trials.fit` with the same
:class:`~recpipe.search.trials.TrialConfig` (steps, batch size, optimizer, seed, early stop on the same
validation rows) and scored on the same held-out test rows. The searched winner is chosen on VALIDATION NE
(never on the test rows); the baselines are summarised by their best TEST figures, which makes the
comparison conservative for the search.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

from recpipe.models.spec import PRESETS, ArchSpec
from recpipe.search.data import TensorRows
from recpipe.search.trials import TrialConfig, fit
from recpipe.tracking.base import MemoryTracker, Tracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contender:
    """One architecture in the final comparison: ``kind`` is ``"searched"`` or ``"baseline"``."""

    name: str
    kind: str
    spec: ArchSpec


def baseline_specs(names: Sequence[str], embedding_dim: int) -> list[Contender]:
    """The hand-crafted presets of :data:`recpipe.models.spec.PRESETS` (dlrm, dcn, deepfm) at dim D."""
    unknown = set(names) - set(PRESETS)
    if unknown:
        raise ValueError(f"baselines: unknown presets {sorted(unknown)}; known {sorted(PRESETS)}")
    return [Contender(n, "baseline", PRESETS[n](embedding_dim=embedding_dim)) for n in names]


def compare(contenders: Sequence[Contender], train: TensorRows, valid: TensorRows, test: TensorRows,
            cfg: TrialConfig, *, tracker: Tracker | None = None) -> dict[str, Any]:
    """Trains every contender under ``cfg`` and scores it on ``test``.

    Returns:
        ``{"runs": {name: {"kind", "fingerprint", "spec", "metrics", "wall_s", "cpu_s", "train_examples",
        "error"}},
        "best_searched": name or None, "best_baseline": name or None, "summary": {...}}`` where the summary
        holds ``searched_test_auc``, ``searched_test_ne``, ``baseline_test_auc`` (best baseline AUC on test),
        ``baseline_test_ne`` (best baseline NE on test) and the deltas (positive = search better).
    """
    tracker = tracker or MemoryTracker("compare")
    runs: dict[str, dict[str, Any]] = {}
    for c in contenders:
        logger.info("full-fidelity training of %s (%s, %s)", c.name, c.kind, c.spec.fingerprint())
        out = fit(c.spec, train, valid, cfg, test=test)
        runs[c.name] = {"kind": c.kind, "fingerprint": c.spec.fingerprint(), "spec": c.spec.to_dict(),
                        "metrics": out.metrics, "wall_s": out.wall_s, "cpu_s": out.cpu_s,
                        "train_examples": out.train_examples, "error": out.error}
        with tracker.child(f"final-{c.name}") as t:
            t.log_params({"kind": c.kind, "fingerprint": c.spec.fingerprint(), "canonical": c.spec.canonical()})
            t.log_dict(c.spec.to_dict(), "spec.json")
            t.log_metrics({**out.metrics, "trial/wall_s": out.wall_s})
            t.set_tags({"status": "failed" if out.error else "ok", "error": out.error[:500]})
    ok = {n: r for n, r in runs.items() if not r["error"]}
    searched = [n for n, r in ok.items() if r["kind"] == "searched"]
    baselines = [n for n, r in ok.items() if r["kind"] == "baseline"]
    best_s = min(searched, key=lambda n: ok[n]["metrics"]["eval/ne"]) if searched else None
    best_b = max(baselines, key=lambda n: ok[n]["metrics"]["test/auc"]) if baselines else None
    summary: dict[str, float] = {}
    if best_s is not None:
        summary.update(searched_test_auc=ok[best_s]["metrics"]["test/auc"],
                       searched_test_ne=ok[best_s]["metrics"]["test/ne"])
    if baselines:
        summary.update(baseline_test_auc=max(ok[n]["metrics"]["test/auc"] for n in baselines),
                       baseline_test_ne=min(ok[n]["metrics"]["test/ne"] for n in baselines))
    if best_s is not None and baselines:
        summary["delta_test_auc"] = summary["searched_test_auc"] - summary["baseline_test_auc"]
        summary["delta_test_ne"] = summary["baseline_test_ne"] - summary["searched_test_ne"]
    return {"runs": runs, "best_searched": best_s, "best_baseline": best_b,
            "summary": {k: v for k, v in summary.items() if not math.isnan(v)}}
