"""The ingest task end to end (mostly the pyarrow engine; the Beam engine is compared with it in
test_pipeline.py): layout, accounting, vocabulary, atomic replace, user schemas, CLI."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recpipe.ingest import writer as writer_mod
from recpipe.ingest.options import IngestError
from recpipe.tasks.ingest import IngestConfig, main, run
from recpipe.tracking.base import MemoryTracker

from ._data import criteo_lines, write_lines

ARROW = {"engine": "arrow", "hash_buckets": 1000}


def _day_table(root: str, day: str) -> pa.Table:
    return ds.dataset(os.path.join(root, f"day={day}"), format="parquet").to_table()


def test_two_days_hash_layout_metrics_and_stats(tmp_path):
    l1, l2 = criteo_lines(60, seed=1), criteo_lines(40, seed=2)
    l2[5] = "7\t" + l2[5].split("\t", 1)[1]  # bad label
    write_lines(tmp_path / "raw" / "2024-01-01.tsv", l1)
    write_lines(tmp_path / "raw" / "2024-01-02.tsv", l2)
    root = str(tmp_path / "ds")
    tracker = MemoryTracker()
    res = run(IngestConfig.from_dict({**ARROW, "max_bad_fraction": 0.05}), inputs=[str(tmp_path / "raw")],
              dataset_root=root, tracker=tracker)
    assert res.metadata["days"] == ["2024-01-01", "2024-01-02"]
    assert res.metrics["ingest/rows"] == 99 and res.metrics["ingest/dead_rows"] == 1
    assert res.metrics["ingest/rows_in"] == res.metrics["ingest/rows"] + res.metrics["ingest/dead_rows"]
    good = l1 + [ln for i, ln in enumerate(l2) if i != 5]
    assert res.metrics["ingest/label_rate"] == pytest.approx(np.mean([float(ln[0]) for ln in good]))
    assert tracker.last("ingest/rows") == 99 and "ingest/stats/day=2024-01-02/stats.json" in tracker.dicts
    manifest = json.load(open(os.path.join(root, "_manifest.json")))
    assert manifest["days"] == {"2024-01-01": 60, "2024-01-02": 39} and manifest["table_sizes"]["C1"] == 1000
    assert res.metadata["table_sizes"] == manifest["table_sizes"]
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 99 and sorted(set(table["day"].to_pylist())) == ["2024-01-01", "2024-01-02"]
    assert sorted(os.listdir(os.path.join(root, "day=2024-01-01"))) == ["part-00000.parquet"]
    dead = [json.loads(x) for x in open(os.path.join(root, "_deadletter", "day=2024-01-02", "dead-00000.jsonl"))]
    assert [d["reason"] for d in dead] == ["bad_label"] and dead[0]["raw"] == l2[5]
    stats = json.load(open(os.path.join(root, "_stats", "day=2024-01-01", "stats.json")))
    raw_i1 = [ln.split("\t")[1] for ln in l1]
    assert stats["rows"] == 60 and stats["dense"]["I1"]["missing_rate"] == pytest.approx(
        sum(v == "" for v in raw_i1) / 60)
    out_i1 = np.log1p(np.maximum([float(v) if v else 0.0 for v in raw_i1], 0.0))
    assert stats["dense"]["I1"]["mean"] == pytest.approx(out_i1.mean(), rel=1e-6)
    assert stats["dense"]["I1"]["std"] == pytest.approx(out_i1.std(), rel=1e-5)
    c1 = {ln.split("\t")[14] for ln in l1} - {""}
    assert stats["sparse"]["C1"]["distinct_approx"] == len(c1)  # exact below the sketch size


def test_vocab_ids_stable_across_days_and_rerun(tmp_path):
    raw = tmp_path / "raw"
    write_lines(raw / "2024-01-01.tsv", criteo_lines(80, seed=1, vocab=10))
    root = str(tmp_path / "ds")
    cfg = IngestConfig.from_dict({**ARROW, "encoding": "vocab", "min_count": 2})
    run(cfg, inputs=[str(raw / "2024-01-01.tsv")], dataset_root=root)
    vocab1 = pq.read_table(os.path.join(root, "_vocab", "vocab.parquet")).to_pylist()
    d1 = _day_table(root, "2024-01-01")
    write_lines(raw / "2024-01-02.tsv", criteo_lines(80, seed=2, vocab=14))
    run(cfg, inputs=[str(raw / "2024-01-02.tsv")], dataset_root=root)
    vocab2 = pq.read_table(os.path.join(root, "_vocab", "vocab.parquet")).to_pylist()
    key = lambda r: (r["feature"], r["id"])  # noqa: E731
    assert {key(r): r["value"] for r in vocab1}.items() <= {key(r): r["value"] for r in vocab2}.items()
    delta = json.load(open(os.path.join(root, "_vocab", "delta-2024-01-02.json")))
    added = {(f, i) for f, d in delta["features"].items() for i in d["ids"]}
    assert added == {key(r) for r in vocab2} - {key(r) for r in vocab1} and added
    # a value present on both days gets the same id on both days
    mapping = {(r["feature"], r["value"]): r["id"] for r in vocab2}
    d2 = _day_table(root, "2024-01-02")
    lines2 = open(raw / "2024-01-02.tsv").read().splitlines()
    for j, col in ((1, "C1"), (20, "C20")):
        vals = [ln.split("\t")[13 + j] for ln in lines2]
        want = [0 if v == "" else mapping.get((col, v), 1) for v in vals]
        assert d2[col].to_pylist() == want
    # re-running day 1 moves no id and admits nothing new; values it had as rare but that day 2 admitted
    # now resolve to their day-2 ids
    run(cfg, inputs=[str(raw / "2024-01-01.tsv")], dataset_root=root)
    assert pq.read_table(os.path.join(root, "_vocab", "vocab.parquet")).to_pylist() == vocab2
    d1b = _day_table(root, "2024-01-01")
    day2_ids = {c: {r["id"] for r in vocab2 if r["feature"] == c and r["day"] == "2024-01-02"} for c in ("C1", "C9")}
    for col in ("C1", "C9"):
        for old, new in zip(d1[col].to_pylist(), d1b[col].to_pylist()):
            assert old == new or (old == 1 and new in day2_ids[col])
    assert d1b.drop_columns([f"C{i}" for i in range(1, 27)]).equals(d1.drop_columns([f"C{i}" for i in range(1, 27)]))
    manifest = json.load(open(os.path.join(root, "_manifest.json")))
    assert manifest["table_sizes"]["C1"] == 2 + sum(r["feature"] == "C1" for r in vocab2)


def test_atomic_replace_survives_a_crash(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    write_lines(raw / "a" / "2024-01-01.tsv", criteo_lines(30, seed=1))
    root = str(tmp_path / "ds")
    cfg = IngestConfig.from_dict({**ARROW, "row_group_rows": 8, "part_rows": 8})
    run(cfg, inputs=[str(raw / "a")], dataset_root=root)
    before = _day_table(root, "2024-01-01")
    manifest = open(os.path.join(root, "_manifest.json")).read()
    write_lines(raw / "b" / "2024-01-01.tsv", criteo_lines(50, seed=9))
    real_flush = writer_mod.PartWriter._flush
    calls = []

    def crashing_flush(self, rows):
        calls.append(rows)
        if len(calls) == 3:  # two row groups of the new day are on disk when the "crash" happens
            raise OSError("disk vanished")
        real_flush(self, rows)

    monkeypatch.setattr(writer_mod.PartWriter, "_flush", crashing_flush)
    with pytest.raises(OSError, match="disk vanished"):
        run(cfg, inputs=[str(raw / "b")], dataset_root=root)
    assert _day_table(root, "2024-01-01").equals(before)
    assert open(os.path.join(root, "_manifest.json")).read() == manifest
    assert ds.dataset(root, format="parquet", partitioning="hive").count_rows() == 30
    monkeypatch.setattr(writer_mod.PartWriter, "_flush", real_flush)
    run(cfg, inputs=[str(raw / "b")], dataset_root=root)
    assert _day_table(root, "2024-01-01").num_rows == 50
    assert len(os.listdir(os.path.join(root, "day=2024-01-01"))) == 7  # 50 rows / 8 per part
    assert os.listdir(os.path.join(root, "_staging")) == []


def test_too_many_bad_rows_fails_and_publishes_nothing(tmp_path):
    lines = criteo_lines(20, seed=4)
    lines[0] = lines[1] = "oops"
    write_lines(tmp_path / "2024-01-01.tsv", lines)
    root = str(tmp_path / "ds")
    with pytest.raises(IngestError, match=r"2 of 20 rows \(10.00%\) are bad, above max_bad_fraction=5.00%"):
        run(IngestConfig.from_dict({**ARROW, "max_bad_fraction": 0.05}), inputs=[str(tmp_path)],
            dataset_root=root)
    assert not os.path.exists(os.path.join(root, "_manifest.json"))
    assert not [d for d in os.listdir(root) if d.startswith("day=")]


@pytest.mark.parametrize("engine", ["arrow", "beam"])
def test_user_schema_csv_and_parquet(tmp_path, engine):
    schema = {"name": "shop", "label": {"name": "clicked"},
              "dense": [{"name": "price"}, {"name": "age", "transform": "none", "clip_min": None}],
              "sparse": [{"name": "user", "num_embeddings": 64, "encoding": "vocab"},
                         {"name": "tags", "multi_hot": True, "num_embeddings": 32}]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    csv = tmp_path / "in" / "2024-02-01.csv"
    csv.parent.mkdir()
    csv.write_text('age,clicked,user,price,tags,ignored\n-3.5,1,u1,9,a|b,x\n2,0,"u,2",,c,y\n1,1,u1,abc,a,z\n')
    root = str(tmp_path / "ds")
    cfg = {"engine": engine, "schema_path": str(tmp_path / "schema.json"), "input_format": "csv",
           "max_bad_fraction": 0.5, "beam_args": ["--direct_running_mode=in_memory"]}
    res = run(IngestConfig.from_dict(cfg), inputs=[str(csv)], dataset_root=root)
    assert res.metrics["ingest/rows"] == 2 and res.metrics["ingest/dead_rows"] == 1
    t = _day_table(root, "2024-02-01")
    assert t["age"].to_pylist() == [-3.5, 2.0]
    np.testing.assert_allclose(t["price"].to_numpy(), [np.log1p(9.0), 0.0], rtol=1e-6)
    # valid rows hold u1 and "u,2" (a quoted delimiter) once each: ties go by value, and "," < "1"
    assert t["user"].to_pylist() == [3, 2]
    dead = "".join(open(f).read() for f in glob.glob(os.path.join(root, "_deadletter", "day=2024-02-01", "*")))
    assert '"field": "price"' in dead and '"reason": "unparsable_number"' in dead
    # the same rows as Parquet (typed columns, list column for the multi-hot feature)
    pq.write_table(pa.table({"clicked": pa.array([1, 0], pa.int8()), "price": [9.0, None],
                             "age": [-3.5, 2.0], "user": ["u1", "u,2"], "tags": [["a", "b"], ["c"]]}),
                   tmp_path / "in" / "2024-02-02.parquet")
    run(IngestConfig.from_dict({**cfg, "input_format": "parquet"}),
        inputs=[str(tmp_path / "in" / "2024-02-02.parquet")], dataset_root=root)
    t2 = _day_table(root, "2024-02-02")
    assert t2.drop_columns(["day"]).equals(t.drop_columns(["day"]))


def test_main_cli(tmp_path):
    write_lines(tmp_path / "raw" / "2024-01-01.tsv", criteo_lines(10, seed=1))
    os.environ["RECPIPE_TRACKING"] = "off"
    try:
        assert main(["--inputs", str(tmp_path / "raw"), "--dataset-root", str(tmp_path / "ds"),
                     "--config", json.dumps(ARROW), "--result", str(tmp_path / "r.json")]) == 0
    finally:
        del os.environ["RECPIPE_TRACKING"]
    assert json.load(open(tmp_path / "r.json"))["metrics"]["ingest/rows"] == 10


def test_crash_between_the_two_renames_of_a_day_swap_is_recovered(tmp_path, monkeypatch):
    import recpipe.ingest.dataset as dataset_mod

    raw = tmp_path / "raw"
    write_lines(raw / "a" / "2024-01-01.tsv", criteo_lines(30, seed=1))
    write_lines(raw / "b" / "2024-01-01.tsv", criteo_lines(50, seed=9))
    root = str(tmp_path / "ds")
    cfg = IngestConfig.from_dict(ARROW)
    run(cfg, inputs=[str(raw / "a")], dataset_root=root)
    before = _day_table(root, "2024-01-01")
    real_rename = os.rename

    def crash_before_the_new_day_lands(src, dst):
        if os.path.basename(dst) == "day=2024-01-01" and "_staging" in src and "replaced-" not in dst:
            raise OSError("power cut")  # the old day is already renamed aside
        real_rename(src, dst)

    monkeypatch.setattr(dataset_mod.os, "rename", crash_before_the_new_day_lands)
    with pytest.raises(OSError, match="power cut"):
        run(cfg, inputs=[str(raw / "b")], dataset_root=root)
    monkeypatch.setattr(dataset_mod.os, "rename", real_rename)
    dataset_mod.DatasetRoot(root)  # opening the root finishes the interrupted swap
    assert _day_table(root, "2024-01-01").equals(before)  # the published day is whole again
    # the state a hard kill leaves (no exception handler ran): old day aside, new one never renamed in
    aside = os.path.join(root, "_staging", "replaced-day=2024-01-01")
    real_rename(os.path.join(root, "day=2024-01-01"), aside)
    dataset_mod.DatasetRoot(root)
    assert os.path.exists(os.path.join(root, "day=2024-01-01")) and not os.path.exists(aside)
    assert _day_table(root, "2024-01-01").equals(before)
    run(cfg, inputs=[str(raw / "b")], dataset_root=root)  # and a re-run replaces it normally
    assert _day_table(root, "2024-01-01").num_rows == 50
    assert not [n for n in os.listdir(os.path.join(root, "_staging")) if n.startswith("replaced-")]
