"""TensorRows: jagged (multi-hot) rows, gathering, re-batching, capping, persistence."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from recpipe.data.batch import Batch
from recpipe.search.data import TensorRows, planted_rows

MIN_LINEAR_AUC = 0.65  # the planted linear part alone (dense + per-id effects) gives ~0.7 AUC


def _multi_hot_batch() -> Batch:
    """B=3 rows, F=2 features. Feature 0 bags: [1], [], [2, 3]; feature 1 bags: [7, 8], [9], [4]."""
    return Batch(dense=torch.tensor([[0.1], [0.2], [0.3]]),
                 indices=torch.tensor([1, 2, 3, 7, 8, 9, 4]),
                 offsets=torch.tensor([0, 1, 1, 3, 5, 6, 7]),
                 labels=torch.tensor([1.0, 0.0, 1.0]))


def _bags(rows: TensorRows) -> list[list[list[int]]]:
    """Naive per-row, per-feature bags, for comparisons."""
    out = []
    for r in range(rows.num_rows):
        row = []
        for f in range(rows.num_sparse):
            s, e = int(rows.row_starts[f, r]), int(rows.row_starts[f, r + 1])
            row.append(rows.values[f][s:e].tolist())
        out.append(row)
    return out


def test_from_batches_take_and_batch_round_trip():
    rows = TensorRows.from_batches([_multi_hot_batch(), _multi_hot_batch()], [10, 10])
    assert rows.num_rows == 6
    assert _bags(rows)[:3] == [[[1], [7, 8]], [[], [9]], [[2, 3], [4]]]
    picked = rows.take(torch.tensor([2, 0, 2]))
    assert _bags(picked) == [[[2, 3], [4]], [[1], [7, 8]], [[2, 3], [4]]]
    assert picked.dense[:, 0].tolist() == [0.30000001192092896, 0.10000000149011612, 0.30000001192092896]
    b = rows.batch(1, 3)  # rows 1..2 → feature-major offsets
    assert b.indices.tolist() == [2, 3, 9, 4]
    assert b.offsets.tolist() == [0, 0, 2, 3, 4]
    again = TensorRows.from_batches(rows.batches(4), [10, 10])
    assert _bags(again) == _bags(rows) and torch.equal(again.labels, rows.labels)
    capped = TensorRows.from_batches([_multi_hot_batch()], [10, 10], max_rows=2)
    assert capped.num_rows == 2 and _bags(capped) == [[[1], [7, 8]], [[], [9]]]


def test_shuffled_batches_cover_every_row_once():
    rows = planted_rows(50, seed=1)
    seen = torch.cat([b.dense for b in rows.batches(8, shuffle_seed=3)])
    assert seen.shape == rows.dense.shape
    assert torch.equal(torch.sort(seen[:, 0]).values, torch.sort(rows.dense[:, 0]).values)
    assert not torch.equal(seen, rows.dense)
    assert sum(b.batch_size for b in rows.batches(8, drop_last=True)) == 48


def test_capped_subsample_split_save_load(tmp_path):
    rows = planted_rows(200, table_sizes=(50, 8), seed=2)
    capped = rows.capped(10)
    assert capped.table_sizes == [10, 8]
    assert torch.equal(capped.values[0], rows.values[0] % 10) and torch.equal(capped.values[1], rows.values[1])
    sub = rows.subsample(30, seed=0)
    assert sub.num_rows == 30
    assert sub.subsample(30, seed=5) is sub  # asking for all rows is a no-op
    head, tail = rows.split(0.25)
    assert (head.num_rows, tail.num_rows) == (150, 50)
    assert torch.equal(tail.labels, rows.labels[150:])
    rows.save(tmp_path / "rows.pt")
    back = TensorRows.load(tmp_path / "rows.pt")
    assert _bags(back) == _bags(rows) and back.table_sizes == rows.table_sizes


def test_planted_rows_have_a_learnable_signal():
    """A logistic regression on one-hot ids + dense (sklearn, independent of recpipe) beats chance clearly."""
    rows = planted_rows(4000, seed=0)
    rate = float(rows.labels.mean())
    assert 0.2 < rate < 0.45
    assert all(int(v.max()) < s for v, s in zip(rows.values, rows.table_sizes))
    x = np.hstack([rows.dense.numpy()] + [np.eye(s)[v.numpy()] for v, s in zip(rows.values, rows.table_sizes)])
    y = rows.labels.numpy()
    clf = LogisticRegression(max_iter=500).fit(x[:3000], y[:3000])
    assert roc_auc_score(y[3000:], clf.predict_proba(x[3000:])[:, 1]) > MIN_LINEAR_AUC
