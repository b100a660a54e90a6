"""Each Beam PTransform with TestPipeline + assert_that, and the whole pipeline against the pyarrow engine."""
from __future__ import annotations

import collections
import glob
import json
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to

from recpipe.ingest.options import IngestOptions
from recpipe.ingest.parse import OFFSET_COLUMN, parse_delimited
from recpipe.ingest.pipeline import (
    NAMESPACE,
    Account,
    BuildVocabulary,
    ComputeStats,
    CountValues,
    DayPlan,
    ParseAndValidate,
    Transform,
    WriteDeadLetters,
    WriteParquet,
    pipeline_options,
)
from recpipe.ingest.pipeline import run as pipeline_run
from recpipe.ingest.sources import WorkUnit, plan_units
from recpipe.ingest.stats import DayStats, stats_json
from recpipe.ingest.transform import Encoders, encode_rows, validate_rows
from recpipe.schema import criteo_schema
from recpipe.tasks.ingest import IngestConfig, run

from ._data import criteo_lines, write_lines

SCHEMA = criteo_schema(500)
VOCAB_SCHEMA = criteo_schema(500, encoding="vocab", min_count=2)
OPTS = IngestOptions(split_bytes=2000, max_row_bytes=1000)
BEAM_IN_MEMORY = ["--direct_running_mode=in_memory"]


def _bad_lines(seed: int) -> list[str]:
    """30 valid rows with one row per dead-letter reason mixed in (5 bad of 35)."""
    lines = criteo_lines(30, seed=seed)
    f = lines[0].split("\t")
    return (lines[:5] + ["\t".join(f[:-1])] + lines[5:10] + ["\t".join(f[:2] + ["x1"] + f[3:])]
            + lines[10:20] + ["\t".join([""] + f[1:])] + ["\t".join(["0.5"] + f[1:])]
            + lines[20:] + ["\t".join(f[:-1] + ["y" * 1200])])


def _clean_tables(lines: list[str], schema=SCHEMA) -> list[pa.Table]:
    unit = WorkUnit("m.tsv", 0, -1, tuple(schema.raw_columns))
    rows, _ = parse_delimited(("\n".join(lines) + "\n").encode(), 0, unit, schema, OPTS)
    return [validate_rows(rows.slice(i, 10), schema, "m.tsv", OPTS)[0] for i in range(0, rows.num_rows, 10)]


def test_parse_and_validate(tmp_path):
    path = write_lines(tmp_path / "2024-01-01.tsv", _bad_lines(1))
    units = plan_units([path], SCHEMA.raw_columns, OPTS)
    assert len(units) > 3  # several byte ranges
    p = BeamPipeline()
    out = p | beam.Create(units) | ParseAndValidate(SCHEMA, OPTS)
    clean_rows = out.clean | "N" >> beam.Map(lambda t: t.num_rows) | "S" >> beam.CombineGlobally(sum)
    assert_that(clean_rows, equal_to([30]), label="clean")
    offsets = out.clean | "Off" >> beam.FlatMap(lambda t: t[OFFSET_COLUMN].to_pylist())
    with open(path, "rb") as fh:
        raw = fh.read()
    starts = [0] + [i + 1 for i, b in enumerate(raw[:-1]) if b == 10]
    bad_idx = {5, 11, 22, 23, 34}
    assert_that(offsets, equal_to([s for i, s in enumerate(starts) if i not in bad_idx]), label="offsets")
    reasons = out.dead | "R" >> beam.FlatMap(lambda t: t["reason"].to_pylist())
    assert_that(reasons, equal_to(["wrong_column_count", "unparsable_number", "missing_label", "bad_label",
                                   "oversize_row"]), label="dead")
    assert_that(out.rows_in | "Sum" >> beam.CombineGlobally(sum), equal_to([35]), label="rows_in")
    result = p.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    assert counters["rows_in"] == 35
    assert {k: v for k, v in counters.items() if k.startswith("dead_")} == {
        "dead_wrong_column_count": 1, "dead_unparsable_number": 1, "dead_missing_label": 1, "dead_bad_label": 1,
        "dead_oversize_row": 1}


def test_count_values_matches_counter():
    lines = criteo_lines(40, seed=2, vocab=6)
    want = []
    for name, j in (("C1", 14), ("C2", 15)):
        c = collections.Counter(ln.split("\t")[j] for ln in lines)
        c.pop("", None)
        want.append((name, dict(c)))
    with BeamPipeline() as p:
        counts = p | beam.Create(_clean_tables(lines)) | CountValues(["C1", "C2"])
        as_dicts = counts | beam.FlatMap(
            lambda kv: [(k, dict(zip(t["value"].to_pylist(), t["count"].to_pylist()))) for k, t in kv])
        assert_that(as_dicts, equal_to(want))


def test_build_vocabulary_and_transform(tmp_path):
    lines = criteo_lines(40, seed=3, vocab=6)
    tables = _clean_tables(lines, VOCAB_SCHEMA)
    plan = DayPlan((), VOCAB_SCHEMA, OPTS, "2024-01-01", str(tmp_path))
    with BeamPipeline() as p:
        clean = p | "Clean" >> beam.Create(tables)
        enc = clean | CountValues(plan.vocab_features) | BuildVocabulary(plan)
        out = clean | Transform(VOCAB_SCHEMA, beam.pvalue.AsSingleton(enc))
        c1 = out.batches | "C1" >> beam.FlatMap(
            lambda b: zip(b.column("label").to_pylist(), b.column("C1").to_pylist()))
        # reference: values with count >= 2 ranked by (count desc, value); ids from 2; rare 1; missing 0
        cnt = collections.Counter(ln.split("\t")[14] for ln in lines)
        cnt.pop("", None)
        ranked = sorted((v for v, n in cnt.items() if n >= 2), key=lambda v: (-cnt[v], v))
        ids = {v: 2 + i for i, v in enumerate(ranked)}
        want = [(float(ln[0]), 0 if ln.split("\t")[14] == "" else ids.get(ln.split("\t")[14], 1)) for ln in lines]
        assert_that(c1, equal_to(want), label="ids")
        assert_that(out.stats | beam.Map(lambda s: s.rows) | beam.CombineGlobally(sum), equal_to([40]),
                    label="stats")
    assert os.path.exists(tmp_path / "vocab" / "vocab.parquet")


def test_write_parquet_and_dead_letters(tmp_path):
    enc = Encoders.build(SCHEMA, 0, "2024-01-01", None)
    batches = [encode_rows(t, enc) for t in _clean_tables(criteo_lines(25, seed=4))]
    dead = pa.table({"file": ["f"], "offset": pa.array([7], pa.int64()), "unit": ["byte"], "reason": ["bad_label"],
                     "field": ["label"], "raw": ["2\tx"]})
    opts = IngestOptions(row_group_rows=4)
    with BeamPipeline() as p:
        p | "B" >> beam.Create(batches) | WriteParquet(str(tmp_path / "data"), SCHEMA, opts)
        p | "D" >> beam.Create([dead, dead]) | WriteDeadLetters(str(tmp_path / "dead"))
    files = glob.glob(str(tmp_path / "data" / "*.parquet"))
    got = ds.dataset(files).to_table().sort_by("I1")
    want = pa.Table.from_batches(batches).sort_by("I1")
    assert got.equals(want, check_metadata=False)
    assert all(pq.ParquetFile(f).metadata.row_group(0).num_rows <= 4 for f in files)
    recs = [json.loads(x) for f in glob.glob(str(tmp_path / "dead" / "*.jsonl")) for x in open(f)]
    assert recs == [dead.to_pylist()[0]] * 2


def test_compute_stats_equals_one_pass(tmp_path):
    tables = _clean_tables(criteo_lines(45, seed=5))
    enc = Encoders.build(SCHEMA, 0, "d", None)
    ref = DayStats(SCHEMA.num_dense, SCHEMA.num_sparse)
    encode_rows(pa.concat_tables(tables), enc, ref)
    parts = []
    for t in tables:
        s = DayStats(SCHEMA.num_dense, SCHEMA.num_sparse)
        encode_rows(t, enc, s)
        parts.append(s)
    want = stats_json(ref, SCHEMA)
    path = str(tmp_path / "stats.json")
    with BeamPipeline() as p:
        body = p | beam.Create(parts) | ComputeStats(SCHEMA, path)
        assert_that(body | beam.Map(lambda b: (b["rows"], b["label_rate"])),
                    equal_to([(want["rows"], want["label_rate"])]))
    got = json.load(open(path))
    for name in ("I1", "I13"):
        for k, v in want["dense"][name].items():
            assert got["dense"][name][k] == pytest.approx(v, rel=1e-9)
    assert got["sparse"] == want["sparse"]


def test_account(tmp_path):
    dead = pa.table({"reason": ["bad_label", "bad_label", "oversize_row"]})
    with BeamPipeline() as p:
        rows_in = p | "In" >> beam.Create([10, 5])
        dead_pc = p | "Dead" >> beam.Create([dead])
        body = (rows_in, dead_pc) | Account(str(tmp_path / "acc.json"))
        assert_that(body, equal_to([{"rows_in": 15, "dead_by_reason": {"bad_label": 2, "oversize_row": 1}}]))


def test_pipeline_options_defaults():
    d = pipeline_options([]).view_as(DirectOptions)
    assert d.direct_running_mode == "multi_processing" and d.direct_num_workers == os.cpu_count()
    d = pipeline_options(["--direct_running_mode=in_memory"]).view_as(DirectOptions)
    assert d.direct_running_mode == "in_memory"
    d = pipeline_options(["--direct_num_workers=3"]).view_as(DirectOptions)
    assert d.direct_num_workers == 3


def test_beam_engine_matches_arrow_engine(tmp_path):
    """Both engines, two days, every dead-letter reason, half the features hashed and half in a vocabulary:
    the same rows, ids, vocabulary, dead letters and statistics."""
    write_lines(tmp_path / "raw" / "2024-01-01.tsv", _bad_lines(1))
    write_lines(tmp_path / "raw" / "2024-01-02.tsv", criteo_lines(30, seed=2, vocab=30))
    schema = criteo_schema(500).to_dict()
    for i, f in enumerate(schema["sparse"]):
        f.update(encoding="vocab" if i % 2 else "hash", min_count=2)
    base = {"schema": schema, "max_bad_fraction": 0.2, "max_row_bytes": 1000, "split_bytes": 3000}
    results = {}
    for engine in ("arrow", "beam"):
        root = str(tmp_path / engine)
        res = run(IngestConfig.from_dict({**base, "engine": engine, "beam_args": BEAM_IN_MEMORY}),
                  inputs=[str(tmp_path / "raw")], dataset_root=root)
        assert res.metrics["ingest/rows_in"] == res.metrics["ingest/rows"] + res.metrics["ingest/dead_rows"]
        assert res.metrics["ingest/dead_rows"] == 5 and res.metrics["ingest/rows"] == 60
        table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
        cols = table.column_names
        table = table.sort_by([(c, "ascending") for c in cols if c != "day"])
        dead = sorted(json.dumps(json.loads(x), sort_keys=True)
                      for f in glob.glob(os.path.join(root, "_deadletter", "*", "*.jsonl")) for x in open(f))
        stats = json.load(open(os.path.join(root, "_stats", "day=2024-01-02", "stats.json")))
        stats.pop("files")
        manifest = json.load(open(os.path.join(root, "_manifest.json")))
        vocab = pq.read_table(os.path.join(root, "_vocab", "vocab.parquet")).to_pylist()
        results[engine] = (table, dead, stats, manifest["table_sizes"], vocab)
    (ta, da, sa, za, va), (tb, db, sb, zb, vb) = results["arrow"], results["beam"]
    assert ta.equals(tb)
    assert da == db and len(da) == 5
    assert za == zb and va == vb and za["C1"] == 500 and za["C2"] == 2 + sum(r["feature"] == "C2" for r in va)
    assert sa["rows"] == sb["rows"] == 30 and sa["sparse"] == sb["sparse"]
    for name in sa["dense"]:
        for k in sa["dense"][name]:
            assert sa["dense"][name][k] == pytest.approx(sb["dense"][name][k], rel=1e-9, abs=1e-12)


def test_pipeline_cli(tmp_path):
    write_lines(tmp_path / "raw" / "2024-01-03.tsv", criteo_lines(12, seed=8))
    root = tmp_path / "ds"
    assert pipeline_run(["--inputs", str(tmp_path / "raw"), "--dataset_root", str(root),
                         "--ingest_options", json.dumps({"max_row_bytes": 4096}), *BEAM_IN_MEMORY]) == 0
    manifest = json.loads((root / "_manifest.json").read_text())
    assert manifest["days"] == {"2024-01-03": 12} and manifest["table_sizes"]["C1"] == 1 << 20
