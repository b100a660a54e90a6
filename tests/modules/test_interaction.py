"""Interaction layers and the MLP against naive loops / textbook formulas."""
from __future__ import annotations

import torch

from recpipe.modules import EFC, MLP, CrossNet, DotInteraction, FMInteraction

TOL = dict(atol=1e-5, rtol=1e-5)  # float32 reductions reordered vs the Python loops


def test_dot_interaction_matches_naive_loop():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)  # (B, K, D)
    out = DotInteraction(5)(x)
    assert out.shape == (3, 10)
    for b in range(3):
        expect = []
        for i in range(5):
            for j in range(i + 1, 5):
                expect.append(float(sum(x[b, i, d] * x[b, j, d] for d in range(4))))
        torch.testing.assert_close(out[b], torch.tensor(expect), **TOL)


def test_dot_interaction_single_field_is_empty():
    assert DotInteraction(1)(torch.randn(2, 1, 3)).shape == (2, 0)


def test_fm_matches_pairwise_sum():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3)
    out = FMInteraction()(x)
    expect = torch.zeros(2, 3)
    for i in range(4):
        for j in range(i + 1, 4):
            expect += x[:, i] * x[:, j]
    torch.testing.assert_close(out, expect, **TOL)


def test_efc_matches_naive_loop():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)  # (B, K, D)
    efc = EFC(3, 5)
    out = efc(x).detach()
    assert out.shape == (2, 5, 4)
    w, bias = efc.weight.detach(), efc.bias.detach()
    for b in range(2):
        for m in range(5):
            for d in range(4):
                v = bias[m] + sum(w[m, k] * x[b, k, d] for k in range(3))
                assert abs(float(out[b, m, d]) - float(v)) < 1e-5


def test_crossnet_matches_formula():
    torch.manual_seed(0)
    x0 = torch.randn(3, 6)
    net = CrossNet(6, layers=2)
    for lin in net.linears:  # non-zero biases so they matter in the check
        torch.nn.init.normal_(lin.bias)
    x = x0
    for lin in net.linears:
        x = x0 * (x @ lin.weight.T + lin.bias) + x
    torch.testing.assert_close(net(x0), x, **TOL)


def test_mlp_layers_and_activation():
    torch.manual_seed(0)
    mlp = MLP(4, [8, 3])
    out = mlp(torch.randn(5, 4))
    assert out.shape == (5, 3) and (out >= 0).all()  # ReLU after the last layer too
    linear_only = MLP(4, [8, 3], activate_last=False)
    assert isinstance(linear_only.layers[-1], torch.nn.Linear)
