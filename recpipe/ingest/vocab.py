"""Append-only, frequency-thresholded vocabularies (one per ``encoding="vocab"`` sparse feature).

Entry ``i`` of a feature's vocabulary has id ``VOCAB_RESERVED + i`` forever: new values are only appended, so
yesterday's ids never move and embedding tables grow by exactly the appended rows (listed in the day's
delta). Values seen fewer than ``min_count`` times in the day being ingested, and values arriving after the
feature's capacity (``num_embeddings``) is used up, map to :data:`~recpipe.ingest.options.OOV_ID`.

Storage: ``<root>/_vocab/vocab.parquet`` with columns ``feature, id, value, day, count`` (``day`` = the day the
value was admitted, ``count`` = its count that day) and ``<root>/_vocab/delta-YYYY-MM-DD.json``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recpipe.fileio import atomic_write
from recpipe.ingest.options import VOCAB_RESERVED
from recpipe.schema import Schema

log = logging.getLogger(__name__)

COUNTS_SCHEMA = pa.schema([pa.field("value", pa.string()), pa.field("count", pa.int64())])
"""Per-feature value counts (the Beam combine's accumulator and output)."""

_ENTRY_SCHEMA = pa.schema([pa.field("value", pa.string()), pa.field("day", pa.string()),
                           pa.field("count", pa.int64())])
VOCAB_FILE = "vocab.parquet"


def count_values(values: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Counts of the non-null values of a string (or list<string>) column as a :data:`COUNTS_SCHEMA` table."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.list_flatten(values)
    vc = pc.value_counts(values.drop_null())
    return pa.table({"value": vc.field("values").cast(pa.string()), "count": vc.field("counts").cast(pa.int64())},
                    schema=COUNTS_SCHEMA)


def merge_counts(tables: list[pa.Table]) -> pa.Table:
    """Sums counts of the same value across tables (vectorised group-by)."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return COUNTS_SCHEMA.empty_table()
    if len(tables) == 1:
        return tables[0]
    merged = pa.concat_tables(tables).group_by("value").aggregate([("count", "sum")])
    return pa.table({"value": merged["value"], "count": merged["count_sum"]}, schema=COUNTS_SCHEMA)


@dataclass
class Vocabulary:
    """Per-feature entries in id order: ``entries[name]`` is a table ``value, day, count``."""

    entries: dict[str, pa.Table]

    @classmethod
    def empty(cls, names: list[str]) -> "Vocabulary":
        return cls({n: _ENTRY_SCHEMA.empty_table() for n in names})

    def size(self, name: str) -> int:
        """Table size of ``name``: reserved ids + entries."""
        return VOCAB_RESERVED + self.entries[name].num_rows

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, directory: str, names: list[str]) -> "Vocabulary":
        """Loads ``<directory>/vocab.parquet``; features absent there start empty."""
        path = os.path.join(directory, VOCAB_FILE)
        vocab = cls.empty(names)
        if not os.path.exists(path):
            return vocab
        table = pq.read_table(path)
        for name in names:
            part = table.filter(pc.equal(table["feature"], name)).sort_by("id")
            ids = part["id"].to_numpy()
            if len(ids) and not np.array_equal(ids, np.arange(VOCAB_RESERVED, VOCAB_RESERVED + len(ids))):
                raise ValueError(f"{path}: feature {name!r}: ids are not contiguous from {VOCAB_RESERVED}")
            vocab.entries[name] = pa.table({"value": part["value"], "day": part["day"], "count": part["count"]},
                                           schema=_ENTRY_SCHEMA)
        return vocab

    def save(self, directory: str) -> str:
        """Writes ``<directory>/vocab.parquet`` atomically (temp file + rename); returns its path."""
        os.makedirs(directory, exist_ok=True)
        parts = []
        for name, t in self.entries.items():
            ids = np.arange(VOCAB_RESERVED, VOCAB_RESERVED + t.num_rows, dtype=np.int64)
            parts.append(pa.table({"feature": pa.array([name] * t.num_rows, pa.string()),
                                   "id": pa.array(ids, pa.int64()), "value": t["value"], "day": t["day"],
                                   "count": t["count"]}))
        path = os.path.join(directory, VOCAB_FILE)
        return atomic_write(path, lambda fh: pq.write_table(pa.concat_tables(parts) if parts else pa.table({}), fh))

    # ------------------------------------------------------------------ growth
    def extend(self, counts: Mapping[str, pa.Table], day: str, schema: Schema) -> "Vocabulary":
        """Returns a new vocabulary with the day's admitted values appended.

        A value is admitted when it is not yet present and its count for the day is at least the feature's
        ``min_count``; new values are appended by decreasing count, ties by value (deterministic). A feature
        stops growing at ``num_embeddings`` ids (reserved included).
        """
        out: dict[str, pa.Table] = dict(self.entries)
        for f in schema.sparse:
            if f.encoding != "vocab" or f.name not in counts:
                continue
            cur = self.entries[f.name]
            c = counts[f.name]
            c = c.filter(pc.greater_equal(c["count"], f.min_count))
            if cur.num_rows:
                c = c.filter(pc.invert(pc.is_in(c["value"], value_set=cur["value"].combine_chunks())))
            room = f.num_embeddings - VOCAB_RESERVED - cur.num_rows
            c = c.sort_by([("count", "descending"), ("value", "ascending")])
            if c.num_rows > room:
                log.warning("vocab %s: capacity %d reached on %s; %d new values map to the rare id",
                            f.name, f.num_embeddings, day, c.num_rows - max(room, 0))
                c = c.slice(0, max(room, 0))
            new = pa.table({"value": c["value"], "day": pa.array([day] * c.num_rows, pa.string()),
                            "count": c["count"]}, schema=_ENTRY_SCHEMA)
            out[f.name] = pa.concat_tables([cur, new]).combine_chunks() if new.num_rows else cur
        return Vocabulary(out)

    def delta(self, day: str) -> dict[str, Any]:
        """The day's delta artifact: per feature, the ids/values/counts admitted on ``day`` and the size."""
        out: dict[str, Any] = {"day": day, "reserved_ids": VOCAB_RESERVED, "features": {}}
        for name, t in self.entries.items():
            mask = pc.equal(t["day"], day)
            ids = np.flatnonzero(mask.to_numpy(zero_copy_only=False)) + VOCAB_RESERVED
            out["features"][name] = {"table_size": self.size(name), "num_new": int(len(ids)),
                                     "ids": ids.tolist(), "values": t["value"].filter(mask).to_pylist(),
                                     "counts": t["count"].filter(mask).to_pylist()}
        return out

    def lookup_arrays(self, name: str, day: str) -> tuple[pa.Array, np.ndarray]:
        """(values (V,) string in id order, prior (V,) bool: admitted before ``day``) for encoding ``name``."""
        t = self.entries[name]
        values = t["value"].combine_chunks() if t.num_rows else pa.array([], pa.string())
        prior = pc.less(t["day"], day).to_numpy(zero_copy_only=False) if t.num_rows else np.zeros(0, bool)
        return values, np.asarray(prior, dtype=bool)
