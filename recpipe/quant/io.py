"""Quantized model directories: ``model.json`` + ``weights.bin``; no pickles anywhere.

``model.json`` holds what :func:`recpipe.models.io.save_model` writes (``spec``, ``num_dense``,
``table_sizes``, ``pooling``, ``schema``, ``extra``) plus the marker ``"quantized"`` — ``{"format": 1,
"tables": [{"kind", "bits", "method", "rows", "dim"}, ...]}`` — and ``"tensors"``: for every state-dict
entry its ``dtype``, ``shape``, byte ``offset`` and ``nbytes`` inside ``weights.bin``, a plain concatenation
of the tensors' little-endian bytes (each starting on a 64-byte boundary). A reader can tell a quantized
directory from a float one by :func:`is_quantized_model_dir` (the ``"quantized"`` key).

A quantized directory written by the quantize step (:mod:`recpipe.tasks.quantize`) also carries
``float/``: a complete copy of the float model directory it was made from (``model.pt``, ``model.json`` with
its ``extra`` bookkeeping — ``days_trained``, ``last_day`` ... — and any state files training keeps beside
them, e.g. the pruner's). That is the training state travelling with the served model: whoever continues
training from a served (quantized) model — the next day's warm start from ``champion`` — reads
:func:`training_model_dir`, never the lossy low-bit tables.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch

from recpipe.fileio import atomic_write
from recpipe.models.graph import GraphModel
from recpipe.models.spec import ArchSpec
from recpipe.quant.modules import QuantizedEmbeddingCollection
from recpipe.quant.table import QuantizedTable
from recpipe.schema import Schema

logger = logging.getLogger(__name__)

CONFIG_FILE = "model.json"
BLOB_FILE = "weights.bin"
FLOAT_DIR = "float"
"""Sub-folder of a quantized directory holding the float model it was quantized from."""
FORMAT = 1
_ALIGN = 64
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64, "uint8": torch.uint8,
           "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}


def is_quantized_model_dir(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory/model.json`` exists and carries the ``"quantized"`` marker."""
    path = os.path.join(os.fspath(directory), CONFIG_FILE)
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as fh:
        return "quantized" in json.load(fh)


def training_model_dir(directory: str | os.PathLike[str]) -> str:
    """The float model directory to continue training from: ``directory/float`` for a quantized directory,
    ``directory`` itself otherwise.

    Raises:
        FileNotFoundError: a quantized directory without a float copy (``float/model.json``) — e.g. one written
            by :func:`save_quantized_model` alone; its int codes cannot seed training.
        ValueError: ``float/`` is itself a quantized directory.
    """
    directory = os.fspath(directory)
    if not is_quantized_model_dir(directory):
        return directory
    float_dir = os.path.join(directory, FLOAT_DIR)
    if not os.path.isfile(os.path.join(float_dir, CONFIG_FILE)):
        raise FileNotFoundError(f"{directory}: quantized model directory without the float model it was made from "
                                f"({float_dir}/{CONFIG_FILE} missing); training cannot continue from low-bit "
                                f"tables — warm-start from the float model directory, or re-run the quantize step "
                                f"(it copies the float model into {FLOAT_DIR}/)")
    if is_quantized_model_dir(float_dir):
        raise ValueError(f"{float_dir}: the float copy of quantized model {directory} is itself quantized")
    return float_dir


def _write_atomic(path: str, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def save_quantized_model(model: GraphModel, directory: str | os.PathLike[str],
                         extra: dict[str, Any] | None = None) -> str:
    """Writes a model whose ``embedding`` is a :class:`QuantizedEmbeddingCollection`.

    Args:
        model: the quantized GraphModel (from :func:`recpipe.quant.modules.quantize_model`).
        directory: output folder (created).
        extra: JSON-able provenance (e.g. the quantization config, the source model dir).

    Returns:
        The directory.
    """
    emb = model.embedding
    if not isinstance(emb, QuantizedEmbeddingCollection):
        raise ValueError(f"save_quantized_model: model.embedding is {type(emb).__name__}, not quantized")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    index: dict[str, dict[str, Any]] = {}
    chunks: list[bytes] = []
    pos = 0
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in _NAMES:
            raise ValueError(f"save_quantized_model: tensor {name!r} has unsupported dtype {t.dtype}")
        raw = t.numpy().tobytes() if t.numel() else b""
        pad = (-pos) % _ALIGN
        chunks.append(b"\0" * pad)
        pos += pad
        index[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "offset": pos, "nbytes": len(raw)}
        chunks.append(raw)
        pos += len(raw)
    schema = getattr(model, "schema", None)
    meta = {**model.config_dict(), "schema": schema.to_dict() if schema is not None else None,
            "extra": dict(extra or {}), "quantized": {"format": FORMAT, "tables": emb.meta()}, "tensors": index}
    _write_atomic(os.path.join(directory, BLOB_FILE), b"".join(chunks))
    _write_atomic(os.path.join(directory, CONFIG_FILE), json.dumps(meta, indent=2, sort_keys=True).encode())
    logger.info("saved quantized model (%d tensors, %d bytes) to %s", len(index), pos, directory)
    return directory


def _read_tensors(blob_path: str, index: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    try:
        blob = np.fromfile(blob_path, dtype=np.uint8)
    except OSError as e:
        raise FileNotFoundError(f"{blob_path}: cannot read tensors: {e}") from e
    out = {}
    for name, info in index.items():
        start, n = int(info["offset"]), int(info["nbytes"])
        if info["dtype"] not in _DTYPES or start + n > blob.size:
            raise ValueError(f"{blob_path}: entry {name!r} ({info['dtype']}, bytes {start}..{start + n}) does not "
                             f"fit the file of {blob.size} bytes or has an unknown dtype")
        dtype = _DTYPES[info["dtype"]]
        raw = torch.from_numpy(blob[start: start + n].copy())
        out[name] = raw.view(dtype).reshape(info["shape"]) if n else torch.zeros(info["shape"], dtype=dtype)
    return out


def load_quantized_model(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> GraphModel:
    """Rebuilds a model written by :func:`save_quantized_model` (eval mode, on ``map_location``)."""
    directory = os.fspath(directory)
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read model config: {e}") from e
    for key in ("spec", "num_dense", "table_sizes", "quantized", "tensors"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r} (not a quantized model directory?)")
    if meta["quantized"].get("format", FORMAT) > FORMAT:
        raise ValueError(f"{path}: quantized format {meta['quantized']['format']} is newer than this code ({FORMAT})")
    state = _read_tensors(os.path.join(directory, BLOB_FILE), meta["tensors"])
    tables = []
    for f, t in enumerate(meta["quantized"]["tables"]):
        data = state.get(f"embedding.table_{f}")
        if data is None:
            raise ValueError(f"{path}: tensor 'embedding.table_{f}' missing for quantized table {f}")
        tables.append(QuantizedTable(t["kind"], int(t["bits"]), int(t["dim"]), data, t.get("method", ""),
                                     state.get(f"embedding.codebook_{f}")))
    spec = ArchSpec.from_dict(meta["spec"])
    # A one-row-per-table float collection is built (cheaply) and replaced by the quantized one.
    model = GraphModel(spec, int(meta["num_dense"]), [1] * len(tables), pooling=meta.get("pooling", "sum"))
    model.embedding = QuantizedEmbeddingCollection(tables, meta.get("pooling", "sum"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: tensors do not fit the model it describes: {e}") from e
    model.schema = Schema.from_dict(meta["schema"], source=path) if meta.get("schema") else None
    return model.to(map_location).eval()
