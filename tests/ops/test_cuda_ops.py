"""CUDA kernels (cuda/*.cu) against the CPU reference ops; run on a GPU machine (marker ``gpu``)."""
from __future__ import annotations

import pytest
import torch

import recpipe.ops  # noqa: F401  (registers the ops)
from recpipe.ops import embedding_bag as eb
from recpipe.ops import quant as q
from tests.ops.tbe_cases import Densify, make_case, naive_adagrad, naive_forward

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FP32_TOL = 1e-5
"""fp32 sums of <= 12 unit-normal rows in another order than the CPU: a few ulps of |sum| <= ~15."""
HALF_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
"""Both sides accumulate in fp32 and round once to the output dtype; rounding may land one ulp apart (2^-10,
2^-7 relative) on values up to ~2 in magnitude after mean pooling, ~4x that after sum: scaled below."""
ADAGRAD_TOL = 1e-5
"""fp32 row sums + one rsqrt-free sqrt/divide per row: a few ulps relative."""
GREEDY_REL = 1e-3
"""Slack on greedy errors: the search compares float32 error sums whose order differs from the reference."""
QBAG_TOL = 1e-4
"""Dequantized rows summed in fp32 with FMAs (the spec allows one rounding of difference per row)."""


@pytest.fixture(scope="module", autouse=True)
def kernels():
    assert recpipe.ops.load_cuda_kernels(verbose=False), recpipe.ops._build.cuda_build_error()


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("dim", [1, 3, 8, 64, 100, 128, 160, 300])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pooling", [0, 1])
def test_forward_cuda_matches_cpu(dim, dtype, pooling):
    case = make_case([50, 7, 300], batch=33, dim=dim, max_len=12, seed=dim, dtype=dtype, hot=20)
    ref = eb.embedding_bag(case.weight, case.table_offsets, case.indices, case.offsets, pooling)
    out = eb.embedding_bag(*[t.cuda() for t in (case.weight, case.table_offsets, case.indices, case.offsets)],
                           pooling)
    tol = HALF_TOL.get(dtype, FP32_TOL) * (1 if pooling else 4)
    torch.testing.assert_close(out.cpu().double(), ref.double(), rtol=tol, atol=tol)


def test_forward_cuda_matches_naive_loop_with_empty_bags_and_int32():
    case = make_case([5, 1, 9], batch=9, dim=12, max_len=3, seed=4, hot=2)  # many empty bags, duplicates
    c = case.to("cuda")
    for pooling in (0, 1):
        out = eb.embedding_bag(c.weight, c.table_offsets.int(), c.indices.int(), c.offsets.int(), pooling)
        torch.testing.assert_close(out.cpu().double(), naive_forward(case, pooling), rtol=FP32_TOL, atol=FP32_TOL)


def test_zero_sized_inputs():
    for batch, dim, max_len in ((0, 4, 3), (3, 0, 3), (3, 4, 0)):
        c = make_case([4, 2], batch=batch, dim=dim, max_len=max_len, seed=1).to("cuda")
        out = eb.embedding_bag(c.weight, c.table_offsets, c.indices, c.offsets, 1)
        assert out.shape == (batch, 2, dim) and bool((out == 0).all())
        rows, grads = eb.embedding_bag_row_grad(torch.ones(batch, 2, dim, device="cuda"), c.table_offsets,
                                                c.indices, c.offsets)
        assert grads.shape[1] == dim and rows.numel() == grads.shape[0]


@pytest.mark.parametrize("dim", [3, 64, 128, 200])
@pytest.mark.parametrize("pooling", [0, 1])
def test_row_grad_cuda_matches_cpu(dim, pooling):
    case = make_case([40, 9], batch=64, dim=dim, max_len=10, seed=dim + pooling, hot=16)
    go = torch.randn(64, 2, dim, generator=torch.Generator().manual_seed(0))
    rows, grads = eb.embedding_bag_row_grad(go, case.table_offsets, case.indices, case.offsets, pooling)
    c = case.to("cuda")
    rows_c, grads_c = eb.embedding_bag_row_grad(go.cuda(), c.table_offsets, c.indices, c.offsets, pooling)
    assert torch.equal(rows_c.cpu(), rows)
    torch.testing.assert_close(grads_c.cpu(), grads, rtol=FP32_TOL, atol=FP32_TOL)


@pytest.mark.parametrize("dim", [4, 64, 128, 260])
@pytest.mark.parametrize("pooling", [0, 1])
def test_fused_adagrad_cuda_matches_dense_reference_and_is_deterministic(dim, pooling):
    case = make_case([300, 17, 50], batch=128, dim=dim, max_len=20, seed=dim, hot=25)  # heavy duplicates
    state = torch.rand(case.weight.shape[0], generator=torch.Generator().manual_seed(1))
    go = torch.randn(128, 3, dim, generator=torch.Generator().manual_seed(2))
    want_w, want_s = naive_adagrad(case, state, go, pooling, lr=0.05, eps=1e-8)
    c = case.to("cuda")
    outs = []
    for _ in range(3):
        w, s = c.weight.clone(), state.cuda()
        eb.apply_fused_update(w, s, go.cuda(), c.table_offsets, c.indices, c.offsets, pooling,
                              eb.RowwiseAdagrad(lr=0.05, eps=1e-8))
        outs.append((w.cpu(), s.cpu()))
    torch.testing.assert_close(outs[0][1].double(), want_s, rtol=ADAGRAD_TOL, atol=ADAGRAD_TOL)
    torch.testing.assert_close(outs[0][0].double(), want_w, rtol=ADAGRAD_TOL, atol=ADAGRAD_TOL)
    for w, s in outs[1:]:  # bitwise identical run to run despite duplicate rows
        assert torch.equal(w, outs[0][0]) and torch.equal(s, outs[0][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_sgd_and_adagrad_cuda_match_cpu_kernels(dtype):
    case = make_case([100, 30], batch=50, dim=64, max_len=8, seed=3, dtype=dtype, hot=10)
    go = torch.randn(50, 2, 64, generator=torch.Generator().manual_seed(5)).to(dtype)
    c = case.to("cuda")
    tol = HALF_TOL.get(dtype, FP32_TOL)
    w_cpu, w_gpu = case.weight.clone(), c.weight.clone()
    eb.apply_fused_update(w_cpu, None, go, case.table_offsets, case.indices, case.offsets, 0, eb.SGD(0.1))
    eb.apply_fused_update(w_gpu, None, go.cuda(), c.table_offsets, c.indices, c.offsets, 0, eb.SGD(0.1))
    torch.testing.assert_close(w_gpu.cpu().float(), w_cpu.float(), rtol=tol, atol=tol)
    s_cpu, s_gpu = torch.zeros(130), torch.zeros(130, device="cuda")
    eb.apply_fused_update(w_cpu, s_cpu, go, case.table_offsets, case.indices, case.offsets, 1, eb.RowwiseAdagrad(0.1))
    eb.apply_fused_update(w_gpu, s_gpu, go.cuda(), c.table_offsets, c.indices, c.offsets, 1, eb.RowwiseAdagrad(0.1))
    torch.testing.assert_close(s_gpu.cpu(), s_cpu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w_gpu.cpu().float(), w_cpu.float(), rtol=tol, atol=tol)


def test_opcheck_on_cuda():
    case = make_case([12, 20], batch=6, dim=8, max_len=5, seed=2, hot=4).to("cuda")
    args = (case.table_offsets, case.indices, case.offsets)
    go = torch.randn(6, 2, 8, device="cuda")
    w = case.weight
    torch.library.opcheck(torch.ops.recpipe.embedding_bag_forward, (w.clone().requires_grad_(), *args, 1))
    torch.library.opcheck(torch.ops.recpipe.embedding_bag_row_grad, (go, *args, 0))
    torch.library.opcheck(torch.ops.recpipe.embedding_bag_backward_sgd_, (w.clone(), go, *args, 1, 0.1))
    torch.library.opcheck(torch.ops.recpipe.embedding_bag_backward_rowwise_adagrad_,
                          (w.clone(), torch.rand(32, device="cuda"), go, *args, 0, 0.1, 1e-8))
    fused = q.quantize_rowwise(torch.randn(30, 10, device="cuda"), 4)
    idx = torch.randint(0, 30, (17,), device="cuda")
    off = torch.tensor([0, 4, 4, 10, 17], device="cuda")
    torch.library.opcheck(torch.ops.recpipe.quantized_embedding_bag, (fused, 4, 10, idx, off, 0, None))
    torch.library.opcheck(torch.ops.recpipe.dequantize_rowwise, (fused, 4, 10))
    torch.library.opcheck(torch.ops.recpipe.quantize_rowwise, (torch.randn(9, 7, device="cuda"), 2))
    torch.library.opcheck(torch.ops.recpipe.quantize_rowwise_greedy, (torch.randn(9, 7, device="cuda"), 8, 50, 0.2))


@pytest.mark.parametrize("pooling", [0, 1])
def test_gradcheck_float64_cuda(pooling):
    case = make_case([3, 5], batch=3, dim=3, max_len=4, seed=7, dtype=torch.float64, hot=2).to("cuda")
    weight = case.weight.clone().requires_grad_()
    fn = lambda w: eb.embedding_bag(Densify.apply(w), case.table_offsets, case.indices, case.offsets,  # noqa: E731
                                    pooling)
    assert torch.autograd.gradcheck(fn, (weight,))


def test_torch_compile_fullgraph():
    case = make_case([40, 60], batch=16, dim=32, max_len=6, seed=1).to("cuda")

    @torch.compile(fullgraph=True)
    def step(weight, table_offsets, indices, offsets, fused, q_indices, q_offsets):
        pooled = torch.ops.recpipe.embedding_bag_forward(weight, table_offsets, indices, offsets, 1)  # (B, F, D)
        qbag = torch.ops.recpipe.quantized_embedding_bag(fused, 4, 32, q_indices, q_offsets, 1, None)  # (B', D)
        return pooled.relu().sum(dim=1), qbag * 2

    fused = q.quantize_rowwise(case.weight, 4)
    q_indices = torch.tensor([0, 5, 9, 9, 77], device="cuda")
    q_offsets = torch.tensor([0, 2, 2, 5], device="cuda")
    out, qbag = step(case.weight, case.table_offsets, case.indices, case.offsets, fused, q_indices, q_offsets)
    ref = eb.embedding_bag(case.weight, case.table_offsets, case.indices, case.offsets, 1).relu().sum(dim=1)
    torch.testing.assert_close(out, ref, rtol=FP32_TOL, atol=FP32_TOL)
    q_ref = q.quantized_embedding_bag(fused.cpu(), 4, 32, q_indices.cpu(), q_offsets.cpu(), 1) * 2
    torch.testing.assert_close(qbag.cpu(), q_ref, rtol=QBAG_TOL, atol=QBAG_TOL)


# ------------------------------------------------------------------------------------------------ quant ops
def _table(rows: int, dim: int, seed: int) -> torch.Tensor:
    """Gaussian (even seed) or heavy-tailed Student-t (odd seed) rows; row 0 is constant."""
    torch.manual_seed(seed)
    w = torch.distributions.StudentT(3.0).sample((rows, dim)) if seed % 2 else torch.randn(rows, dim)
    w[0] = 0.5
    return w.float()


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("dim", [1, 3, 7, 64, 129])
def test_quantize_minmax_cuda_is_byte_identical_to_cpu(bits, dim):
    w = _table(257, dim, seed=dim + bits)
    ref = q.quantize_rowwise(w, bits)
    out = q.quantize_rowwise(w.cuda(), bits)
    assert torch.equal(out.cpu(), ref)
    deq = q.dequantize_rowwise(out, bits, dim)
    assert torch.equal(deq.cpu(), q.dequantize_rowwise(ref, bits, dim))


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("dim", [5, 64])
def test_quantize_greedy_cuda_error_matches_reference(bits, dim):
    w = _table(300, dim, seed=bits + 1)
    ref = q.quantize_rowwise_greedy(w, bits, 200, 0.16)
    out = q.quantize_rowwise_greedy(w.cuda(), bits, 200, 0.16).cpu()

    def err(fused):
        return (q.dequantize_rowwise(fused, bits, dim) - w).pow(2).sum(dim=1)

    e_out, e_ref, e_mm = err(out), err(ref), err(q.quantize_rowwise(w, bits))
    assert bool((e_out <= e_mm * (1 + GREEDY_REL)).all())  # never worse than min-max
    # float32 error sums in another order can break near-ties the other way: most rows are byte-identical,
    # and the total error stays that of the reference
    assert float((out == ref).all(dim=1).float().mean()) > 0.95
    assert float(e_out.sum()) <= float(e_ref.sum()) * (1 + GREEDY_REL)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("dim", [3, 16, 64, 128, 300])
@pytest.mark.parametrize("mode", [0, 1])
def test_quantized_embedding_bag_cuda_matches_cpu(bits, dim, mode):
    g = torch.Generator().manual_seed(dim * 10 + bits)
    fused = q.quantize_rowwise(torch.randn(500, dim, generator=g), bits)
    lengths = torch.randint(0, 30, (77,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    indices = torch.randint(0, 500, (int(offsets[-1]),), generator=g)
    psw = torch.rand(indices.shape, generator=g) if mode == 0 else None
    ref = q.quantized_embedding_bag(fused, bits, dim, indices, offsets, mode, psw)
    out = q.quantized_embedding_bag(fused.cuda(), bits, dim, indices.cuda().int(), offsets.cuda(), mode,
                                    None if psw is None else psw.cuda())
    torch.testing.assert_close(out.cpu(), ref, rtol=QBAG_TOL, atol=QBAG_TOL * 10)


def test_fused_update_names_a_grad_output_on_the_wrong_device():
    c = make_case([40, 20], batch=8, dim=16, max_len=3, seed=1).to("cuda")
    go_cpu = torch.randn(8, 2, 16)
    with pytest.raises(RuntimeError, match="grad_output is on cpu"):
        torch.ops.recpipe.embedding_bag_backward_sgd_(c.weight, go_cpu, c.table_offsets, c.indices, c.offsets, 0,
                                                      0.1)
