"""Tiny processed datasets written inside tmp_path for the loader tests."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recpipe.data.parquet_io import write_processed_day
from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature

DAYS = ("2026-03-01", "2026-03-02", "2026-03-03")
ROWS = (23, 0, 31)  # the middle day is one empty file: empty files must be skipped
ROWS_PER_FILE = (10, 1, 8)
ROW_GROUP = 4
CARD = (7, 50, 9)


def small_schema() -> Schema:
    """Two dense features (the first holds the stream row number), two single-hot and one multi-hot feature."""
    return Schema(
        name="tiny",
        label=LabelSpec("y"),
        dense=(DenseFeature("rid", transform="none"), DenseFeature("x")),
        sparse=(SparseFeature("a", num_embeddings=CARD[0]), SparseFeature("b", num_embeddings=CARD[1]),
                SparseFeature("tags", num_embeddings=CARD[2], multi_hot=True)),
    )


def make_table(schema: Schema, first_row: int, n: int, seed: int) -> pa.Table:
    """Rows whose ``rid`` is their stream position and whose ids are derived from it (checkable)."""
    rng = np.random.default_rng(seed)
    rid = np.arange(first_row, first_row + n)
    lengths = rng.integers(0, 4, n)
    tags = [[int((r * 3 + k) % CARD[2]) for k in range(L)] for r, L in zip(rid, lengths, strict=True)]
    return pa.table({
        "y": pa.array((rid % 3 == 0).astype(np.float32)),
        "rid": pa.array(rid.astype(np.float32)),
        "x": pa.array(rng.standard_normal(n).astype(np.float32)),
        "a": pa.array((rid % CARD[0]).astype(np.int64)),
        "b": pa.array((rid * 7 % CARD[1]).astype(np.int64)),
        "tags": pa.array(tags, pa.list_(pa.int64())),
    })


def write_dataset(root, days=DAYS, rows=ROWS, first_row: int = 0) -> int:
    schema = small_schema()
    start = first_row
    for i, (day, n) in enumerate(zip(days, rows, strict=True)):
        write_processed_day(make_table(schema, start, n, seed=i), root, day, schema=schema,
                            rows_per_file=ROWS_PER_FILE[i % len(ROWS_PER_FILE)], row_group_size=ROW_GROUP)
        start += n
    return start - first_row


@pytest.fixture
def dataset(tmp_path):
    """(root, schema, total rows) of a 3-day dataset with several files and row groups per day."""
    root = tmp_path / "processed"
    total = write_dataset(root)
    return str(root), small_schema(), total


@pytest.fixture(scope="module")
def shared_dataset(tmp_path_factory):
    """The same dataset as :func:`dataset`, written once per module (for property tests)."""
    root = tmp_path_factory.mktemp("shared") / "processed"
    total = write_dataset(root)
    return str(root), small_schema(), total
