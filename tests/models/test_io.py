"""save_model / load_model: JSON + state_dict, identical outputs, clear errors."""
from __future__ import annotations

import json
import os

import pytest
import torch

from recpipe.data.batch import Batch
from recpipe.models import dcn_spec, load_model, preset, read_model_config, save_model
from recpipe.schema import criteo_schema


def _batch(b: int, n: int, sizes: list[int], seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.randint(0, s, (b,), generator=g) for s in sizes])
    return Batch(dense=torch.randn(b, n, generator=g), indices=ids,
                 offsets=torch.arange(len(sizes) * b + 1, dtype=torch.int64), labels=torch.zeros(b))


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    schema = criteo_schema(num_embeddings=[5 + i for i in range(26)])
    model = preset("dlrm", schema, embedding_dim=4)
    model.grow_tables([6 + i for i in range(26)])  # saved sizes are the grown ones
    save_model(model, tmp_path / "m", extra={"days": ["2026-11-01"]})
    assert sorted(os.listdir(tmp_path / "m")) == ["model.json", "model.pt"]
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["table_sizes"] == [6 + i for i in range(26)] and meta["num_dense"] == 13
    assert meta["schema"]["name"] == "criteo" and meta["extra"] == {"days": ["2026-11-01"]}
    loaded = load_model(tmp_path / "m")
    assert loaded.schema == schema and loaded.spec == model.spec
    batch = _batch(7, 13, loaded.table_sizes)
    model.eval(), loaded.eval()
    assert torch.equal(model(batch), loaded(batch))
    # weights are plain tensors: loadable with weights_only
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_mismatched_weights_name_the_file(tmp_path):
    model = preset("dcn", [4, 4], 2, embedding_dim=4)
    save_model(model, tmp_path)
    meta = read_model_config(tmp_path)
    meta["spec"] = dcn_spec(4, layers=1).to_dict()  # fewer cross layers than the weights hold
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="model.pt: weights do not fit"):
        load_model(tmp_path)


def test_missing_dir_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path / "nope")
