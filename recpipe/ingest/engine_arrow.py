"""The single-process pyarrow engine: the same per-batch functions as the Beam pipeline, in a plain loop.

Kept as the baseline of ``benchmarks/ingest.py`` and for small inputs where Beam's start-up dominates.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import pyarrow as pa

from recpipe.ingest.options import IngestOptions
from recpipe.ingest.parse import parse_delimited, read_parquet_unit
from recpipe.ingest.sources import WorkUnit, iter_line_chunks
from recpipe.ingest.stats import DayStats, stats_json
from recpipe.ingest.transform import Encoders, encode_rows, validate_rows
from recpipe.ingest.vocab import count_values, merge_counts
from recpipe.ingest.writer import PartWriter, write_dead_jsonl
from recpipe.schema import Schema

log = logging.getLogger(__name__)


def read_unit(unit: WorkUnit, schema: Schema, opts: IngestOptions) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Yields ``(rows, dead)`` per chunk of a work unit (see :mod:`recpipe.ingest.parse`)."""
    if opts.input_format == "parquet":
        yield read_parquet_unit(unit, schema)
        return
    for offset, data in iter_line_chunks(unit, opts.chunk_bytes, skip_header=opts.has_header):
        yield parse_delimited(data, offset, unit, schema, opts)


def count_vocab_arrow(units: Sequence[WorkUnit], schema: Schema, opts: IngestOptions) -> dict[str, pa.Table]:
    """Pass 1 of the vocabulary encoding: counts of every vocab feature's values over the valid rows."""
    names = [f.name for f in schema.sparse if f.encoding == "vocab"]
    acc: dict[str, list[pa.Table]] = {n: [] for n in names}
    for unit in units:
        for rows, _ in read_unit(unit, schema, opts):
            clean, _ = validate_rows(rows, schema, unit.path, opts)
            for n in names:
                acc[n] = [merge_counts(acc[n] + [count_values(clean[n])])]
    return {n: merge_counts(t) for n, t in acc.items()}


def process_arrow(units: Sequence[WorkUnit], schema: Schema, opts: IngestOptions, enc: Encoders,
                  data_dir: str, dead_dir: str) -> tuple[int, int, dict[str, Any], dict[str, int]]:
    """Parses, validates, encodes and writes every unit.

    Returns:
        (rows_in, rows_written, statistics JSON body, dead rows per reason).
    """
    stats = DayStats(schema.num_dense, schema.num_sparse)
    writer = PartWriter(data_dir, schema.arrow_schema(), opts)
    rows_in, written = 0, 0
    dead_by_reason: dict[str, int] = {}
    dead_parts: list[pa.Table] = []
    for unit in units:
        for rows, dead in read_unit(unit, schema, opts):
            rows_in += rows.num_rows + dead.num_rows
            clean, dead2 = validate_rows(rows, schema, unit.path, opts)
            for d in (dead, dead2):
                if d.num_rows:
                    dead_parts.append(d)
                    for r, c in zip(*_reason_counts(d)):
                        dead_by_reason[r] = dead_by_reason.get(r, 0) + c
            batch = encode_rows(clean, enc, stats)
            writer.write(batch)
            written += batch.num_rows
    writer.close()
    if dead_parts:
        write_dead_jsonl(dead_dir, pa.concat_tables(dead_parts), prefix="dead-00000")
    return rows_in, written, stats_json(stats, schema), dead_by_reason


def _reason_counts(dead: pa.Table) -> tuple[list[str], list[int]]:
    vc = dead["reason"].value_counts()
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()
