"""Streaming Parquet loader: order, TBE layout, sharding, cursor resume, shuffling, validation."""
from __future__ import annotations

import types

import numpy as np
import pyarrow as pa
import pytest
import torch

import recpipe.data.loader as loader_mod
from recpipe.data.loader import LoaderConfig, ParquetLoader
from recpipe.data.parquet_io import list_days, write_processed_day
from recpipe.schema import DenseFeature, LabelSpec, Schema, SchemaError, SparseFeature

from .conftest import CARD, DAYS, make_table, small_schema, write_dataset


def rids(batches) -> np.ndarray:
    """Stream row numbers (dense column 0) of a list of batches, concatenated."""
    if not batches:
        return np.zeros(0, dtype=np.int64)
    return torch.cat([b.dense[:, 0] for b in batches]).long().numpy()


def read_all(loader) -> list:
    return list(iter(loader))


def with_workers(monkeypatch, worker: int, num_workers: int) -> None:
    """Makes the loader believe it runs inside DataLoader worker ``worker`` of ``num_workers``."""
    info = types.SimpleNamespace(id=worker, num_workers=num_workers)
    monkeypatch.setattr(loader_mod, "get_worker_info", lambda: info)


# ---------------------------------------------------------------------- order and layout
def test_full_read_is_time_ordered_with_fixed_batch_size(dataset):
    root, schema, total = dataset
    batches = read_all(ParquetLoader(root, LoaderConfig(batch_size=5)))
    np.testing.assert_array_equal(rids(batches), np.arange(total))
    assert [b.batch_size for b in batches] == [5] * (total // 5) + [total % 5]
    day = torch.cat([b.day for b in batches]).numpy()
    # day 0 holds rows 0..22, day 1 is empty, day 2 holds rows 23..53
    np.testing.assert_array_equal(day, np.where(np.arange(total) < 23, 0, 2))
    assert list_days(root) == list(DAYS)


def test_drop_last_and_day_range(dataset):
    root, schema, total = dataset
    batches = read_all(ParquetLoader(root, LoaderConfig(batch_size=5, drop_last=True)))
    np.testing.assert_array_equal(rids(batches), np.arange(total // 5 * 5))
    last_day = read_all(ParquetLoader(root, LoaderConfig(batch_size=8, start_day="2026-03-02")))
    np.testing.assert_array_equal(rids(last_day), np.arange(23, total))
    assert torch.cat([b.day for b in last_day]).unique().tolist() == [1]  # index into the days read
    first = read_all(ParquetLoader(root, LoaderConfig(batch_size=8), days=["2026-03-01"]))
    np.testing.assert_array_equal(rids(first), np.arange(23))


def test_batch_values_and_tbe_offsets_match_rows(dataset):
    root, schema, total = dataset
    b = next(iter(ParquetLoader(root, LoaderConfig(batch_size=6))))
    rid = b.dense[:, 0].long().numpy()
    np.testing.assert_array_equal(b.labels.numpy(), (rid % 3 == 0).astype(np.float32))
    ia, oa = b.feature_bags(0)
    np.testing.assert_array_equal(ia.numpy(), rid % CARD[0])
    np.testing.assert_array_equal(oa.numpy(), np.arange(7))
    ib, _ = b.feature_bags(1)
    np.testing.assert_array_equal(ib.numpy(), rid * 7 % CARD[1])
    it, ot = b.feature_bags(2)
    for row in range(6):  # each multi-hot bag is (3 r + k) % 9 for k < its length
        bag = it[ot[row]: ot[row + 1]].numpy()
        np.testing.assert_array_equal(bag, (rid[row] * 3 + np.arange(len(bag))) % CARD[2])
    assert b.num_sparse == 3 and b.offsets.shape == (3 * 6 + 1,)
    assert b.dense.dtype == torch.float32 and b.indices.dtype == torch.int64 and b.day.dtype == torch.int32


def test_multi_hot_offsets_hand_built(tmp_path):
    schema = Schema(name="mh", label=LabelSpec("y"), dense=(DenseFeature("d"),),
                    sparse=(SparseFeature("u", num_embeddings=10),
                            SparseFeature("t", num_embeddings=10, multi_hot=True)))
    table = pa.table({"y": pa.array([1, 0, 1], pa.float32()), "d": pa.array([0.5, 1.5, 2.5], pa.float32()),
                      "u": pa.array([4, 5, 6], pa.int64()),
                      "t": pa.array([[1, 2], [], [3, 4, 5]], pa.list_(pa.int64()))})
    write_processed_day(table, tmp_path, "2026-01-01", schema=schema)
    (b,) = read_all(ParquetLoader(tmp_path, LoaderConfig(batch_size=3)))
    # feature-major: u's three single-id bags, then t's bags [1,2], [], [3,4,5]
    assert b.indices.tolist() == [4, 5, 6, 1, 2, 3, 4, 5]
    assert b.offsets.tolist() == [0, 1, 2, 3, 5, 5, 8]
    assert b.dense.tolist() == [[0.5], [1.5], [2.5]] and b.labels.tolist() == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------------- sharding
@pytest.mark.parametrize("world_size,num_workers,batch", [(1, 1, 4), (2, 1, 5), (3, 2, 4), (2, 3, 7)])
def test_every_row_exactly_once_across_ranks_and_workers(dataset, monkeypatch, world_size, num_workers, batch):
    root, schema, total = dataset
    seen = []
    for rank in range(world_size):
        per_worker = []
        for w in range(num_workers):
            with_workers(monkeypatch, w, num_workers)
            per_worker.append(read_all(ParquetLoader(root, LoaderConfig(batch_size=batch), rank=rank,
                                                     world_size=world_size)))
        # DataLoader order: round-robin over workers == the rank's global batches rank, rank + R, ...
        merged = [per_worker[j % num_workers][j // num_workers] for j in range(sum(map(len, per_worker)))]
        firsts = [int(b.dense[0, 0]) for b in merged]
        assert firsts == [g * batch for g in range(rank, -(-total // batch), world_size)]
        seen.append(rids(merged))
    all_rows = np.concatenate(seen)
    assert len(all_rows) == total
    np.testing.assert_array_equal(np.sort(all_rows), np.arange(total))


def test_torch_dataloader_workers_preserve_order(dataset):
    root, schema, total = dataset
    loader = ParquetLoader(root, LoaderConfig(batch_size=4))
    dl = torch.utils.data.DataLoader(loader, batch_size=None, num_workers=2)
    np.testing.assert_array_equal(rids(list(dl)), np.arange(total))


# ---------------------------------------------------------------------- cursor
def test_resume_from_cursor_reads_the_rest_exactly_once(dataset):
    root, schema, total = dataset
    cfg = LoaderConfig(batch_size=6)
    first = ParquetLoader(root, cfg)
    it = iter(first)
    head = [next(it) for _ in range(4)]
    state = first.state_dict()
    assert state["rows_consumed"] == 24 and state["batches_consumed"] == 4
    # row 24 is the 2nd row of day 3's first file (day 1 has 23 rows, day 2 none)
    assert (state["day"], state["file"], state["row_offset"]) == ("2026-03-03", "day=2026-03-03/part-00000.parquet", 1)
    second = ParquetLoader(root, cfg)
    second.load_state_dict(state)
    tail = read_all(second)
    np.testing.assert_array_equal(np.concatenate([rids(head), rids(tail)]), np.arange(total))
    end = second.state_dict()
    assert end["rows_consumed"] == total and end["stream_rows_consumed"] == total
    third = ParquetLoader(root, cfg)
    third.load_state_dict(end)
    assert read_all(third) == []


@pytest.mark.parametrize("new_world,new_batch", [(2, 5), (3, 5), (1, 4), (3, 9)])
def test_lockstep_ranks_resume_under_new_sharding(dataset, new_world, new_batch):
    root, schema, total = dataset
    old_world, steps = 2, 2
    heads, states = [], []
    for rank in range(old_world):
        ld = ParquetLoader(root, LoaderConfig(batch_size=5), rank=rank, world_size=old_world)
        it = iter(ld)
        heads.append(rids([next(it) for _ in range(steps)]))
        states.append(ld.state_dict())
    assert states[0]["stream_rows_consumed"] == states[1]["stream_rows_consumed"] == 20
    tails = []
    for rank in range(new_world):
        ld = ParquetLoader(root, LoaderConfig(batch_size=new_batch), rank=rank, world_size=new_world)
        ld.load_state_dict(states[rank % old_world])  # any rank's cursor describes the same cut
        tails.append(rids(read_all(ld)))
    rows = np.concatenate(heads + tails)
    assert len(rows) == total
    np.testing.assert_array_equal(np.sort(rows), np.arange(total))


def test_cursor_with_dataloader_workers_counts_batches(dataset):
    root, schema, total = dataset
    loader = ParquetLoader(root, LoaderConfig(batch_size=4))
    dl = torch.utils.data.DataLoader(loader, batch_size=None, num_workers=2)
    it = iter(dl)
    head = [next(it) for _ in range(5)]
    del it
    state = loader.state_dict(batches_consumed=5)
    resumed = ParquetLoader(root, LoaderConfig(batch_size=4))
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate([rids(head), rids(read_all(resumed))]), np.arange(total))
    with pytest.raises(ValueError, match="batches_consumed"):
        loader.state_dict(batches_consumed=loader.num_batches() + 1)


def test_resume_picks_up_days_appended_after_the_checkpoint(tmp_path):
    root = tmp_path / "grow"
    n1 = write_dataset(root, days=DAYS[:1], rows=(23,))
    ld = ParquetLoader(root, LoaderConfig(batch_size=5, drop_last=True))
    head = read_all(ld)
    state = ld.state_dict()
    assert state["stream_rows_consumed"] == 20  # 3 tail rows wait for a full batch
    n2 = write_dataset(root, days=("2026-03-04",), rows=(12,), first_row=n1)
    resumed = ParquetLoader(root, LoaderConfig(batch_size=5, drop_last=True))
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate([rids(head), rids(read_all(resumed))]), np.arange(35))
    assert n2 == 12


def test_cursor_for_a_missing_file_is_rejected(dataset, tmp_path):
    root, schema, total = dataset
    ld = ParquetLoader(root, LoaderConfig(batch_size=5))
    state = ld.state_dict(batches_consumed=1)
    other = ParquetLoader(root, LoaderConfig(batch_size=5, start_day="2026-03-02"))
    with pytest.raises(ValueError, match="day=2026-03-01/part-00000.parquet"):
        other.load_state_dict(state)


# ---------------------------------------------------------------------- shuffling
def test_shuffle_is_seeded_bounded_and_exactly_once(dataset):
    root, schema, total = dataset
    cfg = LoaderConfig(batch_size=4, shuffle_window=3, seed=7)
    a = rids(read_all(ParquetLoader(root, cfg)))
    b = rids(read_all(ParquetLoader(root, cfg)))
    c = rids(read_all(ParquetLoader(root, cfg.replace(seed=8))))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, np.arange(total))
    np.testing.assert_array_equal(np.sort(a), np.arange(total))
    window = 3 * 4
    np.testing.assert_array_equal(a // window, np.arange(total) // window)  # rows never leave their window


def test_shuffled_resume_mid_window(dataset):
    root, schema, total = dataset
    cfg = LoaderConfig(batch_size=4, shuffle_window=3, seed=1)
    full = rids(read_all(ParquetLoader(root, cfg, rank=1, world_size=2)))
    ld = ParquetLoader(root, cfg, rank=1, world_size=2)
    it = iter(ld)
    head = rids([next(it) for _ in range(2)])  # step 2 of a 3-step window
    state = ld.state_dict()
    resumed = ParquetLoader(root, cfg, rank=1, world_size=2)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate([head, rids(read_all(resumed))]), full)
    regrid = ParquetLoader(root, cfg, rank=0, world_size=3)
    with pytest.raises(ValueError, match="inside a shuffle window"):
        regrid.load_state_dict(state)


# ---------------------------------------------------------------------- validation
def test_out_of_range_ids_name_the_file_and_feature(tmp_path):
    schema = small_schema()
    table = make_table(schema, 0, 6, seed=0)
    table = table.set_column(table.column_names.index("b"), "b", pa.array([0, 1, 2, 3, 4, 99], pa.int64()))
    write_processed_day(table, tmp_path, "2026-01-01", schema=schema)
    with pytest.raises(SchemaError, match=r"part-00000.parquet.*'b'.*\[0, 50\)"):
        read_all(ParquetLoader(tmp_path, LoaderConfig(batch_size=4)))


def test_wrong_column_type_is_rejected_at_open(tmp_path):
    schema = small_schema()
    table = make_table(schema, 0, 6, seed=0)
    table = table.set_column(table.column_names.index("a"), "a", table.column("a").cast(pa.int32()))
    write_processed_day(table, tmp_path, "2026-01-01")
    with pytest.raises(SchemaError, match="column 'a' has type int32"):
        ParquetLoader(tmp_path, LoaderConfig(batch_size=4), schema=schema)


def test_schema_is_read_from_parquet_metadata(dataset):
    root, schema, total = dataset
    assert ParquetLoader(root).schema == schema


# ---------------------------------------------------------------------- passes
def test_loader_keeps_its_place_and_starts_a_new_pass_after_the_end(dataset):
    root, schema, total = dataset
    ld = ParquetLoader(root, LoaderConfig(batch_size=5))
    assert len(ld) == -(-total // 5)
    it = iter(ld)
    head = [next(it) for _ in range(3)]
    assert ld.rows_left() == total - 15 and len(ld) == -(-total // 5) - 3
    rest = read_all(ld)  # a new iter() continues after the abandoned one
    np.testing.assert_array_equal(np.concatenate([rids(head), rids(rest)]), np.arange(total))
    assert ld.state_dict()["rows_consumed"] == total and len(ld) == -(-total // 5)
    second = read_all(ld)  # ... and after a complete pass starts over (epoch loops)
    np.testing.assert_array_equal(rids(second), np.arange(total))
    state = ld.state_dict()
    assert state["passes"] == 1 and state["stream_rows_consumed"] == total
    mid = ParquetLoader(root, LoaderConfig(batch_size=5))
    it = iter(mid)
    next(it)
    cursor = mid.state_dict()
    assert cursor["rows_consumed"] == 5 and cursor["passes"] == 0


def test_worker_count_does_not_change_a_ranks_shuffled_batches(dataset, monkeypatch):
    root, schema, total = dataset
    cfg = LoaderConfig(batch_size=3, shuffle_window=2, seed=5)
    for rank in range(2):
        with_workers(monkeypatch, 0, 1)
        alone = [rids([b]) for b in read_all(ParquetLoader(root, cfg, rank=rank, world_size=2))]
        per_worker = []
        for w in range(3):
            with_workers(monkeypatch, w, 3)
            per_worker.append(read_all(ParquetLoader(root, cfg, rank=rank, world_size=2)))
        merged = [rids([per_worker[j % 3][j // 3]]) for j in range(len(alone))]
        assert sum(map(len, per_worker)) == len(alone)
        for x, y in zip(alone, merged, strict=True):
            np.testing.assert_array_equal(x, y)


def test_bad_rows_and_arguments_are_reported(tmp_path):
    schema = small_schema()
    table = make_table(schema, 0, 4, seed=0)
    table = table.set_column(table.column_names.index("tags"), "tags",
                             pa.array([[1], [None], [], [2]], pa.list_(pa.int64())))
    write_processed_day(table, tmp_path, "2026-01-01")
    with pytest.raises(SchemaError, match=r"row group 0.*'tags' has 1 null ids"):
        read_all(ParquetLoader(tmp_path, LoaderConfig(batch_size=4), schema=schema))
    with pytest.raises(ValueError, match="batch_size"):
        ParquetLoader(tmp_path, LoaderConfig(batch_size=0), schema=schema)
    with pytest.raises(ValueError, match="rank=2"):
        ParquetLoader(tmp_path, schema=schema, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError, match="2026-01-05"):
        ParquetLoader(tmp_path, schema=schema, days=["2026-01-05"])
    with pytest.raises(SchemaError, match="no Parquet files"):
        ParquetLoader(tmp_path, LoaderConfig(start_day="2027-01-01"))
