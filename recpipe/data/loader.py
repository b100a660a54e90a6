"""Streaming, time-ordered, shardable, resumable reader of processed day-partitioned Parquet.

Rows form one *stream*: days ascending, files of a day sorted by name, rows in file order. The stream is cut
into *global batches* of ``batch_size`` rows (the last one partial unless ``drop_last``), and global batch
``g`` (counted from the loader's start) goes to::

    rank  = g % world_size,   step = g // world_size,   DataLoader worker = step % num_workers

so each rank sees its batches in time order, every row is read exactly once across ranks and workers, and a
``torch.utils.data.DataLoader(loader, batch_size=None, num_workers=W)`` (which takes batches from its workers
round-robin) hands rank ``r`` the global batches ``r, r + world_size, ...`` in order.

Reading is bounded in memory: Parquet files are opened through :mod:`pyarrow.dataset` and read one row group
at a time (the ingestion writer uses ~64k-row groups); a shard reads only the row groups that hold its rows.

**Cursor.** After ``n`` batches on every rank (the lock-step of data-parallel training), exactly the first
``n * world_size`` global batches are consumed, whatever the worker count. :meth:`ParquetLoader.state_dict`
records that cut (plus the ``day``/``file``/``row_offset`` where unread rows start and the rows consumed) and
:meth:`ParquetLoader.load_state_dict` resumes from it, with the same or a different ``world_size`` /
``batch_size``; new days appended to the root since the checkpoint are simply read after the old ones.

**Shuffling** (off by default; streaming training wants time order): with ``shuffle_window = K > 0`` the rows
of each run of ``K`` consecutive steps of a rank are permuted (seeded by ``seed``, the window and the rank)
before being cut into that rank's batches. It mixes rows over ``K * batch_size`` rows of the rank's stream,
keeps memory bounded, and keeps exactly-once; with several DataLoader workers each worker reads the whole
window of its rank (W-fold decoding). A cursor inside a window resumes exactly only with the same
``batch_size``, ``world_size``, ``shuffle_window`` and ``seed`` (and, if the stream's last window was
partial, no rows appended since); one on a window boundary resumes under any.

A data-parallel cut is exact when every rank took the same number of batches; at the very end of the stream
ranks may hold one batch more or less (:meth:`ParquetLoader.num_batches` per rank), so lock-step trainers stop
at the smallest count (``drop_last`` and ``len(loader)``) or checkpoint before the tail.
"""
from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch
from torch.utils.data import IterableDataset, get_worker_info

from recpipe.config import JsonConfig
from recpipe.data.batch import Batch
from recpipe.data.parquet_io import day_files, list_days, read_schema
from recpipe.schema import Schema, SchemaError

log = logging.getLogger(__name__)

CURSOR_VERSION = 1


@dataclass(frozen=True)
class LoaderConfig(JsonConfig):
    """How to read.

    Attributes:
        batch_size: rows per batch (B).
        start_day: first day to read (inclusive, ``YYYY-MM-DD``); None = the earliest present.
        end_day: last day to read (inclusive); None = the latest present.
        drop_last: drop the stream's final partial batch instead of yielding it.
        shuffle_window: 0 = time order; K > 0 = permute rows within windows of K steps of a rank (see module doc).
        seed: seed of the shuffle.
        validate_ids: check every row group's sparse ids are in ``[0, num_embeddings)`` and nothing is null.
    """

    batch_size: int = 4096
    start_day: str | None = None
    end_day: str | None = None
    drop_last: bool = False
    shuffle_window: int = 0
    seed: int = 0
    validate_ids: bool = True


@dataclass(frozen=True)
class _Part:
    """One Parquet file in the stream."""

    day: str
    day_index: int
    path: str  # relative to the root: "day=YYYY-MM-DD/part-00000.parquet"
    start: int  # stream position of the file's first row
    rows: int
    group_starts: tuple[int, ...]  # row offset of each row group inside the file, then ``rows``


class ParquetLoader(IterableDataset):
    """Yields :class:`~recpipe.data.batch.Batch` objects from ``<root>/day=*/part-*.parquet``.

    Args:
        root: dataset root.
        cfg: reading options.
        schema: feature schema; None reads it from the first file's Parquet metadata.
        days: explicit days to read (overrides ``cfg.start_day``/``cfg.end_day``); each must exist.
        rank: this process's data-parallel rank.
        world_size: number of data-parallel ranks.
    """

    def __init__(self, root: str | os.PathLike[str], cfg: LoaderConfig = LoaderConfig(), *,
                 schema: Schema | None = None, days: Sequence[str] | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__()
        if cfg.batch_size < 1:
            raise ValueError(f"LoaderConfig.batch_size must be >= 1, got {cfg.batch_size}")
        if cfg.shuffle_window < 0:
            raise ValueError(f"LoaderConfig.shuffle_window must be >= 0, got {cfg.shuffle_window}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"loader: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.root = os.fspath(root)
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        present = list_days(self.root)
        if days is not None:
            missing = sorted(set(days) - set(present))
            if missing:
                raise FileNotFoundError(f"{self.root}: days {missing} not present (have {present[:3]}...)")
            self.days = sorted(set(days))
        else:
            self.days = [d for d in present if (cfg.start_day is None or d >= cfg.start_day)
                         and (cfg.end_day is None or d <= cfg.end_day)]
        files = [(d, i, rel) for i, d in enumerate(self.days) for rel in day_files(self.root, d)]
        if schema is None:
            if not files:
                raise SchemaError(f"{self.root}: no Parquet files in days {self.days}; pass schema= explicitly")
            schema = read_schema(self.root, files[0][2])
        self.schema = schema
        self._columns = [schema.label.name, *schema.dense_names, *schema.sparse_names]
        self._parts = self._index(files)
        self._starts = [p.start for p in self._parts]
        self.total_rows = self._parts[-1].start + self._parts[-1].rows if self._parts else 0
        # cursor: the stream position where batch 0 starts, and global batches already consumed from there
        self._origin = 0
        self._done = 0
        self._rows_before_origin = 0
        self._rank_batches_before = 0
        self._rank_rows_before = 0
        self._yielded = 0  # batches yielded in-process since the base above
        self._exhausted = False  # the last in-process pass ran to the end: the next one starts over
        self._passes = 0

    # ------------------------------------------------------------------ index
    def _index(self, files: list[tuple[str, int, str]]) -> list[_Part]:
        if not files:
            return []
        dataset = ds.dataset([os.path.join(self.root, rel) for _, _, rel in files], format="parquet")
        frags = {os.path.normpath(f.path): f for f in dataset.get_fragments()}
        parts, start = [], 0
        for day, day_index, rel in files:
            path = os.path.join(self.root, rel)
            frag = frags[os.path.normpath(path)]
            self.schema.check_table(frag.physical_schema, source=path)
            sizes = [rg.num_rows for rg in frag.row_groups]
            bounds = tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]))
            parts.append(_Part(day, day_index, rel, start, bounds[-1], bounds))
            start += bounds[-1]
        return parts

    # ------------------------------------------------------------------ batch arithmetic
    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size

    def _available(self) -> int:
        return self.total_rows - self._origin

    def _num_global(self, origin: int | None = None) -> int:
        avail = self.total_rows - (self._origin if origin is None else origin)
        b = self.cfg.batch_size
        return avail // b if self.cfg.drop_last else -(-avail // b)

    def _batch_rows(self, g: int) -> tuple[int, int]:
        b = self.cfg.batch_size
        return self._origin + g * b, self._origin + min((g + 1) * b, self._available())

    def num_batches(self, rank: int | None = None) -> int:
        """Batches for ``rank`` (default: this loader's rank) from the cursor last loaded or started from.

        Batches yielded since (counted by :meth:`state_dict`) are not subtracted; ``len(loader)`` is what the
        next ``iter(loader)`` yields.
        """
        r = self.rank if rank is None else rank
        left = self._num_global() - self._done - r
        return max(0, -(-left // self.world_size))

    def __len__(self) -> int:
        if self._exhausted:  # the next pass starts over
            return max(0, -(-(self._num_global(origin=0) - self.rank) // self.world_size))
        return self.num_batches() - self._yielded

    def rows_left(self) -> int:
        """Rows this rank still has to read in the current pass (from the cursor plus batches yielded)."""
        return self._rank_rows(self.num_batches()) - self._rank_rows(self._yielded)

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Batch]:
        """One pass from the cursor to the end of the selected days.

        In-process, the loader keeps its place like a file: a new ``iter()`` after an abandoned one continues
        after the batches already yielded, and one after a complete pass starts a new pass from the first
        selected row (so epoch loops work). Inside DataLoader workers each worker yields its share of steps.
        """
        if self._exhausted:
            self._rewind()
        elif self._yielded:
            self._advance(self._yielded)
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = _RowReader(self.root, self._parts, self._starts, self._columns, self.schema,
                            self.cfg.validate_ids)
        if self.cfg.shuffle_window > 0:
            batches = self._shuffled(reader, worker, num_workers)
        else:
            batches = self._ordered(reader, range(worker, self.num_batches(), num_workers))
        for batch in batches:
            self._yielded += 1
            yield batch
        self._exhausted = True

    def _advance(self, n: int) -> None:
        """Moves the cursor base past ``n`` batches of this rank (all ranks in lock-step)."""
        self._rank_rows_before += self._rank_rows(n)
        self._rank_batches_before += n
        self._done = min(self._done + n * self.world_size, self._num_global())
        self._yielded = 0

    def _rewind(self) -> None:
        """Back to the first selected row for a new pass."""
        self._origin = self._done = self._rows_before_origin = 0
        self._rank_batches_before = self._rank_rows_before = self._yielded = 0
        self._exhausted = False
        self._passes += 1

    def _global(self, step: int) -> int:
        return self._done + step * self.world_size + self.rank

    def _ordered(self, reader: "_RowReader", steps: range) -> Iterator[Batch]:
        for j in steps:
            a, b = self._batch_rows(self._global(j))
            table, day = reader.read([(a, b)])
            yield self._to_batch(table, day)

    def _shuffled(self, reader: "_RowReader", worker: int, num_workers: int) -> Iterator[Batch]:
        """Permutes rows within windows of K steps of this rank; windows are anchored at the cursor origin."""
        k = self.cfg.shuffle_window
        first_abs = self._done // self.world_size  # absolute step of relative step 0 (done is a multiple of R)
        last_abs = first_abs + self.num_batches()
        for w_start in range((first_abs // k) * k, last_abs, k):
            w_steps = list(range(w_start, min(w_start + k, last_abs)))  # earlier ones are re-read, not yielded
            wanted = {s for s in w_steps if s >= first_abs and (s - first_abs) % num_workers == worker}
            if not wanted:
                continue
            ranges = [self._batch_rows(s * self.world_size + self.rank) for s in w_steps]
            table, day = reader.read(ranges)
            rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, w_start // k, self.rank]))
            perm = rng.permutation(table.num_rows)
            lens = np.array([b - a for a, b in ranges], dtype=np.int64)
            bounds = np.concatenate([[0], np.cumsum(lens)])
            for i, s in enumerate(w_steps):
                if s in wanted:
                    idx = perm[bounds[i]: bounds[i + 1]]
                    yield self._to_batch(table.take(pa.array(idx)), day[idx])

    def _to_batch(self, table: pa.Table, day: np.ndarray) -> Batch:
        """Arrow rows -> Batch: dense (B, N), feature-major TBE indices/offsets over F features, labels (B,)."""
        sch = self.schema
        n = table.num_rows
        labels = np.array(table.column(sch.label.name).to_numpy(), dtype=np.float32)
        if sch.num_dense:
            dense = np.stack([table.column(c).to_numpy() for c in sch.dense_names], axis=1).astype(np.float32)
        else:
            dense = np.zeros((n, 0), dtype=np.float32)  # (B, 0)
        values, lengths = [], []
        for f in sch.sparse:
            col = table.column(f.name)
            if f.multi_hot:
                lengths.append(np.asarray(pc.list_value_length(col).fill_null(0).to_numpy(), dtype=np.int64))
                values.append(np.asarray(pc.list_flatten(col).to_numpy(), dtype=np.int64))
            else:
                lengths.append(np.ones(n, dtype=np.int64))
                values.append(np.asarray(col.to_numpy(), dtype=np.int64))
        indices = np.concatenate(values) if values else np.zeros(0, dtype=np.int64)  # (T,)
        offsets = np.zeros(len(sch.sparse) * n + 1, dtype=np.int64)  # (F * B + 1,) feature-major
        if lengths:
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        return Batch(dense=torch.from_numpy(dense), indices=torch.from_numpy(indices),
                     offsets=torch.from_numpy(offsets), labels=torch.from_numpy(labels),
                     day=torch.from_numpy(np.ascontiguousarray(day, dtype=np.int32)))

    # ------------------------------------------------------------------ cursor
    def _location(self, row: int) -> dict[str, Any]:
        """Stream row -> {day, file, row_offset}; the end of the stream is the last file's row count."""
        if not self._parts:
            return {"day": None, "file": None, "row_offset": 0}
        i = max(0, bisect.bisect_right(self._starts, row) - 1)
        while i + 1 < len(self._parts) and row >= self._parts[i].start + self._parts[i].rows:
            i += 1  # skip empty files
        p = self._parts[i]
        return {"day": p.day, "file": p.path, "row_offset": row - p.start}

    def _locate(self, loc: Mapping[str, Any], *, what: str) -> int:
        if loc.get("file") is None:
            return 0
        for p in self._parts:
            if p.path == loc["file"]:
                off = int(loc["row_offset"])
                if not 0 <= off <= p.rows:
                    raise ValueError(f"cursor {what}: row_offset {off} outside {p.path} ({p.rows} rows)")
                return p.start + off
        raise ValueError(f"cursor {what}: file {loc['file']!r} is not among this loader's files under "
                         f"{self.root} (days {self.days[:1]}..{self.days[-1:]}); was it rewritten or filtered out?")

    def _rank_rows(self, n: int) -> int:
        """Rows in this rank's first ``n`` batches from the cursor (all full except maybe the stream's last)."""
        if n == 0:
            return 0
        last_g = self._global(n - 1)
        a, b = self._batch_rows(last_g)
        return (n - 1) * self.cfg.batch_size + (b - a)

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """The data cursor after this rank consumed ``batches_consumed`` batches since the last (re)start.

        Args:
            batches_consumed: batches this rank took from the loader; None = as counted by the in-process
                iterator. Pass it when iterating through a DataLoader with workers (the workers' counters
                are not visible here). Every rank must have taken the same number for the cut to be exact.

        Returns:
            JSON-able dict: ``day``, ``file``, ``row_offset`` (where unread rows begin), ``rows_consumed`` and
            ``batches_consumed`` (this rank, cumulative over resumes), ``stream_rows_consumed`` (all ranks),
            plus what :meth:`load_state_dict` needs.
        """
        n = self._yielded if batches_consumed is None else int(batches_consumed)
        if not 0 <= n <= self.num_batches():
            raise ValueError(f"state_dict: batches_consumed={n} outside [0, {self.num_batches()}] for rank "
                             f"{self.rank}")
        done = min(self._done + n * self.world_size, self._num_global())
        rows_done = min(done * self.cfg.batch_size, self._available())
        k = self.cfg.shuffle_window
        window_rows = rows_done
        if k > 0 and done < self._num_global():
            window_rows = (done // (k * self.world_size)) * k * self.world_size * self.cfg.batch_size
        nxt = self._location(self._origin + window_rows)
        return {
            "version": CURSOR_VERSION,
            "day": nxt["day"], "file": nxt["file"], "row_offset": nxt["row_offset"],
            "rows_consumed": self._rank_rows_before + self._rank_rows(n),
            "batches_consumed": self._rank_batches_before + n,
            "stream_rows_consumed": self._rows_before_origin + rows_done,
            "origin": self._location(self._origin), "rows_before_origin": self._rows_before_origin,
            "batches_done": done, "batch_size": self.cfg.batch_size, "drop_last": self.cfg.drop_last,
            "rank": self.rank, "world_size": self.world_size,
            "shuffle_window": k, "seed": self.cfg.seed, "passes": self._passes,
            "exhausted": done >= self._num_global(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Positions the loader at a cursor from :meth:`state_dict` (of this or an earlier loader)."""
        if state.get("version") != CURSOR_VERSION:
            raise ValueError(f"cursor: version {state.get('version')!r} unsupported (want {CURSOR_VERSION})")
        origin = self._locate(state["origin"], what="origin")
        b_old, r_old, k_old = int(state["batch_size"]), int(state["world_size"]), int(state["shuffle_window"])
        done = int(state["batches_done"])
        same = (b_old == self.cfg.batch_size and k_old == self.cfg.shuffle_window
                and (k_old == 0 or (r_old == self.world_size and int(state["seed"]) == self.cfg.seed)))
        if same and bool(state.get("drop_last", False)) == self.cfg.drop_last:
            self._origin, self._done = origin, done
            self._rows_before_origin = int(state["rows_before_origin"])
        else:
            if k_old > 0 and done % (k_old * r_old) != 0 and not state.get("exhausted", False):
                raise ValueError(
                    f"cursor: stopped inside a shuffle window (batches_done={done}, window={k_old}x{r_old}); "
                    "resume with the same batch_size, world_size, shuffle_window and seed")
            rows_done = int(state["stream_rows_consumed"]) - int(state["rows_before_origin"])
            self._origin, self._done = origin + rows_done, 0
            self._rows_before_origin = int(state["stream_rows_consumed"])
        if self._origin > self.total_rows:
            raise ValueError(f"cursor: position {self._origin} beyond the {self.total_rows} rows under {self.root}")
        same_rank = int(state["rank"]) == self.rank and r_old == self.world_size
        self._rank_batches_before = int(state["batches_consumed"]) if same_rank else 0
        self._rank_rows_before = int(state["rows_consumed"]) if same_rank else 0
        self._yielded = 0
        self._exhausted = False
        self._passes = int(state.get("passes", 0))
        log.info("loader %s: resumed at %s/%s row %s (%d global batches of %d done)", self.root, state["day"],
                 state["file"], state["row_offset"], self._done, self.cfg.batch_size)


class _RowReader:
    """Reads stream row ranges through pyarrow.dataset, one row group at a time (the last one cached)."""

    def __init__(self, root: str, parts: list[_Part], starts: list[int], columns: list[str], schema: Schema,
                 validate: bool) -> None:
        self.root, self.parts, self.starts, self.columns = root, parts, starts, columns
        self.schema, self.validate = schema, validate
        self._frags: dict[int, ds.ParquetFileFragment] = {}
        self._cached: tuple[int, int, pa.Table] | None = None
        self._target = pa.schema([schema.arrow_schema(with_day=False).field(c) for c in columns])

    def _group(self, pi: int, gi: int) -> pa.Table:
        if self._cached is not None and self._cached[:2] == (pi, gi):
            return self._cached[2]
        part = self.parts[pi]
        path = os.path.join(self.root, part.path)
        if pi not in self._frags:
            self._frags = {pi: next(iter(ds.dataset(path, format="parquet").get_fragments()))}
        table = self._frags[pi].subset(row_group_ids=[gi]).to_table(columns=self.columns)
        table = table.select(self.columns).cast(self._target)
        if self.validate:
            self._check(table, f"{path} (row group {gi})")
        self._cached = (pi, gi, table)
        return table

    def _check(self, table: pa.Table, source: str) -> None:
        for name in self.columns:
            if table.column(name).null_count:
                raise SchemaError(f"{source}: column {name!r} has {table.column(name).null_count} nulls")
        for f in self.schema.sparse:
            col = table.column(f.name)
            vals = pc.list_flatten(col) if f.multi_hot else col
            if vals.null_count:
                raise SchemaError(f"{source}: multi-hot feature {f.name!r} has {vals.null_count} null ids")
            if len(vals) == 0:
                continue
            mm = pc.min_max(vals).as_py()
            if mm["min"] is not None and (mm["min"] < 0 or mm["max"] >= f.num_embeddings):
                raise SchemaError(f"{source}: sparse feature {f.name!r} has ids in [{mm['min']}, {mm['max']}], "
                                  f"outside [0, {f.num_embeddings})")

    def read(self, ranges: Sequence[tuple[int, int]]) -> tuple[pa.Table, np.ndarray]:
        """Rows of the stream ranges ``[a, b)``, concatenated, plus each row's day index (int32)."""
        pieces: list[pa.Table] = []
        days: list[np.ndarray] = []
        for a, b in ranges:
            pi = max(0, bisect.bisect_right(self.starts, a) - 1)
            row = a
            while row < b:
                part = self.parts[pi]
                end = part.start + part.rows
                if row >= end:
                    pi += 1
                    continue
                local = row - part.start
                gi = bisect.bisect_right(part.group_starts, local) - 1
                g_lo, g_hi = part.group_starts[gi], part.group_starts[gi + 1]
                take = min(b, part.start + g_hi) - row
                pieces.append(self._group(pi, gi).slice(local - g_lo, take))
                days.append(np.full(take, part.day_index, dtype=np.int32))
                row += take
        if not pieces:
            empty = self._target.empty_table()
            return empty, np.zeros(0, dtype=np.int32)
        return pa.concat_tables(pieces).combine_chunks(), np.concatenate(days)


__all__ = ["CURSOR_VERSION", "LoaderConfig", "ParquetLoader"]
