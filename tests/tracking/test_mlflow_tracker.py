"""MlflowTracker against a real local MLflow store (sqlite in tmp_path)."""
from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient

from recpipe.tracking.base import Tracker
from recpipe.tracking.mlflow_tracker import MlflowTracker, resolve_tracking_uri


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def test_logs_params_metrics_per_step_and_artifacts(store, tmp_path):
    art = tmp_path / "model"
    art.mkdir()
    (art / "model.json").write_text('{"a": 1}')
    with MlflowTracker("exp", "run1", tracking_uri=store) as t:
        assert isinstance(t, Tracker)
        t.log_params({"lr": 0.1, "model": {"dim": 16, "blocks": [1, 2]}})
        for step in range(3):
            t.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        t.log_artifact(art, "model")
        t.log_dict({"x": 2}, "report/summary.json")
        t.set_tags({"recpipe.day": "2026-11-24"})
        run_id = t.run_id
    c = MlflowClient(tracking_uri=store)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.1"
    assert run.data.params["model.dim"] == "16"
    hist = c.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    names = {a.path for a in c.list_artifacts(run_id, "model")}
    assert names == {"model/model.json"}
    assert run.data.tags["recpipe.day"] == "2026-11-24"


def test_uses_injected_run_id_and_leaves_it_open(store, monkeypatch):
    c = MlflowClient(tracking_uri=store)
    exp = c.create_experiment("kfp")
    outer = c.create_run(exp).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    with MlflowTracker("ignored", tracking_uri=store) as t:
        assert t.run_id == outer
        t.log_metrics({"eval/auc": 0.75})
    run = c.get_run(outer)
    assert run.data.metrics["eval/auc"] == 0.75
    assert run.info.status == "RUNNING"  # owned by the pipeline, not by the step


def test_child_runs_are_nested_and_failures_marked(store):
    with MlflowTracker("exp", "parent", tracking_uri=store) as t:
        with t.child("trial-0") as c0:
            c0.log_metrics({"trial/auc": 0.6})
        with pytest.raises(RuntimeError):
            with t.child("trial-1"):
                raise RuntimeError("trial diverged")
    c = MlflowClient(tracking_uri=store)
    runs = c.search_runs([c.get_experiment_by_name("exp").experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{t.run_id}'")
    status = {r.info.run_name: r.info.status for r in runs}
    assert status == {"trial-0": "FINISHED", "trial-1": "FAILED"}


def test_tracking_uri_resolution(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == "sqlite:///mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("file:///x") == "file:///x"


def test_relogging_a_param_keeps_every_value(store):
    with MlflowTracker("exp", "retry", tracking_uri=store) as t:
        t.log_params({"day": "a"})
        t.log_params({"day": "a"})  # same value: nothing new
        t.log_params({"day": "b"})
        t.log_params({"day": "c"})
        t.log_params({"day": "b"})  # already recorded
        run_id = t.run_id
    params = MlflowClient(tracking_uri=store).get_run(run_id).data.params
    assert {k: v for k, v in params.items() if k.startswith("day")} == {"day": "a", "day.1": "b", "day.2": "c"}
