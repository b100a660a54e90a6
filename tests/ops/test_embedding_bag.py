"""CPU tests of the table-batched embedding-bag ops against naive per-bag loops (ops/embedding_bag.py)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recpipe.ops  # noqa: F401  (registers the ops)
from recpipe.ops import embedding_bag as eb
from tests.ops.tbe_cases import Case, Densify, make_case, naive_adagrad, naive_dense_grad, naive_forward

FP32_TOL = 1e-5
"""float32 sums of <= 8 unit-normal rows: a few ulps of |sum| <= ~10, far below 1e-5."""
HALF_TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
"""One final rounding of the fp32 accumulator to the output dtype: 2^-11 / 2^-8 relative, |out| <= ~10 mean."""


def _hand_case() -> Case:
    """F = 2 tables (3 and 4 rows), B = 3: an empty bag, a one-row bag and duplicates across bags."""
    weight = torch.arange(7 * 2, dtype=torch.float32).view(7, 2)
    table_offsets = torch.tensor([0, 3, 7])
    # table 0: bags [0, 2], [], [1]; table 1: bags [3, 3, 0], [3], []
    indices = torch.tensor([0, 2, 1, 3, 3, 0, 3])
    offsets = torch.tensor([0, 2, 2, 3, 6, 7, 7])
    return Case(weight, table_offsets, indices, offsets, batch=3)


def test_forward_hand_case_sum_and_mean():
    case = _hand_case()
    out = eb.embedding_bag(case.weight, case.table_offsets, case.indices, case.offsets, eb.POOLING_SUM)
    w = case.weight
    expected = torch.stack([
        torch.stack([w[0] + w[2], w[3 + 3] * 2 + w[3 + 0]]),
        torch.stack([torch.zeros(2), w[3 + 3]]),
        torch.stack([w[1], torch.zeros(2)]),
    ])  # (B, F, D) written out by hand
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    mean = eb.embedding_bag(case.weight, case.table_offsets, case.indices, case.offsets, eb.POOLING_MEAN)
    torch.testing.assert_close(mean[0, 1], (w[6] * 2 + w[3]) / 3)
    torch.testing.assert_close(mean[1, 0], torch.zeros(2))


@pytest.mark.parametrize("pooling", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_forward_matches_naive_loop(pooling, dtype):
    case = make_case([5, 1, 9], batch=6, dim=5, max_len=8, seed=3, dtype=dtype, hot=3)
    out = eb.embedding_bag(case.weight, case.table_offsets, case.indices, case.offsets, pooling)
    assert out.dtype == dtype and out.shape == (6, 3, 5)
    tol = HALF_TOL.get(dtype, FP32_TOL)
    torch.testing.assert_close(out.double(), naive_forward(case, pooling), rtol=tol, atol=tol)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=3), batch=st.integers(0, 4),
       dim=st.integers(0, 4), max_len=st.integers(0, 4), pooling=st.sampled_from([0, 1]),
       seed=st.integers(0, 2**16))
def test_forward_hypothesis_shapes(sizes, batch, dim, max_len, pooling, seed):
    case = make_case(sizes, batch, dim, max_len, seed)
    out = eb.embedding_bag(case.weight, case.table_offsets, case.indices, case.offsets, pooling)
    assert out.shape == (batch, len(sizes), dim)
    torch.testing.assert_close(out.double(), naive_forward(case, pooling), rtol=FP32_TOL, atol=FP32_TOL)


def test_int32_indices_and_offsets_give_the_same_result():
    case = make_case([4, 7], batch=5, dim=3, max_len=4, seed=11)
    ref = eb.embedding_bag(case.weight, case.table_offsets, case.indices, case.offsets, 1)
    out = eb.embedding_bag(case.weight, case.table_offsets.int(), case.indices.int(), case.offsets.int(), 1)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_errors_name_the_problem():
    case = _hand_case()
    bad = case.indices.clone()
    bad[4] = 4  # table 1 has 4 rows: ids 0..3
    with pytest.raises(IndexError, match=r"position 4 \(feature 1\).*table 1 of 4 rows"):
        eb.embedding_bag(case.weight, case.table_offsets, bad, case.offsets)
    with pytest.raises(ValueError, match="F \\* B \\+ 1"):
        eb.embedding_bag(case.weight, case.table_offsets, case.indices, case.offsets[:-1])
    with pytest.raises(ValueError, match="pooling"):
        eb.embedding_bag(case.weight, case.table_offsets, case.indices, case.offsets, 2)
    with pytest.raises(ValueError, match="weight.s 6 rows, got 0..7"):
        eb.embedding_bag(case.weight[:6], case.table_offsets, case.indices, case.offsets)


@pytest.mark.parametrize("pooling", [0, 1])
def test_row_grad_matches_dense_naive_gradient(pooling):
    case = make_case([6, 4], batch=5, dim=3, max_len=6, seed=5, hot=3)
    grad_output = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(1))
    rows, grads = eb.embedding_bag_row_grad(grad_output, case.table_offsets, case.indices, case.offsets, pooling)
    dense, touched = naive_dense_grad(case, grad_output, pooling)
    assert torch.equal(rows, touched.nonzero().flatten())  # sorted, unique, exactly the touched rows
    torch.testing.assert_close(grads.double(), dense[rows], rtol=FP32_TOL, atol=FP32_TOL)


def test_autograd_gives_sparse_touched_rows():
    case = _hand_case()
    weight = case.weight.clone().requires_grad_()
    out = eb.embedding_bag(weight, case.table_offsets, case.indices, case.offsets, eb.POOLING_SUM)
    out.sum().backward()
    assert weight.grad.is_sparse
    dense = weight.grad.to_dense()
    # row counts: r0 x1, r1 x1, r2 x1, table1 row0 (r3) x1, row3 (r6) x3; r4, r5 untouched
    torch.testing.assert_close(dense[:, 0], torch.tensor([1.0, 1, 1, 1, 0, 0, 3]))


@pytest.mark.parametrize("pooling", [0, 1])
def test_gradcheck_float64(pooling):
    case = make_case([3, 5], batch=3, dim=2, max_len=4, seed=7, dtype=torch.float64, hot=2)
    weight = case.weight.clone().requires_grad_()
    fn = lambda w: eb.embedding_bag(Densify.apply(w), case.table_offsets, case.indices, case.offsets,  # noqa: E731
                                    pooling)
    assert torch.autograd.gradcheck(fn, (weight,))


def test_opcheck_every_op_on_cpu():
    case = make_case([4, 6], batch=3, dim=4, max_len=5, seed=2, hot=2)
    args = (case.table_offsets, case.indices, case.offsets)
    go = torch.randn(3, 2, 4)
    w = case.weight.clone()
    torch.library.opcheck(torch.ops.recpipe.embedding_bag_forward, (w.clone().requires_grad_(), *args, 1))
    torch.library.opcheck(torch.ops.recpipe.embedding_bag_row_grad, (go, *args, 0))
    torch.library.opcheck(torch.ops.recpipe.embedding_bag_backward_sgd_, (w.clone(), go, *args, 1, 0.1))
    torch.library.opcheck(torch.ops.recpipe.embedding_bag_backward_rowwise_adagrad_,
                          (w.clone(), torch.rand(w.shape[0]), go, *args, 0, 0.1, 1e-8))


@pytest.mark.parametrize("pooling", [0, 1])
def test_fused_rowwise_adagrad_matches_dense_reference(pooling):
    case = make_case([7, 3, 5], batch=6, dim=4, max_len=5, seed=9, hot=3)  # many duplicate ids
    state = torch.rand(case.weight.shape[0], generator=torch.Generator().manual_seed(0))
    grad_output = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(4))
    want_w, want_state = naive_adagrad(case, state, grad_output, pooling, lr=0.1, eps=1e-6)
    w, s = case.weight.clone(), state.clone()
    eb.apply_fused_update(w, s, grad_output, case.table_offsets, case.indices, case.offsets, pooling,
                          eb.RowwiseAdagrad(lr=0.1, eps=1e-6))
    torch.testing.assert_close(s.double(), want_state, rtol=FP32_TOL, atol=FP32_TOL)
    torch.testing.assert_close(w.double(), want_w, rtol=FP32_TOL, atol=FP32_TOL)


def test_fused_sgd_matches_dense_reference_and_is_deterministic():
    case = make_case([5, 5], batch=8, dim=3, max_len=6, seed=12, hot=2)
    grad_output = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(8))
    dense, _ = naive_dense_grad(case, grad_output, 1)
    results = []
    for _ in range(2):
        w = case.weight.clone()
        eb.apply_fused_update(w, None, grad_output, case.table_offsets, case.indices, case.offsets, 1,
                              eb.SGD(lr=0.5))
        results.append(w)
    torch.testing.assert_close(results[0].double(), case.weight.double() - 0.5 * dense, rtol=FP32_TOL, atol=FP32_TOL)
    assert torch.equal(results[0], results[1])


def test_fused_module_updates_in_backward_like_a_sparse_optimizer():
    """Optimizer in backward == forward + sparse row gradient + the row-wise Adagrad reference update."""
    case = make_case([6, 4], batch=5, dim=3, max_len=4, seed=21, hot=3)
    module = eb.FusedEmbeddingBag(case.weight.clone(), case.table_offsets, eb.RowwiseAdagrad(lr=0.2, eps=1e-8),
                                  pooling=eb.POOLING_MEAN)
    target = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(3))
    pooled = module(case.indices, case.offsets)
    loss = ((pooled - target) ** 2).sum()
    loss.backward()
    grad_output = 2 * (naive_forward(case, 1) - target.double())
    want_w, want_state = naive_adagrad(case, torch.zeros(case.weight.shape[0]), grad_output, 1, 0.2, 1e-8)
    torch.testing.assert_close(module.weight.double(), want_w, rtol=FP32_TOL, atol=FP32_TOL)
    torch.testing.assert_close(module.state.double(), want_state, rtol=FP32_TOL, atol=FP32_TOL)
    assert module.weight.grad is None
    with torch.no_grad():  # evaluation: plain lookup, no update
        before = module.weight.clone()
        module(case.indices, case.offsets)
    assert torch.equal(module.weight, before)


def test_empty_batch_and_empty_indices():
    case = make_case([3, 2], batch=4, dim=3, max_len=0, seed=0)  # every bag empty
    out = eb.embedding_bag(case.weight, case.table_offsets, case.indices, case.offsets, 1)
    assert torch.equal(out, torch.zeros(4, 2, 3))
    rows, grads = eb.embedding_bag_row_grad(torch.ones(4, 2, 3), case.table_offsets, case.indices, case.offsets)
    assert rows.numel() == 0 and grads.shape == (0, 3)
    w, s = case.weight.clone(), torch.zeros(5)
    eb.apply_fused_update(w, s, torch.ones(4, 2, 3), case.table_offsets, case.indices, case.offsets, 0,
                          eb.RowwiseAdagrad())
    assert torch.equal(w, case.weight) and torch.equal(s, torch.zeros(5))
