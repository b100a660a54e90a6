"""Tiny synthetic processed datasets and models for the evaluate / promote tests (no shared sample data needed)."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import torch

from recpipe.data.batch import Batch
from recpipe.data.parquet_io import write_processed_day
from recpipe.models import dlrm, save_model
from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature

DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")
CARD = 6  # ids of sparse feature "c0"; id 0 is rare, so min_slice_count drops it


def schema(c0_rows: int = CARD) -> Schema:
    """The data's schema; ``c0_rows < CARD`` describes an older, smaller vocabulary of ``c0``."""
    return Schema(name="tiny", label=LabelSpec("label"),
                  dense=(DenseFeature("x0", transform="none"), DenseFeature("x1", transform="none")),
                  sparse=(SparseFeature("c0", num_embeddings=c0_rows), SparseFeature("c1", num_embeddings=4)))


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x0, x1 = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    c0 = rng.choice(CARD, size=n, p=[0.02, 0.28, 0.2, 0.2, 0.15, 0.15])
    c1 = rng.integers(0, 4, size=n)
    effect = np.array([0.0, 1.0, -1.0, 0.5, -0.5, 0.0])
    logit = 1.5 * x0 + effect[c0] - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return {"label": y, "x0": x0, "x1": x1, "c0": c0.astype(np.int64), "c1": c1.astype(np.int64)}


def write_dataset(root: str, days=DAYS, rows: int = 1000, seed: int = 0) -> str:
    for i, day in enumerate(days):
        write_processed_day(pa.table(_rows(rows, seed + i)), root, day, schema=schema())
    return root


def _batch(rows: dict[str, np.ndarray]) -> Batch:
    n = len(rows["label"])
    ids = np.concatenate([rows["c0"], rows["c1"]])  # feature-major
    return Batch(dense=torch.from_numpy(np.stack([rows["x0"], rows["x1"]], 1)), indices=torch.from_numpy(ids),
                 offsets=torch.arange(2 * n + 1, dtype=torch.int64), labels=torch.from_numpy(rows["label"]))


def make_model_dir(path: str, *, train_steps: int = 0, seed: int = 0, c0_rows: int = CARD) -> str:
    """A tiny DLRM saved to ``path``: random (``train_steps=0``) or fitted for a few full-batch Adagrad steps;
    ``c0_rows < CARD``: trained on yesterday's smaller vocabulary (``c0`` ids >= c0_rows seen as missing, 0)."""
    torch.manual_seed(seed)
    model = dlrm(schema(c0_rows), embedding_dim=4, bottom=(8, 4), top=(8,))
    if train_steps:
        rows = _rows(2000, seed=100 + seed)
        rows["c0"] = np.where(rows["c0"] < c0_rows, rows["c0"], 0)
        batch = _batch(rows)
        opt = torch.optim.Adagrad(model.parameters(), lr=0.1)  # embeddings give sparse grads
        for _ in range(train_steps):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
            loss.backward()
            opt.step()
    os.makedirs(path, exist_ok=True)
    return save_model(model, path, schema=schema(c0_rows))
