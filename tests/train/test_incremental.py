"""Tests of recpipe.train.incremental: order, prequential evaluation, growth, follow mode, kill + resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
import torch

from recpipe.data.parquet_io import write_processed_day
from recpipe.models import dlrm, load_model, save_model
from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature
from recpipe.tracking.base import MemoryTracker
from recpipe.train.incremental import (IncrementalConfig, IncrementalTrainer, evaluate_stream, iter_new_days,
                                       parquet_day_factory)
from recpipe.train.loop import TrainConfig
from recpipe.train.pruning import PruneConfig

SEED = 0
DAYS = ("2026-03-01", "2026-03-02", "2026-03-03")
ROWS = 256
BATCH = 32
METRIC_TOL = 1e-6
"""Our float64 streaming NE/AUC vs scikit-learn on the same float32 probabilities: summation-order noise only."""
ROW_SCALE = 1000.0
"""Dense feature 0 carries the row's global index / ROW_SCALE so tests can tell which rows were trained."""


def _schema(sizes=(20, 30)) -> Schema:
    return Schema(name="tiny", label=LabelSpec("label"),
                  dense=tuple(DenseFeature(f"d{i}", transform="none") for i in range(3)),
                  sparse=tuple(SparseFeature(f"s{i}", num_embeddings=n) for i, n in enumerate(sizes)))


def write_days(root, days=DAYS, rows=ROWS, sizes=(20, 30), seed=SEED, manifest_sizes=None) -> Schema:
    """Tiny drifting days; dense d0 = global row index / ROW_SCALE; returns the schema."""
    schema = _schema(sizes)
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, 2)
    for k, day in enumerate(days):
        w = w + rng.normal(0, 0.5, 2)
        n0 = k * rows
        d = rng.normal(0, 1, (rows, 2)).astype(np.float32)
        ids = [rng.integers(0, n, rows) for n in sizes]
        logit = d @ w + 0.8 * np.sin(ids[0]) - 0.5
        y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        cols = {"label": y, "d0": (np.arange(n0, n0 + rows) / ROW_SCALE).astype(np.float32),
                "d1": d[:, 0], "d2": d[:, 1], "s0": ids[0], "s1": ids[1]}
        write_processed_day(pa.table(cols), root, day, schema=schema, row_group_size=100)
    if manifest_sizes is not None:
        with open(os.path.join(root, "_manifest.json"), "w", encoding="utf-8") as fh:
            json.dump({"table_sizes": dict(zip(schema.sparse_names, manifest_sizes))}, fh)
    return schema


def _model(schema: Schema, sizes=None):
    torch.manual_seed(SEED)
    return dlrm(sizes or schema, num_dense=3 if sizes else None, embedding_dim=4, bottom=(8, 4), top=(8,))


def _incr(model, tracker=None, prune=None, **kw) -> IncrementalTrainer:
    cfg = IncrementalConfig(**{"checkpoint_every": 3, "eval_batch_size": 64, "log_every": 4, **kw})
    return IncrementalTrainer(model, TrainConfig(batch_size=BATCH, seed=SEED), cfg, None, prune=prune,
                              tracker=tracker, feature_names=["s0", "s1"])


def _rows(batch) -> list[int]:
    return [int(round(float(v) * ROW_SCALE)) for v in batch.dense[:, 0]]


def test_one_pass_in_time_order_with_prequential_before_training(tmp_path):
    from sklearn.metrics import log_loss, roc_auc_score  # imported here: the kill test's subprocess skips it

    root = str(tmp_path / "data")
    schema = write_days(root)
    tracker = MemoryTracker()
    ckpt = str(tmp_path / "ckpt")
    inc = _incr(_model(schema), tracker)
    inc.open_day = parquet_day_factory(root, schema)
    seen: list[int] = []
    res = inc.run(root, days=DAYS[:1], checkpoint_dir=ckpt, on_step=lambda s, b: seen.extend(_rows(b)))
    assert res.days_trained == [DAYS[0]]
    # The model as it stands after day 0 scores day 1, independently of the driver (scikit-learn).
    snap = tmp_path / "snap"
    save_model(inc.model, snap)
    ref = load_model(snap).eval()
    probs, labels = [], []
    with torch.no_grad():
        for b in parquet_day_factory(root, schema)(DAYS[1], 50):
            probs.append(torch.sigmoid(ref(b)).numpy())
            labels.append(b.labels.numpy())
    p, y = np.concatenate(probs), np.concatenate(labels)
    ne_ref = log_loss(y, p) / log_loss(y, np.full_like(p, y.mean()))
    auc_ref = roc_auc_score(y, p)

    # A fresh driver with the same checkpoint dir continues after day 0: day 1 is evaluated first, then trained.
    inc2 = _incr(_model(schema), tracker)
    inc2.open_day = parquet_day_factory(root, schema)
    res2 = inc2.run(root, checkpoint_dir=ckpt, on_step=lambda s, b: seen.extend(_rows(b)))
    assert res2.resumed_from is not None
    assert res2.days_trained == list(DAYS)
    assert seen == list(range(len(DAYS) * ROWS)), "every row once, in time order"
    assert res2.preq[DAYS[1]]["ne"] == pytest.approx(ne_ref, abs=METRIC_TOL)
    assert res2.preq[DAYS[1]]["auc"] == pytest.approx(auc_ref, abs=METRIC_TOL)
    assert [s for s, _ in tracker.metrics["preq/ne"]] == [0, 1, 2]
    assert res2.rows == len(DAYS) * ROWS and res2.steps == len(DAYS) * ROWS // BATCH
    overall = res2.preq_overall()["preq/ne"]
    assert overall == pytest.approx(np.mean([v["ne"] for v in res2.preq.values()]), abs=METRIC_TOL)


def test_tables_grow_to_manifest_sizes_keeping_old_rows(tmp_path):
    root = str(tmp_path / "data")
    schema = write_days(root, days=DAYS[:1], sizes=(25, 40), manifest_sizes=(25, 40))
    small = _model(schema, sizes=[20, 30])  # e.g. yesterday's model: tables smaller than today's vocabulary
    inc = _incr(small, MemoryTracker())
    emb = inc.model.embedding
    old = emb.weight.detach().clone()
    inc.maybe_grow(root, DAYS[0])
    assert inc.model.table_sizes == [25, 40]
    new = emb.weight.detach() if inc.model.embedding is emb else inc.model.embedding.weight.detach()
    assert torch.equal(new[0:20], old[0:20]) and torch.equal(new[25:55], old[20:50])
    assert inc.grown == [{"day": DAYS[0], "old": [20, 30], "new": [25, 40]}]
    # Training on data that uses the new ids works after growth (ids up to 24 and 39 appear).
    inc.open_day = parquet_day_factory(root, schema)
    res = inc.run(root)
    assert res.rows == ROWS


def test_follow_mode_picks_up_new_days_and_stops_when_idle(tmp_path):
    root = str(tmp_path / "data")
    write_days(root, days=DAYS[:1])
    now = [0.0]
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        now[0] += s
        if len(sleeps) == 2:  # a new partition lands while we wait (the 2nd poll sees it)
            write_days(root, days=DAYS[1:2], seed=5)

    got = list(iter_new_days(root, after=None, follow=True, poll_interval_s=10, max_idle_s=35, sleep=sleep,
                             clock=lambda: now[0]))
    assert got == list(DAYS[:2])
    assert sum(sleeps) >= 35 and len(sleeps) == 2 + 4  # 2 polls until the new day, then idle until 40 s >= 35 s
    # Without follow: one listing, no sleeping; days older than `after` are skipped.
    assert list(iter_new_days(root, after=DAYS[0], sleep=sleep)) == [DAYS[1]]


SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_incremental import _model, _incr, _rows, _schema
    from recpipe.train.incremental import parquet_day_factory
    from recpipe.train.pruning import PruneConfig
    root, ckpt, log, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    schema = _schema()
    inc = _incr(_model(schema), prune=PruneConfig(mode="adaptive", target_sparsity=0.5, end_step=12,
                                                   update_every=2))
    inc.open_day = parquet_day_factory(root, schema)

    def on_step(step, batch):
        with open(log, "a") as fh:
            fh.write(json.dumps({{"step": step, "rows": _rows(batch)}}) + "\\n")
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    inc.run(root, checkpoint_dir=ckpt, on_step=on_step)
    torch.save(inc.model.state_dict(), os.path.join(ckpt, "final.pt"))
""")


def test_killed_run_resumes_with_every_row_trained_exactly_once(tmp_path):
    root = str(tmp_path / "data")
    schema = write_days(root)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ckpt, log = str(tmp_path / "ckpt"), str(tmp_path / "rows.jsonl")
    kill_at = 13  # mid day 1 (8 steps per day), 1 step after the checkpoint at step 12
    p = subprocess.run([sys.executable, str(script), root, ckpt, log, str(kill_at)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    first = [json.loads(line) for line in open(log)]
    assert first[-1]["step"] == kill_at
    ckpts = sorted(n for n in os.listdir(ckpt) if n.startswith("ckpt-"))
    resumed_step = int(ckpts[-1][5:15])
    assert resumed_step == 12
    p = subprocess.run([sys.executable, str(script), root, ckpt, log + ".2", "-1"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    second = [json.loads(line) for line in open(log + ".2")]
    assert second[0]["step"] == resumed_step + 1
    # Rows reflected in the final model: those trained up to the checkpoint, then everything after it.
    kept = [r for e in first if e["step"] <= resumed_step for r in e["rows"]] + [r for e in second for r in e["rows"]]
    assert sorted(kept) == list(range(len(DAYS) * ROWS)), "no row lost, none trained twice"
    assert kept == list(range(len(DAYS) * ROWS)), "and in time order"

    # The resumed model equals an uninterrupted run bit for bit (masks, shadows, optimizer state, RNG restored).
    inc = _incr(_model(schema), prune=PruneConfig(mode="adaptive", target_sparsity=0.5, end_step=12, update_every=2))
    inc.open_day = parquet_day_factory(root, schema)
    inc.run(root, checkpoint_dir=str(tmp_path / "ckpt-ref"))
    resumed = torch.load(os.path.join(ckpt, "final.pt"), weights_only=True)
    for k, v in inc.model.state_dict().items():
        assert torch.equal(v, resumed[k]), k


def test_evaluate_stream_matches_sklearn(tmp_path):
    from sklearn.metrics import log_loss, roc_auc_score

    root = str(tmp_path / "data")
    schema = write_days(root, days=DAYS[:1])
    model = _model(schema)
    out = evaluate_stream(model, parquet_day_factory(root, schema)(DAYS[0], 37))
    model.eval()
    with torch.no_grad():
        b = next(iter(parquet_day_factory(root, schema)(DAYS[0], ROWS)))
        p = torch.sigmoid(model(b)).numpy()
    y = b.labels.numpy()
    assert out["rows"] == ROWS
    assert out["auc"] == pytest.approx(roc_auc_score(y, p), abs=METRIC_TOL)
    assert out["logloss"] == pytest.approx(log_loss(y, p), abs=METRIC_TOL)


def test_pruning_metrics_logged_per_layer_during_stream(tmp_path):
    root = str(tmp_path / "data")
    schema = write_days(root, days=DAYS[:2])
    tracker = MemoryTracker()
    inc = _incr(_model(schema), tracker, prune=PruneConfig(mode="adaptive", target_sparsity=0.6, end_step=8,
                                                           update_every=2), prequential=False)
    inc.open_day = parquet_day_factory(root, schema)
    inc.run(root)
    layer_keys = [k for k in tracker.metrics if k.startswith("prune/sparsity/")]
    assert len(layer_keys) == len(inc.pruner.masks)
    assert tracker.last("prune/global") == pytest.approx(0.6, abs=0.01)
    assert "preq/ne" not in tracker.metrics
