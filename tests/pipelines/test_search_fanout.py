"""The fanned-out architecture search: propose → ParallelFor(trial batches) → commit per generation, then finalize.

* IR: the fan-out build compiles with one ParallelFor per generation over the batch indices, collected outcomes,
  and the history artifact threaded generation to generation into finalize and the full training.
* Function: the four components' Python bodies, called in sequence on tiny data with each step seeing only
  its declared input artifacts (every other folder is deleted), reproduce the one-step
  ``recpipe.tasks.search.run``.
* kfp.local (slow): the fan-out pipeline (ParallelFor + dsl.Collected, supported by kfp 2.17's local runner)
  runs end to end under ``SubprocessRunner(use_venv=False)``: ingest → 2 generations → finalize → train → evaluate.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from kfp import dsl

from recpipe.components.search import commit_trials, finalize_search, propose_trials, run_trial_batch
from recpipe.models.spec import ArchSpec
from recpipe.pipelines import BuildOptions, build_architecture_search
from recpipe.pipelines.compile import compile_pipelines
from recpipe.search.history import load_history
from recpipe.tasks import search as task
from tests.search.test_task import DAYS, _cfg, dataset  # noqa: F401 - `dataset` is the tiny-Parquet fixture

GENERATIONS, BATCHES = 3, 4

# The one-step run and the fan-out train the same specs on the same rows with the same seeds, but in different
# processes / orders; float reductions may differ in the last bits, nothing more.
RETRAIN_METRIC_TOL = 1e-6


def _load(path):
    with open(path, encoding="utf-8") as fh:
        docs = list(yaml.safe_load_all(fh))
    return docs[0], (docs[1] if len(docs) > 1 else {})


# ---------------------------------------------------------------------- compiled IR
def test_fanout_pipeline_ir_parallel_for_collected_and_history_chain(tmp_path):
    (path,) = compile_pipelines("architecture_search_fanout", str(tmp_path), gpu=True)
    spec, _ = _load(path)
    assert spec["pipelineInfo"]["name"] == "recpipe-architecture-search-fanout"
    tasks = spec["root"]["dag"]["tasks"]
    suffix = ["", "-2", "-3"]
    proposes, commits = [f"propose-trials{s}" for s in suffix], [f"commit-trials{s}" for s in suffix]
    loops = sorted((t for t in tasks if t.startswith("for-loop-")), key=lambda t: int(t.rsplit("-", 1)[1]))
    assert len(loops) == GENERATIONS and "search-architecture" not in tasks
    assert set(tasks) == {"ingest-examples", *proposes, *loops, *commits, "finalize-search", "train-model",
                          "evaluate-model"}
    for g, (prop, loop, com) in enumerate(zip(proposes, loops, commits)):
        # one ParallelFor per generation over the batch indices 0..B-1, fed by that generation's proposals
        it = tasks[loop]["parameterIterator"]
        assert json.loads(it["items"]["raw"]) == list(range(BATCHES))
        assert tasks[loop]["dependentTasks"] == [prop]
        body = spec["components"][tasks[loop]["componentRef"]["name"]]
        (inner,) = body["dag"]["tasks"].values()
        assert inner["componentRef"]["name"].startswith("comp-run-trial-batch")
        assert inner["inputs"]["parameters"]["batch_index"]["componentInputParameter"] == it["itemInput"]
        assert body["inputDefinitions"]["parameters"][it["itemInput"]]["parameterType"] == "NUMBER_INTEGER"
        (collected,) = body["outputDefinitions"]["artifacts"].values()
        assert collected["isArtifactList"] is True
        # commit consumes the collected outcomes of the loop and the same proposals
        arts = tasks[com]["inputs"]["artifacts"]
        assert arts["outcomes"]["taskOutputArtifact"]["producerTask"] == loop
        assert arts["proposals"]["taskOutputArtifact"] == {"outputArtifactKey": "proposals", "producerTask": prop}
        commit_comp = spec["components"][tasks[com]["componentRef"]["name"]]
        assert commit_comp["inputDefinitions"]["artifacts"]["outcomes"]["isArtifactList"] is True
        # the history threads generation g's commit into generation g+1's proposal
        history = tasks[prop]["inputs"]["artifacts"].get("history")
        if g == 0:
            assert history is None
        else:
            assert history["taskOutputArtifact"] == {"outputArtifactKey": "history", "producerTask": commits[g - 1]}
        assert tasks[prop]["inputs"]["parameters"]["trial_batches"]["runtimeValue"]["constant"] == BATCHES
    fin = tasks["finalize-search"]["inputs"]["artifacts"]
    assert fin["history"]["taskOutputArtifact"] == {"outputArtifactKey": "history", "producerTask": commits[-1]}
    assert tasks["train-model"]["inputs"]["artifacts"]["spec"]["taskOutputArtifact"] == {
        "outputArtifactKey": "best_spec", "producerTask": "finalize-search"}
    # trial pods and the final retraining get the GPU; propose/commit stay on CPU
    executors = spec["deploymentSpec"]["executors"]

    def resources(comp):
        return executors[spec["components"][comp]["executorLabel"]]["container"].get("resources", {})

    assert resources(inner["componentRef"]["name"])["accelerator"]["resourceCount"] == "1"
    assert "accelerator" in resources("comp-finalize-search")
    assert "accelerator" not in resources("comp-propose-trials")
    assert "accelerator" not in resources("comp-commit-trials")


def test_default_build_keeps_the_single_search_step(tmp_path):
    from kfp import compiler

    path = tmp_path / "a.yaml"
    compiler.Compiler().compile(build_architecture_search(BuildOptions(secret="")), str(path))
    spec, _ = _load(path)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"ingest-examples", "search-architecture", "train-model", "evaluate-model"}
    assert spec["pipelineInfo"]["name"] == "recpipe-architecture-search"
    with pytest.raises(ValueError, match="trial_batches"):
        build_architecture_search(BuildOptions(), fanout_generations=2, trial_batches=0)


# ---------------------------------------------------------------------- component bodies, no KFP
def _pointer(tmp_path, root: str) -> dsl.Dataset:
    """The ``ingest_examples`` pointer (root + days) as an input artifact."""
    (tmp_path / "examples").write_text(json.dumps({"dataset_root": root, "days": DAYS}))
    return dsl.Dataset(uri=str(tmp_path / "examples"))


def test_fanout_components_reproduce_the_one_step_search(dataset, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("RECPIPE_TRACKING", "off")
    cfg = _cfg(6)  # 2 trials per generation into 3 slots: one slot stays empty; generation 3 finds the budget spent
    slots = 3
    examples = _pointer(tmp_path, dataset)
    history = None
    for g in range(4):
        step = tmp_path / f"g{g}"
        prop = dsl.Artifact(uri=str(step / "proposals"))
        propose_trials.python_func(examples=examples, proposals=prop, config=cfg.to_dict(), train_days=[],
                                   trial_batches=slots, history=history)
        if history is not None:
            shutil.rmtree(history.path)  # from here on only the proposals folder carries the history
        sizes = [len(json.loads((step / "proposals" / f"batch-{i}.json").read_text())["specs"]) for i in range(slots)]
        assert sizes == ([1, 1, 0] if g < 3 else [0, 0, 0])
        assert len(load_history(step / "proposals" / "history.jsonl")) == min(2 * g, 6)
        outcomes = []
        for i in reversed(range(slots)):  # ParallelFor slots finish in any order
            out = dsl.Artifact(uri=str(step / f"outcomes-{i}"))
            run_trial_batch.python_func(proposals=prop, batch_index=i, outcomes=out)
            got = json.loads((step / f"outcomes-{i}" / "outcomes.json").read_text())
            assert got["generation"] == g and len(got["outcomes"]) == sizes[i]
            assert out.metadata["search/batch_trials"] == sizes[i]
            outcomes.append(out)
        history = dsl.Artifact(uri=str(step / "history"))
        metrics = dsl.Metrics(uri=str(step / "metrics"))
        commit_trials.python_func(proposals=prop, outcomes=outcomes, history=history, metrics=metrics)
        for folder in [prop, *outcomes]:
            shutil.rmtree(folder.path)  # the history folder must stand alone
        assert metrics.metadata["search/trials"] == min(2 * (g + 1), 6)
        assert history.metadata["committed"] == (2 if g < 3 else 0) and history.metadata["done"] == (g >= 2)

    best, ranked = dsl.Artifact(uri=str(tmp_path / "best_spec")), dsl.Artifact(uri=str(tmp_path / "ranked"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    finalize_search.python_func(examples=examples, history=history, best_spec=best, ranked=ranked, metrics=metrics,
                                config=cfg.to_dict())
    assert sorted(os.listdir(ranked.path)) == ["best_spec.json", "comparison.json", "history.jsonl", "ranked.json"]

    # the one-step search (trials in-process) on the same data and days
    one = tmp_path / "one-step"
    res = task.run(cfg, dataset_root=dataset, output_dir=str(one), train_days=DAYS[:2], eval_days=DAYS[2:])
    fan_hist, one_hist = load_history(os.path.join(ranked.path, "history.jsonl")), load_history(one / "history.jsonl")
    assert len(fan_hist) == 6 and all(h.ok for h in fan_hist)
    # the trials' cost travels through the outcome files (the comparison's cost multiples are built from it)
    assert all(h.outcome.cpu_s > 0 and h.outcome.wall_s > 0 and h.outcome.train_examples > 0 for h in fan_hist)

    def key(h):
        return h.trial, h.generation, h.fingerprint, h.origin, h.parent, h.guided, h.quality, h.complexity

    assert [key(h) for h in fan_hist] == [key(h) for h in one_hist]
    fan_ranked = json.loads(Path(ranked.path, "ranked.json").read_text())
    one_ranked = json.loads((one / "ranked.json").read_text())
    assert [a["fingerprint"] for a in fan_ranked["architectures"]] == \
           [a["fingerprint"] for a in one_ranked["architectures"]]
    assert ArchSpec.load(best.path).fingerprint() == ArchSpec.load(str(one / "best_spec.json")).fingerprint()
    assert best.metadata["best_fingerprint"] == res.metadata["best_fingerprint"] and best.metadata["trials"] == 6
    fan_cmp = json.loads(Path(ranked.path, "comparison.json").read_text())
    one_cmp = json.loads((one / "comparison.json").read_text())
    assert fan_cmp["best_searched"] == one_cmp["best_searched"] and set(fan_cmp["runs"]) == set(one_cmp["runs"])
    assert fan_cmp["cost"]["trial_train_examples"] == one_cmp["cost"]["trial_train_examples"]
    assert fan_cmp["cost"]["trial_cpu_s"] == pytest.approx(sum(h.outcome.cpu_s for h in fan_hist))
    for name, run in one_cmp["runs"].items():
        assert fan_cmp["runs"][name]["metrics"]["test/auc"] == pytest.approx(run["metrics"]["test/auc"],
                                                                            abs=RETRAIN_METRIC_TOL), name
    assert metrics.metadata["search/trials"] == 6
    assert metrics.metadata["search/delta_test_auc"] == pytest.approx(res.metrics["search/delta_test_auc"],
                                                                      abs=RETRAIN_METRIC_TOL)


def test_fanout_steps_reject_mismatched_inputs(dataset, tmp_path):  # noqa: F811
    cfg = _cfg(4)
    prop = str(tmp_path / "proposals")
    task.fanout_propose(cfg, dataset_root=dataset, train_days=DAYS[:2], proposals_dir=prop, num_batches=2)
    with pytest.raises(ValueError, match="batch_index 2 outside 0..1"):
        task.fanout_trials(proposals_dir=prop, batch_index=2, outcomes_dir=str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="context.json"):
        task.fanout_trials(proposals_dir=str(tmp_path), batch_index=0, outcomes_dir=str(tmp_path / "o"))
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "outcomes.json").write_text(json.dumps({"generation": 7, "outcomes": []}))
    with pytest.raises(ValueError, match="generation 7"):
        task.fanout_commit(proposals_dir=prop, outcome_dirs=[str(stale)], history_dir=str(tmp_path / "h"))
    (stale / "outcomes.json").write_text(json.dumps({"generation": 0, "outcomes": []}))
    with pytest.raises(KeyError, match="no outcome for proposals"):
        task.fanout_commit(proposals_dir=prop, outcome_dirs=[str(stale)], history_dir=str(tmp_path / "h"))
    with pytest.raises(FileNotFoundError, match="holds no history.jsonl"):
        task.fanout_propose(cfg, dataset_root=dataset, train_days=DAYS[:2], proposals_dir=str(tmp_path / "p2"),
                            num_batches=2, history_dir=str(stale))


# ---------------------------------------------------------------------- kfp.local end to end
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning",
                            "ignore:Task .* have no effect in the current local runner:UserWarning")
def test_fanout_pipeline_runs_locally(tmp_path, monkeypatch):
    from kfp import local

    from recpipe.data import synthetic
    from recpipe.pipelines import LOCAL

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECPIPE_TRACKING", "off")
    raw = tmp_path / "raw"
    synthetic.generate(synthetic.SynthConfig(days=3, rows_per_day=1500, seed=3, start_date="2026-02-01"), str(raw))
    files = sorted(str(p) for p in raw.glob("2026-*.tsv*"))
    cfg = _cfg(4)  # 2 generations x 2 trials; 2 slots
    # kfp.local cannot pass null inside a dict parameter ("ValueError: Value must be one of the following types:
    # str, int, float, bool, dict, and list. Got: "None""), so every "no cap" is spelled as a cap above the data
    no_cap = 10**6
    cfg = cfg.replace(trial=cfg.trial.replace(max_valid_rows=no_cap),
                      full=cfg.full.replace(max_train_rows=no_cap, max_valid_rows=no_cap, hash_cap=no_cap,
                                            embedding_dim=cfg.space.embedding_dim))
    search_cfg = cfg.to_dict()
    assert "None" not in repr(search_cfg)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True)
    pipeline = build_architecture_search(LOCAL, fanout_generations=2, trial_batches=2)
    pipeline(raw_inputs=",".join(files), dataset_root=str(tmp_path / "dataset"), eval_day="2026-02-03",
             search_config=search_cfg, ingest_config={"engine": "arrow", "hash_buckets": 500},
             train_config={"trainer": {"batch_size": 256, "max_steps": 5}}, evaluate_config={"bootstrap_samples": 10})
    histories = sorted((p for p in (tmp_path / "kfp").rglob("history.jsonl") if p.parent.name == "history"),
                       key=lambda p: len(load_history(p)))
    assert [len(load_history(p)) for p in histories] == [2, 4]
    (ranked_dir,) = {p.parent for p in (tmp_path / "kfp").rglob("ranked.json")}
    assert len(load_history(ranked_dir / "history.jsonl")) == 4
    (spec_file,) = [p for p in (tmp_path / "kfp").rglob("best_spec") if p.is_file()]
    best = ArchSpec.load(str(spec_file))
    assert best.fingerprint() in {h.fingerprint for h in load_history(histories[-1])}
    # the full training used the searched winner, and the evaluation ran on it
    (model_json,) = [p for p in (tmp_path / "kfp").rglob("model.json") if p.parent.name == "model"]
    assert ArchSpec.from_dict(json.loads(model_json.read_text())["spec"]).fingerprint() == best.fingerprint()
    assert list((tmp_path / "kfp").rglob("blessing.json"))
