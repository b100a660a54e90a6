"""Raw input → Arrow tables of string columns, with structural problems sent to dead-letter records.

Delimited text is parsed with ``pyarrow.csv`` (every column typed as string, so nothing is coerced before
validation). A line index computed with numpy gives each row its byte offset; lines longer than
``max_row_bytes`` (``oversize_row``) and empty lines (``wrong_column_count``) are cut out before parsing, and
rows with the wrong number of fields are caught by pyarrow's invalid-row handler (``wrong_column_count``).
Only bad rows ever become Python objects.
"""
from __future__ import annotations

import io
import logging
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from recpipe.ingest.options import IngestError, IngestOptions
from recpipe.ingest.sources import WorkUnit
from recpipe.schema import Schema

log = logging.getLogger(__name__)

OFFSET_COLUMN = "__offset"
"""Int64 column carried through validation: byte offset of the row's line (text) or row index (Parquet)."""

REASONS = ("wrong_column_count", "unparsable_number", "missing_label", "bad_label", "oversize_row",
           "out_of_range")
"""Dead-letter reasons. ``out_of_range``: a dense value the configured transform cannot take (log1p of <= -1)."""

DEAD_SCHEMA = pa.schema([
    pa.field("file", pa.string()),
    pa.field("offset", pa.int64()),
    pa.field("unit", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("field", pa.string()),
    pa.field("raw", pa.string()),
])
"""A dead-letter record: where the row was (byte offset or row index), why it failed, and its raw text."""


def dead_table(file: str, offsets: Sequence[int] | np.ndarray, unit: str, reason: str,
               raws: Sequence[str], field: str | None = None) -> pa.Table:
    """Builds dead-letter records for rows of one file sharing one reason."""
    n = len(raws)
    return pa.table({
        "file": pa.array([file] * n, pa.string()),
        "offset": pa.array(np.asarray(offsets, dtype=np.int64), pa.int64()),
        "unit": pa.array([unit] * n, pa.string()),
        "reason": pa.array([reason] * n, pa.string()),
        "field": pa.array([field] * n, pa.string()),
        "raw": pa.array(list(raws), pa.string()),
    }, schema=DEAD_SCHEMA)


def empty_dead() -> pa.Table:
    return DEAD_SCHEMA.empty_table()


def line_index(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and end (exclusive, newline and a trailing ``\\r`` dropped) of every line in ``data``.

    Returns:
        (starts (R,), ends (R,)) int64 arrays; a final line without a newline counts.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    starts = np.concatenate([[0], nl + 1]).astype(np.int64)
    ends = np.concatenate([nl, [len(arr)]]).astype(np.int64)
    if starts[-1] == len(arr):  # data ends with a newline: no empty last line
        starts, ends = starts[:-1], ends[:-1]
    cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13) if len(arr) else np.zeros(len(ends), bool)
    return starts, ends - cr.astype(np.int64)


def _raw_text(data: bytes, start: int, end: int, limit: int) -> str:
    return data[start: min(end, start + limit)].decode("utf-8", errors="replace")


def parse_delimited(data: bytes, offset: int, unit: WorkUnit, schema: Schema,
                    opts: IngestOptions) -> tuple[pa.Table, pa.Table]:
    """Parses a chunk of whole lines.

    Args:
        data: complete lines of ``unit.path`` starting at byte ``offset`` of the file.
        offset: file offset of ``data[0]``.
        unit: the work unit (file name and column names).
        schema: the schema; its raw columns must all be among ``unit.columns``.
        opts: options (delimiter, ``max_row_bytes``).

    Returns:
        (rows, dead): ``rows`` has one string column per schema raw column (empty field = null) plus
        :data:`OFFSET_COLUMN`;
        ``dead`` holds the oversize and wrong-column-count rows.
    """
    starts, ends = line_index(data)
    if len(starts) == 0:
        return _empty_rows(schema), empty_dead()
    dead_parts = []
    lengths = ends - starts
    oversize = lengths > opts.max_row_bytes
    empty = lengths == 0  # pyarrow would read an empty line as a row of nulls: it has 1 field, not len(columns)
    drop = oversize | empty
    for mask, reason in ((oversize, "oversize_row"), (empty, "wrong_column_count")):
        if mask.any():
            idx = np.flatnonzero(mask)
            dead_parts.append(dead_table(unit.path, starts[idx] + offset, "byte", reason,
                                         [_raw_text(data, starts[i], ends[i], opts.dead_raw_chars) for i in idx]))
    if drop.any():  # cut the dropped lines out of the buffer (vectorised byte mask)
        keep = ~drop
        arr = np.frombuffer(data, dtype=np.uint8)
        spans = np.diff(np.append(starts, len(arr)))  # bytes per line, newline included
        data = arr[np.repeat(keep, spans)].tobytes()
        kept_spans = spans[keep]
        new_starts = (np.cumsum(kept_spans) - kept_spans).astype(np.int64)
        file_pos = starts[keep] + offset
        starts, ends = new_starts, new_starts + lengths[keep]
    else:
        file_pos = starts + offset
    if len(starts) == 0:
        return _empty_rows(schema), pa.concat_tables(dead_parts)
    bad_lines: list[int] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        if row.number is None:
            raise IngestError(f"{unit.path}: pyarrow did not report the line number of an invalid row")
        bad_lines.append(row.number - 1)
        return "skip"

    columns = list(unit.columns)
    wanted = schema.raw_columns
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise IngestError(f"{unit.path}: columns {missing} required by schema {schema.name!r} are not in the "
                          f"file's columns {columns}")
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=columns, use_threads=False,
                                           block_size=max(len(data) + 1, 1 << 20)),
            parse_options=pacsv.ParseOptions(delimiter=opts.delimiter,
                                             quote_char=False if opts.input_format == "criteo_tsv" else '"',
                                             ignore_empty_lines=False, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                                 include_columns=wanted, strings_can_be_null=True,
                                                 quoted_strings_can_be_null=True))
    except pa.ArrowInvalid as e:
        raise IngestError(f"{unit.path} (bytes from {offset}): cannot parse: {e}") from e
    n_lines = len(starts)
    if table.num_rows + len(bad_lines) != n_lines:
        raise IngestError(f"{unit.path} (bytes from {offset}): parsed {table.num_rows} rows + {len(bad_lines)} "
                          f"invalid from {n_lines} lines; quoted fields with embedded newlines are unsupported")
    good = np.ones(n_lines, dtype=bool)
    if bad_lines:
        bad = np.asarray(bad_lines, dtype=np.int64)
        good[bad] = False
        dead_parts.append(dead_table(unit.path, file_pos[bad], "byte", "wrong_column_count",
                                     [_raw_text(data, starts[i], ends[i], opts.dead_raw_chars) for i in bad]))
    table = table.append_column(OFFSET_COLUMN, pa.array(file_pos[good], pa.int64()))
    dead = pa.concat_tables(dead_parts) if dead_parts else empty_dead()
    return table, dead


def _empty_rows(schema: Schema) -> pa.Table:
    cols = {c: pa.array([], pa.string()) for c in schema.raw_columns}
    cols[OFFSET_COLUMN] = pa.array([], pa.int64())
    return pa.table(cols)


def read_parquet_unit(unit: WorkUnit, schema: Schema) -> tuple[pa.Table, pa.Table]:
    """Reads one row group of a raw Parquet input (columns by name; types are validated downstream).

    Returns:
        (rows, dead): the schema's raw columns plus :data:`OFFSET_COLUMN` (row index in the file), and an
        empty dead-letter table (Parquet rows cannot have a wrong column count).
    """
    with FileSystems.open(unit.path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        pf = pq.ParquetFile(fh)
        names = pf.schema_arrow.names
        missing = [c for c in schema.raw_columns if c not in names]
        if missing:
            raise IngestError(f"{unit.path}: columns {missing} required by schema {schema.name!r} are not in the "
                              f"Parquet file's columns {names}")
        first = sum(pf.metadata.row_group(g).num_rows for g in range(unit.start))
        table = pf.read_row_group(unit.start, columns=schema.raw_columns)
    rows = np.arange(first, first + table.num_rows, dtype=np.int64)
    return table.append_column(OFFSET_COLUMN, pa.array(rows, pa.int64())), empty_dead()
