"""Row-wise Adagrad against hand-computed updates; sparse SGD; optimizer grouping and state."""
from __future__ import annotations

import math

import pytest
import torch

from recpipe.models import dlrm
from recpipe.modules import EmbeddingCollection
from recpipe.train.optim import (OptimConfig, Optimizers, RowSparseOptimizer, RowWiseAdagrad, SparseSGD,
                                 split_parameters)

HAND = 1e-6  # float32 arithmetic vs Python float64 hand computation
LR, EPS = 0.1, 1e-8


def _sparse(rows: list[int], values: list[list[float]], shape: tuple[int, int]) -> torch.Tensor:
    """An UNcoalesced sparse (R, D) gradient, as F.embedding_bag(sparse=True) produces."""
    return torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(values), shape, check_invariants=True)


def test_rowwise_adagrad_hand_computed_with_duplicates():
    w0 = torch.arange(10, dtype=torch.float32).reshape(5, 2) / 10
    p = torch.nn.Parameter(w0.clone())
    opt = RowWiseAdagrad([p], lr=LR, eps=EPS)
    # step 1: row 1 appears twice (summed to [1.5, 1.0]), row 3 once
    p.grad = _sparse([1, 3, 1], [[1.0, 2.0], [3.0, 4.0], [0.5, -1.0]], (5, 2))
    opt.step()
    s1 = (1.5 ** 2 + 1.0 ** 2) / 2
    s3 = (3.0 ** 2 + 4.0 ** 2) / 2
    expect = w0.clone().double()
    expect[1] -= LR * torch.tensor([1.5, 1.0], dtype=torch.float64) / (math.sqrt(s1) + EPS)
    expect[3] -= LR * torch.tensor([3.0, 4.0], dtype=torch.float64) / (math.sqrt(s3) + EPS)
    torch.testing.assert_close(p.detach().double(), expect, atol=HAND, rtol=0)
    torch.testing.assert_close(opt.state[p]["sum"], torch.tensor([0, s1, 0, s3, 0], dtype=torch.float32))
    # step 2: only row 1; its accumulator keeps growing, rows 0/2/3/4 do not move
    before = p.detach().clone()
    p.grad = _sparse([1], [[2.0, 0.0]], (5, 2))
    opt.step()
    s1b = s1 + (2.0 ** 2 + 0.0) / 2
    expect2 = before.double()
    expect2[1] -= LR * torch.tensor([2.0, 0.0], dtype=torch.float64) / (math.sqrt(s1b) + EPS)
    torch.testing.assert_close(p.detach().double(), expect2, atol=HAND, rtol=0)
    assert torch.equal(p.detach()[[0, 2, 3, 4]], before[[0, 2, 3, 4]])


def test_rowwise_adagrad_through_embedding_bag_matches_dense_gradient_path():
    torch.manual_seed(0)
    emb_s = EmbeddingCollection([6, 4], 3, sparse=True)
    emb_d = EmbeddingCollection([6, 4], 3, sparse=False)
    emb_d.load_state_dict(emb_s.state_dict())
    opt_s, opt_d = RowWiseAdagrad([emb_s.weight], lr=LR), RowWiseAdagrad([emb_d.weight], lr=LR)
    indices = torch.tensor([2, 2, 5, 0, 3, 3])  # duplicates inside a bag and across bags
    offsets = torch.tensor([0, 2, 3, 4, 6])       # F=2, B=2
    target = torch.randn(2, 2, 3)
    for _ in range(3):
        for emb, opt in ((emb_s, opt_s), (emb_d, opt_d)):
            opt.zero_grad()
            ((emb(indices, offsets, 2) - target) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(emb_s.weight, emb_d.weight, atol=HAND, rtol=0)
    untouched = [1, 3, 4, 6 + 1, 6 + 2]
    assert torch.all(opt_s.state[emb_s.weight]["sum"][untouched] == 0)


def test_rowwise_state_round_trip():
    torch.manual_seed(0)
    grads = [_sparse([0, 2], torch.randn(2, 3).tolist(), (4, 3)) for _ in range(3)]
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = RowWiseAdagrad([a], lr=LR)
    for g in grads:
        a.grad = g
        opt_a.step()
    opt_b = RowWiseAdagrad([b], lr=LR)
    b.grad = grads[0]
    opt_b.step()
    saved = opt_b.state_dict()
    opt_c = RowWiseAdagrad([b], lr=LR)
    opt_c.load_state_dict(saved)
    for g in grads[1:]:
        b.grad = g
        opt_c.step()
    assert torch.equal(a, b)


def test_sparse_sgd_moves_only_touched_rows():
    p = torch.nn.Parameter(torch.zeros(4, 2))
    p.grad = _sparse([1, 1, 3], [[1.0, 1.0], [1.0, 0.0], [0.0, 2.0]], (4, 2))
    SparseSGD([p], lr=0.5).step()
    assert p.detach().tolist() == [[0, 0], [-1.0, -0.5], [0, 0], [0, -1.0]]


def test_split_and_config_validation():
    model = dlrm([5, 6], 3, embedding_dim=4)
    dense, sparse = split_parameters(model)
    assert len(sparse) == 1 and sparse[0] is model.embedding.weight
    assert len(dense) == len(list(model.parameters())) - 1
    opts = Optimizers(model, OptimConfig(dense="adagrad"))
    assert isinstance(opts.dense, torch.optim.Adagrad) and isinstance(opts.sparse, RowWiseAdagrad)
    with pytest.raises(ValueError, match="OptimConfig.dense"):
        OptimConfig(dense="lamb")


def test_replace_embedding_moves_row_state():
    torch.manual_seed(0)
    model = dlrm([3, 2], 2, embedding_dim=4)
    opts = Optimizers(model, OptimConfig())
    model.embedding.weight.grad = _sparse([0, 4], [[1.0] * 4, [2.0] * 4], (5, 4))
    opts.sparse.step()
    old = model.embedding.weight
    model.grow_tables([4, 3])
    opts.replace_embedding(old, model.embedding.weight, [3, 2], [4, 3])
    st = opts.sparse.state[model.embedding.weight]["sum"]
    assert st.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0]  # row 4 (table 1, id 1) moved to row 5


class _Recorder(RowSparseOptimizer):
    """Records what the shared scaffolding hands to ``update``."""

    def __init__(self, params) -> None:
        super().__init__(params, {"tag": "g"})
        self.seen: list[tuple[list[int] | None, list[list[float]], str]] = []

    def update(self, p, rows, g, group) -> None:
        self.seen.append((None if rows is None else rows.tolist(), g.tolist(), group["tag"]))


def test_shared_step_coalesces_skips_gradless_and_handles_dense_grads():
    a, b, c = (torch.nn.Parameter(torch.zeros(4, 2)) for _ in range(3))
    opt = _Recorder([a, b, c])
    a.grad = _sparse([3, 1, 3], [[1.0, 2.0], [5.0, 6.0], [0.5, 0.5]], (4, 2))  # row 3 twice: summed
    c.grad = torch.ones(4, 2)  # dense gradient: every row, as is
    opt.step()  # b has no gradient: skipped
    assert opt.seen == [([1, 3], [[5.0, 6.0], [1.5, 2.5]], "g"), (None, [[1.0, 1.0]] * 4, "g")]
    with pytest.raises(TypeError, match="abstract"):
        RowSparseOptimizer([a], {})  # the base alone has no update rule


@pytest.mark.parametrize("make", [lambda ps: RowWiseAdagrad(ps, lr=LR), lambda ps: SparseSGD(ps, lr=LR)],
                         ids=["rowwise_adagrad", "sgd"])
def test_step_runs_the_closure_with_grad_enabled_and_returns_its_loss(make):
    p, idle = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(2, 2))
    opt = make([p, idle])
    assert isinstance(opt, RowSparseOptimizer)

    def closure():
        opt.zero_grad()
        loss = (p[1] * 2.0).sum()  # only row 1 gets a gradient (2, 2)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.requires_grad and float(loss.detach()) == 4.0
    assert torch.equal(p.detach()[[0, 2]], torch.ones(2, 2)) and bool((p.detach()[1] < 1).all())
    assert idle not in opt.state and torch.equal(idle.detach(), torch.ones(2, 2))
