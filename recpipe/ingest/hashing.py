"""Stable, vectorised 64-bit hashing of Arrow string/binary arrays, and a mergeable distinct-count sketch.

The hash is FNV-1a (64-bit) over the value's bytes, started from a seeded basis and finished with the
splitmix64 mixer so that the low bits (used by ``% buckets``) are well spread. It depends only on the bytes
and the seed — never on Python's per-process ``hash()`` salt — so ids are identical across processes,
machines, Python versions and days. Work is done column-wise with numpy: one pass per byte *position*, so a
batch of B values of length <= L costs O(B * L) vectorised operations and no per-row Python code.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1

DEFAULT_SKETCH_K = 1024
"""Minimum values kept by :class:`KmvSketch`: relative error of the distinct estimate ~ 1/sqrt(K) ~ 3%."""


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser applied element-wise (in place on a uint64 array, also returned)."""
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def seed_for(name: str, seed: int) -> int:
    """Per-feature seed: the global ``seed`` mixed with the FNV-1a hash of the feature ``name``.

    Two features with the same raw value (e.g. ``"0"``) therefore land in unrelated buckets.
    """
    h = int(FNV_OFFSET)
    for b in name.encode("utf-8"):
        h = ((h ^ b) * int(FNV_PRIME)) & _MASK64
    return (h ^ (seed * 0x9E3779B97F4A7C15)) & _MASK64


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (B + 1,) int64 absolute into data, data uint8) of a string/binary array (any slice)."""
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        off_dtype = np.int64
    elif pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
        off_dtype = np.int32
    else:
        raise TypeError(f"hash_strings: expected a string or binary array, got {arr.type}")
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_dtype)[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def hash_strings(arr: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """Seeded FNV-1a + splitmix64 hash of every value's bytes.

    Args:
        arr: (B,) string or binary values; nulls hash like the empty string (callers mask them).
        seed: 64-bit seed (see :func:`seed_for`).

    Returns:
        (B,) uint64 hashes.
    """
    if isinstance(arr, pa.ChunkedArray):
        parts = [hash_strings(c, seed) for c in arr.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    n = len(arr)
    h = np.full(n, np.uint64(int(FNV_OFFSET) ^ (seed & _MASK64)), dtype=np.uint64)
    if n == 0:
        return h
    offsets, data = _string_buffers(arr)
    lengths = np.diff(offsets)
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo == hi:  # fast path (e.g. Criteo's 8-hex tokens): a dense (B, L) byte matrix
        mat = data[offsets[0]: offsets[0] + n * hi].reshape(n, hi)  # (B, L)
        for j in range(hi):
            h ^= mat[:, j].astype(np.uint64)
            h *= FNV_PRIME
    else:  # ragged: visit values longest-first so that step j touches only the values longer than j
        order = np.argsort(-lengths, kind="stable")
        starts = offsets[:-1][order]
        active = np.searchsorted(-lengths[order], -np.arange(hi), side="left")  # (L,) count with len > j
        hs = h[order]
        for j in range(hi):
            k = int(active[j])
            hs[:k] ^= data[starts[:k] + j].astype(np.uint64)
            hs[:k] *= FNV_PRIME
        h = np.empty_like(hs)
        h[order] = hs
    return _splitmix64(h)


def bucketize(hashes: np.ndarray, num_buckets: int, reserved: int) -> np.ndarray:
    """Maps (B,) uint64 hashes onto ids ``reserved .. num_buckets - 1`` as (B,) int64."""
    span = num_buckets - reserved
    if span < 1:
        raise ValueError(f"bucketize: num_buckets {num_buckets} leaves no room after {reserved} reserved ids")
    return (hashes % np.uint64(span)).astype(np.int64) + reserved


class KmvSketch:
    """K-minimum-values distinct-count sketch over 64-bit hashes (mergeable, vectorised).

    Keeps the K smallest distinct hashes seen; with fewer than K the count is exact, otherwise the estimate is
    ``(K - 1) / (h_K / 2**64)``.
    """

    def __init__(self, k: int = DEFAULT_SKETCH_K, values: np.ndarray | None = None) -> None:
        self.k = k
        self.values = np.zeros(0, np.uint64) if values is None else values

    def update(self, hashes: np.ndarray) -> "KmvSketch":
        """Adds (B,) uint64 hashes; returns self."""
        merged = np.unique(np.concatenate([self.values, hashes.astype(np.uint64, copy=False)]))
        self.values = merged[: self.k]
        return self

    def merge(self, other: "KmvSketch") -> "KmvSketch":
        return self.update(other.values)

    def estimate(self) -> float:
        if len(self.values) < self.k:
            return float(len(self.values))
        return float((self.k - 1) / (float(self.values[self.k - 1]) / 2.0**64))
