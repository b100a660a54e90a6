"""Writers for processed Parquet parts and dead-letter JSONL (each writer owns distinct file names)."""
from __future__ import annotations

import json
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from recpipe.ingest.options import IngestOptions


class PartWriter:
    """Streams record batches into ``<directory>/<prefix>-NNNNN.parquet`` parts.

    Row groups hold ``opts.row_group_rows`` rows (the last one of a part may be shorter) and a part rolls
    over past ``opts.part_rows`` rows. ``close()`` returns ``[(path, rows), ...]``.
    """

    def __init__(self, directory: str, schema: pa.Schema, opts: IngestOptions, prefix: str | None = None) -> None:
        self.directory = directory
        self.schema = schema
        self.opts = opts
        self.prefix = prefix or f"part-{uuid.uuid4().hex[:12]}"
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._part_rows = 0
        self.parts: list[tuple[str, int]] = []
        os.makedirs(directory, exist_ok=True)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        while self._pending_rows >= self.opts.row_group_rows:
            self._flush(self.opts.row_group_rows)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        head, rest = table.slice(0, rows), table.slice(rows)
        if self._writer is None:
            path = os.path.join(self.directory, f"{self.prefix}-{len(self.parts):05d}.parquet")
            self._writer = pq.ParquetWriter(path, self.schema, compression=self.opts.compression)
            self.parts.append((path, 0))
            self._part_rows = 0
        self._writer.write_table(head, row_group_size=rows)
        self._part_rows += head.num_rows
        path, _ = self.parts[-1]
        self.parts[-1] = (path, self._part_rows)
        if self._part_rows >= self.opts.part_rows:
            self._writer.close()
            self._writer = None
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows

    def close(self) -> list[tuple[str, int]]:
        if self._pending_rows:
            self._flush(self._pending_rows)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.parts


def write_dead_jsonl(directory: str, dead: pa.Table, prefix: str | None = None) -> str | None:
    """Writes dead-letter records as one JSON object per line; returns the path (None when empty)."""
    if dead.num_rows == 0:
        return None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{prefix or 'dead-' + uuid.uuid4().hex[:12]}.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        for rec in dead.to_pylist():  # dead rows only: few
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path
