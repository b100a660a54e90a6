"""Evaluate with a champion trained on a smaller vocabulary (ids beyond its tables scored as missing, counted),
exact ``max_rows``, the TBE helpers against naive loops, the recorded champion reference and the NE history
read back from a real sqlite MLflow store."""
from __future__ import annotations

import json

import pytest
import torch

from recpipe.data.batch import Batch
from recpipe.data.loader import LoaderConfig, ParquetLoader
from recpipe.metrics import summary
from recpipe.models import load_model
from recpipe.tasks import evaluate as ev
from recpipe.tasks.base import model_fingerprint
from tests.evaluate import helpers as h

SMALL = 3  # the champion's c0 table: ids 3, 4, 5 of today's data are beyond it
FAST = ev.EvaluateConfig(slices=("day",), bootstrap_samples=0, min_slice_count=10, batch_size=256)
TOL = 1e-9  # same float32 outputs re-scored in float64


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    return {"data": h.write_dataset(str(root / "data"), rows=600),
            "good": h.make_model_dir(str(root / "good"), train_steps=10, seed=0),
            "old": h.make_model_dir(str(root / "old"), train_steps=10, seed=3, c0_rows=SMALL)}


def _reference(model_dir, data, days):
    """Naive reference: every c0 id >= SMALL replaced by 0 row by row, then the model scored directly."""
    model = load_model(model_dir).eval()
    preds, labels, oov = [], [], 0
    with torch.no_grad():
        for b in ParquetLoader(data, LoaderConfig(batch_size=500), days=days):
            ids = b.indices.clone()
            for f, size in enumerate(model.table_sizes):
                for r in range(b.batch_size):
                    for j in range(int(b.offsets[f * b.batch_size + r]), int(b.offsets[f * b.batch_size + r + 1])):
                        if ids[j] >= size:
                            ids[j], oov = 0, oov + 1
            preds.append(torch.sigmoid(model(Batch(b.dense, ids, b.offsets, b.labels))))
            labels.append(b.labels)
    return summary(torch.cat(preds), torch.cat(labels)), oov


def test_champion_with_smaller_tables_scores_unknown_ids_as_missing(world, tmp_path):
    days = ["2026-01-01"]
    res = ev.run(FAST, model_dir=world["good"], dataset_root=world["data"], days=days,
                 output_dir=str(tmp_path), champion_model_dir=world["old"])
    ref, oov = _reference(world["old"], world["data"], days)
    assert oov > 0
    report = json.load(open(res.outputs["metrics"]))
    for k in ("auc", "ne", "logloss"):
        assert report["metrics"]["champion"]["overall"][k] == pytest.approx(ref[k], abs=TOL)
    assert res.metrics["eval/champion/oov_ids"] == oov and res.metrics["eval/oov_ids"] == 0
    assert report["oov_ids"]["champion"] == {"total": oov, "by_feature": {"c0": oov, "c1": 0}}
    assert report["oov_ids"]["challenger"]["total"] == 0


def test_quantized_champion_with_smaller_tables(world, tmp_path):
    from recpipe.quant import QuantConfig, quantize_model, save_quantized_model

    qdir = str(tmp_path / "q")
    save_quantized_model(quantize_model(load_model(world["old"]), QuantConfig(bits=8, method="minmax")), qdir)
    res = ev.run(FAST, model_dir=world["good"], dataset_root=world["data"], days=["2026-01-02"],
                 output_dir=str(tmp_path / "o"), champion_model_dir=qdir)
    _, oov = _reference(world["old"], world["data"], ["2026-01-02"])
    assert res.metrics["eval/champion/oov_ids"] == oov > 0


def _naive_batch(rows):
    """B rows of F bags (lists of ids) → TBE Batch, built with plain loops."""
    b, f = len(rows), len(rows[0])
    ids, offsets = [], [0]
    for feat in range(f):
        for r in range(b):
            ids += rows[r][feat]
            offsets.append(len(ids))
    return Batch(torch.arange(b, dtype=torch.float32).reshape(b, 1), torch.tensor(ids, dtype=torch.int64),
                 torch.tensor(offsets), torch.arange(b, dtype=torch.float32), torch.arange(b, dtype=torch.int32))


ROWS = [[[5], [9, 1], []], [[2], [], [7, 7, 3]], [[0], [4], [8]], [[6], [2, 2], [1]]]  # B = 4, F = 3


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_head_rows_matches_naive_rebuild(n):
    got = ev.head_rows(_naive_batch(ROWS), n)
    want = _naive_batch(ROWS[:n]) if n else None
    assert got.batch_size == n and got.labels.tolist() == list(range(n)) and got.day.tolist() == list(range(n))
    if want is not None:
        assert got.indices.tolist() == want.indices.tolist() and got.offsets.tolist() == want.offsets.tolist()
    else:
        assert got.indices.numel() == 0 and got.offsets.tolist() == [0]


def test_remap_out_of_range_matches_naive_loop():
    sizes = [6, 3, 8]
    got, counts = ev.remap_out_of_range(_naive_batch(ROWS), sizes)
    want = [[[i if i < sizes[f] else 0 for i in bag] for f, bag in enumerate(row)] for row in ROWS]
    assert got.indices.tolist() == _naive_batch(want).indices.tolist()
    assert counts.tolist() == [1, 2, 1]  # f0: 6 >= 6; f1: 9 and 4 >= 3; f2: 8 >= 8
    same, none = ev.remap_out_of_range(_naive_batch(ROWS), [10, 10, 10])  # nothing out of range
    assert none.tolist() == [0, 0, 0] and same.indices.tolist() == _naive_batch(ROWS).indices.tolist()
    with pytest.raises(ValueError, match="3 sparse features .* 2 embedding tables"):
        ev.remap_out_of_range(_naive_batch(ROWS), [10, 10])


def test_max_rows_is_exact(world, tmp_path):
    res = ev.run(FAST.replace(max_rows=700), model_dir=world["good"], dataset_root=world["data"], days=None,
                 output_dir=str(tmp_path))  # batches of 256: 768 rows without slicing the third
    assert res.metadata["rows"] == 700


def test_blessing_records_the_compared_champion(world, tmp_path):
    first = ev.run(FAST, model_dir=world["good"], dataset_root=world["data"], days=["2026-01-01"],
                   output_dir=str(tmp_path / "a"))
    assert json.load(open(first.outputs["blessing"]))["compared_champion"] == {"kind": "none"}
    vs_dir = ev.run(FAST, model_dir=world["good"], dataset_root=world["data"], days=["2026-01-01"],
                    output_dir=str(tmp_path / "b"), champion_model_dir=world["old"])
    ref = json.load(open(vs_dir.outputs["blessing"]))["compared_champion"]
    assert ref == {"kind": "dir", "dir": world["old"], "fingerprint": model_fingerprint(world["old"])}


def test_ne_history_from_previous_runs_in_sqlite_store(world, tmp_path, monkeypatch):
    from recpipe.tracking.mlflow_tracker import MlflowTracker
    from recpipe.tracking.registry import EVAL_MODEL_TAG, ModelRegistry, evaluation_history

    assert ev.REGISTRY_MODEL_TAG == EVAL_MODEL_TAG
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    cfg = FAST.replace(registry_model="hist", champion_from_registry=True, history_days=3)
    seen = []
    for i, day in enumerate(h.DAYS):
        with MlflowTracker("exp", f"evaluate-{i}", tags={"recpipe.step": "evaluate"}) as t:
            res = ev.run(cfg, model_dir=world["good"], dataset_root=world["data"], days=[day],
                         output_dir=str(tmp_path / day), tracker=t)
            seen.append((t.run_id, day, res.metrics["eval/ne"]))
        if i == 0:  # from the second run on, a champion exists: its NE is in the history too
            reg = ModelRegistry("hist", uri)
            reg.promote(reg.register(world["old"]).version)
    with MlflowTracker("exp", "other-model", tags={"recpipe.step": "evaluate", EVAL_MODEL_TAG: "other"}) as t:
        t.log_metrics({"eval/ne": 9.0})  # another registered model's run: never part of the history
    report = json.load(open(res.outputs["metrics"]))
    got = [(r.get("run_id"), r["days"][-1], r["metrics"]["eval/ne"]) for r in report["history"]]
    assert got == seen
    assert "eval/champion/ne" not in report["history"][0]["metrics"]
    assert report["history"][2]["metrics"]["eval/champion/ne"] == res.metrics["eval/champion/ne"]
    assert (tmp_path / h.DAYS[-1] / "plots" / "ne_history.png").stat().st_size > 0
    exp = ModelRegistry("hist", uri).client.get_experiment_by_name("exp").experiment_id
    past = evaluation_history(uri, exp, "hist", limit=2)
    assert [r["run_id"] for r in past] == [s[0] for s in seen[1:]]  # the newest two, oldest first
