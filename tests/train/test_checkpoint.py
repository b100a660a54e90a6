"""Checkpoints: bit-exact resume, retention, atomic files, warm start with grown tables, one writer under
torchrun, branching resumes."""
from __future__ import annotations

import os

import pytest
import torch

from recpipe.models import dlrm, save_model
from recpipe.train import Callback, CheckpointManager, TrainConfig, Trainer, load_checkpoint, warm_start
from recpipe.train.distributed import is_main_process
from tests.train.synthetic import NUM_DENSE, TABLE_SIZES, ReplayableLoader, make_batches

N_STEPS = 4  # half the run; 5 batches per epoch, so the resume point sits inside epoch 0 and 2N crosses epochs


def _model(seed: int):
    torch.manual_seed(seed)
    return dlrm(TABLE_SIZES, NUM_DENSE, embedding_dim=4, bottom=(8,), top=(8,))


class NoiseLog(Callback):
    """Draws from the global RNG every step (like dropout would) and keeps the draws as its state."""

    def __init__(self) -> None:
        self.draws: list[float] = []

    def after_step(self, trainer, loss):
        self.draws.append(float(torch.rand(())))

    def state_dict(self):
        return {"draws": list(self.draws)}

    def load_state_dict(self, state):
        self.draws = list(state["draws"])


def _assert_same(a: Trainer, b: Trainer) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    oa, ob = a.optimizers.state_dict(), b.optimizers.state_dict()
    for kind in ("dense", "sparse"):
        for pid, st in oa[kind]["state"].items():
            for name, v in st.items():
                other = ob[kind]["state"][pid][name]
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(other)), (kind, pid, name)
    assert (a.state.step, a.state.examples) == (b.state.step, b.state.examples)


@pytest.mark.parametrize("with_cursor,resume_wrap", [(False, list), (True, ReplayableLoader),
                                                     (False, ReplayableLoader)],
                         ids=["replay-skip", "loader-cursor", "no-cursor-saved-then-loader"])
def test_resume_is_bit_exact(tmp_path, with_cursor, resume_wrap):
    batches = make_batches(100, 20, seed=0)  # 5 batches per epoch
    wrap = ReplayableLoader if with_cursor else list
    cfg = TrainConfig(epochs=2, max_steps=2 * N_STEPS, seed=3, log_every=3)

    straight_cb = NoiseLog()
    straight = Trainer(_model(0), cfg, callbacks=[straight_cb])
    straight.fit(wrap(batches))

    first = Trainer(_model(0), cfg.replace(max_steps=N_STEPS), callbacks=[NoiseLog()])
    first.fit(wrap(batches), checkpoint_dir=str(tmp_path))
    payload = load_checkpoint(CheckpointManager(tmp_path).latest())
    assert payload["step"] == N_STEPS and payload["batch_in_epoch"] == N_STEPS
    assert payload["data"] == ({"cursor": N_STEPS} if with_cursor else None)

    resumed_cb = NoiseLog()
    resumed = Trainer(_model(99), cfg, callbacks=[resumed_cb])  # different init: weights come from the ckpt
    summary = resumed.fit(resume_wrap(batches), checkpoint_dir=str(tmp_path), resume=True)
    assert summary.steps == N_STEPS
    _assert_same(straight, resumed)
    assert resumed_cb.draws == straight_cb.draws  # RNG and callback state restored


def test_periodic_checkpoints_keep_last_k_and_leave_no_temp_files(tmp_path):
    cfg = TrainConfig(max_steps=7, checkpoint_every=2, keep_checkpoints=2)
    Trainer(_model(0), cfg).fit(make_batches(200, 20, seed=0), checkpoint_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["ckpt-0000000006.pt", "ckpt-0000000007.pt"]
    payload = load_checkpoint(tmp_path / "ckpt-0000000007.pt")
    assert payload["config"] == cfg.to_dict() and payload["table_sizes"] == {"embedding": TABLE_SIZES}


def test_resume_refuses_other_table_sizes(tmp_path):
    Trainer(_model(0), TrainConfig(max_steps=1)).fit(make_batches(20, 20, seed=0), checkpoint_dir=str(tmp_path))
    other = dlrm([s + 1 for s in TABLE_SIZES], NUM_DENSE, embedding_dim=4, bottom=(8,), top=(8,))
    with pytest.raises(ValueError, match="embedding tables"):
        Trainer(other, TrainConfig(max_steps=2)).fit([], checkpoint_dir=str(tmp_path), resume=True)


def test_missing_checkpoint_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        CheckpointManager(tmp_path).load()


@pytest.mark.parametrize("source_kind", ["model_dir", "checkpoint"])
def test_warm_start_copies_old_rows_into_grown_tables(tmp_path, source_kind):
    src = _model(0)
    trainer = Trainer(src, TrainConfig(max_steps=3))
    trainer.fit(make_batches(60, 20, seed=0), checkpoint_dir=str(tmp_path / "ck"))
    if source_kind == "model_dir":
        source = save_model(src, tmp_path / "model")
    else:
        source = str(tmp_path / "ck")
    grown_sizes = [TABLE_SIZES[0] + 3, TABLE_SIZES[1], TABLE_SIZES[2] + 1]
    torch.manual_seed(7)
    dst = dlrm(grown_sizes, NUM_DENSE, embedding_dim=4, bottom=(8,), top=(8,))
    fresh = dst.embedding.weight.detach().clone()
    info = warm_start(dst, source)
    assert info["grown"] == {"embedding": [TABLE_SIZES, grown_sizes]}
    old_w, new_w = src.embedding.weight.detach(), dst.embedding.weight.detach()
    o, n = src.embedding.table_offsets.tolist(), dst.embedding.table_offsets.tolist()
    for f, size in enumerate(TABLE_SIZES):
        assert torch.equal(new_w[n[f]: n[f] + size], old_w[o[f]: o[f] + size])      # trained rows kept
        assert torch.equal(new_w[n[f] + size: n[f + 1]], fresh[n[f] + size: n[f + 1]])  # new rows: fresh init
    for k, v in src.state_dict().items():
        if k != "embedding.weight":
            assert torch.equal(dst.state_dict()[k], v), k


def test_warm_start_grows_a_smaller_model(tmp_path):
    src = _model(0)
    save_model(src, tmp_path)
    small = dlrm([2, 2, 2], NUM_DENSE, embedding_dim=4, bottom=(8,), top=(8,))
    warm_start(small, str(tmp_path))
    assert small.table_sizes == TABLE_SIZES
    assert torch.equal(small.embedding.weight, src.embedding.weight)


def test_trainer_grow_tables_then_keeps_training(tmp_path):
    trainer = Trainer(_model(0), TrainConfig(max_steps=2))
    trainer.fit(make_batches(40, 20, seed=0))
    acc_before = trainer.optimizers.sparse.state[trainer.model.embedding.weight]["sum"].clone()
    trainer.grow_tables([s + 2 for s in TABLE_SIZES])
    acc_after = trainer.optimizers.sparse.state[trainer.model.embedding.weight]["sum"]
    assert acc_after.shape[0] == acc_before.shape[0] + 6
    o, n = 0, 0
    for size in TABLE_SIZES:  # each table's accumulators move with its rows; the 2 new rows start at 0
        assert torch.equal(acc_after[n: n + size], acc_before[o: o + size])
        assert acc_after[n + size: n + size + 2].tolist() == [0.0, 0.0]
        o, n = o + size, n + size + 2
    trainer.cfg = trainer.cfg.replace(max_steps=4)
    summary = trainer.fit(make_batches(40, 20, seed=1), checkpoint_dir=str(tmp_path))
    assert summary.steps == 2 and trainer.state.step == 4
    # resuming that checkpoint into a model built with the ORIGINAL sizes grows it to match
    resumed = Trainer(_model(5), trainer.cfg)
    resumed.fit([], checkpoint_dir=str(tmp_path), resume=True)
    assert resumed.model.table_sizes == [s + 2 for s in TABLE_SIZES]
    _assert_same(trainer, resumed)


def _ckpt_names(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("ckpt-"))


class _FakeGroup:
    """Stands in for an initialised torch.distributed default group as seen by one rank."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.barriers = 0

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: self.rank)
        monkeypatch.setattr(torch.distributed, "barrier", self._barrier)

    def _barrier(self, *args, **kwargs) -> None:
        self.barriers += 1


@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_only_rank0_writes_and_every_rank_waits(tmp_path, monkeypatch, rank):
    group = _FakeGroup(rank)
    group.install(monkeypatch)
    assert is_main_process() == (rank == 0)
    cfg = TrainConfig(max_steps=4, checkpoint_every=2)
    summary = Trainer(_model(0), cfg).fit(make_batches(100, 20, seed=0), checkpoint_dir=str(tmp_path))
    assert group.barriers == 2  # after the saves of steps 2 and 4 (the final one is step 4's)
    assert summary.checkpoint == str(tmp_path / "ckpt-0000000004.pt")  # where rank 0 wrote it
    written = _ckpt_names(tmp_path) if tmp_path.exists() else []
    assert written == (["ckpt-0000000002.pt", "ckpt-0000000004.pt"] if rank == 0 else [])


def test_single_process_writes_without_barriers(tmp_path, monkeypatch):
    def no_barrier(*args, **kwargs):
        raise AssertionError("barrier outside a process group")

    monkeypatch.setattr(torch.distributed, "barrier", no_barrier)
    assert is_main_process()
    Trainer(_model(0), TrainConfig(max_steps=2, checkpoint_every=1)).fit(make_batches(40, 20, seed=0),
                                                                        checkpoint_dir=str(tmp_path))
    assert _ckpt_names(tmp_path) == ["ckpt-0000000001.pt", "ckpt-0000000002.pt"]


def test_retention_tolerates_a_file_another_process_removed(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=1)
    listed = manager.paths
    ghost = str(tmp_path / "ckpt-0000000000.pt")  # listed, then removed by someone else before our remove
    monkeypatch.setattr(manager, "paths", lambda: [ghost] + listed())
    manager.save({"model": {}}, 1)
    assert _ckpt_names(tmp_path) == ["ckpt-0000000001.pt"]


def test_resume_from_an_older_checkpoint_abandons_the_newer_branch(tmp_path):
    batches = make_batches(200, 20, seed=0)
    Trainer(_model(0), TrainConfig(max_steps=6, checkpoint_every=2, keep_checkpoints=3)).fit(
        batches, checkpoint_dir=str(tmp_path))
    assert _ckpt_names(tmp_path) == ["ckpt-0000000002.pt", "ckpt-0000000004.pt", "ckpt-0000000006.pt"]
    # branch off step 2 with other settings: checkpoints at 3 and (the end) 5
    cfg = TrainConfig(max_steps=5, checkpoint_every=3, keep_checkpoints=3)
    resumed = Trainer(_model(1), cfg)
    summary = resumed.fit(batches, checkpoint_dir=str(tmp_path), resume=str(tmp_path / "ckpt-0000000002.pt"))
    assert _ckpt_names(tmp_path) == ["ckpt-0000000002.pt", "ckpt-0000000003.pt", "ckpt-0000000005.pt"]
    assert sorted(os.listdir(tmp_path / "abandoned")) == ["ckpt-0000000004.pt", "ckpt-0000000006.pt"]
    latest = CheckpointManager(tmp_path).latest()
    assert latest == summary.checkpoint == str(tmp_path / "ckpt-0000000005.pt")
    state = load_checkpoint(latest)["model"]
    assert all(torch.equal(state[k], v) for k, v in resumed.model.state_dict().items())


def test_abandon_after_keeps_earlier_abandoned_files(tmp_path):
    manager = CheckpointManager(tmp_path)
    for round_ in range(2):
        for step in (1, 2, 3):
            (tmp_path / f"ckpt-{step:010d}.pt").write_bytes(bytes([round_]))
        moved = manager.abandon_after(1)
        suffix = "" if round_ == 0 else ".1"
        assert moved == [str(tmp_path / "abandoned" / f"ckpt-{s:010d}.pt{suffix}") for s in (2, 3)]
    assert _ckpt_names(tmp_path) == ["ckpt-0000000001.pt"]
    assert (tmp_path / "abandoned" / "ckpt-0000000002.pt").read_bytes() == b"\0"  # the first round's file
    assert (tmp_path / "abandoned" / "ckpt-0000000002.pt.1").read_bytes() == b"\1"
    assert manager.abandon_after(5) == []
