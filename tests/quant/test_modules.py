"""QuantizedEmbeddingCollection inside a GraphModel: equality with the dequantized float model, save/load,
mixed precision end to end."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from recpipe.data.batch import Batch
from recpipe.models import dcn_spec, dlrm, build_model
from recpipe.quant import (MixedPrecisionConfig, QuantConfig, QuantizedEmbeddingCollection, is_quantized_model_dir,
                           load_quantized_model, quantize_model, save_quantized_model, table_weights)

SIZES = [40, 1500, 3]
DIM = 8
NUM_DENSE = 4
MODEL_TOL = 1e-5
"""Quantized lookup vs float lookup of the dequantized weights: same values pooled in another order."""


def _batch(seed: int, b: int = 16, max_bag: int = 3) -> Batch:
    """Random multi-hot bags in the TBE layout (feature-major), some empty."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_bag + 1, (len(SIZES), b), generator=g)  # (F, B)
    ids = [torch.randint(0, n, (int(lengths[f].sum()),), generator=g) for f, n in enumerate(SIZES)]
    offsets = torch.zeros(len(SIZES) * b + 1, dtype=torch.int64)
    offsets[1:] = lengths.reshape(-1).cumsum(0)
    return Batch(torch.randn(b, NUM_DENSE, generator=g), torch.cat(ids), offsets,
                 (torch.rand(b, generator=g) < 0.3).float())


def _model(seed: int = 0, pooling: str = "sum"):
    torch.manual_seed(seed)
    return build_model(dcn_spec(DIM, layers=1, deep=(16,)), SIZES, NUM_DENSE, pooling=pooling)


def _dequantized_float_model(model, qmodel):
    ref = copy.deepcopy(model)
    emb = qmodel.embedding
    with torch.no_grad():
        ref.embedding.weight.copy_(torch.cat([emb.table(f).dequantize() for f in range(emb.num_tables)]))
    return ref


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("cfg", [QuantConfig(bits=4), QuantConfig(bits=8, method="minmax"),
                                 QuantConfig(bits=2, method="codebook", codebook_scope="shared"),
                                 QuantConfig(bits=2, method="codebook", kmeans_iters=5)],
                         ids=["greedy4", "minmax8", "shared2", "rowcb2"])
def test_quantized_model_equals_dequantized_float_model(cfg: QuantConfig, pooling: str) -> None:
    model = _model(pooling=pooling)
    before = model.embedding.weight.detach().clone()
    qmodel = quantize_model(model, cfg)
    assert isinstance(qmodel.embedding, QuantizedEmbeddingCollection)
    assert torch.equal(model.embedding.weight, before)  # the float model is untouched
    assert qmodel.table_sizes == SIZES
    ref = _dequantized_float_model(model, qmodel).eval()
    for seed in range(3):
        batch = _batch(seed)
        with torch.no_grad():
            torch.testing.assert_close(qmodel(batch), ref(batch), rtol=MODEL_TOL, atol=MODEL_TOL)
            pooled = qmodel.embedding(batch.indices, batch.offsets, batch.batch_size)
        assert pooled.shape == (batch.batch_size, len(SIZES), DIM)


def test_save_load_round_trip(tmp_path) -> None:
    model = _model(1)
    qmodel = quantize_model(model, QuantConfig(bits=4, mixed=MixedPrecisionConfig(mode="rule")))
    qmodel_cb = quantize_model(model, QuantConfig(bits=2, method="codebook", codebook_scope="shared"))
    for i, qm in enumerate((qmodel, qmodel_cb)):
        out = tmp_path / f"q{i}"
        save_quantized_model(qm, out, extra={"source": "test"})
        assert is_quantized_model_dir(out)
        meta = json.loads((out / "model.json").read_text())
        assert meta["table_sizes"] == SIZES and meta["extra"] == {"source": "test"}
        loaded = load_quantized_model(out)
        assert loaded.embedding.bits == qm.embedding.bits and loaded.embedding.kinds == qm.embedding.kinds
        for name, t in qm.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], t), name
        batch = _batch(5)
        with torch.no_grad():
            assert torch.equal(loaded(batch), qm(batch))
    assert qmodel.embedding.bits == [8, 4, 8]  # rule: < 1000 rows -> 8 bits, else 4
    assert not is_quantized_model_dir(tmp_path)


def test_load_errors_name_the_file(tmp_path) -> None:
    save_quantized_model(quantize_model(_model(), QuantConfig()), tmp_path / "q")
    (tmp_path / "q" / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="weights.bin"):
        load_quantized_model(tmp_path / "q")
    with pytest.raises(ValueError, match="not quantized"):
        save_quantized_model(_model(), tmp_path / "f")


def test_measured_mixed_precision_end_to_end() -> None:
    torch.manual_seed(0)
    model = dlrm(SIZES, num_dense=NUM_DENSE, embedding_dim=DIM, bottom=(8, DIM), top=(8,))
    # make the big table matter: large, spread-out rows
    with torch.no_grad():
        model.embedding.weight.mul_(20.0)
    batches = [_batch(s, b=64) for s in range(4)]
    loose = quantize_model(model, QuantConfig(method="minmax",
                                              mixed=MixedPrecisionConfig(mode="measured", ne_tolerance=1.0)),
                           eval_batches=batches)
    assert loose.embedding.bits == [2, 2, 2]  # everything fits a huge budget: cheapest everywhere
    strict = quantize_model(model, QuantConfig(method="minmax",
                                               mixed=MixedPrecisionConfig(mode="measured", ne_tolerance=0.0)),
                            eval_batches=batches)
    choice = strict.quant_choice
    assert choice is not None and choice.final_ne - choice.float_ne <= 1e-12 or choice.over_budget
    assert strict.embedding.bits[1] >= loose.embedding.bits[1]
    assert [t["table"] for t in choice.trials][0] == 1  # the biggest table is decided first
    with pytest.raises(ValueError, match="held-out"):
        quantize_model(model, QuantConfig(mixed=MixedPrecisionConfig(mode="measured")))


def test_table_weights_are_views_of_the_flat_weight() -> None:
    model = _model()
    ws = table_weights(model.embedding)
    assert [w.shape[0] for w in ws] == SIZES
    assert torch.equal(torch.cat(ws), model.embedding.weight.detach())


def test_out_of_range_id_names_the_feature() -> None:
    qmodel = quantize_model(_model(), QuantConfig())
    batch = _batch(0)
    batch.indices[-1] = 99  # last id belongs to feature 2 (3 rows)
    with pytest.raises(IndexError, match="feature 2"):
        qmodel(batch)
    with pytest.raises(ValueError, match="re-quantize"):
        qmodel.embedding.grow([50, 1500, 3])


def test_empty_batch() -> None:
    qmodel = quantize_model(_model(), QuantConfig())
    out = qmodel.embedding(torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), 0)
    assert out.shape == (0, len(SIZES), DIM)
