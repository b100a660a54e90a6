"""Table-level quantization: method dispatch, bytes accounting, errors, pooled lookup of every storage kind."""
from __future__ import annotations

import pytest
import torch

from recpipe.ops import quant as qops
from recpipe.quant import (MixedPrecisionConfig, QuantConfig, TableQuantConfig, codebook_row_problem,
                           quantize_table, reconstruction_mse, table_report)
from recpipe.quant.codebook import quantize_codebook_row
from recpipe.quant.table import QuantizedTable

POOL_TOL = 1e-5
"""Pooled lookup vs a naive loop over decoded rows: float32 sums of a few O(1) values in another order."""

LOOKUP_DIM = 20
"""D of the lookup tests: 4-bit per-row codebooks need 2**4 < D."""
ALL_CONFIGS = [
    TableQuantConfig(bits=8, method="minmax"), TableQuantConfig(bits=4, method="greedy"),
    TableQuantConfig(bits=2, method="greedy", num_bins=50, ratio=0.3),
    TableQuantConfig(bits=4, method="codebook", codebook_scope="row"),
    TableQuantConfig(bits=2, method="codebook", codebook_scope="shared", kmeans_init="kmeans++"),
]


@pytest.mark.parametrize("bits,ratio", [(4, 1 / 8 + 1 / 64), (8, 1 / 4 + 2 / 64), (2, 1 / 16 + 1 / 64)])
def test_rowwise_size_is_the_floor_at_d64(bits: int, ratio: float) -> None:
    # e.g. 4 bit: 32 code bytes + 2 fp16 (scale, bias) = 36 bytes per row vs 256 fp32 bytes: 1/8 + 1/64
    w = torch.randn(100, 64, generator=torch.Generator().manual_seed(0))
    t = quantize_table(w, TableQuantConfig(bits=bits))
    rep = table_report(w, t)
    assert rep["fp32_bytes"] == 100 * 64 * 4
    assert t.nbytes == rep["quantized_bytes"] == round(ratio * 100 * 64 * 4)
    assert rep["ratio_to_fp32"] == pytest.approx(ratio)


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c.method}-{c.bits}-{c.codebook_scope}")
def test_lookup_matches_naive_pooling(cfg: TableQuantConfig) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, LOOKUP_DIM, generator=g)
    t = quantize_table(w, cfg)
    deq = t.dequantize()
    assert deq.shape == (12, LOOKUP_DIM)
    indices = torch.tensor([4, 4, 11, 0, 7])
    offsets = torch.tensor([0, 2, 2, 5])  # middle bag empty, duplicate in the first
    for mode in (qops.MODE_SUM, qops.MODE_MEAN):
        got = t.lookup(indices, offsets, mode)
        want = torch.stack([deq[[4, 4]].sum(0), torch.zeros(LOOKUP_DIM), deq[[11, 0, 7]].sum(0)])
        if mode == qops.MODE_MEAN:
            want = want / torch.tensor([[2.0], [1.0], [3.0]])
        torch.testing.assert_close(got, want, rtol=POOL_TOL, atol=POOL_TOL)
    psw = torch.tensor([0.5, 2.0, 1.0, -1.0, 3.0])
    got = t.lookup(indices, offsets, qops.MODE_SUM, psw)
    want0 = 0.5 * deq[4] + 2.0 * deq[4]
    torch.testing.assert_close(got[0], want0, rtol=POOL_TOL, atol=POOL_TOL)


@pytest.mark.parametrize("bits", qops.SUPPORTED_BITS)
def test_greedy_beats_or_ties_minmax_on_heavy_tails(bits: int) -> None:
    torch.manual_seed(bits)
    w = torch.distributions.StudentT(2.0).sample((200, 32))
    e_mm = reconstruction_mse(w, quantize_table(w, TableQuantConfig(bits=bits, method="minmax")))
    e_gr = reconstruction_mse(w, quantize_table(w, TableQuantConfig(bits=bits, method="greedy")))
    assert e_gr <= e_mm
    if bits < 8:  # outlier-dominated rows: clipping must help clearly
        assert e_gr < 0.9 * e_mm


def test_report_and_mse_against_direct_computation() -> None:
    w = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    t = quantize_table(w, TableQuantConfig(bits=8, method="minmax"))
    rep = table_report(w, t)
    assert rep["fp32_bytes"] == 30 * 8 * 4 and rep["quantized_bytes"] == 30 * 16
    assert rep["ratio_to_fp32"] == pytest.approx(0.5)
    direct = ((w.double() - qops.dequantize_rowwise(t.data, 8, 8).double()) ** 2).mean().item()
    assert rep["mse"] == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c.method}-{c.bits}-{c.codebook_scope}")
def test_empty_table(cfg: TableQuantConfig) -> None:
    t = quantize_table(torch.zeros(0, LOOKUP_DIM), cfg)
    assert t.num_rows == 0 and t.dequantize().shape == (0, LOOKUP_DIM)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="bits"):
        TableQuantConfig(bits=3)
    with pytest.raises(ValueError, match="method"):
        TableQuantConfig(method="lloyd")
    with pytest.raises(ValueError, match="codebook_scope"):
        TableQuantConfig(codebook_scope="global")
    assert TableQuantConfig.from_json(TableQuantConfig(bits=2).to_json()) == TableQuantConfig(bits=2)


def test_table_shape_validation() -> None:
    with pytest.raises(ValueError, match=r"\(R, 6\) uint8"):
        QuantizedTable("rowwise", 4, 3, torch.zeros(2, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="codebook"):
        QuantizedTable("codebook_shared", 4, 3, torch.zeros(2, 2, dtype=torch.uint8))


@pytest.mark.parametrize("dim,bits,ok", [
    (16, 4, False),   # K = 16 centroids for 16 values: the codebook is the row
    (17, 4, True),    # 9 code bytes + 32 centroid bytes = 41 < 68 fp32 bytes
    (64, 8, False),   # K = 256 > 64
    (257, 8, True),   # 257 + 512 = 769 < 1028
    (4, 2, False),    # K = 4 = D
    (5, 2, True),     # 2 + 8 = 10 < 20
])
def test_codebook_row_guard_hand_cases(dim: int, bits: int, ok: bool) -> None:
    assert (codebook_row_problem(dim, bits) is None) == ok
    cfg = TableQuantConfig(bits=bits, method="codebook", codebook_scope="row", kmeans_iters=2)
    w = torch.randn(3, dim, generator=torch.Generator().manual_seed(dim))
    if ok:
        cfg.validate_dim(dim)
        t = quantize_table(w, cfg)
        assert t.nbytes < 4 * w.numel()  # smaller than float32, which is the point
    else:
        with pytest.raises(ValueError, match=rf"{bits} bits.*D = {dim}.*2\*\*bits < D"):
            cfg.validate_dim(dim)
        with pytest.raises(ValueError, match="codebook_scope='row'"):
            quantize_table(w, cfg)
        with pytest.raises(ValueError, match="quantize_codebook_row"):
            quantize_codebook_row(w, bits, iters=2)
        # other kinds at the same width are fine
        TableQuantConfig(bits=bits, method="codebook", codebook_scope="shared").validate_dim(dim)
        TableQuantConfig(bits=bits, method="greedy").validate_dim(dim)


def test_codebook_row_guard_covers_every_width_a_policy_can_pick() -> None:
    row = dict(method="codebook", codebook_scope="row")
    QuantConfig(bits=4, **row).validate_dim(32)
    measured = QuantConfig(bits=4, mixed=MixedPrecisionConfig(mode="measured"), **row)  # candidates 2, 4, 8
    assert measured.widths() == (2, 4, 8)
    with pytest.raises(ValueError, match="at 8 bits"):
        measured.validate_dim(32)
    QuantConfig(bits=4, mixed=MixedPrecisionConfig(mode="measured", candidates=(2, 4)), **row).validate_dim(32)
    rule = QuantConfig(bits=2, mixed=MixedPrecisionConfig(mode="rule", rule=((0, 8), (100, 2))), **row)
    assert rule.widths() == (2, 8)
    with pytest.raises(ValueError, match="at 8 bits"):
        rule.validate_dim(32)
