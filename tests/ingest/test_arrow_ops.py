"""Per-batch functions (parse → validate → encode) against hand-computed and naive references."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recpipe.ingest.hashing import bucketize, hash_strings, seed_for
from recpipe.ingest.options import IngestOptions
from recpipe.ingest.parse import OFFSET_COLUMN, parse_delimited
from recpipe.ingest.sources import WorkUnit
from recpipe.ingest.stats import DayStats
from recpipe.ingest.transform import Encoders, encode_rows, validate_rows
from recpipe.ingest.vocab import Vocabulary, count_values
from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature, criteo_schema

from ._data import criteo_lines

FLOAT32_TOL = 1e-6
"""Outputs are float32: log1p of values < 100 agrees with float64 to ~1e-7 relative."""

SCHEMA = criteo_schema(1000)
OPTS = IngestOptions(max_row_bytes=400)
UNIT = WorkUnit("mem.tsv", 0, -1, tuple(SCHEMA.raw_columns))


def _parse_validate(lines: list[str], opts: IngestOptions = OPTS):
    data = ("\n".join(lines) + "\n").encode()
    rows, dead = parse_delimited(data, 100, UNIT, SCHEMA, opts)
    clean, dead2 = validate_rows(rows, SCHEMA, UNIT.path, opts)
    return data, rows, dead, clean, dead2


@pytest.mark.parametrize("reason,mutate", [
    ("wrong_column_count", lambda f: f[:-1]),
    ("unparsable_number", lambda f: f[:3] + ["12x"] + f[4:]),
    ("missing_label", lambda f: [""] + f[1:]),
    ("bad_label", lambda f: ["2"] + f[1:]),
    ("oversize_row", lambda f: f[:-1] + ["z" * 500]),
])
def test_dead_letter_each_reason(reason, mutate):
    good = criteo_lines(4, seed=3)
    bad = "\t".join(mutate(good[2].split("\t")))
    lines = [good[0], good[1], bad, good[3]]
    data, rows, dead, clean, dead2 = _parse_validate(lines)
    all_dead = pa.concat_tables([dead, dead2])
    assert all_dead.num_rows == 1, all_dead.to_pylist()
    rec = all_dead.to_pylist()[0]
    expected_offset = 100 + len(("\n".join(lines[:2]) + "\n").encode())
    assert (rec["reason"], rec["file"], rec["offset"], rec["unit"]) == (reason, "mem.tsv", expected_offset, "byte")
    assert data[expected_offset - 100:].startswith(rec["raw"][:50].encode())
    assert clean.num_rows == 3
    assert clean[OFFSET_COLUMN].to_pylist()[2] == expected_offset + len(bad.encode()) + 1
    if reason == "unparsable_number":
        assert rec["field"] == "I3"


def test_empty_line_and_all_oversize_chunk():
    _, rows, dead, clean, _ = _parse_validate([criteo_lines(1, seed=1)[0], ""])
    assert dead.to_pylist()[0]["reason"] == "wrong_column_count" and clean.num_rows == 1
    rows, dead = parse_delimited(b"x" * 500 + b"\n", 0, UNIT, SCHEMA, OPTS)
    assert rows.num_rows == 0 and dead["reason"].to_pylist() == ["oversize_row"]


def test_dense_transform_matches_numpy():
    lines = criteo_lines(50, seed=5)
    _, rows, _, clean, dead2 = _parse_validate(lines)
    assert dead2.num_rows == 0
    enc = Encoders.build(SCHEMA, seed=9, day="2024-01-01", vocabulary=None)
    stats = DayStats(SCHEMA.num_dense, SCHEMA.num_sparse)
    out = encode_rows(clean, enc, stats)
    assert out.schema.equals(SCHEMA.arrow_schema(), check_metadata=False)
    for j in range(1, 14):
        raw = [ln.split("\t")[j] for ln in lines]
        want = np.array([np.log1p(max(float(v), 0.0)) if v else 0.0 for v in raw])
        np.testing.assert_allclose(out.column(f"I{j}").to_numpy(), want, rtol=FLOAT32_TOL, atol=FLOAT32_TOL)
        assert stats.dense_missing[j - 1] == sum(v == "" for v in raw)
        np.testing.assert_allclose(stats.dense_sum[j - 1], want.astype(np.float32).astype(np.float64).sum(),
                                   rtol=1e-9)
    assert out.column("label").to_pylist() == [float(ln.split("\t")[0]) for ln in lines]
    assert stats.rows == 50 and stats.label_sum == sum(float(ln[0]) for ln in lines)
    assert set(out.column("day").to_pylist()) == {"2024-01-01"}


def test_hash_encoding_matches_reference():
    lines = criteo_lines(40, seed=6)
    _, _, _, clean, _ = _parse_validate(lines)
    out = encode_rows(clean, Encoders.build(SCHEMA, seed=9, day="d", vocabulary=None))
    for j in (1, 14, 26):
        raw = [ln.split("\t")[13 + j] for ln in lines]
        h = hash_strings(pa.array(raw), seed_for(f"C{j}", 9))
        want = np.where([v == "" for v in raw], 0, bucketize(h, 1000, 1))
        assert out.column(f"C{j}").to_pylist() == want.tolist()


def test_vocab_encoding_ids_rare_and_missing():
    schema = Schema("s", LabelSpec("y"), (DenseFeature("x"),),
                    (SparseFeature("c", num_embeddings=100, encoding="vocab", min_count=2),))
    unit = WorkUnit("m.tsv", 0, -1, ("y", "x", "c"))
    opts = IngestOptions()
    data = b"1\t1\tb\n0\t2\ta\n1\t3\tb\n0\t4\t\n1\t5\ta\n0\t6\tb\n1\t7\tz\n"
    rows, _ = parse_delimited(data, 0, unit, schema, opts)
    clean, _ = validate_rows(rows, schema, unit.path, opts)
    vocab = Vocabulary.empty(["c"]).extend({"c": count_values(clean["c"])}, "2024-01-01", schema)
    # b (3x) then a (2x); z (1x) is rare
    assert vocab.entries["c"]["value"].to_pylist() == ["b", "a"]
    out = encode_rows(clean, Encoders.build(schema, 0, "2024-01-01", vocab))
    assert out.column("c").to_pylist() == [2, 3, 2, 0, 3, 2, 1]
    # next day: "z" now frequent -> appended; yesterday's ids unchanged
    v2 = vocab.extend({"c": pa.table({"value": ["z", "a", "q"], "count": pa.array([5, 9, 1], pa.int64())})},
                      "2024-01-02", schema)
    assert v2.entries["c"]["value"].to_pylist() == ["b", "a", "z"]
    stats = DayStats(1, 1)
    out2 = encode_rows(clean, Encoders.build(schema, 0, "2024-01-02", v2), stats)
    assert out2.column("c").to_pylist() == [2, 3, 2, 0, 3, 2, 4]
    assert stats.sparse_new[0] == 1 and stats.sparse_values[0] == 6  # z is new against yesterday's vocab
    assert v2.delta("2024-01-02")["features"]["c"] == {"table_size": 5, "num_new": 1, "ids": [4],
                                                       "values": ["z"], "counts": [5]}


def test_multi_hot_hash():
    schema = Schema("m", LabelSpec("y"), (), (SparseFeature("tags", num_embeddings=50, multi_hot=True),))
    unit = WorkUnit("m.csv", 0, -1, ("y", "tags"))
    opts = IngestOptions(input_format="csv")
    rows, _ = parse_delimited(b"1,a|b\n0,\n1,||c|\n", 0, unit, schema, opts)
    clean, _ = validate_rows(rows, schema, unit.path, opts)
    stats = DayStats(0, 1)
    out = encode_rows(clean, Encoders.build(schema, 4, "d", None), stats)
    ref = {v: int(bucketize(hash_strings(pa.array([v]), seed_for("tags", 4)), 50, 1)[0]) for v in "abc"}
    assert out.column("tags").to_pylist() == [[ref["a"], ref["b"]], [0], [ref["c"]]]
    assert stats.sparse_missing[0] == 1 and stats.sparse_values[0] == 3
