"""GraphModel: spec semantics (shapes, flat/field adaptation, outputs), presets, gradients, DLRM wiring."""
from __future__ import annotations

import pytest
import torch

from recpipe.data.batch import Batch
from recpipe.models import ArchSpec, BlockSpec, GraphModel, SpecError, build_model, dlrm, preset
from recpipe.models.graph import _FlatToField
from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature

TOL = dict(atol=1e-5, rtol=1e-5)  # float32, same ops in a different grouping
B, N, D = 6, 3, 8
SIZES = [7, 5, 9, 4]


def _batch(seed: int = 0, b: int = B, sizes=SIZES, n: int = N) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 3, (len(sizes) * b,), generator=g)
    ids = [torch.randint(0, sizes[f], (int(lengths[f * b:(f + 1) * b].sum()),), generator=g)
           for f in range(len(sizes))]
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return Batch(dense=torch.randn(b, n, generator=g), indices=torch.cat(ids), offsets=offsets,
                 labels=torch.randint(0, 2, (b,), generator=g).float())


MIXED = ArchSpec(embedding_dim=D, head=(5,), blocks=(
    BlockSpec("m1", "mlp", ("dense", "sparse"), units=(D,)),            # flat ← flat + field
    BlockSpec("x1", "crossnet", ("m1", "sparse"), layers=2),            # flat ← flat + field
    BlockSpec("d1", "dot", ("dense", "sparse", "m1")),                  # field ← flat(N≠D) + field + flat(W=D)
    BlockSpec("f1", "fm", ("x1", "sparse")),                            # field ← wide flat + field
    BlockSpec("e1", "efc", ("sparse", "d1"), units=(2,)),               # field ← field + flat
    BlockSpec("m2", "mlp", ("e1", "f1"), units=(4,)),                   # flat ← field + flat
    BlockSpec("e2", "efc", ("sparse",), units=(3,)),                    # unused field output
))


def _grads_everywhere(model: torch.nn.Module) -> list[str]:
    missing = []
    for name, p in model.named_parameters():
        g = p.grad
        if g is None:
            missing.append(name)
            continue
        g = g.coalesce().values() if g.is_sparse else g
        if not bool(g.abs().sum() > 0):
            missing.append(name)
    return missing


def test_all_block_types_with_mixed_inputs_shapes_and_grads():
    torch.manual_seed(0)
    model = GraphModel(MIXED, N, SIZES)
    f = len(SIZES)
    w_x1 = D + f * D
    k_d1 = 1 + f + 1
    expect = {"m1": ("flat", D), "x1": ("flat", w_x1), "d1": ("flat", k_d1 * (k_d1 - 1) // 2),
              "f1": ("flat", D), "e1": ("field", 2), "m2": ("flat", 4), "e2": ("field", 3)}
    assert {k: (v.kind, v.size) for k, v in model.shapes.items() if k in expect} == expect
    assert model.output_names == ["m2", "e2"]
    seen = {}
    for spec, block in zip(MIXED.blocks, model.blocks):
        block.register_forward_hook(lambda m, i, o, name=spec.name: seen.__setitem__(name, tuple(o.shape)))
    logits = model(_batch())
    assert logits.shape == (B,)
    assert seen == {"m1": (B, D), "x1": (B, w_x1), "d1": (B, k_d1 * (k_d1 - 1) // 2), "f1": (B, D),
                    "e1": (B, 2, D), "m2": (B, 4), "e2": (B, 3, D)}
    assert model.out.in_features == 5 and model.head.layers[0].in_features == 4 + 3 * D
    torch.nn.functional.binary_cross_entropy_with_logits(logits, _batch().labels).backward()
    assert _grads_everywhere(model) == []


def test_flat_to_field_is_identity_when_width_equals_dim():
    model = GraphModel(MIXED, N, SIZES)
    d1 = model.blocks[2]
    assert d1.sources == ["dense", "sparse", "m1"]
    dense_adapter, _, m1_adapter = d1.adapters
    assert isinstance(dense_adapter, _FlatToField) and isinstance(dense_adapter.proj, torch.nn.Linear)
    assert dense_adapter.proj.in_features == N and dense_adapter.proj.out_features == D
    assert isinstance(m1_adapter.proj, torch.nn.Identity)


@pytest.mark.parametrize("name", ["dlrm", "dcn", "deepfm"])
def test_presets_forward_and_backward(name):
    torch.manual_seed(0)
    model = preset(name, SIZES, N, embedding_dim=D)
    batch = _batch(1)
    logits = model(batch)
    assert logits.shape == (B,) and torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    assert _grads_everywhere(model) == []


def test_dlrm_equals_manual_composition():
    torch.manual_seed(0)
    model = dlrm(SIZES, N, embedding_dim=D, bottom=(16,), top=(12,))
    batch = _batch(2)
    bottom, interact, top = model.blocks
    x = bottom.op(batch.dense)  # (B, D)
    emb = model.embedding(batch.indices, batch.offsets, B)  # (B, F, D)
    fields = torch.cat([x[:, None, :], emb], dim=1)  # (B, F + 1, D)
    pairs = [(fields[:, i] * fields[:, j]).sum(-1) for i in range(len(SIZES) + 1)
             for j in range(i + 1, len(SIZES) + 1)]
    z = top.op(torch.cat([x, torch.stack(pairs, dim=1)], dim=1))
    torch.testing.assert_close(model(batch), model.out(z).squeeze(-1), **TOL)


def test_dense_only_and_sparse_only_data():
    torch.manual_seed(0)
    dcn = preset("dcn", [], N, embedding_dim=D)  # no sparse features: sparse input contributes nothing
    batch = Batch(dense=torch.randn(B, N), indices=torch.zeros(0, dtype=torch.int64),
                  offsets=torch.zeros(1, dtype=torch.int64), labels=torch.zeros(B))
    assert dcn.embedding is None and dcn(batch).shape == (B,)
    deepfm = preset("deepfm", SIZES, 0, embedding_dim=D)  # no dense features
    assert deepfm(_batch(3, n=0)).shape == (B,)
    with pytest.raises(SpecError, match="block 'bottom': every input"):
        dlrm(SIZES, 0, embedding_dim=D)  # DLRM's bottom MLP reads only the (empty) dense input


def test_zero_width_output_is_rejected():
    spec = ArchSpec(embedding_dim=4, blocks=(BlockSpec("d", "dot", ("sparse",)),))
    with pytest.raises(SpecError, match="produce no columns"):
        GraphModel(spec, 2, [5])  # one field → no pairs


def test_wrong_dense_width_is_reported():
    model = dlrm(SIZES, N, embedding_dim=D)
    bad = _batch(n=N + 1)
    with pytest.raises(ValueError, match="dense must be"):
        model(bad)


def test_build_model_from_schema():
    schema = Schema(name="s", label=LabelSpec("y"), dense=(DenseFeature("a"), DenseFeature("b")),
                    sparse=(SparseFeature("u", num_embeddings=11), SparseFeature("t", num_embeddings=3,
                                                                                 multi_hot=True)))
    model = build_model(MIXED, schema)
    assert model.num_dense == 2 and model.table_sizes == [11, 3] and model.schema is schema
    with pytest.raises(ValueError, match="num_dense is required"):
        build_model(MIXED, [3, 4])
    odd = Schema(name="s", label=LabelSpec(), dense=(), sparse=(SparseFeature("u", embedding_dim=4),))
    with pytest.raises(ValueError, match="'u' asks for embedding_dim 4"):
        build_model(MIXED, odd)


@pytest.mark.parametrize("name", ["dlrm", "dcn", "deepfm"])
def test_empty_batch(name):
    model = preset(name, SIZES, N, embedding_dim=D)
    empty = Batch(dense=torch.zeros(0, N), indices=torch.zeros(0, dtype=torch.int64),
                  offsets=torch.zeros(1, dtype=torch.int64), labels=torch.zeros(0))
    assert model(empty).shape == (0,)
