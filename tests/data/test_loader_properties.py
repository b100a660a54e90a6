"""Property test: any sharding, batch size, shuffle window and checkpoint step reads every row exactly once."""
from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recpipe.data.loader as loader_mod
from recpipe.data.loader import LoaderConfig, ParquetLoader

from .test_loader import rids


def _read_rank(root, cfg, rank, world, workers, monkeypatch, state=None, stop_after=None):
    """Batches of one rank as a DataLoader with ``workers`` workers would deliver them (round-robin)."""
    per_worker = []
    for w in range(workers):
        info = types.SimpleNamespace(id=w, num_workers=workers)
        monkeypatch.setattr(loader_mod, "get_worker_info", lambda info=info: info)
        ld = ParquetLoader(root, cfg, rank=rank, world_size=world)
        if state is not None:
            ld.load_state_dict(state)
        per_worker.append(list(ld))
    n = sum(map(len, per_worker))
    merged = [per_worker[j % workers][j // workers] for j in range(n)]
    if stop_after is None:
        return merged, None
    monkeypatch.setattr(loader_mod, "get_worker_info", lambda: None)
    ld = ParquetLoader(root, cfg, rank=rank, world_size=world)
    if state is not None:
        ld.load_state_dict(state)
    return merged[:stop_after], ld.state_dict(batches_consumed=min(stop_after, n))


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 12), world=st.integers(1, 3), workers=st.integers(1, 3),
       window=st.sampled_from([0, 0, 1, 3]), stop=st.integers(0, 8), new_world=st.integers(1, 3),
       new_batch=st.integers(1, 12))
def test_checkpoint_and_resume_read_every_row_once(shared_dataset, batch, world, workers, window, stop, new_world,
                                                    new_batch):
    root, schema, total = shared_dataset
    cfg = LoaderConfig(batch_size=batch, shuffle_window=window, seed=3)
    num_global = -(-total // batch)
    stop = min(stop, num_global // world)  # lock-step: every rank has at least num_global // world batches
    with pytest.MonkeyPatch.context() as mp:
        heads, states = [], []
        for rank in range(world):
            head, state = _read_rank(root, cfg, rank, world, workers, mp, stop_after=stop)
            heads.append(rids(head))
            states.append(state)
        cut = stop * world
        if window and cut % (window * world) and cut < num_global:
            new_world, new_batch = world, batch  # a cursor inside a shuffle window needs the same grid
        new_cfg = cfg.replace(batch_size=new_batch)
        # every rank stopped after ``stop`` steps, so any rank's cursor describes the same cut
        assert len({s["stream_rows_consumed"] for s in states}) == 1
        tails = [rids(_read_rank(root, new_cfg, r, new_world, workers, mp, state=states[r % world])[0])
                 for r in range(new_world)]
    rows = np.concatenate(heads + tails)
    np.testing.assert_array_equal(np.sort(rows), np.arange(total))
