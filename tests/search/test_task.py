"""recpipe.tasks.search end to end on a tiny processed-Parquet dataset (planted signal)."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from recpipe.data.parquet_io import write_processed_day
from recpipe.models.spec import ArchSpec
from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature
from recpipe.search.data import planted_rows
from recpipe.search.evolution import EvolutionConfig
from recpipe.search.history import load_history
from recpipe.search.ranker import RankerConfig
from recpipe.search.space import SpaceConfig
from recpipe.search.trials import TrialConfig
from recpipe.tasks import search as task
from recpipe.tracking.base import MemoryTracker

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
TABLES = (30, 30, 10)
ROWS_PER_DAY = 600


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("processed")
    schema = Schema(name="planted", label=LabelSpec("label"), dense=(DenseFeature("d0"), DenseFeature("d1")),
                    sparse=tuple(SparseFeature(f"c{i}", num_embeddings=s) for i, s in enumerate(TABLES)))
    rows = planted_rows(ROWS_PER_DAY * len(DAYS), num_dense=2, table_sizes=TABLES, seed=5)
    for k, day in enumerate(DAYS):
        part = rows.slice(k * ROWS_PER_DAY, (k + 1) * ROWS_PER_DAY)
        cols = {"label": pa.array(part.labels.numpy()),
                **{f"d{j}": pa.array(part.dense[:, j].numpy()) for j in range(2)},
                **{f"c{j}": pa.array(part.values[j].numpy()) for j in range(len(TABLES))}}
        write_processed_day(pa.table(cols), root, day, schema=schema)
    return str(root)


def _cfg(budget: int) -> task.SearchConfig:
    tiny = TrialConfig(max_train_rows=800, max_valid_rows=None, hash_cap=16, embedding_dim=4, batch_size=64,
                       max_steps=30, eval_every=15, patience=1)
    return task.SearchConfig(
        space=SpaceConfig(embedding_dim=4, mlp_widths=(8, 16), max_blocks=4, init_max_blocks=3),
        evolution=EvolutionConfig(budget=budget, initial_population=4, population_size=4, batch_size=2, max_age=8,
                                  ranker_min_history=4, ranker_candidates=8, ranker=RankerConfig(n_estimators=20)),
        trial=tiny, full=tiny.replace(max_train_rows=None, hash_cap=None, embedding_dim=None, max_steps=40),
        baselines=("dlrm", "deepfm"), retrain_top_k=2, workers=1)


def test_run_writes_outputs_and_resumes(dataset, tmp_path):
    out = tmp_path / "out"
    tracker = MemoryTracker("search")
    res = task.run(_cfg(6), dataset_root=dataset, output_dir=str(out), train_days=DAYS[:2], eval_days=DAYS[2:],
                   tracker=tracker)
    assert set(res.outputs) == {"history", "ranked", "best_spec", "comparison"}
    assert len(load_history(out / "history.jsonl")) == 6
    ranked = json.loads((out / "ranked.json").read_text())["architectures"]
    assert [a["rank"] for a in ranked] == list(range(1, len(ranked) + 1))
    assert [a["quality"] for a in ranked] == sorted(a["quality"] for a in ranked)  # NE: lower is better
    best = ArchSpec.load(str(out / "best_spec.json"))
    comp = json.loads((out / "comparison.json").read_text())
    assert set(comp["runs"]) == {f"searched-{i}-{ranked[i - 1]['fingerprint']}" for i in (1, 2)} | {"dlrm", "deepfm"}
    assert comp["runs"][comp["best_searched"]]["fingerprint"] == best.fingerprint()
    assert comp["rows"] == {"train": 960, "valid": 240, "test": 600}
    for r in comp["runs"].values():  # every contender trained under the same budget, scored on the same rows
        assert r["train_examples"] <= 40 * 64 and 0.0 <= r["metrics"]["test/auc"] <= 1.0
    cost = comp["cost"]
    assert cost["search_x_examples"] == pytest.approx(cost["trial_train_examples"] / cost["full_train_examples"])
    assert cost["trial_cpu_s"] > 0 and cost["search_x_cpu"] == pytest.approx(cost["trial_cpu_s"] / cost["full_cpu_s"])
    assert "search/delta_test_auc" in res.metrics and res.metrics["search/trials"] == 6
    assert sum(c.name.startswith("trial-") for c in tracker.children) == 6
    assert sum(c.name.startswith("final-") for c in tracker.children) == 4
    again = task.run(_cfg(8), dataset_root=dataset, output_dir=str(out), train_days=DAYS[:2], eval_days=DAYS[2:])
    hist = load_history(out / "history.jsonl")
    assert len(hist) == 8 and again.metrics["search/trials"] == 8
    assert [h.trial for h in hist] == list(range(8))


def test_split_propose_run_trials_commit(dataset, tmp_path):
    cfg = _cfg(4)
    history = str(tmp_path / "history.jsonl")
    for generation in range(2):
        prop = task.propose(cfg, dataset_root=dataset, history_path=history,
                            output_dir=str(tmp_path / f"g{generation}"), train_days=DAYS[:2], num_batches=2)
        assert prop.metadata["generation"] == generation and not prop.metadata["done"]
        outs = []
        for i, batch in enumerate(prop.outputs["batches"].split(",")):
            path = str(tmp_path / f"g{generation}" / f"out-{i}.json")
            task.run_trials(cfg, dataset_root=dataset, specs_path=batch, output_path=path, train_days=DAYS[:2])
            outs.append(path)
        res = task.commit(cfg, dataset_root=dataset, history_path=history, pending_path=prop.outputs["pending"],
                          outcome_paths=outs, train_days=DAYS[:2])
        assert res.metadata["committed"] == 2
    assert res.metadata["done"]
    hist = load_history(history)
    assert len(hist) == 4 and len({h.fingerprint for h in hist}) == 4 and all(h.ok for h in hist)
    # the split flow evaluates exactly like the in-process search: same trials, same metrics
    out = tmp_path / "one-step"
    task.run(cfg, dataset_root=dataset, output_dir=str(out), train_days=DAYS[:2], eval_days=DAYS[2:])
    one = load_history(out / "history.jsonl")
    assert [(h.fingerprint, h.quality) for h in one] == [(h.fingerprint, h.quality) for h in hist]
    done = task.propose(cfg, dataset_root=dataset, history_path=history, output_dir=str(tmp_path / "g2"),
                        train_days=DAYS[:2], num_batches=2)
    assert done.metadata["done"] and done.outputs["batches"] == ""


def test_main_cli_trial_batch_mode(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("RECPIPE_TRACKING", "off")
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([ArchSpec.from_dict(
        {"embedding_dim": 4, "blocks": [{"name": "m", "type": "mlp", "inputs": ["dense", "sparse"], "units": [8]}]}
    ).to_dict()]))
    out = tmp_path / "outcomes.json"
    res = task.main(["--config", _cfg(2).to_json(), "--dataset-root", dataset, "--train-days", ",".join(DAYS[:2]),
                     "--specs", str(specs), "--trials-output", str(out)])
    outcomes = json.loads(out.read_text())["outcomes"]
    assert len(outcomes) == 1 and not outcomes[0]["error"] and res.metrics["search/batch_failed"] == 0
    assert 0.0 < outcomes[0]["metrics"]["eval/ne"] < 2.0
