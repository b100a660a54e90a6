"""k-means codebooks: assignment, convergence, planted clusters, storage layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recpipe.ops import quant as qops
from recpipe.quant import codebook
from recpipe.quant.table import QuantizedTable

MONOTONE_SLACK = 1e-9
"""Relative slack on the non-increasing SSE history: float32 centroid updates round (error is summed in f64)."""
PLANTED_TOL = 1e-3
"""Recovered centroids vs planted cluster centres: the clusters' noise (sigma 1e-4) averages far below this."""


def test_assign_is_nearest_centroid() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 30, generator=g)
    cent = torch.randn(7, 5, generator=g).sort(dim=1).values
    codes = codebook.assign(x, cent)
    brute = (x.unsqueeze(-1) - cent.unsqueeze(1)).abs()  # (R, N, K)
    best = brute.min(dim=-1).values
    assert torch.equal(brute.gather(2, codes.unsqueeze(-1)).squeeze(-1), best)


@pytest.mark.parametrize("init", codebook.INITS)
def test_lloyd_error_non_increasing(init: str) -> None:
    x = torch.from_numpy(np.random.default_rng(1).standard_t(3.0, (40, 64)).astype(np.float32))
    res = codebook.kmeans_1d(x, 16, iters=30, init=init, generator=torch.Generator().manual_seed(2))
    h = res.history
    assert len(h) >= 2
    assert all(b <= a * (1 + MONOTONE_SLACK) for a, b in zip(h, h[1:]))
    assert h[-1] < h[0]  # the iterations improved on the initialisation
    assert torch.equal(res.centroids, res.centroids.sort(dim=1).values)
    # the returned codes are the nearest-centroid assignment and give the last recorded error
    assert torch.equal(res.codes, codebook.assign(x, res.centroids))
    sse = float((x - res.centroids.gather(1, res.codes)).double().square().sum())
    assert sse == pytest.approx(h[-1], rel=1e-6)


@pytest.mark.parametrize("init", codebook.INITS)
def test_recovers_planted_clusters(init: str) -> None:
    rng = np.random.default_rng(3)
    centres = np.array([[-2.0, -0.5, 0.7, 3.0], [0.0, 0.1, 0.2, 0.3]], dtype=np.float32)  # (R=2, K=4)
    labels = np.stack([rng.permutation(np.repeat(np.arange(4), 25)) for _ in range(2)])  # (2, 100), 25 each
    x = np.take_along_axis(centres, labels, 1) + rng.normal(0, 1e-4, labels.shape).astype(np.float32)
    res = codebook.kmeans_1d(torch.from_numpy(x), 4, iters=50, init=init, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(res.centroids.numpy(), centres, atol=PLANTED_TOL)
    assert (res.codes.numpy() == labels).all()


def test_kmeanspp_seeded_and_deterministic() -> None:
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(4))
    a = codebook.kmeans_1d(x, 8, 10, "kmeans++", torch.Generator().manual_seed(9))
    b = codebook.kmeans_1d(x, 8, 10, "kmeans++", torch.Generator().manual_seed(9))
    assert torch.equal(a.centroids, b.centroids)


def test_fewer_values_than_centroids_and_constant_rows() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    res = codebook.kmeans_1d(x, 16, iters=10)
    assert torch.equal(res.centroids.gather(1, res.codes), x)  # every value is its own centroid
    assert res.history[-1] == 0.0


@pytest.mark.parametrize("bits,dim", [(2, 5), (4, 21)])  # per-row codebooks need 2**bits < D
def test_codebook_row_layout_and_decode(bits: int, dim: int) -> None:
    w = torch.randn(9, dim, generator=torch.Generator().manual_seed(bits))
    table, history = codebook.quantize_codebook_row(w, bits, iters=20)
    k, c = 1 << bits, qops.code_bytes(dim, bits)
    assert table.kind == "codebook_row" and table.data.shape == (9, c + 2 * k)
    # hand-decode row 0: codes from the packed bytes, centroids from the little-endian fp16 tail
    raw = bytes(table.data[0].tolist())
    cents = np.frombuffer(raw[c:], dtype="<f2").astype(np.float32)
    codes = [(raw[j // (8 // bits)] >> ((j % (8 // bits)) * bits)) & (k - 1) for j in range(dim)]
    np.testing.assert_array_equal(table.dequantize()[0].numpy(), cents[codes])
    assert (np.diff(cents) >= 0).all()
    assert history[-1] <= history[0]


def test_codebook_row_beats_minmax_with_enough_values() -> None:
    w = torch.from_numpy(np.random.default_rng(5).standard_t(3.0, (32, 128)).astype(np.float32))
    table, _ = codebook.quantize_codebook_row(w, 4, iters=15)
    mm = qops.dequantize_rowwise(qops.quantize_rowwise(w, 4), 4, 128)
    assert float((table.dequantize() - w).square().mean()) < float((mm - w).square().mean())


def test_codebook_shared_storage_and_values() -> None:
    w = torch.randn(20, 6, generator=torch.Generator().manual_seed(6))
    table, _ = codebook.quantize_codebook_shared(w, 2, iters=20, max_samples=50)  # fit on a 50-value sample
    assert table.kind == "codebook_shared" and table.codebook is not None and table.codebook.shape == (4,)
    assert table.data.shape == (20, qops.code_bytes(6, 2))
    assert table.nbytes == 20 * 2 + 4 * 4
    deq = table.dequantize()
    # every value decodes to its nearest centroid of the shared codebook
    nearest = table.codebook[(w.unsqueeze(-1) - table.codebook).abs().argmin(-1)]
    assert torch.equal(deq, nearest)


def test_codebook_shared_fits_a_seeded_sample_drawn_with_replacement(monkeypatch) -> None:
    def no_permutation(*args, **kwargs):
        raise AssertionError("a permutation of all R * D positions is O(R * D) memory")

    monkeypatch.setattr(torch, "randperm", no_permutation)
    w = torch.randn(50, 8, generator=torch.Generator().manual_seed(7))
    table, history = codebook.quantize_codebook_shared(w, 2, iters=10, seed=3, max_samples=64)
    # reference: the same generator draws 64 positions of the 400 values, then k-means continues on it
    gen = torch.Generator().manual_seed(3)
    picks = torch.randint(0, 400, (64,), generator=gen)
    ref = codebook.kmeans_1d(w.reshape(1, -1)[:, picks], 4, 10, "quantile", gen)
    assert table.codebook is not None and torch.equal(table.codebook, ref.centroids[0])
    assert history == ref.history


def test_codebook_shared_assignment_in_row_blocks_matches_one_block(monkeypatch) -> None:
    w = torch.randn(23, 6, generator=torch.Generator().manual_seed(8))
    whole, _ = codebook.quantize_codebook_shared(w, 4, iters=5)
    monkeypatch.setattr(codebook, "_SHARED_ASSIGN_VALUES", 13)  # 2 rows of 6 values per block, last one short
    blocked, _ = codebook.quantize_codebook_shared(w, 4, iters=5)
    assert torch.equal(blocked.data, whole.data) and torch.equal(blocked.codebook, whole.codebook)
    nearest = whole.codebook[(w.unsqueeze(-1) - whole.codebook).abs().argmin(-1)]  # (R, D) brute force
    assert torch.equal(blocked.dequantize(), nearest)
    with pytest.raises(ValueError, match="max_samples"):
        codebook.quantize_codebook_shared(w, 4, max_samples=0)


def test_bad_init_rejected() -> None:
    with pytest.raises(ValueError, match="init"):
        codebook.kmeans_1d(torch.randn(2, 3), 2, init="random")
    with pytest.raises(ValueError, match="kind"):
        QuantizedTable("bogus", 4, 3, torch.zeros(1, 2, dtype=torch.uint8))
