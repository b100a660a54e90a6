"""Benchmark: the Beam ingest vs the single-process pyarrow engine on the same Criteo-format file (issue 3).

Both engines run the same parse → validate → transform (clip, fill, log1p; hashed or vocabulary ids) → write
Parquet work, from the same raw TSV into fresh dataset roots, side by side in one process run. The input is a
synthetic Criteo-layout day written by :func:`write_criteo_tsv` below (vectorised numpy + pyarrow.csv:
Zipf-distributed 8-hex tokens, heavy-tailed counts, missing values, a few negatives), or a real file with
``--input``. Beam runs on the DirectRunner in multi-processing mode with one worker per core.

Run::

    python benchmarks/ingest.py                         # 2M rows, hash encoding, prints a Markdown table
    python benchmarks/ingest.py --rows 200000 --encoding vocab
    python benchmarks/ingest.py --input /data/criteo/day_0.tsv --day 2024-01-01
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recpipe.tasks.ingest import IngestConfig, run

logger = logging.getLogger("benchmarks.ingest")

NUM_DENSE, NUM_SPARSE = 13, 26
CARDINALITIES = (1460, 583, 100000, 60000, 305, 24, 12517, 633, 3, 93145, 5683, 80000, 3194,
                 27, 14992, 70000, 10, 5652, 2173, 4, 90000, 18, 15, 28000, 105, 14283)
"""Per-feature id spaces of C1..C26 (a Criteo-like spread)."""
MISSING_RATE = 0.1
ZIPF_EXPONENT = 1.1
CHUNK_ROWS = 250_000


def _hex_tokens(ids: np.ndarray) -> pa.Array:
    """(B,) uint32 ids → (B,) 8-hex-character strings, vectorised through a (B, 8) byte matrix."""
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    mat = digits[(ids[:, None] >> shifts[None, :]) & 0xF]  # (B, 8)
    offsets = np.arange(0, 8 * (len(ids) + 1), 8, dtype=np.int32)
    return pa.StringArray.from_buffers(len(ids), pa.py_buffer(offsets), pa.py_buffer(mat.tobytes()))


def write_criteo_tsv(path: str, rows: int, seed: int = 0) -> None:
    """Writes ``rows`` Criteo-format lines (label, I1..I13, C1..C26; empty = missing) to ``path``."""
    rng = np.random.default_rng(seed)
    salts = rng.integers(0, 2**32, size=NUM_SPARSE, dtype=np.uint64)
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with pacsv.CSVWriter(path, pa.schema([pa.field(n, pa.string()) for n in names]), write_options=opts) as w:
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            cols = [pa.array((rng.random(n) < 0.25).astype(np.int8).astype(str))]
            for j in range(NUM_DENSE):
                v = np.floor(np.exp(rng.normal(1.0 + 0.2 * j, 1.5, n))).astype(np.int64)
                if j == 1:
                    v[rng.random(n) < 0.02] = -1
                cols.append(pa.array(v.astype(str), mask=rng.random(n) < MISSING_RATE))
            for j, card in enumerate(CARDINALITIES):
                rank = np.minimum(rng.zipf(ZIPF_EXPONENT, n), card) - 1
                ids = ((rank.astype(np.uint64) * np.uint64(2654435761) + salts[j]) & np.uint64(0xFFFFFFFF))
                tok = _hex_tokens(ids.astype(np.uint32))
                cols.append(_with_missing(tok, rng))
            w.write_table(pa.table(cols, names=names))


def _with_missing(tok: pa.Array, rng: np.random.Generator) -> pa.Array:
    """Nulls a ``MISSING_RATE`` share of the tokens (written as empty fields)."""
    return pc.if_else(pa.array(rng.random(len(tok)) < MISSING_RATE), pa.scalar(None, pa.string()), tok)


def _time_engine(engine: str, path: str, day: str, root: str, encoding: str, beam_args: list[str]) -> tuple[float, int]:
    shutil.rmtree(root, ignore_errors=True)
    cfg = IngestConfig(engine=engine, encoding=encoding, min_count=2, beam_args=beam_args)
    t0 = time.perf_counter()
    res = run(cfg, inputs=[path], dataset_root=root, day=day)
    return time.perf_counter() - t0, int(res.metrics["ingest/rows_in"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--input", default=None, help="a real Criteo-format TSV (default: synthetic)")
    ap.add_argument("--day", default="2024-01-01")
    ap.add_argument("--encoding", choices=("hash", "vocab"), default="hash")
    ap.add_argument("--work-dir", default=None, help="where the input and outputs go (default: a temp dir)")
    ap.add_argument("--beam-arg", action="append", default=[], help="extra Beam option (repeatable)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.work_dir or tempfile.mkdtemp(prefix="recpipe-ingest-bench-")
    os.makedirs(work, exist_ok=True)
    path = args.input
    if path is None:
        path = os.path.join(work, f"{args.day}.tsv")
        if not os.path.exists(path):
            t0 = time.perf_counter()
            write_criteo_tsv(path, args.rows)
            logger.warning("wrote %s (%d rows, %.0f MB) in %.1f s", path, args.rows, os.path.getsize(path) / 1e6,
                           time.perf_counter() - t0)
    size_mb = os.path.getsize(path) / 1e6
    results = []
    for engine in ("arrow", "beam"):
        secs, rows = _time_engine(engine, path, args.day, os.path.join(work, f"root-{engine}"), args.encoding,
                                  args.beam_arg)
        results.append((engine, rows, secs))
    base = results[0][2]
    print(f"Input: {'synthetic' if args.input is None else path}, {results[0][1]:,} rows, {size_mb:.0f} MB; "
          f"encoding={args.encoding}; {os.cpu_count()} cores, {platform.processor() or platform.machine()}\n")
    print("| engine | rows | seconds | rows/s | vs pyarrow |")
    print("|---|---:|---:|---:|---:|")
    for engine, rows, secs in results:
        label = "pyarrow, 1 process" if engine == "arrow" else f"Beam DirectRunner, multi_processing x{os.cpu_count()}"
        print(f"| {label} | {rows:,} | {secs:.1f} | {rows / secs:,.0f} | {base / secs:.2f}x |")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
