"""The dataset root: day partitions, manifest, vocabulary, statistics and dead letters, published atomically.

Layout::

    <root>/day=YYYY-MM-DD/part-00000.parquet ...   processed rows (what pyarrow.dataset / the loader reads)
    <root>/_manifest.json                          schema, schema_version, days {day: rows}, table_sizes, encoding
    <root>/_vocab/vocab.parquet, delta-DAY.json    append-only vocabulary and the day's additions
    <root>/_stats/day=DAY/stats.json               statistics
    <root>/_deadletter/day=DAY/*.jsonl             bad rows
    <root>/_staging/...                            work in progress (never visible as a day)

A day is produced under ``_staging`` and published by :meth:`DatasetRoot.publish`: vocabulary first (adding
entries never disturbs published days), then statistics and dead letters, then the data directory is swapped
in by renames, and the manifest is replaced last. A crash at any point leaves every published day whole.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

from recpipe.fileio import atomic_write_json
from recpipe.ingest.options import HASH_RESERVED, MISSING_ID, OOV_ID, VOCAB_RESERVED, IngestError
from recpipe.ingest.vocab import Vocabulary
from recpipe.schema import SCHEMA_VERSION, Schema

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"


@dataclass
class Staging:
    """A day's work-in-progress directory: ``data/`` parts, ``dead/`` JSONL."""

    path: str

    @property
    def data(self) -> str:
        return os.path.join(self.path, "data")

    @property
    def dead(self) -> str:
        return os.path.join(self.path, "dead")


def _number_parts(directory: str) -> None:
    """Renames the staged parts (written under unique names by parallel writers) to ``part-00000.parquet``..."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(".parquet"))
    tmp = [os.path.join(directory, f".renaming-{i:05d}") for i in range(len(names))]
    for n, t in zip(names, tmp):
        os.rename(os.path.join(directory, n), t)
    for i, t in enumerate(tmp):
        os.rename(t, os.path.join(directory, f"part-{i:05d}.parquet"))


_REPLACED = "replaced-"
_SEP = "__"


class DatasetRoot:
    """A long-lived, day-partitioned processed dataset (local or mounted POSIX path)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.recover()

    def recover(self) -> list[str]:
        """Finishes swaps a crash interrupted: a published directory that was renamed aside (``_staging/
        replaced-<name>``) while its replacement never arrived is put back; leftovers of finished swaps are
        deleted. Returns the restored paths. Runs whenever the root is opened."""
        staging = os.path.join(self.root, "_staging")
        restored = []
        if not os.path.isdir(staging):
            return restored
        for name in sorted(os.listdir(staging)):
            if not name.startswith(_REPLACED):
                continue
            aside = os.path.join(staging, name)
            rel = name[len(_REPLACED):].replace(_SEP, os.sep)
            dst = os.path.join(self.root, rel)
            if os.path.exists(dst):  # the new version was published: the old one is garbage
                shutil.rmtree(aside, ignore_errors=True)
            else:  # crashed between the two renames: the old version is still the published one
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.rename(aside, dst)
                restored.append(dst)
        return restored

    def day_dir(self, day: str) -> str:
        return os.path.join(self.root, f"day={day}")

    @property
    def vocab_dir(self) -> str:
        return os.path.join(self.root, "_vocab")

    def stats_path(self, day: str) -> str:
        return os.path.join(self.root, "_stats", f"day={day}", "stats.json")

    def dead_dir(self, day: str) -> str:
        return os.path.join(self.root, "_deadletter", f"day={day}")

    # ------------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, Any] | None:
        path = os.path.join(self.root, MANIFEST)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    def check_compatible(self, schema: Schema, seed: int) -> None:
        """Refuses to mix schemas, encodings or hash seeds inside one root (ids would mean different things)."""
        m = self.manifest()
        if m is None:
            return
        old = Schema.from_dict(m["schema"], source=os.path.join(self.root, MANIFEST))
        if old.raw_columns != schema.raw_columns:
            raise IngestError(f"{self.root}: existing dataset has columns {old.raw_columns}, not {schema.raw_columns}")
        for a, b in zip(old.sparse, schema.sparse):
            if a.encoding != b.encoding or a.multi_hot != b.multi_hot or (
                    a.encoding == "hash" and a.num_embeddings != b.num_embeddings):
                raise IngestError(f"{self.root}: sparse feature {a.name!r} was ingested with encoding={a.encoding}, "
                                  f"num_embeddings={a.num_embeddings}, multi_hot={a.multi_hot}; the new run differs")
        if m.get("hash_seed") != seed:
            raise IngestError(f"{self.root}: dataset uses hash_seed={m.get('hash_seed')}, the run has {seed}")

    def load_vocab(self, schema: Schema) -> Vocabulary:
        return Vocabulary.load(self.vocab_dir, [f.name for f in schema.sparse if f.encoding == "vocab"])

    # ------------------------------------------------------------------ staging / publish
    def new_staging(self, day: str) -> Staging:
        path = os.path.join(self.root, "_staging", f"day={day}-{uuid.uuid4().hex[:12]}")
        os.makedirs(os.path.join(path, "data"))
        os.makedirs(os.path.join(path, "dead"))
        return Staging(path)

    def discard(self, staging: Staging) -> None:
        shutil.rmtree(staging.path, ignore_errors=True)

    def publish(self, staging: Staging, day: str, *, schema: Schema, seed: int, rows: int,
                stats: dict[str, Any], vocab: Vocabulary | None) -> dict[str, Any]:
        """Makes the staged day visible, replacing an earlier version of it; returns the new manifest."""
        table_sizes = {}
        for f in schema.sparse:
            table_sizes[f.name] = vocab.size(f.name) if (f.encoding == "vocab" and vocab) else f.num_embeddings
        if vocab is not None and vocab.entries:
            vocab.save(self.vocab_dir)
            atomic_write_json(os.path.join(self.vocab_dir, f"delta-{day}.json"), vocab.delta(day))
        atomic_write_json(self.stats_path(day), stats)
        _number_parts(staging.data)
        self._swap(staging.dead, self.dead_dir(day))
        self._swap(staging.data, self.day_dir(day))
        shutil.rmtree(staging.path, ignore_errors=True)
        m = self.manifest() or {"days": {}}
        days = dict(m.get("days", {}))
        days[day] = int(rows)
        out_schema = schema.with_table_sizes(table_sizes)
        manifest = {
            "schema": out_schema.to_dict(), "schema_version": SCHEMA_VERSION, "days": dict(sorted(days.items())),
            "rows": int(sum(days.values())), "table_sizes": table_sizes,
            "encoding": {f.name: f.encoding for f in schema.sparse}, "hash_seed": seed,
            "reserved_ids": {"missing": MISSING_ID, "oov": OOV_ID, "hash_reserved": HASH_RESERVED,
                             "vocab_reserved": VOCAB_RESERVED},
        }
        atomic_write_json(os.path.join(self.root, MANIFEST), manifest)
        return manifest

    def _swap(self, src: str, dst: str) -> None:
        """Moves ``src`` to ``dst``; an existing ``dst`` is first renamed aside (to a name derived from ``dst``,
        so :meth:`recover` can put it back if a crash comes before the second rename), then deleted."""
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        trash = None
        if os.path.exists(dst):
            rel = os.path.relpath(dst, self.root).replace(os.sep, _SEP)
            trash = os.path.join(self.root, "_staging", _REPLACED + rel)
            shutil.rmtree(trash, ignore_errors=True)
            os.makedirs(os.path.dirname(trash), exist_ok=True)
            os.rename(dst, trash)
        os.rename(src, dst)
        if trash:
            shutil.rmtree(trash, ignore_errors=True)
