"""Model directories: ``model.pt`` (a state_dict of tensors) + ``model.json`` (how to rebuild the module).

No module is ever pickled: loading rebuilds :class:`GraphModel` from the JSON and reads the tensors with
``torch.load(weights_only=True)``, so a model directory is safe to open and stable across code changes that
keep parameter names.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import torch

from recpipe.fileio import atomic_write, atomic_write_json
from recpipe.models.graph import GraphModel
from recpipe.models.spec import ArchSpec
from recpipe.schema import Schema

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "model.json"
FORMAT_VERSION = 1


def build_model(spec: ArchSpec, schema_or_sizes: Schema | Sequence[int], num_dense: int | None = None,
                pooling: str = "sum") -> GraphModel:
    """Builds a :class:`GraphModel` for a dataset.

    Args:
        spec: the architecture.
        schema_or_sizes: a :class:`Schema` (gives N and the table sizes) or the F table sizes.
        num_dense: N; required with table sizes, must match (or be None) with a schema.
        pooling: ``"sum"`` or ``"mean"`` bag pooling.

    Returns:
        The model; ``model.schema`` is the schema when one was given (else None).
    """
    schema: Schema | None = None
    if isinstance(schema_or_sizes, Schema):
        schema = schema_or_sizes
        if num_dense is not None and num_dense != schema.num_dense:
            raise ValueError(f"build_model: num_dense={num_dense} but schema {schema.name!r} has {schema.num_dense}")
        for f in schema.sparse:
            if f.embedding_dim is not None and f.embedding_dim != spec.embedding_dim:
                raise ValueError(f"build_model: sparse feature {f.name!r} asks for embedding_dim {f.embedding_dim} "
                                 f"but the spec uses one D = {spec.embedding_dim} for every table")
        sizes = schema.table_sizes()
        num_dense = schema.num_dense
    else:
        sizes = [int(n) for n in schema_or_sizes]
        if num_dense is None:
            raise ValueError("build_model: num_dense is required when table sizes are given instead of a schema")
    model = GraphModel(spec, num_dense, sizes, pooling=pooling)
    model.schema = schema
    return model


def save_model(model: GraphModel, directory: str | os.PathLike[str], schema: Schema | None = None,
               extra: dict[str, Any] | None = None) -> str:
    """Writes ``model.pt`` and ``model.json`` into ``directory`` (created if needed), each atomically.

    Args:
        model: the model (any device; tensors are saved on CPU).
        directory: output folder.
        schema: the dataset schema; defaults to ``model.schema`` if the model has one.
        extra: JSON-able provenance stored under ``"extra"`` (e.g. days trained).

    Returns:
        The directory path.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    schema = schema if schema is not None else getattr(model, "schema", None)
    meta = {"format_version": FORMAT_VERSION, **model.config_dict(),
            "schema": schema.to_dict() if schema is not None else None, "extra": dict(extra or {})}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(os.path.join(directory, WEIGHTS_FILE), lambda fh: torch.save(state, fh))
    atomic_write_json(os.path.join(directory, CONFIG_FILE), meta)
    logger.info("saved model (%d tensors) to %s", len(state), directory)
    return directory


def read_model_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model.json`` of a model directory; errors name the file."""
    path = os.path.join(os.fspath(directory), CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read model config: {e}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e
    for key in ("spec", "num_dense", "table_sizes"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta['format_version']} is newer than this code "
                         f"({FORMAT_VERSION})")
    return meta


def load_model(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> GraphModel:
    """Rebuilds a model saved by :func:`save_model` and loads its weights.

    Args:
        directory: the model folder.
        map_location: device for the loaded tensors.

    Returns:
        The model with ``model.schema`` set (None if the folder has no schema).
    """
    directory = os.fspath(directory)
    meta = read_model_config(directory)
    spec = ArchSpec.from_dict(meta["spec"])
    schema = Schema.from_dict(meta["schema"], source=os.path.join(directory, CONFIG_FILE)) if meta.get("schema") \
        else None
    model = GraphModel(spec, int(meta["num_dense"]), [int(n) for n in meta["table_sizes"]],
                       pooling=meta.get("pooling", "sum"))
    model.schema = schema
    weights = os.path.join(directory, WEIGHTS_FILE)
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except OSError as e:
        raise FileNotFoundError(f"{weights}: cannot read model weights: {e}") from e
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{weights}: weights do not fit the model described by {CONFIG_FILE}: {e}") from e
    return model.to(map_location)
