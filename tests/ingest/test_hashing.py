"""Stable hashing and the distinct-count sketch against naive references."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from recpipe.ingest.hashing import KmvSketch, bucketize, hash_strings, seed_for

M64 = (1 << 64) - 1
SKETCH_REL_TOL = 0.1
"""KMV with K=1024 has ~3% relative standard error; 10% is > 3 sigma for a fixed seed."""


def naive_hash(value: bytes, seed: int) -> int:
    """Byte-at-a-time FNV-1a 64 from a seeded basis, then splitmix64's finaliser (the documented spec)."""
    h = 0xCBF29CE484222325 ^ seed
    for b in value:
        h = ((h ^ b) * 0x100000001B3) & M64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & M64
    return h ^ (h >> 31)


@pytest.mark.parametrize("values", [
    ["00a1b2c3", "ffffffff", "12345678"],            # equal lengths: the matrix fast path
    ["", "a", "hello world", "é", "a" * 300, "ab"],   # ragged: the longest-first path
    [],
])
def test_hash_matches_naive(values):
    seed = seed_for("C7", 42)
    got = hash_strings(pa.array(values, pa.string()), seed)
    want = [naive_hash(v.encode(), seed) for v in values]
    assert got.tolist() == want


def test_hash_of_slice_and_chunked_and_binary():
    seed = 7
    arr = pa.array(["x", "yy", "zzz", "wwww"])
    assert hash_strings(arr.slice(1, 2), seed).tolist() == [naive_hash(b"yy", seed), naive_hash(b"zzz", seed)]
    chunked = pa.chunked_array([["x"], ["yy", "zzz"]])
    assert hash_strings(chunked, seed).tolist() == [naive_hash(v, seed) for v in (b"x", b"yy", b"zzz")]
    assert hash_strings(pa.array([b"\x00\xff"], pa.binary()), seed).tolist() == [naive_hash(b"\x00\xff", seed)]


def test_hash_is_stable_across_processes():
    """A fresh interpreter (different PYTHONHASHSEED) gives the same ids: no dependence on Python's hash()."""
    code = ("import pyarrow as pa; from recpipe.ingest.hashing import hash_strings, seed_for;"
            "print(hash_strings(pa.array(['abc', 'de']), seed_for('C1', 3)).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout.strip()
    assert out == str(hash_strings(pa.array(["abc", "de"]), seed_for("C1", 3)).tolist())


def test_seed_for_separates_features():
    assert seed_for("C1", 0) != seed_for("C2", 0)
    assert seed_for("C1", 0) != seed_for("C1", 1)


def test_bucketize_range_and_reserved():
    h = hash_strings(pa.array([f"v{i}" for i in range(5000)]), 1)
    ids = bucketize(h, 10, reserved=1)
    assert ids.dtype == np.int64 and ids.min() == 1 and ids.max() == 9
    assert np.array_equal(ids, (h % np.uint64(9)).astype(np.int64) + 1)
    with pytest.raises(ValueError, match="no room"):
        bucketize(h, 1, reserved=1)


def test_kmv_exact_below_k_and_close_above():
    s = KmvSketch(k=1024).update(hash_strings(pa.array([f"v{i % 300}" for i in range(3000)]), 0))
    assert s.estimate() == 300.0
    a = KmvSketch(k=1024).update(hash_strings(pa.array([f"u{i}" for i in range(20000)]), 0))
    b = KmvSketch(k=1024).update(hash_strings(pa.array([f"u{i}" for i in range(10000, 40000)]), 0))
    est = a.merge(b).estimate()  # 40000 distinct in the union
    assert abs(est - 40000) / 40000 < SKETCH_REL_TOL
