"""The search history: one JSON line per evaluated architecture, appended as trials finish.

The history is the search's only state. A run that stops (crash, pre-emption, a KFP retry) resumes by reading
it back: the population is rebuilt by replaying the survival rule generation by generation, and every
generation draws from its own seeded RNG, so a resumed search continues exactly as an uninterrupted one.
A torn last line (the writer died mid-append) is dropped with a warning; a bad line elsewhere is an error
naming the file and line.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from recpipe.fileio import atomic_write
from recpipe.models.spec import ArchSpec
from recpipe.search.space import spec_from_mapping

logger = logging.getLogger(__name__)


class HistoryError(ValueError):
    """The history file is corrupt; the message names the file and line."""


@dataclass
class TrialOutcome:
    """What evaluating one architecture produced.

    Attributes:
        metrics: metric key → value (e.g. ``eval/ne``, ``eval/auc``, ``train/steps``).
        wall_s: seconds the trial took (training + evaluation).
        cpu_s: CPU seconds of the process running it (unlike wall time, not inflated by other load).
        train_examples: examples the trial trained on (steps * batch size), the search's cost unit.
        error: non-empty when the trial failed (the architecture then never enters the population).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    train_examples: int = 0
    error: str = ""


@dataclass
class TrialRecord:
    """One line of ``history.jsonl``.

    Attributes:
        trial: 0-based position in the history (also the architecture's birth time for ageing).
        generation: generation that proposed it (a batch of trials evaluated together).
        fingerprint: ``ArchSpec.fingerprint()``.
        spec: the architecture as a JSON mapping.
        quality: the objective's value (NaN for failed trials).
        complexity: :func:`recpipe.search.space.complexity` of the spec.
        origin: ``"random"`` or the mutation kind that produced it.
        detail: what the mutation changed.
        parent: fingerprint of the parent (empty for random ones).
        guided: whether the ranker chose it among candidate mutations.
        outcome: the trial's metrics, wall time, cost and error.
    """

    trial: int
    generation: int
    fingerprint: str
    spec: dict[str, Any]
    quality: float
    complexity: int
    origin: str
    detail: str = ""
    parent: str = ""
    guided: bool = False
    outcome: TrialOutcome = field(default_factory=TrialOutcome)

    @property
    def ok(self) -> bool:
        return not self.outcome.error and math.isfinite(self.quality)

    def arch(self) -> ArchSpec:
        return spec_from_mapping(self.spec, where=f"trial {self.trial}")

    def to_json(self) -> str:
        d = asdict(self)
        d["quality"] = self.quality if math.isfinite(self.quality) else None
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, line: str, *, where: str) -> "TrialRecord":
        try:
            d = json.loads(line)
            outcome = TrialOutcome(**d.pop("outcome"))
            q = d.pop("quality")
            rec = cls(**d, quality=float("nan") if q is None else float(q), outcome=outcome)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise HistoryError(f"{where}: not a trial record: {e}") from e
        rec.arch()  # validates the spec, naming the line
        return rec


def load_history(path: str | os.PathLike[str]) -> list[TrialRecord]:
    """Reads ``history.jsonl`` (missing file → empty). Trial numbers must run 0, 1, 2, ... in order."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    records: list[TrialRecord] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        unterminated = i == len(lines) - 1  # every append ends its line with a newline
        try:
            rec = TrialRecord.from_json(line, where=f"{path}:{i + 1}")
        except HistoryError:
            if unterminated:
                logger.warning("%s:%d: dropping a torn last line (interrupted write)", path, i + 1)
                break
            raise
        if rec.trial != len(records):
            raise HistoryError(f"{path}:{i + 1}: trial {rec.trial} out of order (expected {len(records)})")
        records.append(rec)
    return records


def append_history(path: str | os.PathLike[str], records: Iterable[TrialRecord]) -> None:
    """Appends records (one line each) and fsyncs, so a finished trial is never lost."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for r in records:
            fh.write(r.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def rewrite_history(path: str | os.PathLike[str], records: Iterable[TrialRecord]) -> None:
    """Replaces the file with ``records`` atomically (used to drop a torn tail before appending)."""
    atomic_write(path, lambda fh: fh.writelines(r.to_json() + "\n" for r in records), binary=False)
