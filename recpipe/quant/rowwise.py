"""Quantizing whole tables: the per-table config, method dispatch (min-max, greedy, codebook), error and
bytes accounting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from recpipe.config import JsonConfig
from recpipe.ops import quant as qops
from recpipe.quant import codebook
from recpipe.quant.table import QuantizedTable, codebook_row_problem, fp32_bytes

METHODS = ("minmax", "greedy", "codebook")
CODEBOOK_SCOPES = ("row", "shared")


@dataclass(frozen=True)
class TableQuantConfig(JsonConfig):
    """How one table is quantized.

    Attributes:
        bits: code width, 8, 4 or 2.
        method: "minmax" (row-wise range), "greedy" (row-wise, clipped range searched per row, see
            :mod:`recpipe.ops.quant`) or "codebook" (k-means centroids, see :mod:`recpipe.quant.codebook`).
        num_bins: greedy search step = range / num_bins.
        ratio: greedy search clips at most this fraction of each row's range.
        codebook_scope: "row" (2**bits fp16 centroids per row) or "shared" (one codebook per table).
        kmeans_iters: maximum Lloyd iterations.
        kmeans_init: "quantile" or "kmeans++".
        seed: k-means seed.

    The table dimension D is not part of the config, so the checks that need it live in :meth:`validate_dim`
    (called by :func:`quantize_table` and, for every width a policy may pick, by
    :func:`recpipe.quant.modules.quantize_model` before any work).
    """

    bits: int = 4
    method: str = "greedy"
    num_bins: int = qops.DEFAULT_NUM_BINS
    ratio: float = qops.DEFAULT_RATIO
    codebook_scope: str = "row"
    kmeans_iters: int = 25
    kmeans_init: str = "quantile"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bits not in qops.SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {qops.SUPPORTED_BITS}, got {self.bits}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.codebook_scope not in CODEBOOK_SCOPES:
            raise ValueError(f"codebook_scope must be one of {CODEBOOK_SCOPES}, got {self.codebook_scope!r}")
        if self.kmeans_init not in codebook.INITS:
            raise ValueError(f"kmeans_init must be one of {codebook.INITS}, got {self.kmeans_init!r}")
        if self.num_bins < 1 or not 0.0 <= self.ratio <= 1.0 or self.kmeans_iters < 0:
            raise ValueError(f"need num_bins >= 1, 0 <= ratio <= 1, kmeans_iters >= 0; got {self.num_bins}, "
                             f"{self.ratio}, {self.kmeans_iters}")

    def validate_dim(self, dim: int, bits: int | None = None) -> None:
        """Rejects settings that make no sense for tables of dimension D (``bits`` overrides ``self.bits``).

        Raises:
            ValueError: per-row codebooks whose centroids alone outnumber or outweigh the row
                (:func:`recpipe.quant.table.codebook_row_problem`).
        """
        bits = self.bits if bits is None else bits
        if self.method == "codebook" and self.codebook_scope == "row":
            problem = codebook_row_problem(dim, bits)
            if problem is not None:
                raise ValueError(f"TableQuantConfig: {problem}")


def quantize_table(weight: torch.Tensor, cfg: TableQuantConfig, bits: int | None = None) -> QuantizedTable:
    """Quantizes one (R, D) float table.

    Args:
        weight: (R, D) float table (any float dtype; quantized from its float32 values).
        cfg: method and settings.
        bits: overrides ``cfg.bits`` (mixed precision).

    Returns:
        The :class:`QuantizedTable`.
    """
    bits = cfg.bits if bits is None else bits
    cfg.validate_dim(weight.shape[1], bits)
    w = weight.detach().float().contiguous()
    if cfg.method == "minmax":
        return QuantizedTable("rowwise", bits, w.shape[1], qops.quantize_rowwise(w, bits), "minmax")
    if cfg.method == "greedy":
        fused = qops.quantize_rowwise_greedy(w, bits, cfg.num_bins, cfg.ratio)
        return QuantizedTable("rowwise", bits, w.shape[1], fused, "greedy")
    if w.shape[0] == 0:  # no values to fit a codebook on: an empty table of the right kind
        kind = "codebook_row" if cfg.codebook_scope == "row" else "codebook_shared"
        cb = torch.zeros(1 << bits) if kind == "codebook_shared" else None
        empty = torch.zeros(0, QuantizedTable.row_width(kind, w.shape[1], bits), dtype=torch.uint8)
        return QuantizedTable(kind, bits, w.shape[1], empty, "kmeans", cb)
    fit = codebook.quantize_codebook_row if cfg.codebook_scope == "row" else codebook.quantize_codebook_shared
    table, _history = fit(w, bits, cfg.kmeans_iters, cfg.kmeans_init, cfg.seed)
    return table


def reconstruction_mse(weight: torch.Tensor, table: QuantizedTable) -> float:
    """Mean squared error between a float table (R, D) and its quantized version, over all R * D values."""
    if weight.numel() == 0:
        return 0.0
    diff = weight.detach().float() - table.dequantize()
    return float(diff.square().mean(dtype=torch.float64))


def table_report(weight: torch.Tensor, table: QuantizedTable) -> dict[str, Any]:
    """Bytes and error of one quantized table, as plain JSON-able values."""
    before = fp32_bytes(table.num_rows, table.dim)
    return {
        "rows": table.num_rows,
        "dim": table.dim,
        "kind": table.kind,
        "method": table.method,
        "bits": table.bits,
        "fp32_bytes": before,
        "quantized_bytes": table.nbytes,
        "ratio_to_fp32": table.nbytes / before if before else 0.0,
        "mse": reconstruction_mse(weight, table),
    }
