"""Trainer: learns a learnable task, logs, calls hooks in order, clips, stops, is deterministic, resumes a
multi-pass run over a Parquet loader exactly."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recpipe.data.loader import LoaderConfig, ParquetLoader
from recpipe.data.parquet_io import write_processed_day
from recpipe.models import dlrm
from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature
from recpipe.tracking.base import MemoryTracker
from recpipe.train import Callback, OptimConfig, TrainConfig, Trainer
from tests.train.synthetic import NUM_DENSE, TABLE_SIZES, make_batches

WINDOW_TOL = 1e-6
"""Loss means: the trainer sums float32 losses in a tensor, the test sums the same values in Python floats."""
MIN_AUC = 0.8  # the click model's own AUC is ~0.92 and this setup reaches ~0.91; 0.5 = chance
FAST = OptimConfig(dense_lr=0.01, sparse_lr=0.1)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return dlrm(TABLE_SIZES, NUM_DENSE, embedding_dim=8, bottom=(16,), top=(16,))


def test_training_reduces_loss_and_generalises():
    train, held_out = make_batches(6000, 200, seed=1), make_batches(3000, 3000, seed=2)[0]
    model = _model()
    tracker = MemoryTracker()
    summary = Trainer(model, TrainConfig(epochs=3, log_every=10, optim=FAST), tracker).fit(train)
    assert summary.steps == 90 and summary.examples == 18000
    losses = [v for _, v in tracker.metrics["train/loss"]]
    assert [s for s, _ in tracker.metrics["train/loss"]] == list(range(10, 91, 10))
    assert losses[-1] < 0.8 * losses[0]
    assert all(v > 0 for _, v in tracker.metrics["train/examples_per_sec"])
    model.eval()
    with torch.no_grad():
        scores = torch.sigmoid(model(held_out))
    assert roc_auc_score(held_out.labels.numpy(), scores.numpy()) > MIN_AUC


class Recorder(Callback):
    """Records hook order and what the model looked like at each hook."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.grad_seen = False

    def on_fit_start(self, trainer):
        self.events.append(("start", trainer.state.step))

    def after_backward(self, trainer):
        self.events.append(("backward", trainer.state.step))
        self.grad_seen = all(p.grad is not None for p in trainer.model.parameters())
        trainer.model.out.weight.grad.zero_()  # a hook may edit gradients before the step

    def after_step(self, trainer, loss):
        self.events.append(("step", trainer.state.step))
        assert loss.dim() == 0 and not loss.requires_grad

    def on_fit_end(self, trainer, summary):
        self.events.append(("end", summary.steps))


def test_callbacks_run_in_order_and_can_edit_gradients():
    model = _model()
    before = model.out.weight.detach().clone()
    rec = Recorder()
    cfg = TrainConfig(max_steps=2, optim=OptimConfig(dense="sgd"))
    Trainer(model, cfg, callbacks=[rec]).fit(make_batches(100, 20, seed=0))
    assert rec.events == [("start", 0), ("backward", 0), ("step", 1), ("backward", 1), ("step", 2), ("end", 2)]
    assert rec.grad_seen
    assert torch.equal(model.out.weight.detach(), before)  # zeroed grad + plain SGD → unchanged


def test_max_steps_across_epochs_and_final_log():
    tracker = MemoryTracker()
    summary = Trainer(_model(), TrainConfig(epochs=5, max_steps=7, log_every=5), tracker).fit(
        make_batches(60, 20, seed=0))  # 3 batches per epoch
    assert summary.steps == 7
    assert [s for s, _ in tracker.metrics["train/loss"]] == [5, 7]  # window flushed at the end
    assert [v for _, v in tracker.metrics["train/epoch"]] == [1.0, 2.0]


def test_grad_clipping_bounds_the_dense_update():
    batches = make_batches(40, 40, seed=0)
    clip = 1e-3
    model = _model()
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n != "embedding.weight"}
    # SGD with lr 1: the dense update IS the (clipped) gradient
    cfg = TrainConfig(max_steps=1, grad_clip_norm=clip, optim=OptimConfig(dense="sgd", dense_lr=1.0))
    Trainer(model, cfg).fit(batches)
    moved = torch.sqrt(sum(((p.detach() - start[n]) ** 2).sum() for n, p in model.named_parameters()
                           if n in start))
    assert moved == pytest.approx(clip, rel=1e-3)


def test_same_seed_same_result():
    batches = make_batches(200, 50, seed=3)
    runs = []
    for _ in range(2):
        model = _model()
        Trainer(model, TrainConfig(epochs=2, seed=5)).fit(batches)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_second_fit_continues_training_on_new_data():
    model = _model()
    trainer = Trainer(model, TrainConfig())
    trainer.fit(make_batches(60, 20, seed=0))
    s2 = trainer.fit(make_batches(40, 20, seed=1))
    assert s2.steps == 2 and trainer.state.step == 5 and trainer.state.examples == 100


def test_config_round_trips_and_validates():
    cfg = TrainConfig(max_steps=10, optim=OptimConfig(dense="adagrad"), grad_clip_norm=1.0)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="TrainConfig.log_every"):
        TrainConfig(log_every=0)


class LossLog(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def after_step(self, trainer, loss):
        self.losses.append(float(loss))


def test_summary_reports_the_last_log_window_mean():
    log, tracker = LossLog(), MemoryTracker()
    summary = Trainer(_model(), TrainConfig(max_steps=8, log_every=3), tracker, callbacks=[log]).fit(
        make_batches(200, 20, seed=0))
    assert len(log.losses) == 8
    window = sum(log.losses[6:8]) / 2  # windows: steps 1-3, 4-6, then 7-8 flushed at the end
    assert summary.last_window_loss == pytest.approx(window, rel=WINDOW_TOL)
    assert summary.last_window_loss != pytest.approx(log.losses[-1], rel=WINDOW_TOL)  # not the last batch's
    assert summary.mean_loss == pytest.approx(sum(log.losses) / 8, rel=WINDOW_TOL)
    assert summary.metrics()["train/loss"] == summary.last_window_loss == tracker.metrics["train/loss"][-1][1]


SIZES_PQ = (20, 7)


def _parquet_days(root) -> Schema:
    schema = Schema(name="pq", label=LabelSpec("label"), dense=(DenseFeature("d0"), DenseFeature("d1")),
                    sparse=tuple(SparseFeature(f"s{i}", num_embeddings=n) for i, n in enumerate(SIZES_PQ)))
    for k, day in enumerate(("2026-02-01", "2026-02-02")):
        rng = np.random.default_rng(k)
        cols = {"label": (rng.random(40) < 0.4).astype(np.float32),
                "d0": rng.normal(0, 1, 40).astype(np.float32), "d1": rng.normal(0, 1, 40).astype(np.float32)}
        for i, n in enumerate(SIZES_PQ):
            cols[f"s{i}"] = rng.integers(0, n, 40).astype(np.int64)
        write_processed_day(pa.table(cols), root, day, schema=schema)
    return schema


def test_parquet_loader_resume_then_next_pass_starts_at_the_first_row(tmp_path):
    """A run killed mid-pass 0 and resumed from its cursor finishes pass 0 from the cursor, then reads pass 1
    from the data's first row: the same steps and the same weights as the run that was never killed."""
    schema = _parquet_days(tmp_path / "data")

    def loader():
        return ParquetLoader(str(tmp_path / "data"), LoaderConfig(batch_size=16), schema=schema)  # 5 per pass

    def model(seed):
        torch.manual_seed(seed)
        return dlrm(schema, embedding_dim=4, bottom=(8, 4), top=(8,))

    cfg = TrainConfig(epochs=2, seed=1)
    straight = Trainer(model(0), cfg)
    assert straight.fit(loader()).steps == 10
    Trainer(model(0), cfg.replace(max_steps=3)).fit(loader(), checkpoint_dir=str(tmp_path / "ck"))
    resumed = Trainer(model(5), cfg)
    summary = resumed.fit(loader(), checkpoint_dir=str(tmp_path / "ck"), resume=True)
    assert summary.steps == 7 and resumed.state.step == 10  # 2 left in pass 0, all 5 of pass 1
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
