"""Optimizer in backward (recpipe.train.fused), forced on the CPU through the ops' reference kernels: the same
training as the unfused sparse optimizers, the same optimizer state layout, exact resume, table growth."""
from __future__ import annotations

import pytest
import torch

from recpipe.models import dlrm
from recpipe.train import OptimConfig, TrainConfig, Trainer
from recpipe.train.fused import cuda_dim_supported, fused_update_enabled
from tests.train.synthetic import NUM_DENSE, TABLE_SIZES, ReplayableLoader, make_batches

FUSED_TOL = 1e-6
"""Fused vs unfused after STEPS steps: the fused kernel sums a row's duplicate gradients in a different order
than ``sparse.coalesce()`` and computes ``(lr / denom) * g`` instead of ``lr * g / denom`` (float32 roundings,
~1e-7 observed on values of order 0.1-1), and Adam on the dense part carries those into the next steps."""
STEPS = 8


def _model(seed: int = 0, pooling: str = "sum"):
    torch.manual_seed(seed)
    model = dlrm(TABLE_SIZES, NUM_DENSE, embedding_dim=8, bottom=(16,), top=(16,))
    model.embedding.pooling = pooling
    return model


def _cfg(sparse: str, fused: str, **kw) -> TrainConfig:
    return TrainConfig(optim=OptimConfig(dense="adam", dense_lr=0.01, sparse=sparse, sparse_lr=0.1),
                       fused_embedding_update=fused, log_every=1000, seed=3, **kw)


def _batches():
    return make_batches(STEPS * 48, 48, seed=7)


def test_the_data_has_duplicate_ids_in_a_batch():
    b = _batches()[0]
    third = b.indices[b.offsets[2 * b.batch_size]:]  # multi-hot feature 2: 12 rows, ~70 ids per batch
    assert third.unique().numel() < third.numel()
    first = b.indices[: b.batch_size]
    assert first.unique().numel() < first.numel()  # one-hot feature 0: 48 ids out of 30 rows


@pytest.mark.parametrize("sparse", ["rowwise_adagrad", "sgd"])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_fused_training_equals_the_unfused_optimizer(sparse, pooling):
    fused = Trainer(_model(pooling=pooling), _cfg(sparse, "on"))
    plain = Trainer(_model(pooling=pooling), _cfg(sparse, "off"))
    assert fused.fused_embedding_update and not plain.fused_embedding_update
    start = plain.model.embedding.weight.detach().clone()
    fused.fit(_batches())
    plain.fit(_batches())
    assert fused.model.embedding.weight.grad is None  # updated in backward, never through .grad
    moved = (plain.model.embedding.weight.detach() - start).abs().amax(dim=1) > 0
    assert 0 < int(moved.sum()) <= sum(TABLE_SIZES)
    for name, value in plain.model.state_dict().items():
        torch.testing.assert_close(fused.model.state_dict()[name], value, atol=FUSED_TOL, rtol=0, msg=name)
    if sparse == "rowwise_adagrad":
        f_st = fused.optimizers.sparse.state[fused.model.embedding.weight]
        p_st = plain.optimizers.sparse.state[plain.model.embedding.weight]
        assert f_st["step"] == p_st["step"] == STEPS
        torch.testing.assert_close(f_st["sum"], p_st["sum"], atol=FUSED_TOL, rtol=0)
        assert bool((p_st["sum"][~moved] == 0).all())  # rows never seen keep a zero accumulator in both
        assert bool((f_st["sum"][~moved] == 0).all())


def test_fused_checkpoints_have_the_unfused_layout_and_resume_exactly(tmp_path):
    batches = _batches()
    straight = Trainer(_model(), _cfg("rowwise_adagrad", "on"))
    straight.fit(ReplayableLoader(batches))
    first = Trainer(_model(), _cfg("rowwise_adagrad", "on", max_steps=STEPS // 2))
    first.fit(ReplayableLoader(batches), checkpoint_dir=str(tmp_path))
    resumed = Trainer(_model(seed=9), _cfg("rowwise_adagrad", "on"))
    summary = resumed.fit(ReplayableLoader(batches), checkpoint_dir=str(tmp_path), resume=True)
    assert summary.steps == STEPS - STEPS // 2
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    got, want = resumed.optimizers.state_dict()["sparse"], straight.optimizers.state_dict()["sparse"]
    assert torch.equal(got["state"][0]["sum"], want["state"][0]["sum"]) and got["state"][0]["step"] == STEPS
    # the same layout as the unfused optimizer: a fused checkpoint loads into an unfused trainer and back
    unfused = Trainer(_model(), _cfg("rowwise_adagrad", "off"))
    unfused.fit(batches[:1])
    ref = unfused.optimizers.state_dict()["sparse"]
    assert ref["state"][0].keys() == want["state"][0].keys()
    assert ref["state"][0]["sum"].shape == want["state"][0]["sum"].shape
    assert ref["param_groups"] == want["param_groups"]
    unfused.load_payload(straight.checkpoint_payload())
    assert torch.equal(unfused.optimizers.sparse.state[unfused.model.embedding.weight]["sum"], want["state"][0]["sum"])


def test_grown_tables_keep_training_fused_like_unfused():
    batches = _batches()
    trainers = [Trainer(_model(), _cfg("rowwise_adagrad", mode)) for mode in ("on", "off")]
    grown = [n + 5 for n in TABLE_SIZES]
    for t in trainers:
        t.fit(batches[:3])
        torch.manual_seed(11)  # the appended rows are drawn from the global RNG
        t.grow_tables(grown)
        t.fit(batches[3:])
    fused, plain = trainers
    assert fused.model.embedding.table_sizes == grown
    st_f = fused.optimizers.sparse.state[fused.model.embedding.weight]["sum"]
    st_p = plain.optimizers.sparse.state[plain.model.embedding.weight]["sum"]
    assert st_f.shape == (sum(grown),)
    torch.testing.assert_close(st_f, st_p, atol=FUSED_TOL, rtol=0)
    torch.testing.assert_close(fused.model.embedding.weight.detach(), plain.model.embedding.weight.detach(),
                               atol=FUSED_TOL, rtol=0)


def test_modes_resolve_and_are_validated():
    model = _model()
    assert not fused_update_enabled("auto", model, torch.device("cpu"))  # auto: CUDA only
    assert fused_update_enabled("on", model, torch.device("cpu"))
    assert not fused_update_enabled("off", model, torch.device("cpu"))
    assert not Trainer(_model(), TrainConfig()).fused_embedding_update  # default "auto" on the CPU
    with pytest.raises(ValueError, match="fused_embedding_update: 'yes' not in"):
        TrainConfig(fused_embedding_update="yes")
    model.eval()
    with torch.no_grad():  # evaluation with the fused path attached is a plain lookup
        Trainer(model, _cfg("sgd", "on")).model(_batches()[0])
    assert model.embedding.weight.grad is None


def test_cuda_row_limits_follow_the_kernel():
    assert cuda_dim_supported(512, torch.float32) and not cuda_dim_supported(516, torch.float32)
    assert cuda_dim_supported(128, torch.float32) and cuda_dim_supported(127, torch.float32)
    assert not cuda_dim_supported(130, torch.float32)  # not a multiple of 4: scalar lanes, 128 at most
    assert cuda_dim_supported(1024, torch.float16) and not cuda_dim_supported(1028, torch.bfloat16)


CUDA_TOL = 1e-4
"""CUDA vs CPU training: cuBLAS and the CUDA kernels round differently from the CPU (no TF32: fp32 matmuls)."""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sparse", ["rowwise_adagrad", "sgd"])
def test_auto_takes_the_cuda_fused_path_and_trains_like_the_cpu(sparse):
    gpu = Trainer(_model(), _cfg(sparse, "auto", device="cuda"))
    cpu = Trainer(_model(), _cfg(sparse, "off"))
    assert gpu.fused_embedding_update and gpu.model.embedding.uses_ops()
    gpu.fit(_batches())
    cpu.fit(_batches())
    assert gpu.model.embedding.weight.grad is None
    for name, value in cpu.model.state_dict().items():
        torch.testing.assert_close(gpu.model.state_dict()[name].cpu(), value, atol=CUDA_TOL, rtol=0, msg=name)
    if sparse == "rowwise_adagrad":
        got = gpu.optimizers.sparse.state[gpu.model.embedding.weight]
        want = cpu.optimizers.sparse.state[cpu.model.embedding.weight]
        assert got["step"] == want["step"] == STEPS
        torch.testing.assert_close(got["sum"].cpu(), want["sum"], atol=CUDA_TOL, rtol=0)
