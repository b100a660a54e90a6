"""`recpipe run` end to end on tiny data: kfp.local runs backfill then daily_retrain; day 2 warm-starts from
day 1's champion; every step is in the MLflow store with params, per-step metrics and the model artifact."""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from recpipe.cli import main as cli_main


@pytest.mark.slow
def test_recpipe_run_chains_days_through_the_registry(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = tmp_path / "cfg.json"
    # the single-process ingest engine keeps the test quick; the Beam engine has its own tests
    # an audited manual override passes every gate, so each day promotes and the next day must warm-start
    # from a quantized champion (the float copy it carries)
    override = {"who": "test_local_run", "why": "exercise the champion chain on tiny data"}
    cfg.write_text(json.dumps({"ingest": {"engine": "arrow", "hash_buckets": 2000},
                               "evaluate": {"bootstrap_samples": 20, "gate": {"override": override}}}))
    rc = cli_main(["run", "--days", "4", "--rows-per-day", "3000", "--workdir", str(tmp_path / "work"),
                   "--tracking-uri", uri, "--config", str(cfg)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| day " in out and "backfill" in out and "daily_retrain" in out
    assert f"mlflow ui --backend-store-uri {uri}" in out

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("recpipe")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parent = [r for r in runs if r.data.tags.get("recpipe.mode") == "local"]
    assert len(parent) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    steps = sorted(r.data.tags["recpipe.step"] for r in children)
    assert steps == sorted(["ingest", "train", "evaluate", "promote"] * 3 + ["quantize"] * 2)
    assert all(r.info.status == "FINISHED" for r in children)

    trains = sorted((r for r in children if r.data.tags["recpipe.step"] == "train"), key=lambda r: r.info.start_time)
    # per-step training metrics and the model artifact are in the store
    hist = client.get_metric_history(trains[0].info.run_id, "train/loss")
    assert len(hist) >= 2 and len({m.step for m in hist}) == len(hist)
    assert any(a.path == "model" for a in client.list_artifacts(trains[0].info.run_id))

    # each daily run warm-started from the registry's champion; the champion daily_retrain promotes is the
    # QUANTIZED model, so day 3 warm-starts from the float copy it carries
    decisions = [line.split("|")[3].strip() for line in out.splitlines() if line.startswith("| 20")]
    assert decisions == ["promoted"] * 3
    assert [trains[i].data.params["train.warm_start"] for i in (1, 2)] == ["models:/recpipe-ctr@champion"] * 2
    days_trained = [trains[i].data.params["train.days"] for i in range(3)]
    assert len(set(days_trained)) == 3  # each run trained only the days its warm start had not seen
    evals = [r for r in children if r.data.tags["recpipe.step"] == "evaluate"]
    assert all(r.data.tags.get("recpipe.gate.override_by") == "test_local_run" for r in evals)
    versions = client.search_model_versions("name='recpipe-ctr'")
    assert len(versions) == 3
    champion = client.get_model_version_by_alias("recpipe-ctr", "champion")
    assert int(champion.version) == 3
    assert int(client.get_model_version_by_alias("recpipe-ctr", "previous").version) == 2
