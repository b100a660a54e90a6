"""Table-batched embeddings: all F tables in ONE flat weight, looked up with a single ``F.embedding_bag`` call.

Table ``f`` owns rows ``table_offsets[f] : table_offsets[f + 1]`` of the flat weight (R, D), R = sum of the
tables' ``num_embeddings``. A batch arrives in the TBE layout of :class:`recpipe.data.batch.Batch`
(feature-major bags, ids local to each table); the collection shifts every id by its table's row offset and
pools all F * B bags at once, so the cost is one kernel launch whatever F is.

Lookup backends (``EmbeddingCollection.backend``):

* ``"torch"``: ``F.embedding_bag`` over globally shifted ids (the reference path);
* ``"ops"``: ``recpipe.ops.embedding_bag`` (table-batched op on local ids; CUDA kernel on the GPU, its
  pure-PyTorch reference on the CPU), with a sparse row gradient of the same values;
* ``"auto"`` (default): ``"ops"`` when the weight is on CUDA, gradients are sparse and the CUDA kernels load
  (:func:`recpipe.ops.load_cuda_kernels`, built on first use), else ``"torch"``. The CPU path never changes.

Optimizer in backward: when ``fused_update`` is set (the trainer does it, see ``recpipe.train.fused``), a
forward with gradients enabled runs the op and its backward calls ``fused_update`` with the pooled gradient
instead of producing ``weight.grad``; the callable updates the rows in place.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.ops import embedding_bag as tbe
from recpipe.ops import load_cuda_kernels

logger = logging.getLogger(__name__)

POOLINGS = ("sum", "mean")
BACKENDS = ("auto", "ops", "torch")
_OP_POOLING = {"sum": tbe.POOLING_SUM, "mean": tbe.POOLING_MEAN}

FusedUpdate = Callable[[nn.Parameter, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], None]
"""``update(weight, grad_output (B, F, D), table_offsets (F + 1,), indices (T,), offsets (F * B + 1,), pooling)``:
applies one optimizer step to the rows of ``weight`` a batch touched, in place (called inside backward)."""


def table_offsets_of(table_sizes: Sequence[int]) -> torch.Tensor:
    """(F + 1,) int64 row offsets of tables laid out back to back: ``[0, n0, n0 + n1, ...]``."""
    out = torch.zeros(len(table_sizes) + 1, dtype=torch.int64)
    if table_sizes:
        out[1:] = torch.cumsum(torch.tensor(list(table_sizes), dtype=torch.int64), dim=0)
    return out


def remap_rows(old: torch.Tensor, old_sizes: Sequence[int], new_sizes: Sequence[int],
               fill: torch.Tensor | float) -> torch.Tensor:
    """Moves per-row data of a flat table layout into a layout with larger tables.

    Row ``i`` of old table ``f`` lands on row ``i`` of new table ``f``; the appended rows get ``fill``.
    Used for embedding weights (R, D) and for per-row optimizer state (R,).

    Args:
        old: (R_old, ...) rows of the old layout.
        old_sizes: the F old table sizes (sum = R_old).
        new_sizes: the F new table sizes, each >= its old size.
        fill: (R_new, ...) tensor whose rows are used for the appended positions, or a scalar.

    Returns:
        (R_new, ...) tensor on ``old``'s device with ``old``'s dtype.
    """
    if len(old_sizes) != len(new_sizes):
        raise ValueError(f"remap_rows: {len(old_sizes)} old tables but {len(new_sizes)} new sizes")
    for f, (o, n) in enumerate(zip(old_sizes, new_sizes)):
        if n < o:
            raise ValueError(f"remap_rows: table {f} would shrink from {o} to {n} rows")
    if old.shape[0] != sum(old_sizes):
        raise ValueError(f"remap_rows: old tensor has {old.shape[0]} rows, tables sum to {sum(old_sizes)}")
    total = sum(new_sizes)
    if isinstance(fill, torch.Tensor):
        if fill.shape[0] != total or fill.shape[1:] != old.shape[1:]:
            raise ValueError(f"remap_rows: fill has shape {tuple(fill.shape)}, want ({total}, "
                             f"{', '.join(map(str, old.shape[1:]))})")
        out = fill.to(device=old.device, dtype=old.dtype).clone()
    else:
        out = torch.full((total, *old.shape[1:]), float(fill), dtype=old.dtype, device=old.device)
    src = table_offsets_of(old_sizes).tolist()
    dst = table_offsets_of(new_sizes).tolist()
    for f, o in enumerate(old_sizes):
        out[dst[f]: dst[f] + o] = old[src[f]: src[f] + o]
    return out


class EmbeddingCollection(nn.Module):
    """F embedding tables of dim D stored as one flat weight, pooled per bag.

    Attributes:
        weight: (R, D) parameter, R = sum(table_sizes). Gradients are sparse (only touched rows) when
            ``sparse=True``, which is what :class:`recpipe.train.optim.RowWiseAdagrad` expects.
        table_offsets: (F + 1,) int64 buffer of each table's first row (not saved in ``state_dict``; it is
            derived from ``table_sizes``).
        table_sizes: the F table row counts.
        backend: ``"auto"``, ``"ops"`` or ``"torch"`` lookup (module docstring).
        fused_update: None, or the :data:`FusedUpdate` that steps the touched rows inside backward (set by the
            trainer's optimizer-in-backward path; ``weight.grad`` then stays None).
    """

    def __init__(self, table_sizes: Sequence[int], embedding_dim: int, pooling: str = "sum", sparse: bool = True,
                 validate_indices: bool = True, backend: str = "auto") -> None:
        """Builds the tables with DLRM's initialisation ``uniform(-1/sqrt(n), 1/sqrt(n))`` for a table of n rows.

        Args:
            table_sizes: rows of each of the F tables (each >= 1).
            embedding_dim: D.
            pooling: ``"sum"`` or ``"mean"`` over each bag (an empty bag pools to zeros).
            sparse: produce sparse row gradients (True) or a dense (R, D) gradient.
            validate_indices: check every id is inside its table before the lookup (one pass over the ids;
                without it an out-of-range id would silently read a neighbouring table's row).
            backend: ``"auto"``, ``"ops"`` or ``"torch"`` (module docstring); ``"ops"`` needs ``sparse=True``.
        """
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"EmbeddingCollection: pooling {pooling!r} not in {POOLINGS}")
        if embedding_dim < 1:
            raise ValueError(f"EmbeddingCollection: embedding_dim must be >= 1, got {embedding_dim}")
        for f, n in enumerate(table_sizes):
            if int(n) < 1:
                raise ValueError(f"EmbeddingCollection: table {f} needs >= 1 row, got {n}")
        self.table_sizes: list[int] = [int(n) for n in table_sizes]
        self.embedding_dim = int(embedding_dim)
        self.pooling = pooling
        self.sparse = sparse
        self.validate_indices = validate_indices
        if backend not in BACKENDS:
            raise ValueError(f"EmbeddingCollection: backend {backend!r} not in {BACKENDS}")
        if backend == "ops" and not sparse:
            raise ValueError("EmbeddingCollection: backend 'ops' gives sparse row gradients; it needs sparse=True")
        self.backend = backend
        self.fused_update: FusedUpdate | None = None
        self.register_buffer("table_offsets", table_offsets_of(self.table_sizes), persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(self.table_sizes), self.embedding_dim))
        self.reset_parameters()

    @property
    def num_tables(self) -> int:
        """F."""
        return len(self.table_sizes)

    def reset_parameters(self) -> None:
        """Re-draws every row: table f ~ uniform(-1/sqrt(n_f), 1/sqrt(n_f)) (global torch RNG, table order)."""
        with torch.no_grad():
            starts = self.table_offsets.tolist()
            for f, n in enumerate(self.table_sizes):
                bound = 1.0 / math.sqrt(n)
                self.weight[starts[f]: starts[f + 1]].uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return (f"tables={self.num_tables}, rows={sum(self.table_sizes)}, dim={self.embedding_dim}, "
                f"pooling={self.pooling}, sparse={self.sparse}, backend={self.backend}")

    # ------------------------------------------------------------------ lookup
    def _check_offsets(self, offsets: torch.Tensor, batch_size: int) -> None:
        if offsets.dim() != 1 or offsets.numel() != self.num_tables * batch_size + 1:
            raise ValueError(f"EmbeddingCollection: offsets has {offsets.numel()} entries, expected "
                             f"F * B + 1 = {self.num_tables} * {batch_size} + 1")

    def _check_lookup(self, indices: torch.Tensor, offsets: torch.Tensor, batch_size: int) -> None:
        """Layout check, plus every id when ``validate_indices`` (the op paths need no shifted ids)."""
        if self.validate_indices:
            self._table_of_ids(indices, offsets, batch_size)
        else:
            self._check_offsets(offsets, batch_size)

    def _table_of_ids(self, indices: torch.Tensor, offsets: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Checks the layout (and, with ``validate_indices``, every id) and returns each id's table (T,)."""
        f_count = self.num_tables
        self._check_offsets(offsets, batch_size)
        # Ids of feature f are indices[offsets[f * B] : offsets[(f + 1) * B]].
        bounds = offsets[:: batch_size] if batch_size > 0 else offsets.new_zeros(f_count + 1)  # (F + 1,)
        per_feature = bounds[1:] - bounds[:-1]  # (F,)
        table_of_id = torch.repeat_interleave(torch.arange(f_count, device=indices.device), per_feature,
                                              output_size=indices.numel())  # (T,)
        if self.validate_indices and indices.numel():
            sizes = self.table_offsets[1:] - self.table_offsets[:-1]  # (F,)
            bad = (indices < 0) | (indices >= sizes[table_of_id])
            if bool(bad.any()):
                pos = int(torch.nonzero(bad)[0, 0])
                f = int(table_of_id[pos])
                raise IndexError(f"EmbeddingCollection: id {int(indices[pos])} at position {pos} of feature {f} "
                                 f"is outside its table of {self.table_sizes[f]} rows")
        return table_of_id

    def global_indices(self, indices: torch.Tensor, offsets: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Shifts table-local ids to rows of the flat weight.

        Args:
            indices: (T,) int64 ids, local to each feature's table.
            offsets: (F * B + 1,) int64 feature-major bag boundaries starting at 0.
            batch_size: B.

        Returns:
            (T,) int64 rows of ``weight``.
        """
        return indices + self.table_offsets[self._table_of_ids(indices, offsets, batch_size)]

    def uses_ops(self) -> bool:
        """Whether a lookup now goes through ``recpipe.ops.embedding_bag`` (see the module docstring)."""
        if self.backend != "auto":
            return self.backend == "ops"
        return self.weight.is_cuda and self.sparse and load_cuda_kernels()

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Pools every bag of every feature.

        Args:
            indices: (T,) int64 table-local ids (Batch TBE layout).
            offsets: (F * B + 1,) int64 feature-major bag boundaries, ``offsets[0] == 0``.
            batch_size: B (needed because an offsets tensor alone cannot tell F from B).

        Returns:
            (B, F, D) pooled embeddings.
        """
        if self.fused_update is not None and torch.is_grad_enabled() and self.weight.requires_grad:
            self._check_lookup(indices, offsets, batch_size)
            return _FusedLookup.apply(self.weight, self.table_offsets, indices, offsets,
                                      _OP_POOLING[self.pooling], self.fused_update)  # (B, F, D)
        if self.uses_ops():
            self._check_lookup(indices, offsets, batch_size)
            return tbe.embedding_bag(self.weight, self.table_offsets, indices, offsets,
                                     _OP_POOLING[self.pooling])  # (B, F, D)
        rows = self.global_indices(indices, offsets, batch_size)
        pooled = F.embedding_bag(rows, self.weight, offsets, mode=self.pooling, sparse=self.sparse,
                                 include_last_offset=True)  # (F * B, D)
        return pooled.view(self.num_tables, batch_size, self.embedding_dim).transpose(0, 1)  # (B, F, D)

    # ------------------------------------------------------------------ vocabulary growth
    @torch.no_grad()
    def grow(self, new_sizes: Sequence[int]) -> None:
        """Appends rows to tables (vocabulary growth); existing rows keep their values bit for bit.

        Appended rows of table f are drawn from uniform(-1/sqrt(n_f), 1/sqrt(n_f)) with n_f its NEW size. The
        ``weight`` parameter is replaced by a larger one, so optimizers holding the old parameter must be
        rebuilt or remapped (:func:`remap_rows` moves per-row state the same way;
        :meth:`recpipe.train.loop.Trainer.grow_tables` does both steps).

        Args:
            new_sizes: F new table sizes, each >= the current size.
        """
        new_sizes = [int(n) for n in new_sizes]
        if len(new_sizes) != self.num_tables:
            raise ValueError(f"EmbeddingCollection.grow: got {len(new_sizes)} sizes for {self.num_tables} tables")
        for f, (o, n) in enumerate(zip(self.table_sizes, new_sizes)):
            if n < o:
                raise ValueError(f"EmbeddingCollection.grow: table {f} would shrink from {o} to {n} rows")
        if new_sizes == self.table_sizes:
            return
        old_starts = self.table_offsets.tolist()
        new_starts = table_offsets_of(new_sizes).tolist()
        old = self.weight.detach()
        weight = torch.empty(new_starts[-1], self.embedding_dim, dtype=old.dtype, device=old.device)
        for f, (o, n) in enumerate(zip(self.table_sizes, new_sizes)):
            weight[new_starts[f]: new_starts[f] + o] = old[old_starts[f]: old_starts[f] + o]
            bound = 1.0 / math.sqrt(n)
            weight[new_starts[f] + o: new_starts[f] + n].uniform_(-bound, bound)
        logger.info("embedding tables grown from %d to %d rows", old_starts[-1], new_starts[-1])
        self.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        self.table_sizes = new_sizes
        self.table_offsets = table_offsets_of(new_sizes).to(self.table_offsets.device)


class _FusedLookup(torch.autograd.Function):
    """Forward: the table-batched pooled lookup. Backward: ``update`` steps the touched rows in place; no
    gradient is returned for the weight (so ``weight.grad`` stays None and no optimizer steps it again)."""

    @staticmethod
    def forward(ctx, weight, table_offsets, indices, offsets, pooling, update):  # noqa: D102 - torch API
        ctx.save_for_backward(table_offsets, indices, offsets)
        ctx.weight, ctx.pooling, ctx.update = weight, pooling, update
        return tbe.embedding_bag(weight.detach(), table_offsets, indices, offsets, pooling)  # (B, F, D)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102 - torch API
        table_offsets, indices, offsets = ctx.saved_tensors
        ctx.update(ctx.weight, grad_output, table_offsets, indices, offsets, ctx.pooling)
        return None, None, None, None, None, None
