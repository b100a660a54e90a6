"""Per-day statistics, accumulated batch by batch and merged associatively (a Beam combine's accumulator).

Dense figures are over the *output* values (after clip, fill and transform); missing rates count raw nulls.
Distinct counts are K-minimum-values estimates over the raw values' 64-bit hashes. ``new_id_rate`` (vocabulary
features only) is the share of non-missing values absent from the vocabulary as it stood before the day.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recpipe.ingest.hashing import DEFAULT_SKETCH_K, KmvSketch
from recpipe.schema import Schema


@dataclass
class DayStats:
    """Mergeable sufficient statistics of one day's output rows.

    Attributes:
        rows: output rows. label_sum: sum of labels.
        dense_missing / dense_sum / dense_sumsq / dense_min / dense_max: (N,) per dense feature.
        sparse_missing / sparse_new / sparse_values: (F,) counts of missing, new, non-missing values.
        sketches: F distinct-count sketches.
    """

    num_dense: int
    num_sparse: int
    rows: int = 0
    label_sum: float = 0.0
    dense_missing: np.ndarray = field(default=None)  # type: ignore[assignment]
    dense_sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    dense_sumsq: np.ndarray = field(default=None)  # type: ignore[assignment]
    dense_min: np.ndarray = field(default=None)  # type: ignore[assignment]
    dense_max: np.ndarray = field(default=None)  # type: ignore[assignment]
    sparse_missing: np.ndarray = field(default=None)  # type: ignore[assignment]
    sparse_new: np.ndarray = field(default=None)  # type: ignore[assignment]
    sparse_values: np.ndarray = field(default=None)  # type: ignore[assignment]
    sketches: list[KmvSketch] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n, f = self.num_dense, self.num_sparse
        for name, init in (("dense_missing", np.zeros(n, np.int64)), ("dense_sum", np.zeros(n)),
                           ("dense_sumsq", np.zeros(n)), ("dense_min", np.full(n, np.inf)),
                           ("dense_max", np.full(n, -np.inf)), ("sparse_missing", np.zeros(f, np.int64)),
                           ("sparse_new", np.zeros(f, np.int64)), ("sparse_values", np.zeros(f, np.int64))):
            if getattr(self, name) is None:
                setattr(self, name, init)
        if self.sketches is None:
            self.sketches = [KmvSketch(DEFAULT_SKETCH_K) for _ in range(f)]

    def add_dense(self, j: int, values: np.ndarray, missing: np.ndarray) -> None:
        """Adds output values (B,) float32 of dense feature ``j`` and its (B,) raw-missing mask."""
        if len(values) == 0:
            return
        v = values.astype(np.float64)
        self.dense_missing[j] += int(missing.sum())
        self.dense_sum[j] += float(v.sum())
        self.dense_sumsq[j] += float(np.dot(v, v))
        self.dense_min[j] = min(self.dense_min[j], float(v.min()))
        self.dense_max[j] = max(self.dense_max[j], float(v.max()))

    def add_sparse(self, j: int, *, missing: int, values: int, new: int, hashes: np.ndarray) -> None:
        """Adds counts of sparse feature ``j`` and the (V,) uint64 hashes of its non-missing raw values."""
        self.sparse_missing[j] += missing
        self.sparse_values[j] += values
        self.sparse_new[j] += new
        self.sketches[j].update(hashes)

    def merge(self, other: "DayStats") -> "DayStats":
        """Folds ``other`` into self (associative, commutative); returns self."""
        self.rows += other.rows
        self.label_sum += other.label_sum
        for name in ("dense_missing", "dense_sum", "dense_sumsq", "sparse_missing", "sparse_new",
                     "sparse_values"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dense_min = np.minimum(self.dense_min, other.dense_min)
        self.dense_max = np.maximum(self.dense_max, other.dense_max)
        for a, b in zip(self.sketches, other.sketches):
            a.merge(b)
        return self

    def to_json(self, dense_names: list[str], sparse_names: list[str], *,
                vocab_features: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The ``stats.json`` body (plain floats; ``None`` where a figure is undefined, e.g. zero rows)."""
        r = self.rows

        def ratio(a: float, b: float) -> float | None:
            return float(a) / b if b else None

        dense = {}
        for j, name in enumerate(dense_names):
            mean = ratio(self.dense_sum[j], r)
            var = None if mean is None else max(self.dense_sumsq[j] / r - mean * mean, 0.0)
            dense[name] = {"missing_rate": ratio(self.dense_missing[j], r), "mean": mean,
                           "std": None if var is None else math.sqrt(var),
                           "min": float(self.dense_min[j]) if r else None,
                           "max": float(self.dense_max[j]) if r else None}
        sparse = {}
        for j, name in enumerate(sparse_names):
            sparse[name] = {"missing_rate": ratio(self.sparse_missing[j], r),
                            "distinct_approx": self.sketches[j].estimate(),
                            "new_id_rate": (ratio(self.sparse_new[j], self.sparse_values[j])
                                            if name in vocab_features else None)}
        return {"rows": r, "label_rate": ratio(self.label_sum, r), "dense": dense, "sparse": sparse}


def stats_json(stats: DayStats, schema: Schema) -> dict[str, Any]:
    """:meth:`DayStats.to_json` with the schema's names (``new_id_rate`` for vocabulary features)."""
    return stats.to_json(schema.dense_names, schema.sparse_names,
                         vocab_features={f.name for f in schema.sparse if f.encoding == "vocab"})
