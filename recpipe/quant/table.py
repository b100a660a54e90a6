"""One quantized embedding table: its storage tensors, decoding, pooled lookup and byte accounting.

Three storage kinds share this type:

* ``"rowwise"``: FBGEMM-style fused rows (codes, then scale and bias), see :mod:`recpipe.ops.quant`;
  lookups run through the ``recpipe::quantized_embedding_bag`` op (CUDA kernel when loaded).
* ``"codebook_row"``: per-row k-means codebooks. Each row of ``data`` is ``C`` packed code bytes (same
  bit-packing as the row-wise layout: element ``p*j + k`` in bits ``k*bits..`` of byte j, ``p = 8 / bits``)
  followed by the row's ``K = 2**bits`` centroids as little-endian float16 (sorted ascending), so a row is
  ``C + 2K`` bytes. Value = ``centroid[row, code]``.
* ``"codebook_shared"``: one codebook of ``K`` float32 centroids for the whole table (``codebook``), rows are
  just the ``C`` packed code bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recpipe.ops import quant as qops

KINDS = ("rowwise", "codebook_row", "codebook_shared")


@dataclass
class QuantizedTable:
    """A quantized (R, D) table.

    Attributes:
        kind: one of :data:`KINDS`.
        bits: code width (8, 4 or 2).
        dim: D.
        data: (R, W) uint8 rows (W depends on ``kind``, see the module docstring).
        method: how it was made ("minmax", "greedy", "kmeans"); informational.
        codebook: (K,) float32 shared centroids for ``"codebook_shared"``, else None.
    """

    kind: str
    bits: int
    dim: int
    data: torch.Tensor
    method: str = ""
    codebook: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"table kind {self.kind!r} not in {KINDS}")
        want = self.row_width(self.kind, self.dim, self.bits)
        if self.data.dtype != torch.uint8 or self.data.dim() != 2 or self.data.shape[1] != want:
            raise ValueError(f"{self.kind} table data must be (R, {want}) uint8 for dim {self.dim} at "
                             f"{self.bits} bits, got {self.data.dtype} {tuple(self.data.shape)}")
        if (self.kind == "codebook_shared") != (self.codebook is not None):
            raise ValueError(f"{self.kind} table: a codebook is required exactly for 'codebook_shared'")
        if self.codebook is not None and self.codebook.shape != (1 << self.bits,):
            raise ValueError(f"shared codebook must have {1 << self.bits} entries, got {tuple(self.codebook.shape)}")

    @staticmethod
    def row_width(kind: str, dim: int, bits: int) -> int:
        """Bytes of one stored row W for a kind (no padding)."""
        if kind == "rowwise":
            return qops.row_bytes(dim, bits)
        if kind == "codebook_row":
            return qops.code_bytes(dim, bits) + 2 * (1 << bits)
        return qops.code_bytes(dim, bits)

    @property
    def num_rows(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        """Storage bytes: all rows plus the shared codebook, if any."""
        extra = 0 if self.codebook is None else self.codebook.numel() * 4
        return self.data.numel() + extra

    def to(self, device: torch.device | str) -> "QuantizedTable":
        cb = None if self.codebook is None else self.codebook.to(device)
        return QuantizedTable(self.kind, self.bits, self.dim, self.data.to(device), self.method, cb)

    def decode_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Dequantizes stored rows.

        Args:
            rows: (T, W) uint8 rows of this table (e.g. ``data[indices]``).

        Returns:
            (T, D) float32.
        """
        if self.kind == "rowwise":
            return qops.dequantize_rowwise(rows, self.bits, self.dim)
        c = qops.code_bytes(self.dim, self.bits)
        codes = qops.unpack_codes(rows[:, :c], self.bits, self.dim).long()  # (T, D)
        if self.kind == "codebook_shared":
            assert self.codebook is not None  # checked in __post_init__
            return self.codebook[codes]
        cent_bytes = rows.new_empty((rows.shape[0], rows.shape[1] - c))  # fresh storage, aligned for the view
        cent_bytes.copy_(rows[:, c:])
        centroids = cent_bytes.view(torch.float16).float()  # (T, K)
        return centroids.gather(1, codes)

    def dequantize(self) -> torch.Tensor:
        """The whole table as (R, D) float32."""
        return self.decode_rows(self.data)

    def lookup(self, indices: torch.Tensor, offsets: torch.Tensor, mode: int = qops.MODE_SUM,
               per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled lookup.

        Args:
            indices: (T,) row ids. offsets: (B + 1,) bag boundaries (offsets[0] == 0, offsets[B] == T).
            mode: 0 sum, 1 mean; empty bags give zeros.
            per_sample_weights: optional (T,) float32 (sum mode only).

        Returns:
            (B, D) float32.
        """
        if self.kind == "rowwise":
            return qops.quantized_embedding_bag(self.data, self.bits, self.dim, indices, offsets, mode,
                                                per_sample_weights)
        rows = self.decode_rows(self.data.index_select(0, indices.long()))  # (T, D)
        # Pool the decoded rows with the framework bag op: row t of `rows` is bag member t.
        return torch.nn.functional.embedding_bag(
            torch.arange(rows.shape[0], device=rows.device), rows, offsets.long(),
            mode="mean" if mode == qops.MODE_MEAN else "sum", per_sample_weights=per_sample_weights,
            include_last_offset=True)


def fp32_bytes(rows: int, dim: int) -> int:
    """Bytes of an (rows, dim) float32 table."""
    return rows * dim * 4


def codebook_row_problem(dim: int, bits: int) -> str | None:
    """Why per-row codebooks do not pay off at this (D, bits), or None when they do.

    A ``"codebook_row"`` row stores ``K = 2**bits`` fp16 centroids beside its codes. With ``K >= D`` a row has
    no more values than centroids (the codebook is the row, plus codes), and once the row width reaches the
    ``4 D`` bytes of a float32 row the "quantized" table is bigger than the float one.
    """
    k = 1 << bits
    width = QuantizedTable.row_width("codebook_row", dim, bits)
    if k >= dim or width >= 4 * dim:
        return (f"per-row codebooks (codebook_scope='row') at {bits} bits need {k} fp16 centroids per row of "
                f"D = {dim} values: {width} bytes per row against {4 * dim} in float32 (need 2**bits < D and a "
                f"row under 4 D bytes); use fewer bits, codebook_scope='shared' or a row-wise method")
    return None
