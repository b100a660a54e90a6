"""Input discovery and record-aligned reading: files → days → work units (byte ranges) → line chunks.

A work unit is a byte range ``[start, end)`` of one file. It owns every line whose first byte lies inside
the range, so adjacent ranges split a file exactly (each line read once) whatever the cut points. gzip files
cannot be seeked and are one unit each; Parquet inputs get one unit per row group. Paths go through Beam's
``FileSystems``, so ``gs://`` / ``s3://`` work whenever the matching Beam extra is installed.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, NamedTuple, Sequence

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from recpipe.ingest.options import DAY_RE, IngestError, IngestOptions

log = logging.getLogger(__name__)

TO_EOF = -1
"""``WorkUnit.end`` meaning "until the end of the file"."""

_SCAN_BYTES = 1 << 16


class WorkUnit(NamedTuple):
    """One independently readable piece of input.

    Attributes:
        path: the file.
        start: first byte (delimited text) or row-group index (Parquet).
        end: end byte (exclusive; :data:`TO_EOF` for the whole rest) or row-group index + 1 (Parquet).
        columns: column names of a delimited file, in file order.
    """

    path: str
    start: int
    end: int
    columns: tuple[str, ...]


def _is_compressed(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files named by ``inputs`` (files, globs, or directories — a directory means its direct children).

    Raises:
        IngestError: when a pattern matches nothing.
    """
    files: list[str] = []
    for spec in inputs:
        pattern = spec
        if "*" not in spec and "?" not in spec and os.path.isdir(spec):
            pattern = os.path.join(spec, "*")
        matched = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
        matched = [p for p in matched if not os.path.basename(p).startswith((".", "_"))
                   and not p.endswith((".json", ".yaml", ".yml"))]
        if not matched:
            raise IngestError(f"input {spec!r}: no files matched")
        files.extend(sorted(matched))
    return sorted(dict.fromkeys(files))


def group_by_day(files: Sequence[str], day: str | None) -> dict[str, list[str]]:
    """``{day: files}``; with ``day`` given every file belongs to it, else the day comes from the file name."""
    if day is not None:
        if not DAY_RE.fullmatch(day):
            raise IngestError(f"day {day!r}: expected YYYY-MM-DD")
        return {day: list(files)}
    out: dict[str, list[str]] = {}
    for f in files:
        m = DAY_RE.search(os.path.basename(f))
        if m is None:
            raise IngestError(f"{f}: cannot infer the day from the file name (want YYYY-MM-DD in it); "
                              "pass day= explicitly")
        out.setdefault(m.group(1), []).append(f)
    return dict(sorted(out.items()))


def read_header(path: str, delimiter: str) -> tuple[str, ...]:
    """The first line of a delimited file split on ``delimiter`` (surrounding quotes removed)."""
    with FileSystems.open(path) as fh:
        head = b""
        while b"\n" not in head:
            block = fh.read(_SCAN_BYTES)
            if not block:
                break
            head += block
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8")
    if not line:
        raise IngestError(f"{path}: empty file or empty header line")
    return tuple(c.strip().strip('"') for c in line.split(delimiter))


def plan_units(files: Sequence[str], raw_columns: Sequence[str], opts: IngestOptions) -> list[WorkUnit]:
    """Splits ``files`` into work units (byte ranges of ``opts.split_bytes``; row groups for Parquet)."""
    units: list[WorkUnit] = []
    for path in files:
        if opts.input_format == "parquet":
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                n_groups = pq.ParquetFile(fh).num_row_groups
            units.extend(WorkUnit(path, g, g + 1, ()) for g in range(n_groups))
            continue
        columns = read_header(path, opts.delimiter) if opts.has_header else tuple(raw_columns)
        if _is_compressed(path):
            units.append(WorkUnit(path, 0, TO_EOF, columns))
            continue
        size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
        starts = range(0, max(size, 1), opts.split_bytes)
        units.extend(WorkUnit(path, s, min(s + opts.split_bytes, size), columns) for s in starts)
    return units


def iter_line_chunks(unit: WorkUnit, chunk_bytes: int, *, skip_header: bool) -> Iterator[tuple[int, bytes]]:
    """Reads the lines a byte-range unit owns, in chunks of whole lines.

    Args:
        unit: the range; lines starting at byte offsets in ``[start, end)`` are yielded.
        chunk_bytes: approximate chunk size.
        skip_header: drop the file's first line (a CSV header) when the range starts at 0.

    Yields:
        ``(offset, data)``: ``data`` holds complete lines (the last one may lack its newline at EOF) and
        ``offset`` is the byte offset of ``data[0]`` in the (uncompressed) file.
    """
    end = None if unit.end == TO_EOF else unit.end
    with FileSystems.open(unit.path) as fh:
        pos = unit.start
        carry = b""
        if unit.start > 0:  # the line straddling `start` belongs to the previous range
            fh.seek(unit.start - 1)
            pos = unit.start - 1
        skipping = unit.start > 0 or skip_header
        while True:
            if end is not None and pos >= end and not skipping:
                return
            block = fh.read(chunk_bytes)
            buf = carry + block if carry else block
            if skipping:
                nl = buf.find(b"\n")
                if nl < 0:
                    if not block:
                        return
                    pos, carry = pos + len(buf), b""
                    continue
                pos, buf, skipping = pos + nl + 1, buf[nl + 1:], False
                if end is not None and pos >= end:
                    return
            if not block:  # EOF: whatever is left is one last line without a newline
                if buf:
                    yield pos, buf
                return
            last_nl = buf.rfind(b"\n")
            if last_nl < 0:
                carry = buf
                continue
            complete, carry = buf[: last_nl + 1], buf[last_nl + 1:]
            if end is not None and pos + len(complete) > end:
                # keep the lines starting before `end`: cut after the first newline at index >= end - pos - 1
                cut = complete.find(b"\n", end - pos - 1) + 1
                yield pos, complete[:cut]
                return
            yield pos, complete
            pos += len(complete)
