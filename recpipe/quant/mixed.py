"""Mixed precision: choosing the code width of each embedding table.

Three policies (:class:`MixedPrecisionConfig.mode`):

* ``"uniform"``: every table gets the same bits.
* ``"rule"``: by table size. ``rule`` is a list of ``(min_rows, bits)``; a table gets the bits of the entry with
  the largest ``min_rows`` not above its row count. Big tables hold nearly all the bytes and tolerate low
  precision best (their rows are rarely hit), tiny tables cost nothing to keep at 8 bits.
* ``"measured"``: greedy search on held-out data. Tables are visited largest first; each tries the
  candidate widths from cheapest up and keeps the first whose model NE stays within ``ne_tolerance``
  (relative) of the float model's NE, with every table already decided quantized at its chosen width. The
  tolerance is thus a budget for the CUMULATIVE NE loss of the final assignment (the last accepted trial IS
  the final model). A table for which no candidate fits gets the widest candidate and is reported.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from recpipe.config import JsonConfig
from recpipe.ops import quant as qops

logger = logging.getLogger(__name__)

MODES = ("uniform", "rule", "measured")


@dataclass(frozen=True)
class MixedPrecisionConfig(JsonConfig):
    """Per-table bit-width policy (see the module docstring).

    Attributes:
        mode: "uniform", "rule" or "measured".
        rule: ``(min_rows, bits)`` pairs for "rule"; must include ``min_rows == 0``.
        candidates: widths tried by "measured".
        ne_tolerance: relative NE increase over the float model allowed by "measured" (0.002 = 0.2%).
    """

    mode: str = "uniform"
    rule: tuple[tuple[int, int], ...] = ((0, 8), (1000, 4))
    candidates: tuple[int, ...] = (2, 4, 8)
    ne_tolerance: float = 0.002

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", tuple((int(r), int(b)) for r, b in self.rule))
        object.__setattr__(self, "candidates", tuple(int(b) for b in self.candidates))
        if self.mode not in MODES:
            raise ValueError(f"mixed precision mode must be one of {MODES}, got {self.mode!r}")
        if not self.rule or min(r for r, _ in self.rule) != 0:
            raise ValueError(f"mixed precision rule needs an entry with min_rows 0, got {list(self.rule)}")
        for _, b in self.rule:
            if b not in qops.SUPPORTED_BITS:
                raise ValueError(f"mixed precision rule: bits {b} not in {qops.SUPPORTED_BITS}")
        if not self.candidates or any(b not in qops.SUPPORTED_BITS for b in self.candidates):
            raise ValueError(f"mixed precision candidates {list(self.candidates)} must be a non-empty subset of "
                             f"{qops.SUPPORTED_BITS}")
        if self.ne_tolerance < 0:
            raise ValueError(f"ne_tolerance must be >= 0, got {self.ne_tolerance}")


def rule_bits(table_rows: Sequence[int], rule: Sequence[tuple[int, int]]) -> list[int]:
    """Bits per table from a ``(min_rows, bits)`` rule (the entry with the largest min_rows <= rows wins)."""
    ordered = sorted(rule)
    out = []
    for rows in table_rows:
        bits = ordered[0][1]
        for min_rows, b in ordered:
            if rows >= min_rows:
                bits = b
        out.append(bits)
    return out


@dataclass
class MeasuredChoice:
    """Outcome of :func:`measured_bits`.

    Attributes:
        bits: chosen width per table.
        float_ne: NE of the float model.
        final_ne: NE with every table at its chosen width.
        trials: every evaluation, ``{"table", "bits", "ne", "rel_delta", "accepted"}``.
        over_budget: tables where no candidate stayed within the tolerance.
    """

    bits: list[int]
    float_ne: float
    final_ne: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    over_budget: list[int] = field(default_factory=list)


def measured_bits(table_bytes: Sequence[int], evaluate_ne: Callable[[Sequence[int | None]], float],
                  candidates: Sequence[int], ne_tolerance: float) -> MeasuredChoice:
    """The "measured" policy.

    Args:
        table_bytes: float bytes per table (visit order: largest first, ties by table index).
        evaluate_ne: NE of the model on held-out data given bits per table (None = keep that table float).
        candidates: widths to try.
        ne_tolerance: allowed relative NE increase over the float model, cumulative.

    Returns:
        :class:`MeasuredChoice`.
    """
    num_tables = len(table_bytes)
    cache: dict[tuple[int | None, ...], float] = {}

    def ne_of(assignment: Sequence[int | None]) -> float:
        key = tuple(assignment)
        if key not in cache:
            cache[key] = float(evaluate_ne(list(key)))
        return cache[key]

    float_ne = ne_of([None] * num_tables)
    if not math.isfinite(float_ne) or float_ne <= 0:
        raise ValueError(f"measured mixed precision needs a finite positive float NE on the held-out data, got "
                         f"{float_ne} (one-class or empty evaluation data?)")
    chosen: list[int | None] = [None] * num_tables
    result = MeasuredChoice([], float_ne, float_ne)
    for f in sorted(range(num_tables), key=lambda t: (-table_bytes[t], t)):
        pick = None
        for bits in sorted(candidates):
            trial = list(chosen)
            trial[f] = bits
            ne = ne_of(trial)
            rel = (ne - float_ne) / float_ne
            accepted = rel <= ne_tolerance
            result.trials.append({"table": f, "bits": bits, "ne": ne, "rel_delta": rel, "accepted": accepted})
            if accepted:
                pick = bits
                break
        if pick is None:
            pick = max(candidates)
            result.over_budget.append(f)
            logger.warning("table %d: no width in %s keeps NE within %.4g of float; using %d bits", f,
                           sorted(candidates), ne_tolerance, pick)
        chosen[f] = pick
    result.bits = [int(b) for b in chosen if b is not None]
    result.final_ne = ne_of(chosen)
    return result
