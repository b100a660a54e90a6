"""recpipe.models: the architecture spec, the graph model built from it, and model directories.

Typical use::

    from recpipe.models import build_model, dlrm, save_model, load_model
    model = dlrm(schema, embedding_dim=16)          # or build_model(ArchSpec.load(path), schema)
    logits = model(batch)                           # (B,)
    save_model(model, "out/model"); model2 = load_model("out/model")
"""
from __future__ import annotations

from typing import Sequence

from recpipe.models.graph import GraphBlock, GraphModel, NodeShape
from recpipe.models.io import build_model, load_model, read_model_config, save_model
from recpipe.models.spec import PRESETS, ArchSpec, BlockSpec, SpecError, dcn_spec, deepfm_spec, dlrm_spec
from recpipe.schema import Schema


def dlrm(schema_or_sizes: Schema | Sequence[int], num_dense: int | None = None, embedding_dim: int = 16,
         bottom: tuple[int, ...] = (64, 32), top: tuple[int, ...] = (64, 32)) -> GraphModel:
    """A DLRM (bottom MLP → dot interaction → top MLP → logit); see :func:`dlrm_spec`."""
    return build_model(dlrm_spec(embedding_dim, bottom, top), schema_or_sizes, num_dense)


def preset(name: str, schema_or_sizes: Schema | Sequence[int], num_dense: int | None = None,
           embedding_dim: int = 16) -> GraphModel:
    """A model from a named preset spec (``"dlrm"``, ``"dcn"``, ``"deepfm"``) with default widths."""
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return build_model(PRESETS[name](embedding_dim), schema_or_sizes, num_dense)


__all__ = [
    "ArchSpec", "BlockSpec", "GraphBlock", "GraphModel", "NodeShape", "PRESETS", "SpecError", "build_model",
    "dcn_spec", "deepfm_spec", "dlrm", "dlrm_spec", "load_model", "preset", "read_model_config", "save_model",
]
