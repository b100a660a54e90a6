"""Day-partitioned processed Parquet: listing days and files, and a small writer for tests and tools.

Layout (written by :mod:`recpipe.ingest`)::

    <root>/day=YYYY-MM-DD/part-00000.parquet ...
    <root>/_manifest.json, <root>/_vocab/, ...     (underscore-prefixed entries are not data)

The production writer lives in :mod:`recpipe.ingest`; :func:`write_processed_day` here is a minimal writer for
tests, benchmarks and synthetic fixtures (no vocabulary, no manifest, no atomic replace).
"""
from __future__ import annotations

import datetime as dt
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq

from recpipe.schema import DAY_COLUMN, Schema, SchemaError

log = logging.getLogger(__name__)

DAY_PREFIX = f"{DAY_COLUMN}="
PARQUET_SUFFIX = ".parquet"


def _is_day(name: str) -> bool:
    try:
        return len(name) == 10 and dt.date.fromisoformat(name).isoformat() == name
    except ValueError:
        return False


def list_days(root: str | os.PathLike[str]) -> list[str]:
    """Days present under ``root`` (``day=YYYY-MM-DD`` folders), ascending; other entries are ignored."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: dataset root does not exist")
    days = []
    for entry in os.listdir(root):
        if not entry.startswith(DAY_PREFIX) or not os.path.isdir(os.path.join(root, entry)):
            continue
        value = entry[len(DAY_PREFIX):]
        if _is_day(value):
            days.append(value)
        else:
            log.warning("%s: ignoring folder %r (not day=YYYY-MM-DD)", root, entry)
    return sorted(days)


def day_files(root: str | os.PathLike[str], day: str) -> list[str]:
    """Parquet files of one day, sorted by name, as paths relative to ``root`` (``day=D/part-....parquet``)."""
    rel_dir = f"{DAY_PREFIX}{day}"
    folder = os.path.join(os.fspath(root), rel_dir)
    names = sorted(n for n in os.listdir(folder)
                   if n.endswith(PARQUET_SUFFIX) and not n.startswith(("_", ".")))
    return [f"{rel_dir}/{n}" for n in names]


def write_processed_day(table: pa.Table, root: str | os.PathLike[str], day: str, *,
                        schema: Schema | None = None, rows_per_file: int | None = None,
                        row_group_size: int = 65_536) -> list[str]:
    """Writes a processed table as ``<root>/day=<day>/part-NNNNN.parquet`` files (test/tool helper).

    Args:
        table: rows with the contract's columns (``day`` may be absent; it is set to ``day``).
        root: dataset root.
        day: ISO date of the partition.
        schema: if given, the table is checked and cast to ``schema.arrow_schema()`` (metadata included).
        rows_per_file: split the day into files of at most this many rows (None: one file).
        row_group_size: Parquet row-group size (the loader's unit of reading).

    Returns:
        The written paths relative to ``root``.
    """
    if not _is_day(day):
        raise ValueError(f"write_processed_day: day {day!r} is not YYYY-MM-DD")
    if DAY_COLUMN in table.column_names:
        table = table.drop_columns([DAY_COLUMN])
    table = table.append_column(DAY_COLUMN, pa.array([day] * table.num_rows, pa.string()))
    if schema is not None:
        schema.check_table(table.schema, source=f"write_processed_day({day})")
        target = schema.arrow_schema()
        table = table.select(target.names).cast(target)
    folder = os.path.join(os.fspath(root), f"{DAY_PREFIX}{day}")
    os.makedirs(folder, exist_ok=True)
    step = rows_per_file or max(table.num_rows, 1)
    written = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), step)):
        rel = f"{DAY_PREFIX}{day}/part-{i:05d}{PARQUET_SUFFIX}"
        pq.write_table(table.slice(start, step), os.path.join(os.fspath(root), rel), row_group_size=row_group_size)
        written.append(rel)
    return written


def read_schema(root: str | os.PathLike[str], rel_path: str) -> Schema:
    """The recpipe schema stored in one processed file's metadata."""
    path = os.path.join(os.fspath(root), rel_path)
    try:
        return Schema.from_arrow(pq.read_schema(path), source=path)
    except SchemaError:
        raise
    except (OSError, pa.ArrowInvalid) as e:
        raise SchemaError(f"{path}: cannot read Parquet schema: {e}") from e
