"""EmbeddingCollection against naive per-bag loops; sparse grads; growth; initialisation."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recpipe.modules import EmbeddingCollection, remap_rows, table_offsets_of

EXACT_SUM = 1e-6  # float32 sums of <= 4 rows in a different order than the naive loop


def _tbe(bags_per_feature: list[list[list[int]]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """bags_per_feature[f][b] = ids → (indices, offsets, B) in the feature-major TBE layout."""
    lengths, ids = [], []
    for bags in bags_per_feature:
        for bag in bags:
            lengths.append(len(bag))
            ids.extend(bag)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    return torch.tensor(ids, dtype=torch.int64), offsets, len(bags_per_feature[0])


def _naive(weight: torch.Tensor, sizes: list[int], bags_per_feature, pooling: str) -> torch.Tensor:
    starts = [sum(sizes[:f]) for f in range(len(sizes))]
    b_count, f_count, d = len(bags_per_feature[0]), len(sizes), weight.shape[1]
    out = torch.zeros(b_count, f_count, d)
    for f, bags in enumerate(bags_per_feature):
        for b, bag in enumerate(bags):
            for i in bag:
                out[b, f] += weight[starts[f] + i]
            if pooling == "mean" and bag:
                out[b, f] /= len(bag)
    return out


BAGS = [
    [[0], [3], [1], [3]],                 # one-hot
    [[1, 4, 4], [], [0], [2, 1]],          # multi-hot with a duplicate id and an empty bag
    [[5], [0, 5], [], [1, 2, 3, 4]],
]
SIZES = [4, 5, 6]


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_forward_matches_naive_loop(pooling):
    torch.manual_seed(0)
    emb = EmbeddingCollection(SIZES, 3, pooling=pooling)
    indices, offsets, b = _tbe(BAGS)
    out = emb(indices, offsets, b)
    assert out.shape == (4, 3, 3)
    torch.testing.assert_close(out, _naive(emb.weight.detach(), SIZES, BAGS, pooling), atol=EXACT_SUM, rtol=0)
    assert torch.equal(out[1, 1], torch.zeros(3))  # empty bag pools to zeros


def test_sparse_gradient_touches_only_used_rows_and_equals_dense():
    torch.manual_seed(0)
    sparse = EmbeddingCollection(SIZES, 3, sparse=True)
    dense = EmbeddingCollection(SIZES, 3, sparse=False)
    dense.load_state_dict(sparse.state_dict())
    indices, offsets, b = _tbe(BAGS)
    upstream = torch.randn(b, len(SIZES), 3)
    (sparse(indices, offsets, b) * upstream).sum().backward()
    (dense(indices, offsets, b) * upstream).sum().backward()
    assert sparse.weight.grad.is_sparse
    g = sparse.weight.grad.to_dense()
    torch.testing.assert_close(g, dense.weight.grad, atol=EXACT_SUM, rtol=0)
    starts = table_offsets_of(SIZES)
    used = {int(starts[f]) + i for f, bags in enumerate(BAGS) for bag in bags for i in bag}
    nonzero = set(torch.nonzero(g.abs().sum(1)).flatten().tolist())
    assert nonzero == used
    # duplicate id 4 of table 1 in bag (b=0): its gradient is twice the upstream of that bag
    torch.testing.assert_close(g[int(starts[1]) + 4], 2 * upstream[0, 1], atol=EXACT_SUM, rtol=0)


def test_init_is_uniform_within_one_over_sqrt_n():
    torch.manual_seed(0)
    sizes = [4, 100, 10000]
    emb = EmbeddingCollection(sizes, 8)
    starts = table_offsets_of(sizes).tolist()
    for f, n in enumerate(sizes):
        rows = emb.weight.detach()[starts[f]: starts[f + 1]]
        bound = 1 / math.sqrt(n)
        assert rows.abs().max() <= bound
        assert rows.abs().max() > 0.9 * bound  # actually spans the range (8n draws)


def test_grow_keeps_old_rows_and_initialises_new_ones():
    torch.manual_seed(0)
    emb = EmbeddingCollection([3, 4], 2)
    old = emb.weight.detach().clone()
    indices, offsets, b = _tbe([[[0], [2]], [[3], [1]]])
    before = emb(indices, offsets, b).detach()
    emb.grow([5, 4])
    assert emb.table_sizes == [5, 4]
    assert emb.table_offsets.tolist() == [0, 5, 9]
    w = emb.weight.detach()
    assert w.shape == (9, 2)
    assert torch.equal(w[0:3], old[0:3]) and torch.equal(w[5:9], old[3:7])
    assert w[3:5].abs().max() <= 1 / math.sqrt(5) and w[3:5].abs().sum() > 0
    assert torch.equal(emb(indices, offsets, b), before)  # same ids, same values after growth
    with pytest.raises(ValueError, match="table 1 would shrink"):
        emb.grow([5, 3])


def test_out_of_range_id_names_the_feature():
    emb = EmbeddingCollection([3, 4], 2)
    indices, offsets, b = _tbe([[[0], [2]], [[4], [1]]])  # id 4 is outside table 1 (4 rows)
    with pytest.raises(IndexError, match="id 4 at position 2 of feature 1"):
        emb(indices, offsets, b)


def test_offsets_length_is_checked():
    emb = EmbeddingCollection([3, 4], 2)
    with pytest.raises(ValueError, match="F \\* B \\+ 1"):
        emb(torch.tensor([0, 1]), torch.tensor([0, 1, 2]), 2)


def test_remap_rows_hand_case():
    old = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # tables [2, 3]
    out = remap_rows(old, [2, 3], [3, 4], fill=-1.0)
    assert out.tolist() == [1.0, 2.0, -1.0, 3.0, 4.0, 5.0, -1.0]


@st.composite
def _layouts(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    b = draw(st.integers(0, 4))
    bags = [[draw(st.lists(st.integers(0, n - 1), max_size=3)) for _ in range(b)] for n in sizes]
    return sizes, bags, b


@settings(max_examples=40, deadline=None, derandomize=True)
@given(layout=_layouts(), dim=st.integers(1, 3), pooling=st.sampled_from(["sum", "mean"]))
def test_forward_matches_naive_loop_on_random_layouts(layout, dim, pooling):
    sizes, bags, b = layout
    torch.manual_seed(0)
    emb = EmbeddingCollection(sizes, dim, pooling=pooling)
    lengths = [len(bag) for f_bags in bags for bag in f_bags]
    ids = [i for f_bags in bags for bag in f_bags for i in bag]
    offsets = torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int64)
    out = emb(torch.tensor(ids, dtype=torch.int64), offsets, b)
    assert out.shape == (b, len(sizes), dim)
    if b:
        torch.testing.assert_close(out, _naive(emb.weight.detach(), sizes, bags, pooling), atol=EXACT_SUM, rtol=0)


# ------------------------------------------------------------------------------------------- op backend
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_ops_backend_matches_torch_backend_in_values_and_sparse_gradients(pooling):
    """backend="ops" forced on the CPU runs recpipe.ops.embedding_bag's reference kernel: same pooled values
    and the same sparse row gradient (duplicate id, empty bag included) as the F.embedding_bag path."""
    torch.manual_seed(0)
    ref = EmbeddingCollection(SIZES, 3, pooling=pooling, backend="torch")
    ops = EmbeddingCollection(SIZES, 3, pooling=pooling, backend="ops")
    ops.load_state_dict(ref.state_dict())
    assert ops.uses_ops() and not ref.uses_ops()
    indices, offsets, b = _tbe(BAGS)
    upstream = torch.randn(b, len(SIZES), 3)
    out_ref, out_ops = ref(indices, offsets, b), ops(indices, offsets, b)
    torch.testing.assert_close(out_ops, out_ref, atol=EXACT_SUM, rtol=0)
    (out_ref * upstream).sum().backward()
    (out_ops * upstream).sum().backward()
    assert ops.weight.grad.is_sparse
    g_ops, g_ref = ops.weight.grad.coalesce(), ref.weight.grad.coalesce()
    assert torch.equal(g_ops.indices(), g_ref.indices())  # exactly the touched rows
    torch.testing.assert_close(g_ops.values(), g_ref.values(), atol=EXACT_SUM, rtol=0)


def test_ops_backend_keeps_the_id_check_and_auto_stays_on_torch_on_cpu():
    emb = EmbeddingCollection([3, 4], 2, backend="ops")
    indices, offsets, b = _tbe([[[0], [2]], [[4], [1]]])
    with pytest.raises(IndexError, match="id 4 at position 2 of feature 1"):
        emb(indices, offsets, b)
    emb.validate_indices = False  # the layout is still checked
    with pytest.raises(ValueError, match="F \\* B \\+ 1"):
        emb(torch.tensor([0, 1]), torch.tensor([0, 1, 2]), 2)
    assert not EmbeddingCollection([3, 4], 2).uses_ops()  # auto: CPU weight -> F.embedding_bag
    with pytest.raises(ValueError, match="needs sparse=True"):
        EmbeddingCollection([3, 4], 2, sparse=False, backend="ops")
    with pytest.raises(ValueError, match="backend 'fbgemm' not in"):
        EmbeddingCollection([3, 4], 2, backend="fbgemm")


def test_fused_update_receives_the_pooled_gradient_and_leaves_no_weight_grad():
    torch.manual_seed(0)
    emb = EmbeddingCollection(SIZES, 3, pooling="mean")
    calls = []
    emb.fused_update = lambda w, g, to, i, o, p: calls.append((w, g.clone(), to, i, o, p))
    indices, offsets, b = _tbe(BAGS)
    upstream = torch.randn(b, len(SIZES), 3)
    out = emb(indices, offsets, b)
    torch.testing.assert_close(out, _naive(emb.weight.detach(), SIZES, BAGS, "mean"), atol=EXACT_SUM, rtol=0)
    (out * upstream).sum().backward()
    assert emb.weight.grad is None and len(calls) == 1
    w, g, to, i, o, p = calls[0]
    assert w is emb.weight and torch.equal(g, upstream) and p == 1  # 1 = mean pooling of recpipe.ops
    assert torch.equal(to, emb.table_offsets) and torch.equal(i, indices) and torch.equal(o, offsets)
    with torch.no_grad():  # evaluation: a plain lookup, nothing called
        emb(indices, offsets, b)
    assert len(calls) == 1
