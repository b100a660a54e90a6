"""Every pipeline compiles to KFP IR YAML with the intended wiring, caching, GPU requests and schedule input."""
from __future__ import annotations

import yaml

from recpipe.cli import main as cli_main
from recpipe.pipelines import BuildOptions, build_daily_retrain
from recpipe.pipelines.compile import compile_pipelines


def _load(path):
    docs = list(yaml.safe_load_all(open(path)))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def test_all_pipelines_compile(tmp_path):
    paths = compile_pipelines("all", str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["architecture_search.yaml",
                                                         "architecture_search_fanout.yaml", "backfill.yaml",
                                                         "daily_retrain.yaml"]
    for p in paths:
        spec, _ = _load(p)
        assert spec["pipelineInfo"]["name"].startswith("recpipe-")
        for comp in spec["deploymentSpec"]["executors"].values():
            assert comp["container"]["image"].startswith("ghcr.io/recpipe/recpipe:")


def test_daily_retrain_wiring_caching_and_schedule(tmp_path):
    (path,) = compile_pipelines("daily_retrain", str(tmp_path), gpu=True)
    spec, platform = _load(path)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"resolve-day", "ingest-examples", "train-model", "quantize-embeddings", "evaluate-model",
                          "promote-model"}
    assert tasks["ingest-examples"]["cachingOptions"].get("enableCache") is True
    for t in ("train-model", "evaluate-model", "promote-model"):
        assert not tasks[t]["cachingOptions"].get("enableCache"), t
    # the evaluated model is the quantized one and the float one is reported beside it
    ev = tasks["evaluate-model"]["inputs"]["artifacts"]
    assert ev["model"]["taskOutputArtifact"] == {"outputArtifactKey": "quantized_model",
                                                 "producerTask": "quantize-embeddings"}
    assert ev["float_model"]["taskOutputArtifact"]["producerTask"] == "train-model"
    # the day comes from the scheduled time when not given
    sched = tasks["resolve-day"]["inputs"]["parameters"]["scheduled_time"]["runtimeValue"]["constant"]
    assert sched == "{{$.pipeline_job_schedule_time_utc}}"
    # warm start from the registry's champion alias
    ws = tasks["train-model"]["inputs"]["parameters"]["warm_start"]
    assert "@champion" in yaml.safe_dump(ws)
    # GPU request and toleration on training only
    executors = spec["deploymentSpec"]["executors"]
    train_exec = executors[spec["components"]["comp-train-model"]["executorLabel"]]["container"]
    assert train_exec["resources"]["accelerator"]["resourceCount"] == "1"
    assert "nvidia.com/gpu" in yaml.safe_dump(train_exec["resources"]["accelerator"])
    ingest_exec = executors[spec["components"]["comp-ingest-examples"]["executorLabel"]]["container"]
    assert "accelerator" not in ingest_exec.get("resources", {})
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert any("tolerations" in e for e in k8s.values())
    assert all(e["secretAsEnv"][0]["secretName"] == "recpipe-credentials" for e in k8s.values())


def test_local_build_has_no_schedule_placeholder_or_cluster_settings(tmp_path):
    from kfp import compiler

    from recpipe.pipelines import LOCAL

    path = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_daily_retrain(LOCAL), str(path))
    text = path.read_text()
    assert "pipeline_job_schedule_time_utc" not in text
    assert "MLFLOW_TRACKING_URI" not in text and "nvidia.com/gpu" not in text


def test_cli_compile(tmp_path, capsys):
    assert cli_main(["compile", "--pipeline", "backfill", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "backfill.yaml").exists()
    assert str(tmp_path / "backfill.yaml") in capsys.readouterr().out


def test_build_options_mlflow_env(tmp_path):
    from kfp import compiler

    path = tmp_path / "d.yaml"
    compiler.Compiler().compile(build_daily_retrain(BuildOptions(mlflow_uri="http://m:5000", secret="")), str(path))
    spec, platform = _load(path)
    env = [e for ex in spec["deploymentSpec"]["executors"].values() for e in ex["container"].get("env", [])]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://m:5000"} in env
    assert not platform
