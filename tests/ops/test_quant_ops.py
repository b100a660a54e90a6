"""Tests of the recpipe::quantize_rowwise* / dequantize_rowwise / quantized_embedding_bag CPU reference ops."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recpipe.ops import quant as q

FLOAT_SLACK = 8 * np.finfo(np.float32).eps
"""Relative float32 slack (times max |x|) for the few float32 roundings in subtract / divide / multiply / add."""
GREEDY_REL_TOL = 1e-6
"""Greedy error vs min-max error: identical arithmetic, so only summation-order noise is allowed."""
NAIVE_GREEDY_REL_TOL = 1e-4
"""Naive numpy greedy vs the vectorised op: error sums in another order may flip near-tie choices slightly."""
POOL_TOL = 1e-5
"""Pooling vs a naive loop: float32 sums of a handful of O(1) rows in a different order."""


def _f32(v: float) -> np.float32:
    return np.float32(v)


# ------------------------------------------------------------------------------------------ hand-packed rows
def test_layout_8bit_hand_packed() -> None:
    w = torch.tensor([[1.0, 2.0, 3.5]])
    scale = _f32(2.5) / _f32(255)
    # codes: (x - 1) / scale = 0, 101.99.. -> 102, 255
    expected = bytes([0, 102, 255]) + struct.pack("<ff", scale, 1.0)
    fused = q.quantize_rowwise(w, 8)
    assert fused.dtype == torch.uint8 and fused.shape == (1, 3 + 8)
    assert bytes(fused[0].tolist()) == expected


def test_layout_4bit_hand_packed() -> None:
    w = torch.tensor([[0.0, 1.5, 3.0]])
    scale = np.float16(0.2)  # fp16(3 / 15) = 0.199951171875
    # codes: 0, 1.5 / 0.19995 = 7.50 -> 8, 3 / 0.19995 = 15.004 -> clamp 15; element 2j low nibble
    expected = bytes([0 | (8 << 4), 15]) + struct.pack("<ee", scale, 0.0)
    fused = q.quantize_rowwise(w, 4)
    assert fused.shape == (1, 2 + 4)
    assert bytes(fused[0].tolist()) == expected


def test_layout_2bit_hand_packed() -> None:
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0, 1.0]])
    # bias 0, scale fp16(3 / 3) = 1, codes 0 1 2 3 | 1; element 4j+k at bits 2k..2k+1
    expected = bytes([0 | (1 << 2) | (2 << 4) | (3 << 6), 1]) + struct.pack("<ee", 1.0, 0.0)
    fused = q.quantize_rowwise(w, 2)
    assert bytes(fused[0].tolist()) == expected


@pytest.mark.parametrize("dim,bits,width", [(1, 8, 9), (2, 8, 10), (3, 8, 11), (1, 4, 5), (2, 4, 5), (3, 4, 6),
                                            (1, 2, 5), (3, 2, 5), (5, 2, 6), (64, 4, 36), (64, 8, 72)])
def test_row_bytes(dim: int, bits: int, width: int) -> None:
    assert q.row_bytes(dim, bits) == width
    assert q.quantize_rowwise(torch.randn(3, dim), bits).shape == (3, width)


@pytest.mark.parametrize("bits", q.SUPPORTED_BITS)
@pytest.mark.parametrize("dim", [1, 2, 3, 5, 8])
def test_pack_unpack_round_trip(bits: int, dim: int) -> None:
    g = torch.Generator().manual_seed(dim * 10 + bits)
    codes = torch.randint(0, 1 << bits, (4, dim), generator=g, dtype=torch.uint8)
    packed = q.pack_codes(codes, bits)
    assert torch.equal(q.unpack_codes(packed, bits, dim), codes)
    # naive bit-by-bit reference of the packing
    per = 8 // bits
    for r in range(4):
        for j in range(q.code_bytes(dim, bits)):
            byte = sum(int(codes[r, per * j + k]) << (k * bits) for k in range(per) if per * j + k < dim)
            assert int(packed[r, j]) == byte


# ---------------------------------------------------------------------------------------- round-trip bounds
def _bound(x: np.ndarray, bits: int) -> np.ndarray:
    """Independent numpy bound per row: half a step + fp16 rounding of bias (bottom) and scale (top)."""
    lo, hi = x.min(1), x.max(1)
    qmax = (1 << bits) - 1
    if bits == 8:
        b = lo
        s = (hi - lo) / np.float32(qmax)
    else:
        b = lo.astype(np.float16).astype(np.float32)
        s = (np.maximum(hi - b, 0) / np.float32(qmax)).astype(np.float16).astype(np.float32)
    top = np.maximum(hi - (b + qmax * s), 0)
    bottom = np.maximum(b - lo, 0)
    return s / 2 + top + bottom + FLOAT_SLACK * np.abs(x).max(1)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(q.SUPPORTED_BITS), rows=st.integers(0, 6), dim=st.integers(1, 17),
       seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 0.1, 1.0, 30.0]))
def test_minmax_round_trip_bound(bits: int, rows: int, dim: int, seed: int, scale: float) -> None:
    x = (np.random.default_rng(seed).standard_normal((rows, dim)) * scale).astype(np.float32)
    fused = q.quantize_rowwise(torch.from_numpy(x), bits)
    deq = q.dequantize_rowwise(fused, bits, dim).numpy()
    assert deq.shape == (rows, dim) and deq.dtype == np.float32
    if rows:
        assert (np.abs(x - deq) <= _bound(x, bits)[:, None]).all()


@pytest.mark.parametrize("bits", q.SUPPORTED_BITS)
@pytest.mark.parametrize("value", [0.0, 1.0, -2.5, 0.1, 1234.567, -1e-3])
def test_constant_rows(bits: int, value: float) -> None:
    x = torch.full((2, 5), value)
    for fused in (q.quantize_rowwise(x, bits), q.quantize_rowwise_greedy(x, bits)):
        deq = q.dequantize_rowwise(fused, bits, 5)
        if bits == 8:
            assert torch.equal(deq, x)  # scale 0, codes 0, bias == the constant
        else:
            fp16_rounding = abs(float(np.float32(value)) - float(np.float16(value)))  # the documented tolerance
            assert (deq - x).abs().max().item() <= fp16_rounding
        _codes, scale, _bias = q.split_fused(fused, bits, 5)
        assert (scale >= 0).all()


@pytest.mark.parametrize("bits", q.SUPPORTED_BITS)
def test_zero_rows(bits: int) -> None:
    x = torch.zeros(3, 7)
    fused = q.quantize_rowwise(x, bits)
    assert int(fused.sum()) == 0  # codes, scale and bias all zero bytes
    assert torch.equal(q.dequantize_rowwise(fused, bits, 7), x)


@pytest.mark.parametrize("bits", q.SUPPORTED_BITS)
def test_empty_table(bits: int) -> None:
    fused = q.quantize_rowwise_greedy(torch.zeros(0, 6), bits)
    assert fused.shape == (0, q.row_bytes(6, bits))
    assert q.dequantize_rowwise(fused, bits, 6).shape == (0, 6)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="bits"):
        q.quantize_rowwise(torch.randn(2, 3), 3)
    with pytest.raises(ValueError, match="float32"):
        q.quantize_rowwise(torch.randn(2, 3, dtype=torch.float64), 4)
    with pytest.raises(ValueError, match="bytes"):
        q.dequantize_rowwise(torch.zeros(2, 9, dtype=torch.uint8), 4, 3)


# ------------------------------------------------------------------------------------------------- greedy
def _row_sq_err(x: np.ndarray, fused: torch.Tensor, bits: int) -> np.ndarray:
    deq = q.dequantize_rowwise(fused, bits, x.shape[1]).numpy().astype(np.float64)
    return ((x.astype(np.float64) - deq) ** 2).sum(1)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(q.SUPPORTED_BITS), dim=st.integers(1, 40), seed=st.integers(0, 2**16),
       dist=st.sampled_from(["normal", "student", "uniform", "outlier"]))
def test_greedy_never_worse_than_minmax(bits: int, dim: int, seed: int, dist: str) -> None:
    rng = np.random.default_rng(seed)
    x = {"normal": lambda: rng.standard_normal((5, dim)),
         "student": lambda: rng.standard_t(2.0, (5, dim)),
         "uniform": lambda: rng.uniform(-1, 1, (5, dim)),
         "outlier": lambda: rng.standard_normal((5, dim)) * 0.01 + (rng.random((5, dim)) < 0.05) * 3}[dist]()
    x = x.astype(np.float32)
    t = torch.from_numpy(x)
    e_mm = _row_sq_err(x, q.quantize_rowwise(t, bits), bits)
    e_gr = _row_sq_err(x, q.quantize_rowwise_greedy(t, bits), bits)
    assert (e_gr <= e_mm * (1 + GREEDY_REL_TOL) + 1e-30).all()


def _naive_greedy_error(row: np.ndarray, bits: int, num_bins: int, ratio: float) -> float:
    """A scalar re-implementation of the documented search for ONE row, in numpy float32."""
    qmax = (1 << bits) - 1

    def err(lo: np.float32, hi: np.float32) -> float:
        if bits == 8:
            b, s = lo, np.float32(max(hi - lo, 0)) / np.float32(qmax)
        else:
            b = np.float32(np.float16(lo))
            s = np.float32(np.float16(np.float32(max(hi - b, 0)) / np.float32(qmax)))
        codes = np.zeros_like(row) if s == 0 else np.clip(np.rint((row - b) / s), 0, qmax)
        return float(((row - (codes * s + b)) ** 2).sum())

    lo0, hi0 = row.min(), row.max()
    step = (hi0 - lo0) / np.float32(num_bins)
    a = c = 0
    best = err(lo0, hi0)
    for _ in range(round(num_bins * ratio)):
        e_left = err(lo0 + np.float32(a + 1) * step, hi0 - np.float32(c) * step)
        e_right = err(lo0 + np.float32(a) * step, hi0 - np.float32(c + 1) * step)
        if e_left < e_right:
            a, cur = a + 1, e_left
        else:
            c, cur = c + 1, e_right
        best = min(best, cur)
    return best


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("num_bins,ratio", [(200, 0.16), (20, 0.5)])
def test_greedy_matches_naive_search(bits: int, num_bins: int, ratio: float) -> None:
    x = np.random.default_rng(7).standard_t(3.0, (6, 24)).astype(np.float32)
    fused = q.quantize_rowwise_greedy(torch.from_numpy(x), bits, num_bins, ratio)
    got = _row_sq_err(x, fused, bits)
    want = np.array([_naive_greedy_error(r, bits, num_bins, ratio) for r in x])
    np.testing.assert_allclose(got, want, rtol=NAIVE_GREEDY_REL_TOL)


def test_greedy_ratio_zero_is_minmax() -> None:
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(q.quantize_rowwise_greedy(x, 4, 200, 0.0), q.quantize_rowwise(x, 4))


# ------------------------------------------------------------------------------------------- embedding bag
def _naive_bag(deq: torch.Tensor, indices: list[int], offsets: list[int], mode: int,
               psw: list[float] | None) -> torch.Tensor:
    out = torch.zeros(len(offsets) - 1, deq.shape[1])
    for b in range(len(offsets) - 1):
        acc = torch.zeros(deq.shape[1])
        for t in range(offsets[b], offsets[b + 1]):
            acc += deq[indices[t]] * (psw[t] if psw is not None else 1.0)
        n = offsets[b + 1] - offsets[b]
        out[b] = acc / n if (mode == q.MODE_MEAN and n) else acc
    return out


@pytest.mark.parametrize("bits", q.SUPPORTED_BITS)
@pytest.mark.parametrize("mode,weighted", [(q.MODE_SUM, False), (q.MODE_MEAN, False), (q.MODE_SUM, True)])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_quantized_embedding_bag_vs_naive(bits: int, mode: int, weighted: bool, index_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(bits + mode)
    fused = q.quantize_rowwise(torch.randn(6, 5, generator=g), bits)
    deq = q.dequantize_rowwise(fused, bits, 5)
    indices = [3, 3, 0, 5, 1, 3, 2]  # duplicates inside a bag and across bags
    offsets = [0, 2, 2, 3, 7, 7]  # bags 1 and 4 are empty
    psw = torch.rand(len(indices), generator=g).tolist() if weighted else None
    got = q.quantized_embedding_bag(
        fused, bits, 5, torch.tensor(indices, dtype=index_dtype), torch.tensor(offsets, dtype=index_dtype), mode,
        torch.tensor(psw) if psw is not None else None)
    want = _naive_bag(deq, indices, offsets, mode, psw)
    assert got.shape == (5, 5)
    torch.testing.assert_close(got, want, rtol=POOL_TOL, atol=POOL_TOL)
    assert torch.equal(got[1], torch.zeros(5)) and torch.equal(got[4], torch.zeros(5))


def test_quantized_embedding_bag_no_bags_and_no_indices() -> None:
    fused = q.quantize_rowwise(torch.randn(4, 3), 4)
    assert q.quantized_embedding_bag(fused, 4, 3, torch.zeros(0, dtype=torch.long),
                                     torch.zeros(1, dtype=torch.long)).shape == (0, 3)
    out = q.quantized_embedding_bag(fused, 4, 3, torch.zeros(0, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    assert torch.equal(out, torch.zeros(2, 3))


def test_quantized_embedding_bag_errors() -> None:
    fused = q.quantize_rowwise(torch.randn(4, 3), 8)
    idx, off = torch.tensor([0, 4]), torch.tensor([0, 1, 2])
    with pytest.raises(IndexError, match=r"indices\[1\] = 4"):
        q.quantized_embedding_bag(fused, 8, 3, idx, off)
    with pytest.raises(ValueError, match="end at len"):
        q.quantized_embedding_bag(fused, 8, 3, torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="only supported with mode 0"):
        q.quantized_embedding_bag(fused, 8, 3, torch.tensor([0]), torch.tensor([0, 1]), q.MODE_MEAN,
                                  torch.ones(1))


# ------------------------------------------------------------------------------------------------- opcheck
@pytest.mark.parametrize("bits", q.SUPPORTED_BITS)
def test_opcheck_cpu(bits: int) -> None:
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    fused = q.quantize_rowwise(w, bits)
    idx, off = torch.tensor([0, 4, 4, 2]), torch.tensor([0, 1, 1, 4])
    ops = torch.ops.recpipe
    torch.library.opcheck(ops.quantize_rowwise.default, (w, bits))
    torch.library.opcheck(ops.quantize_rowwise_greedy.default, (w, bits, 50, 0.2))
    torch.library.opcheck(ops.dequantize_rowwise.default, (fused, bits, 7))
    torch.library.opcheck(ops.quantized_embedding_bag.default, (fused, bits, 7, idx, off, 0, torch.rand(4)))
    torch.library.opcheck(ops.quantized_embedding_bag.default, (fused, bits, 7, idx, off, 1, None))


@pytest.mark.parametrize("bits", [8, 4])
def test_row_chunking_does_not_change_results(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.randn(10, 9, generator=torch.Generator().manual_seed(11))
    whole_mm, whole_gr = q.quantize_rowwise(w, bits), q.quantize_rowwise_greedy(w, bits)
    monkeypatch.setattr(q, "_CHUNK_ROWS", 3)  # 10 rows -> blocks of 3, 3, 3, 1
    assert torch.equal(q.quantize_rowwise(w, bits), whole_mm)
    assert torch.equal(q.quantize_rowwise_greedy(w, bits), whole_gr)
