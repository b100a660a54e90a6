"""Table-level quantization: method dispatch, bytes accounting, errors, pooled lookup of every storage kind."""
from __future__ import annotations

import pytest
import torch

from recpipe.ops import quant as qops
from recpipe.quant import TableQuantConfig, quantize_table, reconstruction_mse, table_report
from recpipe.quant.table import QuantizedTable, fp32_bytes, rowwise_bytes, rowwise_ratio

POOL_TOL = 1e-5
"""Pooled lookup vs a naive loop over decoded rows: float32 sums of a few O(1) values in another order."""

ALL_CONFIGS = [
    TableQuantConfig(bits=8, method="minmax"), TableQuantConfig(bits=4, method="greedy"),
    TableQuantConfig(bits=2, method="greedy", num_bins=50, ratio=0.3),
    TableQuantConfig(bits=4, method="codebook", codebook_scope="row"),
    TableQuantConfig(bits=2, method="codebook", codebook_scope="shared", kmeans_init="kmeans++"),
]


def test_floor_ratio_4bit_d64() -> None:
    # 32 code bytes + 2 fp16 = 36 bytes vs 256 fp32 bytes: 1/8 + 1/64
    assert rowwise_ratio(64, 4) == pytest.approx(1 / 8 + 1 / 64) == pytest.approx(0.140625)
    assert rowwise_ratio(64, 8) == pytest.approx(1 / 4 + 2 / 64)
    assert rowwise_ratio(64, 2) == pytest.approx(1 / 16 + 1 / 64)
    w = torch.randn(100, 64, generator=torch.Generator().manual_seed(0))
    t = quantize_table(w, TableQuantConfig(bits=4))
    assert t.nbytes == rowwise_bytes(100, 64, 4) == 3600
    assert t.nbytes / fp32_bytes(100, 64) == pytest.approx(0.140625)


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c.method}-{c.bits}-{c.codebook_scope}")
def test_lookup_matches_naive_pooling(cfg: TableQuantConfig) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, 6, generator=g)
    t = quantize_table(w, cfg)
    deq = t.dequantize()
    assert deq.shape == (12, 6)
    indices = torch.tensor([4, 4, 11, 0, 7])
    offsets = torch.tensor([0, 2, 2, 5])  # middle bag empty, duplicate in the first
    for mode in (qops.MODE_SUM, qops.MODE_MEAN):
        got = t.lookup(indices, offsets, mode)
        want = torch.stack([deq[[4, 4]].sum(0), torch.zeros(6), deq[[11, 0, 7]].sum(0)])
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
    t = quantize_table(torch.zeros(0, 5), cfg)
    assert t.num_rows == 0 and t.dequantize().shape == (0, 5)


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
