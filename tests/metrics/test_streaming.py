"""Streaming == batch, merge == concatenation, state_dict round trips, distributed sync."""
from __future__ import annotations

import math
import os

import pytest
import torch

from recpipe.metrics import (AUC, Calibration, Count, LabelRate, LogLoss, MeanPrediction, MetricCollection,
                             NormalizedEntropy, StreamingMetric, functional as F, summary)

TOL = 1e-12  # float64 sums of a few thousand rows, accumulated in different orders


def _rows(n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.25).double()
    p = torch.sigmoid(torch.randn(n, generator=g, dtype=torch.float64) + y - 1.0)
    p = torch.round(p * 50) / 50  # ties
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    return p, y, w


SINGLE = [(AUC, F.auc), (LogLoss, F.log_loss), (NormalizedEntropy, F.normalized_entropy),
          (Calibration, F.calibration),
          (MeanPrediction, lambda p, y, w: float((w * p).sum() / w.sum())),
          (LabelRate, lambda p, y, w: float((w * y).sum() / w.sum())),
          (Count, lambda p, y, w: float(p.numel()))]


@pytest.mark.parametrize("cls,reference", SINGLE, ids=[c.__name__ for c, _ in SINGLE])
def test_streaming_equals_batch_and_merge_equals_concat(cls, reference):
    p, y, w = _rows()
    m = cls()
    for chunk in torch.split(torch.arange(len(p)), 257):
        m.update(p[chunk], y[chunk], w[chunk])
    expected = reference(p, y, w)
    assert m.compute() == pytest.approx(expected, abs=TOL)
    a, b = cls(), cls()
    a.update(p[:1000], y[:1000], w[:1000])
    b.update(p[1000:], y[1000:], w[1000:])
    assert a.merge(b).compute() == pytest.approx(expected, abs=TOL)
    c = cls()
    c.load_state_dict(m.state_dict())
    assert c.compute() == pytest.approx(expected, abs=TOL)
    m.reset()
    assert m.compute() == 0.0 if cls is Count else math.isnan(m.compute())


def test_merge_rejects_other_metric_type():
    with pytest.raises(TypeError, match="cannot merge AUC into LogLoss"):
        LogLoss().merge(AUC())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        StreamingMetric()  # type: ignore[abstract]


def test_collection_keys_values_and_merge():
    p, y, w = _rows()
    coll = MetricCollection(prefix="val/")
    for chunk in torch.split(torch.arange(len(p)), 700):
        coll.update(p[chunk], y[chunk], w[chunk])
    got = coll.compute()
    ref = summary(p, y, w)
    assert set(got) == {f"val/{k}" for k in ref}
    for k, v in ref.items():
        assert got[f"val/{k}"] == pytest.approx(v, abs=TOL)
    left, right = MetricCollection(), MetricCollection()
    left.update(p[:10], y[:10], w[:10])
    right.update(p[10:], y[10:], w[10:])
    merged = left.merge(right).compute()
    assert merged["eval/auc"] == pytest.approx(ref["auc"], abs=TOL)
    assert merged["eval/ne"] == pytest.approx(ref["ne"], abs=TOL)
    light = MetricCollection(metrics=("logloss", "count"))
    light.update(p, y)
    assert light.auc is None and set(light.compute()) == {"eval/logloss", "eval/count"}
    with pytest.raises(ValueError, match="unknown metrics"):
        MetricCollection(metrics=("auc", "acc"))


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from recpipe.metrics import MetricCollection, sync_distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    p, y, w = _rows()
    half = len(p) // 2
    sl = slice(0, half) if rank == 0 else slice(half, None)
    coll = MetricCollection()
    coll.update(p[sl][: 100 + rank * 500], y[sl][: 100 + rank * 500], w[sl][: 100 + rank * 500])  # unequal
    sync_distributed(coll)
    torch.save(coll.compute(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_sync_distributed_two_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    p, y, w = _rows()
    half = len(p) // 2
    idx = torch.cat([torch.arange(0, 100), torch.arange(half, half + 600)])
    ref = summary(p[idx], y[idx], w[idx])
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["eval/auc"] == pytest.approx(ref["auc"], abs=TOL)
        assert got["eval/count"] == 700
