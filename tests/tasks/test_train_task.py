"""Tests of the train step executor recpipe.tasks.train (incremental + plain, pruning export, warm starts)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from recpipe.models import load_model
from recpipe.tasks import train as train_task
from recpipe.tracking.base import MemoryTracker
from recpipe.train.incremental import evaluate_stream, parquet_day_factory
from recpipe.train.prune_export import load_compact
from tests.train.test_incremental import DAYS, ROWS, write_days

METRIC_TOL = 1e-9
"""The same model scoring the same rows in the same order: identical float64 sums."""

SMALL = {"spec": {"embedding_dim": 4, "blocks": [
    {"name": "bottom", "type": "mlp", "inputs": ["dense"], "units": [16, 4]},
    {"name": "interact", "type": "dot", "inputs": ["bottom", "sparse"]},
    {"name": "top", "type": "mlp", "inputs": ["bottom", "interact"], "units": [16]}]},
    "trainer": {"batch_size": 32, "seed": 0}, "stream": {"checkpoint_every": 4, "eval_batch_size": 128}}


def _cfg(**over) -> train_task.TrainTaskConfig:
    return train_task.TrainTaskConfig.from_dict({**SMALL, **over})


def test_incremental_with_adaptive_pruning_writes_model_pruner_and_compact_export(tmp_path):
    root = str(tmp_path / "data")
    write_days(root)
    out = str(tmp_path / "model")
    tracker = MemoryTracker()
    cfg = _cfg(prune={"mode": "adaptive", "target_sparsity": 0.75, "end_step": 10, "update_every": 2})
    res = train_task.run(cfg, dataset_root=root, model_dir=out, checkpoint_dir=str(tmp_path / "ckpt"),
                         tracker=tracker)
    assert res.metadata["days_trained"] == list(DAYS) and res.metadata["rows"] == len(DAYS) * ROWS
    for key in ("train/loss", "preq/ne", "preq/auc", "prune/global", "model/bytes", "model/compact_bytes"):
        assert key in res.metrics, key
    assert res.metrics["prune/global"] == pytest.approx(0.75, abs=0.01)
    assert res.metrics["model/compact_bytes"] < res.metrics["model/bytes"]
    assert [s for s, _ in tracker.metrics["preq/ne"]] == [0, 1, 2]
    # The saved model is the pruned one and the compact export decodes to exactly its weights.
    model = load_model(out)
    compact, meta = load_compact(os.path.join(out, train_task.COMPACT_FILE))
    for k, v in model.state_dict().items():
        assert torch.equal(compact[k], v), k
    assert {f"prune/sparsity/{n}" for n in meta["sparsity"]} == \
        {k for k in res.metrics if k.startswith("prune/sparsity/")}
    assert tracker.last("preq/overall_ne") == pytest.approx(res.metrics["preq/ne"])
    pruner_state = torch.load(os.path.join(out, train_task.PRUNER_FILE), weights_only=True)
    for name, mask in pruner_state["masks"].items():
        w = model.get_submodule(name).weight
        assert float(w.detach()[~mask].abs().max()) == 0.0, name
    saved = json.load(open(os.path.join(out, train_task.RESULT_FILE)))
    assert saved["metadata"]["preq_by_day"].keys() == set(DAYS)


def test_plain_mode_trains_selected_days_without_prequential(tmp_path):
    root = str(tmp_path / "data")
    write_days(root)
    res = train_task.run(_cfg(incremental=False), dataset_root=root, model_dir=str(tmp_path / "m"),
                         before_day=DAYS[2])
    assert res.metadata["days_trained"] == list(DAYS[:2])
    assert res.metrics["train/rows"] == 2 * ROWS
    assert "preq/ne" not in res.metrics
    assert res.metrics["model/compact_bytes"] == res.metrics["model/bytes"]


def test_warm_start_from_registry_alias_trains_only_new_days(tmp_path, monkeypatch):
    from recpipe.tracking.registry import ModelRegistry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    root = str(tmp_path / "data")
    schema = write_days(root)
    uri = "models:/recpipe-test@champion"
    # First run: the alias does not exist yet -> from scratch, on the days before the held-out one.
    first = train_task.run(_cfg(), dataset_root=root, model_dir=str(tmp_path / "m1"), before_day=DAYS[2],
                           warm_start=uri)
    assert first.metadata["days_trained"] == list(DAYS[:2])
    assert "alias not set" in first.metadata["warm_start"]
    reg = ModelRegistry("recpipe-test")
    version = reg.register(str(tmp_path / "m1"))
    reg.promote(version.version, reason="test")

    # Next day: warm start from the champion; only the day it has not seen is trained, and its prequential
    # score is the champion's score on that day.
    second = train_task.run(_cfg(), dataset_root=root, model_dir=str(tmp_path / "m2"), warm_start=uri)
    assert second.metadata["warm_start"] == uri
    assert second.metadata["days_trained"] == [DAYS[2]]
    assert second.metadata["all_days_trained"] == list(DAYS)
    champion = load_model(str(tmp_path / "m1"))
    ref = evaluate_stream(champion, parquet_day_factory(root, schema)(DAYS[2], 128))
    assert second.metrics["preq/ne"] == pytest.approx(ref["ne"], abs=METRIC_TOL)
    assert second.metrics["preq/auc"] == pytest.approx(ref["auc"], abs=METRIC_TOL)


def test_main_cli_and_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("RECPIPE_TRACKING", "off")
    root = str(tmp_path / "data")
    write_days(root, days=DAYS[:1])
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(SMALL))
    res = train_task.main(["--config", str(cfg_path), "--dataset-root", root, "--model-dir", str(tmp_path / "m"),
                           "--days", DAYS[0]])
    assert res.metadata["days_trained"] == [DAYS[0]]
    with pytest.raises(FileNotFoundError, match="not present"):
        train_task.run(_cfg(), dataset_root=root, model_dir=str(tmp_path / "x"), days=["2030-01-01"])
    with pytest.raises(ValueError, match="models:/<name>@<alias>"):
        train_task.run(_cfg(), dataset_root=root, model_dir=str(tmp_path / "x"), warm_start="models:/nameonly")
    with pytest.raises(ValueError, match="arch"):
        train_task.TrainTaskConfig(arch="nope")


def test_warm_start_carries_optimizer_state_so_daily_runs_equal_one_long_run(tmp_path):
    """Day 0, then a warm-started run on day 1 == one run over days 0-1 (Adam moments and row-wise Adagrad sums
    travel in optimizer.pt); without optimizer.pt the accumulators restart and the result differs."""
    root = str(tmp_path / "data")
    write_days(root)
    cfg = _cfg()
    a, b, c = (str(tmp_path / n) for n in ("day0", "day1-warm", "both"))
    train_task.run(cfg, dataset_root=root, model_dir=a, days=[DAYS[0]])
    r = train_task.run(cfg, dataset_root=root, model_dir=b, days=[DAYS[1]], warm_start=a)
    train_task.run(cfg, dataset_root=root, model_dir=c, days=[DAYS[0], DAYS[1]])
    assert json.load(open(os.path.join(b, "model.json")))["extra"]["optimizer_state_restored"] is True
    assert r.metadata["all_days_trained"] == [DAYS[0], DAYS[1]]
    warm, long = load_model(b).state_dict(), load_model(c).state_dict()
    for k in long:
        torch.testing.assert_close(warm[k], long[k], rtol=0, atol=0, msg=k)
    os.remove(os.path.join(a, "optimizer.pt"))
    d = str(tmp_path / "day1-cold-optimizer")
    train_task.run(cfg, dataset_root=root, model_dir=d, days=[DAYS[1]], warm_start=a)
    cold = load_model(d).state_dict()
    assert json.load(open(os.path.join(d, "model.json")))["extra"]["optimizer_state_restored"] is False
    assert any(not torch.equal(cold[k], long[k]) for k in long)


def test_warm_start_with_optimizer_state_into_grown_tables(tmp_path):
    """Yesterday's model has smaller tables than today's vocabulary: its optimizer state loads at yesterday's
    sizes, then tables and row state grow together (old rows keep their accumulators)."""
    small, grown = str(tmp_path / "small"), str(tmp_path / "grown")
    write_days(small, manifest_sizes=(20, 30))
    write_days(grown, manifest_sizes=(26, 33))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train_task.run(_cfg(), dataset_root=small, model_dir=a, days=[DAYS[0]])
    train_task.run(_cfg(), dataset_root=grown, model_dir=b, days=[DAYS[1]], warm_start=a)
    meta = json.load(open(os.path.join(b, "model.json")))
    assert meta["extra"]["optimizer_state_restored"] is True
    assert meta["table_sizes"] == [26, 33]
    state = torch.load(os.path.join(b, "optimizer.pt"), weights_only=True)["sparse"]["state"]
    (row_state,) = [v for v in state.values()]
    sums = next(t for t in row_state.values() if torch.is_tensor(t) and t.dim() == 1)
    assert sums.shape == (26 + 33,)
