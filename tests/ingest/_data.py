"""Tiny synthetic Criteo-format inputs for the ingest tests (deterministic, written into tmp_path)."""
from __future__ import annotations

import os

import numpy as np

N_DENSE, N_SPARSE = 13, 26


def criteo_lines(n: int, seed: int, *, vocab: int = 20) -> list[str]:
    """``n`` valid Criteo rows: label, 13 small ints (some missing / negative), 26 tokens from ``vocab`` values."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        label = str(int(rng.random() < 0.3))
        dense = ["" if rng.random() < 0.1 else str(int(rng.integers(-2, 50))) for _ in range(N_DENSE)]
        sparse = ["" if rng.random() < 0.1 else f"{int(rng.integers(0, vocab)):08x}" for _ in range(N_SPARSE)]
        lines.append("\t".join([label, *dense, *sparse]))
    return lines


def write_lines(path: str | os.PathLike[str], lines: list[str]) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
