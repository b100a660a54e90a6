"""Compact export of a pruned model: each pruned weight stored as CSR or as a packed bitmask + values.

For a pruned (O, I) float32 weight with ``nnz`` kept entries the two encodings cost

* CSR: ``4 * nnz`` (values) + ``idx * nnz`` (column indices, int16 when I <= 32767 else int32)
  + ``4 * (O + 1)`` (int32 row pointers);
* bitmask: ``4 * nnz`` (values) + ``ceil(O * I / 8)`` (one bit per entry, ``numpy.packbits`` order).

:func:`export_compact` picks the smaller per layer (CSR wins at high sparsity, the bitmask at moderate
sparsity; the crossover with int16 indices is at density 1/16), keeps every other tensor dense, writes one
``torch.save`` file of plain tensors (no pickled modules) and reports the real sizes in bytes.
:func:`load_compact` rebuilds the dense state dict, equal in value to the exported one (zeros are not
stored, so a ``-0.0`` comes back as ``+0.0``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from recpipe.fileio import atomic_write

COMPACT_FORMAT = "recpipe.pruned.v1"
_INT16_MAX = 32767


@dataclass
class ExportReport:
    """Sizes of an export, in bytes.

    Attributes:
        dense_bytes: all tensors stored dense (the unpruned model's parameter bytes).
        compact_bytes: tensor payload of the compact form (values + indices/bitmasks + other tensors).
        pruned_dense_bytes: the pruned weights alone, dense.
        pruned_compact_bytes: the pruned weights alone, compact.
        file_bytes: size of the written file on disk (payload + container overhead).
        layers: per pruned weight: ``{"format": "csr"|"bitmask", "nnz": int, "bytes": int}``.
    """

    dense_bytes: int = 0
    compact_bytes: int = 0
    pruned_dense_bytes: int = 0
    pruned_compact_bytes: int = 0
    file_bytes: int = 0
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dense_bytes": self.dense_bytes, "compact_bytes": self.compact_bytes,
                "pruned_dense_bytes": self.pruned_dense_bytes, "pruned_compact_bytes": self.pruned_compact_bytes,
                "file_bytes": self.file_bytes, "layers": self.layers}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def encode_sparse(weight: torch.Tensor) -> dict[str, Any]:
    """Encodes one 2-D weight in the smaller of CSR and bitmask + values.

    Args:
        weight: (O, I) tensor whose zeros are the pruned entries.

    Returns:
        ``{"format", "shape", "values", ...}`` with ``indptr``/``indices`` (CSR) or ``bits`` (bitmask).
    """
    if weight.dim() != 2:
        raise ValueError(f"encode_sparse: want a 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.detach().cpu().contiguous()
    rows, cols = w.shape
    nz = w != 0
    values = w[nz].clone()  # row-major order, (nnz,)
    nnz = values.numel()
    idx_dtype = torch.int16 if cols <= _INT16_MAX else torch.int32
    csr_bytes = nnz * torch.tensor([], dtype=idx_dtype).element_size() + 4 * (rows + 1)
    bits_bytes = (rows * cols + 7) // 8
    if csr_bytes <= bits_bytes:
        counts = nz.sum(dim=1)
        indptr = torch.zeros(rows + 1, dtype=torch.int32)
        indptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
        indices = nz.nonzero()[:, 1].to(idx_dtype)  # column of each kept entry, row-major
        return {"format": "csr", "shape": [rows, cols], "values": values, "indptr": indptr, "indices": indices}
    bits = torch.from_numpy(np.packbits(nz.flatten().numpy()))
    return {"format": "bitmask", "shape": [rows, cols], "values": values, "bits": bits}


def decode_sparse(enc: Mapping[str, Any]) -> torch.Tensor:
    """Inverse of :func:`encode_sparse`: the dense (O, I) weight."""
    rows, cols = enc["shape"]
    values = enc["values"]
    out = torch.zeros(rows * cols, dtype=values.dtype)
    if enc["format"] == "csr":
        indptr = enc["indptr"].long()
        row_of = torch.repeat_interleave(torch.arange(rows), indptr[1:] - indptr[:-1])
        out[row_of * cols + enc["indices"].long()] = values
    elif enc["format"] == "bitmask":
        nz = np.unpackbits(enc["bits"].numpy(), count=rows * cols).astype(bool)
        out[torch.from_numpy(nz)] = values
    else:
        raise ValueError(f"decode_sparse: unknown format {enc['format']!r}")
    return out.view(rows, cols)


def encoded_bytes(enc: Mapping[str, Any]) -> int:
    """Payload bytes of one encoded weight (values + index structure)."""
    return sum(_nbytes(enc[k]) for k in ("values", "indptr", "indices", "bits") if k in enc)


def export_compact(state_dict: Mapping[str, torch.Tensor], pruned: Iterable[str],
                   path: str | os.PathLike[str], *, meta: Mapping[str, Any] | None = None) -> ExportReport:
    """Writes ``state_dict`` with the ``pruned`` weights sparse-encoded to ``path``.

    Args:
        state_dict: the model's state dict (pruned weights already hold zeros).
        pruned: state-dict keys of the pruned 2-D weights (e.g. ``"top.0.weight"``).
        path: output file.
        meta: JSON-able extras stored beside the tensors (spec, sparsity ...).

    Returns:
        The sizes in bytes (see :class:`ExportReport`).
    """
    pruned = list(pruned)
    missing = [k for k in pruned if k not in state_dict]
    if missing:
        raise KeyError(f"export_compact: pruned keys {missing} not in the state dict")
    rep = ExportReport()
    dense: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    for k, t in state_dict.items():
        t = t.detach().cpu()
        rep.dense_bytes += _nbytes(t)
        if k in pruned:
            enc = encode_sparse(t)
            b = encoded_bytes(enc)
            sparse[k] = enc
            rep.pruned_dense_bytes += _nbytes(t)
            rep.pruned_compact_bytes += b
            rep.compact_bytes += b
            rep.layers[k] = {"format": enc["format"], "nnz": int(enc["values"].numel()), "bytes": b}
        else:
            dense[k] = t.contiguous()
            rep.compact_bytes += _nbytes(t)
    path = atomic_write(path, lambda fh: torch.save({"format": COMPACT_FORMAT, "dense": dense, "sparse": sparse,
                                                     "meta": dict(meta or {})}, fh))
    rep.file_bytes = os.path.getsize(path)
    return rep


def load_compact(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads a file written by :func:`export_compact`.

    Returns:
        (dense state dict in the original key order of dense-then-sparse entries, meta).

    Raises:
        ValueError: the file is not a compact export (names the file).
    """
    blob = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != COMPACT_FORMAT:
        raise ValueError(f"{os.fspath(path)}: not a {COMPACT_FORMAT} export")
    out = dict(blob["dense"])
    for k, enc in blob["sparse"].items():
        out[k] = decode_sparse(enc)
    return out, blob["meta"]
