"""Tests of recpipe.train.pruning and recpipe.train.prune_export on small nn modules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from recpipe.train.prune_export import decode_sparse, encode_sparse, export_compact, load_compact
from recpipe.train.pruning import PruneConfig, Pruner, compute_masks, scheduled_sparsity, select_prunable

SEED = 0
EXACT = 0.0
"""Mask logic is exact arithmetic on the same tensors: no tolerance."""
FLOAT_TOL = 1e-6
"""One SGD step recomputed by hand in float32: a few ulps of rounding difference at most."""


def _mlp(sizes=(8, 32, 16, 1), seed=SEED) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


# ---------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("step,want", [
    (0, 0.0), (10, 0.0), (11, 0.8 * (1 - 0.9 ** 3)), (15, 0.8 * (1 - 0.5 ** 3)), (19, 0.8 * (1 - 0.1 ** 3)),
    (20, 0.8), (1000, 0.8)])
def test_cubic_schedule_hand_values(step, want):
    assert scheduled_sparsity(step, 0.8, 10, 20) == pytest.approx(want, abs=1e-12)


def test_schedule_is_monotone_and_zero_length_ramp_jumps():
    vals = [scheduled_sparsity(t, 0.9, 5, 50) for t in range(60)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert scheduled_sparsity(4, 0.5, 5, 5) == 0.0 and scheduled_sparsity(5, 0.5, 5, 5) == 0.5


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mode"):
        PruneConfig(mode="random")
    with pytest.raises(ValueError, match="target_sparsity"):
        PruneConfig(target_sparsity=1.0)
    with pytest.raises(ValueError, match="start_step"):
        PruneConfig(start_step=10, end_step=5)
    assert PruneConfig.from_dict(PruneConfig(mode="adaptive", include=("a",)).to_dict()).include == ("a",)


# ---------------------------------------------------------------------------------------------- masks
def _naive_global_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, np.ndarray]:
    """Reference: concatenate |w|/rms scores, keep the k largest with a stable sort (numpy)."""
    scores = []
    for w in weights.values():
        a = np.abs(w.numpy().astype(np.float64))
        scores.append((a / np.sqrt((a ** 2).mean())).ravel())
    allv = np.concatenate(scores)
    k = int(round((1 - sparsity) * allv.size))
    order = np.argsort(-allv, kind="stable")
    keep = np.zeros(allv.size, bool)
    keep[order[:k]] = True
    out, start = {}, 0
    for n, w in weights.items():
        out[n] = keep[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return out


def test_global_masks_match_naive_reference_and_sum_to_target():
    g = torch.Generator().manual_seed(SEED)
    weights = {
        "gauss": torch.randn(30, 20, generator=g),
        # Heavy tailed: most mass in a few weights, so it should end up sparser than the Gaussian layer.
        "heavy": torch.randn(10, 50, generator=g) ** 5,
        "uniform": torch.rand(40, 5, generator=g) * 0.01 + 1.0,
    }
    for s in (0.5, 0.75, 0.9):
        masks = compute_masks(weights, s, min_layer_density=0.0)
        ref = _naive_global_masks(weights, s)
        for n in weights:
            assert np.array_equal(masks[n].numpy(), ref[n]), n
        total = sum(w.numel() for w in weights.values())
        pruned = sum(int((~m).sum()) for m in masks.values())
        assert pruned == int(total - round((1 - s) * total))
        sp = {n: 1 - float(m.float().mean()) for n, m in masks.items()}
        # Per-layer sparsity is learned, not uniform: the layer-size-weighted mean equals the global target.
        weighted = sum(sp[n] * weights[n].numel() for n in weights) / total
        assert abs(weighted - s) <= 1.0 / total
        assert sp["heavy"] > sp["gauss"]
        assert len({round(v, 6) for v in sp.values()}) == 3, "each layer gets its own sparsity"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_of_cuda_weights_match_cpu_masks():
    g = torch.Generator().manual_seed(SEED)
    weights = {"a": torch.randn(30, 20, generator=g), "b": torch.randn(10, 50, generator=g) ** 3}
    cpu = compute_masks(weights, 0.75)
    gpu = compute_masks({n: w.cuda() for n, w in weights.items()}, 0.75)
    for n in weights:
        assert gpu[n].device.type == "cuda" and torch.equal(gpu[n].cpu(), cpu[n])
    model = _mlp().cuda()
    pr = Pruner(model, PruneConfig(mode="adaptive", target_sparsity=0.5, start_step=0, end_step=1, update_every=1))
    masks = pr.update_masks(0.5)
    assert all(m.is_cuda for m in masks.values())
    assert abs(1 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()) - 0.5) < 0.02


def test_min_layer_density_floor_keeps_every_layer_alive():
    weights = {"big": torch.ones(50, 50), "tiny": torch.full((10, 10), 1e-3)}
    masks = compute_masks(weights, 0.9, normalize="none", min_layer_density=0.05)
    assert int(masks["tiny"].sum()) == math.ceil(0.05 * 100)
    total = 2600
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * total)


def test_select_prunable_filters_and_errors():
    m = _mlp()
    assert list(select_prunable(m)) == ["0", "2", "4"]
    assert list(select_prunable(m, exclude=(r"^4$",))) == ["0", "2"]
    with pytest.raises(ValueError, match="Linear modules"):
        select_prunable(m, include=("nope",))


# ---------------------------------------------------------------------------------------------- forward/grad
def _batch(n=64, d=8, seed=SEED):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, 2, (n,), generator=g).float()


@pytest.mark.parametrize("mode,regrow", [("fixed", "gradient"), ("adaptive", "gradient"), ("adaptive", "shadow")])
def test_masks_apply_in_forward_and_gradients(mode, regrow):
    model = _mlp()
    pr = Pruner(model, PruneConfig(mode=mode, target_sparsity=0.7, start_step=0, end_step=0, regrow=regrow))
    pr.update_masks(0.7)
    pr.apply_masks()
    x, y = _batch()
    # Reference forward: the same network with weights multiplied by the masks by hand.
    dense_ref = _mlp()
    dense_ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for n, mk in pr.masks.items():
            assert float((model.get_submodule(n).weight[~mk]).abs().max()) == EXACT
            dense_ref.get_submodule(n).weight.mul_(mk)
    assert torch.equal(model(x), dense_ref(x))

    loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
    loss.backward()
    grads_at_sparse = {n: model.get_submodule(n).weight.grad.clone() for n in pr.masks}
    pr.before_step()
    for n, mk in pr.masks.items():
        w = model.get_submodule(n).weight
        if regrow == "gradient":
            assert float(w.grad[~mk].abs().max()) == EXACT
            assert torch.equal(w.grad[mk], grads_at_sparse[n][mk])
            if mode == "adaptive":  # the regrowth statistics saw the dense gradient, pruned entries included
                assert torch.equal(pr.grad_sq[n], grads_at_sparse[n].pow(2))
        else:
            # Feedback: the dense shadow is restored and receives the full gradient taken at the sparse weights.
            assert torch.equal(w.detach(), pr.shadow[n])
            assert torch.equal(w.grad, grads_at_sparse[n])

    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    before = {n: (pr.shadow[n].clone() if regrow == "shadow" else model.get_submodule(n).weight.detach().clone())
              for n in pr.masks}
    opt.step()
    pr.after_step()
    for n, mk in pr.masks.items():
        w = model.get_submodule(n).weight.detach()
        if regrow == "shadow":
            want_shadow = before[n] - lr * grads_at_sparse[n]
            assert torch.allclose(pr.shadow[n], want_shadow, atol=FLOAT_TOL)
        assert float(w[~mk].abs().max()) == EXACT


def test_ramp_reaches_target_and_fixed_mask_freezes():
    model = _mlp()
    cfg = PruneConfig(mode="fixed", target_sparsity=0.8, start_step=2, end_step=10, update_every=2)
    pr = Pruner(model, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = _batch()
    seen = []
    for _ in range(30):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y).backward()
        pr.before_step()
        opt.step()
        pr.after_step()
        seen.append(pr.global_sparsity())
        if pr.step == 10:
            frozen = {n: m.clone() for n, m in pr.masks.items()}
    assert seen[0] == 0.0
    assert all(b >= a for a, b in zip(seen, seen[1:])), "fixed-mode sparsity never decreases"
    total = sum(m.numel() for m in pr.masks.values())
    assert abs(pr.global_sparsity() - 0.8) <= 1.0 / total
    assert all(torch.equal(frozen[n], pr.masks[n]) for n in frozen)
    assert pr.regrown_total == 0
    m = pr.metrics()
    assert set(m) >= {"prune/global", "prune/sparsity/0", "prune/sparsity/2", "prune/sparsity/4"}


# ---------------------------------------------------------------------------------------------- drift
def _train(model, pr, opt, w_true, steps, seed):
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(128, 8, generator=g)
        y = (torch.rand(128, generator=g) < torch.sigmoid(x @ w_true)).float()
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss.backward()
        pr.before_step()
        opt.step()
        pr.after_step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses[-40:]))


def test_gradient_swap_hand_case():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.9, 0.0, 0.5, 0.0], [0.1, 0.0, 0.7, 0.0]]))
    model = nn.Sequential(layer)
    pr = Pruner(model, PruneConfig(mode="adaptive", regrow="gradient", regrow_fraction=0.25,
                                   min_layer_density=0.25, target_sparsity=0.5, end_step=0))
    pr.masks["0"] = layer.weight.detach() != 0
    pr.grad_sq["0"] = torch.tensor([[9.0, 1.0, 9.0, 4.0], [9.0, 16.0, 9.0, 0.0]])
    pr.grad_steps = 1
    masks = pr._swap(dict(pr.masks))
    # 4 kept -> swap round(0.25 * 4) = 1: drop the weakest kept (0.1 at [1, 0]), grow the pruned entry with the
    # largest gradient (16 at [1, 1]); the count is unchanged and the grown entry is protected next time.
    want = torch.tensor([[True, False, True, False], [False, True, True, False]])
    assert torch.equal(masks["0"], want)
    assert torch.equal(pr.protected["0"], torch.tensor([[False, False, False, False], [False, True, False, False]]))
    assert float(pr.grad_sq["0"].abs().sum()) == EXACT and pr.grad_steps == 0
    pr.masks = masks
    pr.apply_masks()
    pr.grad_sq["0"] = torch.tensor([[0.0, 0.0, 0.0, 25.0], [0.0, 0.0, 0.0, 0.0]])
    pr.grad_steps = 1
    again = pr._swap(dict(pr.masks))
    # The grown weight (still 0.0, the weakest) is protected: the next weakest kept weight (0.5) goes instead.
    assert bool(again["0"][1, 1]) and not bool(again["0"][0, 2]) and bool(again["0"][0, 3])


@pytest.mark.parametrize("regrow", ["gradient", "shadow"])
def test_adaptive_regrows_under_drift_and_beats_fixed(regrow):
    # Day A: only inputs 0-3 matter; day B: only inputs 4-7. After A, the first layer's columns for 4-7 are
    # mostly pruned. Adaptive masks must bring some of them back on B; the fixed mask cannot.
    w_a = torch.tensor([3.0, -3.0, 3.0, -3.0, 0, 0, 0, 0])
    w_b = torch.tensor([0, 0, 0, 0, 3.0, -3.0, 3.0, -3.0])
    results = {}
    for mode in ("fixed", "adaptive"):
        model = _mlp((8, 16, 1))
        cfg = PruneConfig(mode=mode, target_sparsity=0.75, start_step=0, end_step=80, update_every=10,
                          regrow=regrow, regrow_fraction=0.1)
        pr = Pruner(model, cfg)
        opt = torch.optim.Adam(model.parameters(), lr=2e-2)
        _train(model, pr, opt, w_a, 120, seed=1)
        cols_b_before = int(pr.masks["0"][:, 4:].sum())
        regrown_a = pr.regrown_total
        loss_b = _train(model, pr, opt, w_b, 200, seed=2)
        results[mode] = (loss_b, pr.regrown_total - regrown_a, cols_b_before, int(pr.masks["0"][:, 4:].sum()))
    loss_f, regrown_f, before_f, after_f = results["fixed"]
    loss_a, regrown_a, before_a, after_a = results["adaptive"]
    assert regrown_f == 0 and after_f == before_f
    assert regrown_a > 0
    assert after_a > before_a, "adaptive re-opened connections from the inputs that now matter"
    assert loss_a < loss_f


# ---------------------------------------------------------------------------------------------- state/export
@pytest.mark.parametrize("regrow", ["gradient", "shadow"])
def test_state_dict_round_trip_continues_identically(regrow):
    cfg = PruneConfig(mode="adaptive", target_sparsity=0.6, start_step=0, end_step=6, update_every=2, regrow=regrow)
    x, y = _batch()

    def steps(model, pr, opt, k):
        for _ in range(k):
            opt.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y).backward()
            pr.before_step()
            opt.step()
            pr.after_step()

    m1 = _mlp()
    p1 = Pruner(m1, cfg)
    o1 = torch.optim.SGD(m1.parameters(), lr=0.05)
    steps(m1, p1, o1, 5)
    saved_model, saved_pr = {k: v.clone() for k, v in m1.state_dict().items()}, p1.state_dict()
    steps(m1, p1, o1, 5)

    m2 = _mlp(seed=123)
    m2.load_state_dict(saved_model)
    p2 = Pruner(m2, cfg)
    p2.load_state_dict(saved_pr)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.05)
    steps(m2, p2, o2, 5)
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert p1.step == p2.step == 10
    with pytest.raises(ValueError, match="unknown layer"):
        p2.load_state_dict({"step": 0, "masks": {"zzz": torch.ones(1, 1, dtype=torch.bool)}})


def test_encode_picks_smaller_format_and_round_trips():
    g = torch.Generator().manual_seed(SEED)
    w = torch.randn(100, 200, generator=g)
    sparse95 = w * (torch.rand(100, 200, generator=g) > 0.95)
    enc = encode_sparse(sparse95)
    nnz = int((sparse95 != 0).sum())
    assert enc["format"] == "csr"
    assert enc["values"].numel() == nnz
    assert sum(enc[k].numel() * enc[k].element_size() for k in ("values", "indptr", "indices")) == \
        nnz * 4 + nnz * 2 + 101 * 4
    assert torch.equal(decode_sparse(enc), sparse95)
    sparse50 = w * (torch.rand(100, 200, generator=g) > 0.5)
    enc = encode_sparse(sparse50)
    assert enc["format"] == "bitmask" and enc["bits"].numel() == 100 * 200 // 8
    assert torch.equal(decode_sparse(enc), sparse50)
    # Zero-size and fully dense corner cases still round trip.
    for t in (torch.zeros(0, 4), torch.ones(3, 3)):
        assert torch.equal(decode_sparse(encode_sparse(t)), t)


def test_export_compact_file_round_trip(tmp_path):
    model = _mlp((8, 64, 64, 1))
    pr = Pruner(model, PruneConfig(mode="fixed", target_sparsity=0.9, end_step=0))
    pr.update_masks(0.9)
    pr.apply_masks()
    keys = [f"{n}.weight" for n in pr.masks]
    rep = export_compact(model.state_dict(), keys, tmp_path / "m.pt", meta={"sparsity": 0.9})
    sd, meta = load_compact(tmp_path / "m.pt")
    assert meta == {"sparsity": 0.9}
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k
    assert rep.dense_bytes == sum(v.numel() * 4 for v in model.state_dict().values())
    assert rep.pruned_compact_bytes < 0.25 * rep.pruned_dense_bytes
    assert rep.file_bytes == (tmp_path / "m.pt").stat().st_size
    with pytest.raises(ValueError, match="not a"):
        torch.save({"x": 1}, tmp_path / "bad.pt")
        load_compact(tmp_path / "bad.pt")
