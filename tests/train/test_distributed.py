"""Data-parallel training with 2 CPU processes (gloo) equals single-process training on the full batches."""
from __future__ import annotations

import os

import pytest
import torch

from recpipe.models import dlrm
from recpipe.train.loop import TrainConfig, Trainer
from recpipe.train.optim import OptimConfig
from tests.train.gloo import spawn
from tests.train.synthetic import NUM_DENSE, TABLE_SIZES, make_rows, to_batches

WORLD = 2
BATCH = 64
STEPS = 6
# Two ranks sum gradients in a different order than one process: float32 rounding only.
PARAM_ATOL = 1e-5
CONFIGS = {
    # SGD is sensitive to the gradient's scale (a missing 1/world shows); Adam / row-wise Adagrad are not.
    "sgd": TrainConfig(optim=OptimConfig(dense="sgd", dense_lr=0.1, sparse="sgd", sparse_lr=0.5),
                       batch_size=BATCH, log_every=2, seed=3),
    "adam+rowwise_adagrad": TrainConfig(optim=OptimConfig(dense="adam", dense_lr=0.01, sparse="rowwise_adagrad",
                                                          sparse_lr=0.1), batch_size=BATCH, log_every=2, seed=3),
}


def _model():
    torch.manual_seed(7)
    return dlrm(TABLE_SIZES, num_dense=NUM_DENSE, embedding_dim=8, bottom=(16,), top=(16,))


def _worker(rank: int, out_dir: str, cfg_name: str) -> None:
    from recpipe.train.distributed import GradientSync, init_from_env

    info = init_from_env()
    assert info.world_size == WORLD and info.rank == rank and info.device == "cpu"
    halves = to_batches(make_rows(BATCH * STEPS, seed=11), BATCH // WORLD)
    mine = halves[rank::WORLD]  # rank r gets the r-th half of every full batch
    torch.manual_seed(100 + rank)  # different local init: GradientSync must broadcast rank 0's weights
    model = dlrm(TABLE_SIZES, num_dense=NUM_DENSE, embedding_dim=8, bottom=(16,), top=(16,))
    if rank == 0:
        model.load_state_dict(_model().state_dict())
    Trainer(model, CONFIGS[cfg_name], callbacks=[GradientSync()]).fit(mine)
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_two_process_gloo_matches_single_process(tmp_path, cfg_name):
    spawn(_worker, WORLD, str(tmp_path), cfg_name)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for k in r0:  # replicas stay identical
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)

    single = _model()
    Trainer(single, CONFIGS[cfg_name]).fit(to_batches(make_rows(BATCH * STEPS, seed=11), BATCH))
    ref = single.state_dict()
    moved = 0
    for k in ref:
        torch.testing.assert_close(r0[k], ref[k], rtol=0, atol=PARAM_ATOL, msg=k)
        moved += int(not torch.equal(ref[k], _model().state_dict()[k]))
    assert moved >= len(ref) // 2  # training really changed the weights


def test_single_process_env_is_a_noop(monkeypatch):
    from recpipe.train.distributed import init_from_env

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_from_env()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    assert not torch.distributed.is_initialized()
