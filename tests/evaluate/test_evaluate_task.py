"""End-to-end evaluate step on a tiny synthetic dataset: outputs, champion comparison, gate, override,
quantized served model, CLI."""
from __future__ import annotations

import json
import os

import pytest

from recpipe.metrics import summary
from recpipe.metrics.gate import GateConfig, Override
from recpipe.tasks import evaluate as ev
from recpipe.tracking.base import MemoryTracker
from tests.evaluate import helpers as h

FAST = ev.EvaluateConfig(slices=("day", "c0"), bootstrap_samples=40, min_slice_count=200, batch_size=1024)
TOL = 1e-9  # float32 model outputs re-scored in float64: identical inputs give identical numbers


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return {"data": h.write_dataset(str(root / "data")),
            "good": h.make_model_dir(str(root / "good"), train_steps=30, seed=0),
            "random": h.make_model_dir(str(root / "random"), seed=1),
            "root": root}


def test_first_run_writes_every_output(world, tmp_path):
    tracker = MemoryTracker()
    res = ev.run(FAST, model_dir=world["good"], dataset_root=world["data"], days=None,
                 output_dir=str(tmp_path), tracker=tracker)
    for key in ("metrics", "blessing", "roc", "calibration", "report_md", "report_html"):
        assert os.path.getsize(res.outputs[key]) > 0
    assert sorted(os.listdir(res.outputs["plots"])) == ["auc_by_c0.png", "calibration.png", "ne_by_day.png", "roc.png"]
    blessing = json.load(open(res.outputs["blessing"]))
    assert blessing["blessed"] and blessing["rule"] == "first_run"
    assert blessing["model_fingerprint"] == ev.model_fingerprint(world["good"])
    report = json.load(open(res.outputs["metrics"]))
    assert report["rows"] == 3 * 1000 and report["days"] == list(h.DAYS)
    assert set(report["metrics"]["challenger"]["slices"]["day"]) == set(h.DAYS)
    # c0 == 0 holds ~2% of rows (< min_slice_count): not reported
    assert "0" not in report["metrics"]["challenger"]["slices"]["c0"]
    roc = json.load(open(res.outputs["roc"]))
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0 and len(roc["fpr"]) == len(roc["thresholds"])
    assert res.metrics["eval/auc"] > 0.75 and res.metrics["eval/blessed"] == 1.0
    assert tracker.last("eval/ne") == res.metrics["eval/ne"]
    assert "eval/slice/day/2026-01-02/auc" in tracker.metrics
    assert tracker.tags["recpipe.gate.rule"] == "first_run"
    assert set(tracker.dicts) == {"eval/metrics.json", "eval/blessing.json"}
    assert "eval/ne_by_day.png" in tracker.figures
    html = open(res.outputs["report_html"]).read()
    assert html.count("data:image/png;base64,") == 4 and "Gate: PASS (first_run)" in html
    md = open(res.outputs["report_md"]).read()
    assert res.metadata["report_markdown"] == md
    assert "## Gate: **PASS** (first_run)" in md and "| challenger | 2026-01-03 |" in md
    assert f"{report['metrics']['challenger']['overall']['auc']:.5g}" in md


def test_overall_metrics_equal_direct_scoring(world, tmp_path):
    import torch

    from recpipe.data.loader import LoaderConfig, ParquetLoader
    from recpipe.models import load_model

    res = ev.run(FAST.replace(bootstrap_samples=0), model_dir=world["good"], dataset_root=world["data"],
                 days=["2026-01-02"], output_dir=str(tmp_path))
    model = load_model(world["good"]).eval()
    preds, labels = [], []
    with torch.no_grad():
        for b in ParquetLoader(world["data"], LoaderConfig(batch_size=700), days=["2026-01-02"]):
            preds.append(torch.sigmoid(model(b)))
            labels.append(b.labels)
    ref = summary(torch.cat(preds), torch.cat(labels))
    for k in ("auc", "ne", "logloss", "calibration", "count"):
        assert res.metrics[f"eval/{k}"] == pytest.approx(ref[k], abs=TOL)


def test_champion_comparison_pass_and_fail(world, tmp_path):
    better = ev.run(FAST, model_dir=world["good"], dataset_root=world["data"], days=None,
                    output_dir=str(tmp_path / "a"), champion_model_dir=world["random"])
    assert better.metadata["blessed"] and better.metadata["rule"] == "champion_comparison"
    assert better.metrics["eval/delta/auc_ci_low"] > 0
    same = ev.run(FAST, model_dir=world["good"], dataset_root=world["data"], days=None,
                  output_dir=str(tmp_path / "b"), champion_model_dir=world["good"])
    assert same.metrics["eval/delta/auc"] == 0.0 and same.metadata["blessed"]
    # a random challenger against the trained champion: absolute AND relative checks fail
    cfg = FAST.replace(gate=GateConfig())
    worse = ev.run(cfg, model_dir=world["random"], dataset_root=world["data"], days=None,
                   output_dir=str(tmp_path / "c"), champion_model_dir=world["good"])
    assert not worse.metadata["blessed"]
    reasons = " | ".join(worse.metadata["reasons"])
    assert "relative auc [overall]" in reasons and "relative ne [day=2026-01-01]" in reasons


def test_override_recorded_in_blessing_and_tags(world, tmp_path):
    cfg = FAST.replace(gate=GateConfig(override=Override("carol", "known label outage on day 2")))
    tracker = MemoryTracker()
    res = ev.run(cfg, model_dir=world["random"], dataset_root=world["data"], days=None,
                 output_dir=str(tmp_path), champion_model_dir=world["good"], tracker=tracker)
    blessing = json.load(open(res.outputs["blessing"]))
    assert blessing["blessed"] and blessing["automatic_decision"] == "fail"
    assert blessing["override"]["who"] == "carol"
    assert tracker.tags["recpipe.gate.override_by"] == "carol"
    assert tracker.tags["recpipe.gate.override_reason"] == "known label outage on day 2"


def test_quantized_model_is_served_and_float_reported_beside(world, tmp_path):
    from recpipe.models import load_model
    from recpipe.quant import QuantConfig, quantize_model, save_quantized_model

    qdir = str(tmp_path / "q")
    q = quantize_model(load_model(world["good"]), QuantConfig(bits=4, method="minmax"))
    save_quantized_model(q, qdir, extra={"source_model_dir": world["good"]})
    tracker = MemoryTracker()
    res = ev.run(FAST, model_dir=qdir, dataset_root=world["data"], days=None, output_dir=str(tmp_path / "o"),
                 tracker=tracker)
    report = json.load(open(res.outputs["metrics"]))
    assert report["quantized"] and report["models"] == ["challenger", "float"]
    assert res.metadata["quantized"]
    assert "eval/float/auc" in tracker.metrics
    # the served (quantized) metrics are the gate's; the float model is reported beside them
    assert res.metrics["eval/auc"] == report["metrics"]["challenger"]["overall"]["auc"]
    assert res.metrics["eval/auc"] != report["metrics"]["float"]["overall"]["auc"]
    assert abs(res.metrics["eval/auc"] - report["metrics"]["float"]["overall"]["auc"]) < 0.05


def test_cli_main(world, tmp_path, monkeypatch):
    monkeypatch.setenv("RECPIPE_TRACKING", "off")
    cfg = FAST.replace(bootstrap_samples=20, slices=("day",))
    res = ev.main(["--config", cfg.to_json(), "--model-dir", world["random"], "--dataset-root", world["data"],
                   "--days", "2026-01-01,2026-01-03", "--output-dir", str(tmp_path),
                   "--override-by", "dave", "--override-reason", "smoke test"])
    blessing = json.load(open(os.path.join(tmp_path, "blessing.json")))
    assert blessing["days"] == ["2026-01-01", "2026-01-03"] and blessing["override"]["who"] == "dave"
    assert res.metadata["rows"] == 2000
    with pytest.raises(ValueError, match="neither 'day' nor a sparse feature"):
        ev.run(FAST.replace(slices=("nope",)), model_dir=world["good"], dataset_root=world["data"], days=None,
               output_dir=str(tmp_path / "x"))


def test_champion_resolved_from_registry_alias(world, tmp_path, monkeypatch):
    from recpipe.tracking.registry import ModelRegistry

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = FAST.replace(champion_from_registry=True, registry_model="ctr", bootstrap_samples=20, slices=("day",))
    first = ev.run(cfg, model_dir=world["good"], dataset_root=world["data"], days=["2026-01-01"],
                   output_dir=str(tmp_path / "a"))
    assert first.metadata["rule"] == "first_run"  # registered model absent: no champion yet
    reg = ModelRegistry("ctr", uri)
    reg.promote(reg.register(world["random"]).version)
    res = ev.run(cfg, model_dir=world["good"], dataset_root=world["data"], days=["2026-01-01"],
                 output_dir=str(tmp_path / "b"))
    blessing = json.load(open(res.outputs["blessing"]))
    assert blessing["rule"] == "champion_comparison" and blessing["champion"]["version"] == "1"
    assert blessing["compared_champion"] == {"kind": "registry", "name": "ctr", "version": "1",
                                             "fingerprint": ev.model_fingerprint(world["random"])}
    assert res.metrics["eval/delta/auc"] > 0  # trained challenger vs random champion


def test_slice_keys_single_and_multi_hot_bags():
    import torch

    from recpipe.data.batch import Batch

    # B = 3, F = 2 (feature-major): f0 single-hot ids [5, 6, 7]; f1 bags [9, 8], [], [4]
    batch = Batch(dense=torch.zeros(3, 0), indices=torch.tensor([5, 6, 7, 9, 8, 4]),
                  offsets=torch.tensor([0, 1, 2, 3, 5, 5, 6]), labels=torch.zeros(3),
                  day=torch.tensor([0, 0, 1], dtype=torch.int32))
    keys = ev.slice_keys(batch, ["day", "a", "b"], ["a", "b"])
    assert keys["day"].tolist() == [0, 0, 1]
    assert keys["a"].tolist() == [5, 6, 7]
    assert keys["b"].tolist() == [9, ev.NO_ID, 4]
    # an empty LAST bag starts at len(indices)
    batch.offsets = torch.tensor([0, 1, 2, 3, 5, 6, 6])
    assert ev.slice_keys(batch, ["b"], ["a", "b"])["b"].tolist() == [9, 4, ev.NO_ID]
