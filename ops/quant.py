"""Row-wise quantized embedding tables: op schemas, pure-PyTorch CPU reference kernels and fake kernels.

Ops (namespace ``recpipe``; none is differentiable):

* ``quantize_rowwise(Tensor w, int bits) -> Tensor``: plain min-max row-wise quantization of a (R, D) float32
  table into fused rows (R, row_bytes(D, bits)) uint8.
* ``quantize_rowwise_greedy(Tensor w, int bits, int num_bins, float ratio) -> Tensor``: the same layout, each
  row's clipping range chosen by the greedy search below.
* ``dequantize_rowwise(Tensor fused, int bits, int dim) -> Tensor``: fused rows back to (R, D) float32.
* ``quantized_embedding_bag(Tensor fused, int bits, int dim, Tensor indices, Tensor offsets, int mode,
  Tensor? per_sample_weights) -> Tensor``: pooled lookup over fused rows, dequantizing on the fly -> (B, D).

Fused row layout
----------------
Compatible with FBGEMM's ``Fused8BitRowwiseQuantized`` (8 bit) and ``FusedNBitRowwiseQuantizedSBHalf``
(4 / 2 bit) formats. A table of R rows of dimension D is ONE contiguous uint8 tensor of shape (R, W); row r
occupies bytes ``[r * W, (r + 1) * W)``. Let ``C = code_bytes(D, bits)``.

* 8 bit (``W = D + 8``):
  ``[0, D)`` one code per byte (element j in byte j);
  ``[D, D + 4)`` scale, IEEE float32, little-endian;
  ``[D + 4, D + 8)`` bias, IEEE float32, little-endian.
* 4 bit (``C = ceil(D / 2)``, ``W = C + 4``):
  byte j in ``[0, C)`` holds element 2j in bits 0..3 (the LOW nibble) and element 2j+1 in bits 4..7;
  ``[C, C + 2)`` scale, IEEE float16, little-endian; ``[C + 2, C + 4)`` bias, IEEE float16, little-endian.
* 2 bit (``C = ceil(D / 4)``, ``W = C + 4``):
  byte j in ``[0, C)`` holds element 4j + k in bits 2k..2k+1 (k = 0..3);
  ``[C, C + 2)`` scale fp16 LE; ``[C + 2, C + 4)`` bias fp16 LE.

Padding: none. The row stride W is exactly code bytes + scale/bias bytes (FBGEMM's CPU conversion routines
produce this unpadded layout; its TBE inference kernels can additionally round each row up to a 16-byte
boundary for aligned vector loads — we do not, so W = D + 8 / ceil(D/2) + 4 / ceil(D/4) + 4 and the bytes
figures in reports are the true storage cost). When D is not a multiple of 8 / bits, the unused high
bit-fields of the last code byte are ZERO. The host must be little-endian (checked at import).

Numerics (the spec every kernel must follow)
--------------------------------------------
A row x (D float32 values) and a clipping range [lo, hi] (lo = min(x), hi = max(x) for min-max) give
``qmax = 2**bits - 1`` and, all arithmetic in float32 with IEEE division and round-to-nearest-even:

* 8 bit: ``bias = lo``; ``scale = max(hi - lo, 0) / qmax`` (both stored as float32).
* 4 / 2 bit: ``bias = fp16(lo)``; ``b = float(bias)``; ``scale = fp16(max(hi - b, 0) / qmax)``
  (the float32 quotient rounded to nearest fp16). Scale and bias are computed from the STORED fp16 bias, so
  the top of the range stays reachable.
* ``code = 0 if scale == 0 else clamp(rint((x - b) / s), 0, qmax)`` where ``s``/``b`` are the stored scale /
  bias read back as float32 (``rint`` = round half to even; compute ``(x - b) / s`` as a true division, not a
  multiplication by a reciprocal, so codes are bit-identical across implementations).
* dequantized value ``x_hat = code * s + b`` in float32 (an implementation may contract this to an FMA:
  results then differ from the reference by at most one float32 rounding).

Constant rows (hi == lo): 8 bit stores scale = 0 and all codes 0, so ``x_hat == x`` exactly. 4 / 2 bit store
bias = fp16(x) and scale = fp16(max(x - fp16(x), 0) / qmax) — zero whenever x is representable in fp16 or
rounded up — so ``|x_hat - x| <= |x - fp16(x)|``, at most half an fp16 ulp of x. Values must be finite and,
for 4 / 2 bit, within the fp16 range (|x| < 65504); NaN/inf give unspecified codes.

Byte layout and scale/bias recipe follow FBGEMM, so its readers can consume these rows; FBGEMM's own
quantizers multiply by a reciprocal scale (plus an epsilon at 8 bit) where we divide, so a code can differ from
FBGEMM's by one step on rare rounding ties.

Round-trip bound for min-max: every element satisfies ``|x - x_hat| <= s / 2`` plus, for 4 / 2 bit, the
fp16 rounding of bias (half an ulp of lo) and of scale (``qmax * |s - (hi - b) / qmax|`` at the clamped top).

Greedy clipping (arXiv 1911.02079; FBGEMM ships a search in the same spirit), per row, rows in lockstep:
``step = (hi0 - lo0) / num_bins`` with [lo0, hi0] = [min, max]; ``K = round(num_bins * ratio)`` iterations
(Python ``round``: 200 * 0.16 -> 32). Keeping integer counts a (left shrinks) and c (right shrinks), with
``lo(a) = lo0 + a * step`` and ``hi(c) = hi0 - c * step``, each iteration evaluates the L2 error
``sum_j (x_j - x_hat_j)**2`` (x_hat computed EXACTLY as above, i.e. with the fp16 rounding of scale/bias for
4 / 2 bit) of (a + 1, c) and (a, c + 1) and moves to the left shrink if its error is strictly lower, else to the
right one. The returned range is the one with the lowest error among all visited, the min-max range (a = c = 0)
included and winning ties; hence greedy is never worse than min-max. Errors are float32 sums, so another
implementation may pick a different range on near-ties: compare greedy kernels by reconstruction error
(never worse than min-max, close to the reference), not byte for byte.

quantized_embedding_bag: ``offsets`` (B + 1,), ``offsets[0] == 0``, non-decreasing, ``offsets[B] ==
len(indices)``; bag b = rows ``indices[offsets[b]:offsets[b + 1]]``. mode 0 = sum, 1 = mean (sum / bag length);
empty bags give zeros. ``per_sample_weights`` (same length as indices, float32) multiply each dequantized row
before pooling and are only allowed with mode 0 (as in ``torch.nn.functional.embedding_bag``). Accumulation
in float32.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch

from recpipe.ops._lib import LIB
from recpipe.ops.embedding_bag import _ensure_kernels  # the one lazy CUDA build/load helper of recpipe.ops

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("recpipe.ops.quant: the fused row layout is little-endian; this host is big-endian")

__all__ = [
    "SUPPORTED_BITS", "MODE_SUM", "MODE_MEAN", "DEFAULT_NUM_BINS", "DEFAULT_RATIO",
    "code_bytes", "scale_bias_bytes", "row_bytes", "pack_codes", "unpack_codes", "split_fused", "fuse_rows",
    "row_params", "quantize_with_range", "greedy_range", "quantize_rowwise", "quantize_rowwise_greedy",
    "dequantize_rowwise", "quantized_embedding_bag",
]

SUPPORTED_BITS = (2, 4, 8)
MODE_SUM = 0
MODE_MEAN = 1
DEFAULT_NUM_BINS = 200
DEFAULT_RATIO = 0.16
_CHUNK_ROWS = 1 << 15
"""Rows processed at once by the CPU quantizers, bounding temporaries to ~D * 32k floats per buffer."""

LIB.define("quantize_rowwise(Tensor w, int bits) -> Tensor")
LIB.define("quantize_rowwise_greedy(Tensor w, int bits, int num_bins, float ratio) -> Tensor")
LIB.define("dequantize_rowwise(Tensor fused, int bits, int dim) -> Tensor")
LIB.define(
    "quantized_embedding_bag(Tensor fused, int bits, int dim, Tensor indices, Tensor offsets, int mode, "
    "Tensor? per_sample_weights) -> Tensor"
)


# ----------------------------------------------------------------------------------------------- layout
def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")


def _check_dim(dim: int) -> None:
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")


def code_bytes(dim: int, bits: int) -> int:
    """Bytes of packed codes in one row: ``ceil(dim * bits / 8)``."""
    _check_bits(bits)
    _check_dim(dim)
    per_byte = 8 // bits
    return (dim + per_byte - 1) // per_byte


def scale_bias_bytes(bits: int) -> int:
    """Bytes of scale + bias in one row: 8 (two float32) for 8 bit, 4 (two float16) for 4 / 2 bit."""
    _check_bits(bits)
    return 8 if bits == 8 else 4


def row_bytes(dim: int, bits: int) -> int:
    """Row stride W of the fused layout (no padding)."""
    return code_bytes(dim, bits) + scale_bias_bytes(bits)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs integer codes into bytes, element ``p * j + k`` at bits ``k*bits .. k*bits+bits-1`` of byte j.

    Args:
        codes: (R, D) integer tensor with values in ``[0, 2**bits)``.
        bits: 2, 4 or 8.

    Returns:
        (R, code_bytes(D, bits)) uint8; unused trailing bit-fields are zero.
    """
    _check_bits(bits)
    r, d = codes.shape
    codes = codes.to(torch.uint8)
    per_byte = 8 // bits
    if per_byte == 1:
        return codes.contiguous()
    c = code_bytes(d, bits)
    padded = codes.new_zeros((r, c * per_byte))
    padded[:, :d] = codes
    grouped = padded.view(r, c, per_byte)  # (R, C, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.uint8, device=codes.device) * bits
    # Disjoint bit-fields: the sum of shifted fields equals their bitwise OR and never exceeds 255.
    return (grouped << shifts).sum(dim=-1, dtype=torch.int32).to(torch.uint8)  # (R, C)


def unpack_codes(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: (R, C) uint8 -> (R, dim) uint8 codes."""
    _check_bits(bits)
    _check_dim(dim)
    per_byte = 8 // bits
    if per_byte == 1:
        return packed[:, :dim]
    r, c = packed.shape
    shifts = torch.arange(per_byte, dtype=torch.uint8, device=packed.device) * bits
    mask = (1 << bits) - 1
    fields = (packed.unsqueeze(-1) >> shifts) & mask  # (R, C, per_byte)
    return fields.reshape(r, c * per_byte)[:, :dim]  # (R, D)


def split_fused(fused: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splits fused rows into (codes (R, D) uint8, scale (R,) float32, bias (R,) float32)."""
    _check_fused(fused, bits, dim)
    c = code_bytes(dim, bits)
    codes = unpack_codes(fused[:, :c], bits, dim)
    sb_dtype = torch.float32 if bits == 8 else torch.float16
    sb_bytes = fused.new_empty((fused.shape[0], fused.shape[1] - c))  # fresh storage: offset 0, aligned
    sb_bytes.copy_(fused[:, c:])
    sb = sb_bytes.view(sb_dtype).float()  # (R, 2)
    return codes, sb[:, 0], sb[:, 1]


def fuse_rows(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, bits: int) -> torch.Tensor:
    """Builds fused rows from codes (R, D), scale (R,) and bias (R,) (rounded to fp16 for 4 / 2 bit)."""
    packed = pack_codes(codes, bits)  # (R, C)
    sb_dtype = torch.float32 if bits == 8 else torch.float16
    sb = torch.stack([scale, bias], dim=1).to(sb_dtype).contiguous().view(torch.uint8)  # (R, 4 or 8)
    return torch.cat([packed, sb], dim=1)


def _check_weight(w: torch.Tensor) -> None:
    if w.dim() != 2:
        raise ValueError(f"w must be a 2-D (R, D) table, got shape {tuple(w.shape)}")
    if w.dtype != torch.float32:
        raise ValueError(f"w must be float32, got {w.dtype}")
    _check_dim(w.shape[1])


def _check_fused(fused: torch.Tensor, bits: int, dim: int) -> None:
    _check_bits(bits)
    _check_dim(dim)
    if fused.dim() != 2 or fused.dtype != torch.uint8:
        raise ValueError(f"fused must be a 2-D uint8 tensor, got {fused.dtype} of shape {tuple(fused.shape)}")
    want = row_bytes(dim, bits)
    if fused.shape[1] != want:
        raise ValueError(f"fused rows have {fused.shape[1]} bytes; {bits}-bit rows of dim {dim} have {want}")


# -------------------------------------------------------------------------------------------- numerics
def row_params(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored (scale, bias) for clipping ranges, as float32 values exactly equal to what is stored.

    Args:
        lo: (R,) float32 range minimum. hi: (R,) float32 range maximum.
        bits: 2, 4 or 8.

    Returns:
        scale (R,), bias (R,) float32 (for 4 / 2 bit both are exactly representable in fp16).
    """
    qmax = (1 << bits) - 1
    if bits == 8:
        return (hi - lo).clamp_min(0) / qmax, lo
    bias = lo.half().float()
    scale = ((hi - bias).clamp_min(0) / qmax).half().float()
    return scale, bias


def _encode(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, bits: int) -> torch.Tensor:
    """(R, D) float32 -> (R, D) float32 integral codes for per-row stored scale/bias (R,)."""
    qmax = (1 << bits) - 1
    s = scale.unsqueeze(1)  # (R, 1)
    positive = s > 0
    safe = torch.where(positive, s, torch.ones_like(s))
    q = torch.round((x - bias.unsqueeze(1)) / safe).clamp_(0, qmax)  # (R, D)
    return torch.where(positive, q, torch.zeros_like(q))


def _decode(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """codes (R, D) -> (R, D) float32 ``code * scale + bias``."""
    return codes.float() * scale.unsqueeze(1) + bias.unsqueeze(1)


def _range_error(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row L2 reconstruction error (R,) of quantizing x (R, D) with ranges [lo, hi]."""
    scale, bias = row_params(lo, hi, bits)
    x_hat = _decode(_encode(x, scale, bias, bits), scale, bias)
    return (x - x_hat).square().sum(dim=1)


def quantize_with_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Fused rows (R, W) of x (R, D) float32 with given per-row clipping ranges lo, hi (R,)."""
    scale, bias = row_params(lo, hi, bits)
    codes = _encode(x, scale, bias, bits)
    return fuse_rows(codes, scale, bias, bits)


def greedy_range(x: torch.Tensor, bits: int, num_bins: int = DEFAULT_NUM_BINS,
                 ratio: float = DEFAULT_RATIO) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy clipping search (module docstring), vectorised over rows.

    Args:
        x: (R, D) float32 rows.
        bits: 2, 4 or 8.
        num_bins: step count over the full range (step = (max - min) / num_bins).
        ratio: fraction of the range that may be clipped away in total (0 <= ratio <= 1).

    Returns:
        lo (R,), hi (R,) float32: the best clipping range found per row.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    lo0, hi0 = x.amin(dim=1), x.amax(dim=1)  # (R,)
    step = (hi0 - lo0) / num_bins
    best_lo, best_hi = lo0, hi0
    best_err = _range_error(x, lo0, hi0, bits)
    a = torch.zeros_like(lo0)  # left shrink count per row (small integers, exact in float32)
    c = torch.zeros_like(lo0)  # right shrink count per row
    for _ in range(int(round(num_bins * ratio))):
        lo_left, hi_right = lo0 + (a + 1) * step, hi0 - (c + 1) * step
        lo_cur, hi_cur = lo0 + a * step, hi0 - c * step
        err_left = _range_error(x, lo_left, hi_cur, bits)
        err_right = _range_error(x, lo_cur, hi_right, bits)
        go_left = err_left < err_right
        a = a + go_left.float()
        c = c + (~go_left).float()
        err = torch.where(go_left, err_left, err_right)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo0 + a * step, best_lo)
        best_hi = torch.where(better, hi0 - c * step, best_hi)
    return best_lo, best_hi


# ------------------------------------------------------------------------------------ CPU reference kernels
def _chunked(w: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Applies ``fn`` ((R', D) -> (R', W)) to row blocks of at most ``_CHUNK_ROWS`` rows and concatenates."""
    if w.shape[0] <= _CHUNK_ROWS:
        return fn(w)
    return torch.cat([fn(part) for part in torch.split(w, _CHUNK_ROWS, dim=0)], dim=0)


@torch.library.register_kernel("recpipe::quantize_rowwise", "cpu")
def _quantize_rowwise_cpu(w: torch.Tensor, bits: int) -> torch.Tensor:
    _check_weight(w)
    _check_bits(bits)
    return _chunked(w, lambda x: quantize_with_range(x, x.amin(dim=1), x.amax(dim=1), bits))


@torch.library.register_kernel("recpipe::quantize_rowwise_greedy", "cpu")
def _quantize_rowwise_greedy_cpu(w: torch.Tensor, bits: int, num_bins: int, ratio: float) -> torch.Tensor:
    _check_weight(w)
    _check_bits(bits)

    def one(x: torch.Tensor) -> torch.Tensor:
        lo, hi = greedy_range(x, bits, num_bins, ratio)
        return quantize_with_range(x, lo, hi, bits)

    return _chunked(w, one)


def _dequantize_ref(fused: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    codes, scale, bias = split_fused(fused, bits, dim)
    return _decode(codes, scale, bias)


@torch.library.register_kernel("recpipe::dequantize_rowwise", "cpu")
def _dequantize_rowwise_cpu(fused: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    return _dequantize_ref(fused, bits, dim)


def _check_bags(fused: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, mode: int,
                per_sample_weights: torch.Tensor | None) -> None:
    for name, t in (("indices", indices), ("offsets", offsets)):
        if t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be a 1-D int32/int64 tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if offsets.numel() < 1:
        raise ValueError("offsets must have B + 1 >= 1 entries")
    if mode not in (MODE_SUM, MODE_MEAN):
        raise ValueError(f"mode must be {MODE_SUM} (sum) or {MODE_MEAN} (mean), got {mode}")
    if per_sample_weights is not None:
        if mode != MODE_SUM:
            raise ValueError("per_sample_weights are only supported with mode 0 (sum)")
        if per_sample_weights.dtype != torch.float32 or per_sample_weights.shape != indices.shape:
            raise ValueError(
                f"per_sample_weights must be float32 of shape {tuple(indices.shape)}, got "
                f"{per_sample_weights.dtype} of shape {tuple(per_sample_weights.shape)}")


@torch.library.register_kernel("recpipe::quantized_embedding_bag", "cpu")
def _quantized_embedding_bag_cpu(fused: torch.Tensor, bits: int, dim: int, indices: torch.Tensor,
                                 offsets: torch.Tensor, mode: int,
                                 per_sample_weights: torch.Tensor | None) -> torch.Tensor:
    _check_fused(fused, bits, dim)
    _check_bags(fused, indices, offsets, mode, per_sample_weights)
    idx, off = indices.long(), offsets.long()
    num_bags = off.numel() - 1
    if int(off[0]) != 0 or int(off[-1]) != idx.numel():
        raise ValueError(f"offsets must start at 0 and end at len(indices)={idx.numel()}, got "
                         f"{int(off[0])}..{int(off[-1])}")
    lengths = off[1:] - off[:-1]  # (B,)
    if bool((lengths < 0).any()):
        raise ValueError(f"offsets must be non-decreasing; bag {int((lengths < 0).nonzero()[0])} is negative")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= fused.shape[0]):
        bad = int(((idx < 0) | (idx >= fused.shape[0])).nonzero()[0])
        raise IndexError(f"indices[{bad}] = {int(idx[bad])} is outside the table of {fused.shape[0]} rows")
    rows = _dequantize_ref(fused.index_select(0, idx), bits, dim)  # (T, D)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.unsqueeze(1)
    bag_of_row = torch.repeat_interleave(torch.arange(num_bags, device=idx.device), lengths)  # (T,)
    out = torch.zeros(num_bags, dim, dtype=torch.float32, device=fused.device)
    out.index_add_(0, bag_of_row, rows)  # (B, D)
    if mode == MODE_MEAN:
        out = out / lengths.clamp_min(1).unsqueeze(1).float()
    return out


# -------------------------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("recpipe::quantize_rowwise")
def _quantize_rowwise_fake(w: torch.Tensor, bits: int) -> torch.Tensor:
    _check_weight(w)
    return w.new_empty((w.shape[0], row_bytes(w.shape[1], bits)), dtype=torch.uint8)


@torch.library.register_fake("recpipe::quantize_rowwise_greedy")
def _quantize_rowwise_greedy_fake(w: torch.Tensor, bits: int, num_bins: int, ratio: float) -> torch.Tensor:
    _check_weight(w)
    return w.new_empty((w.shape[0], row_bytes(w.shape[1], bits)), dtype=torch.uint8)


@torch.library.register_fake("recpipe::dequantize_rowwise")
def _dequantize_rowwise_fake(fused: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    _check_fused(fused, bits, dim)
    return fused.new_empty((fused.shape[0], dim), dtype=torch.float32)


@torch.library.register_fake("recpipe::quantized_embedding_bag")
def _quantized_embedding_bag_fake(fused: torch.Tensor, bits: int, dim: int, indices: torch.Tensor,
                                  offsets: torch.Tensor, mode: int,
                                  per_sample_weights: torch.Tensor | None) -> torch.Tensor:
    _check_fused(fused, bits, dim)
    _check_bags(fused, indices, offsets, mode, per_sample_weights)
    return fused.new_empty((offsets.shape[0] - 1, dim), dtype=torch.float32)


# ------------------------------------------------------------------------------------------ public wrappers
# Called with CUDA tensors, every wrapper first builds/loads the CUDA kernels (once per process), so no explicit
# recpipe.ops.load_cuda_kernels() call is needed; a failed build raises with a pointer to the logged error.
def quantize_rowwise(w: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Min-max row-wise quantization into the fused layout.

    Args:
        w: (R, D) float32 table.
        bits: 8, 4 or 2.

    Returns:
        (R, row_bytes(D, bits)) uint8 fused rows (layout in the module docstring).
    """
    _ensure_kernels(w)
    return torch.ops.recpipe.quantize_rowwise.default(w, bits)


def quantize_rowwise_greedy(w: torch.Tensor, bits: int = 4, num_bins: int = DEFAULT_NUM_BINS,
                            ratio: float = DEFAULT_RATIO) -> torch.Tensor:
    """Row-wise quantization with the greedy clipping search; never a larger L2 error than min-max.

    Args:
        w: (R, D) float32 table.
        bits: 8, 4 or 2.
        num_bins: the search step is (max - min) / num_bins.
        ratio: at most this fraction of each row's range is clipped away.

    Returns:
        (R, row_bytes(D, bits)) uint8 fused rows.
    """
    _ensure_kernels(w)
    return torch.ops.recpipe.quantize_rowwise_greedy.default(w, bits, num_bins, float(ratio))


def dequantize_rowwise(fused: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Fused rows (R, row_bytes(D, bits)) uint8 -> (R, D) float32 ``code * scale + bias``."""
    _ensure_kernels(fused)
    return torch.ops.recpipe.dequantize_rowwise.default(fused, bits, dim)


def quantized_embedding_bag(fused: torch.Tensor, bits: int, dim: int, indices: torch.Tensor,
                            offsets: torch.Tensor, mode: int = MODE_SUM,
                            per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled lookup over fused quantized rows.

    Args:
        fused: (R, row_bytes(D, bits)) uint8 table.
        bits: 8, 4 or 2. dim: D.
        indices: (T,) int32/int64 row ids in [0, R).
        offsets: (B + 1,) bag boundaries, offsets[0] == 0 and offsets[B] == T.
        mode: 0 = sum, 1 = mean. Empty bags give zeros.
        per_sample_weights: optional (T,) float32 multipliers (sum mode only).

    Returns:
        (B, D) float32 pooled embeddings.
    """
    _ensure_kernels(fused)
    return torch.ops.recpipe.quantized_embedding_bag.default(fused, bits, dim, indices, offsets, mode,
                                                             per_sample_weights)
