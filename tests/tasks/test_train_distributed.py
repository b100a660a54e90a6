"""The train step under torchrun-style data parallelism: 2 CPU processes (gloo), incremental mode."""
from __future__ import annotations

import os

import pytest
import torch

from recpipe.models import load_model
from tests.tasks.test_train_task import SMALL
from tests.train.gloo import spawn
from tests.train.test_incremental import DAYS, ROWS, write_days

WORLD = 2


def _worker(rank: int, root: str, out: str) -> None:
    from recpipe.tasks import train as train_task

    cfg = train_task.TrainTaskConfig.from_dict({**SMALL, "distributed": True})
    result = train_task.run(cfg, dataset_root=root, model_dir=os.path.join(out, "model"))
    model = result.outputs["model_dir"]
    torch.save({"rows": result.metrics["train/rows"], "preq_ne": result.metrics["preq/ne"],
                "state": load_model(model).state_dict() if rank == 0 else None}, os.path.join(out, f"r{rank}.pt"))


@pytest.mark.slow
def test_two_rank_train_step_writes_one_model_and_counts_every_rank(tmp_path):
    root = str(tmp_path / "data")
    write_days(root)
    spawn(_worker, WORLD, root, str(tmp_path))
    r0, r1 = torch.load(tmp_path / "r0.pt"), torch.load(tmp_path / "r1.pt")
    total = len(DAYS) * ROWS
    batch = SMALL["trainer"]["batch_size"]
    # all ranks report the same global row count; at most world-1 tail batches per day are skipped
    assert r0["rows"] == r1["rows"]
    assert total - len(DAYS) * (WORLD - 1) * batch <= r0["rows"] <= total
    # prequential metrics are merged across ranks: identical everywhere
    assert r0["preq_ne"] == pytest.approx(r1["preq_ne"], rel=0, abs=0)
    assert sorted(os.listdir(tmp_path / "model")).count("model.pt") == 1
    assert r0["state"] is not None
