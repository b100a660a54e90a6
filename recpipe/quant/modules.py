"""The quantized embedding module and model-level quantization.

:class:`QuantizedEmbeddingCollection` has the forward API of :class:`recpipe.modules.EmbeddingCollection`
(``forward(indices, offsets, batch_size) -> (B, F, D)`` over the Batch TBE layout) but reads each table from
quantized storage (:class:`recpipe.quant.table.QuantizedTable`), so a built :class:`GraphModel` keeps working
after :func:`quantize_model` swaps its ``embedding``.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from recpipe.data.batch import Batch
from recpipe.metrics.functional import normalized_entropy
from recpipe.models.graph import GraphModel
from recpipe.models.predict import predict
from recpipe.modules.embedding import EmbeddingCollection
from recpipe.ops import quant as qops
from recpipe.quant.mixed import MeasuredChoice, MixedPrecisionConfig, measured_bits, rule_bits
from recpipe.quant.rowwise import TableQuantConfig, quantize_table
from recpipe.quant.table import QuantizedTable, fp32_bytes

logger = logging.getLogger(__name__)

_MODES = {"sum": qops.MODE_SUM, "mean": qops.MODE_MEAN}


@dataclass(frozen=True)
class QuantConfig(TableQuantConfig):
    """Model-level quantization: the per-table method/settings plus the mixed-precision policy.

    ``bits`` is the width of every table under ``mixed.mode == "uniform"``.
    """

    mixed: MixedPrecisionConfig = field(default_factory=MixedPrecisionConfig)

    def widths(self) -> tuple[int, ...]:
        """Every code width the mixed-precision policy may give a table, ascending."""
        if self.mixed.mode == "uniform":
            return (self.bits,)
        if self.mixed.mode == "rule":
            return tuple(sorted({b for _, b in self.mixed.rule}))
        return tuple(sorted(set(self.mixed.candidates)))

    def validate_dim(self, dim: int, bits: int | None = None) -> None:
        """:meth:`TableQuantConfig.validate_dim` for ``bits``, or (None) for every width in :meth:`widths`."""
        for b in (self.widths() if bits is None else (bits,)):
            super().validate_dim(dim, b)


class QuantizedEmbeddingCollection(nn.Module):
    """F quantized tables of dim D, pooled per bag like :class:`EmbeddingCollection`.

    Table f's storage lives in buffers ``table_{f}`` ((R_f, W_f) uint8) and, for shared codebooks,
    ``codebook_{f}`` ((K,) float32), so ``.to(device)`` and ``state_dict`` cover them.

    Attributes:
        table_sizes: R_f per table. embedding_dim: D. pooling: "sum" or "mean".
    """

    def __init__(self, tables: Sequence[QuantizedTable], pooling: str = "sum") -> None:
        super().__init__()
        if pooling not in _MODES:
            raise ValueError(f"QuantizedEmbeddingCollection: pooling {pooling!r} not in {sorted(_MODES)}")
        if not tables:
            raise ValueError("QuantizedEmbeddingCollection needs at least one table")
        dims = {t.dim for t in tables}
        if len(dims) != 1:
            raise ValueError(f"QuantizedEmbeddingCollection: all tables need one dim D, got {sorted(dims)}")
        self.embedding_dim = tables[0].dim
        self.pooling = pooling
        self.kinds = [t.kind for t in tables]
        self.bits = [t.bits for t in tables]
        self.methods = [t.method for t in tables]
        for f, t in enumerate(tables):
            self.register_buffer(f"table_{f}", t.data)
            if t.codebook is not None:
                self.register_buffer(f"codebook_{f}", t.codebook)

    @property
    def num_tables(self) -> int:
        """F."""
        return len(self.kinds)

    @property
    def table_sizes(self) -> list[int]:
        return [int(getattr(self, f"table_{f}").shape[0]) for f in range(self.num_tables)]

    def table(self, f: int) -> QuantizedTable:
        """Table f as a :class:`QuantizedTable` view of the buffers (no copy)."""
        cb = getattr(self, f"codebook_{f}") if self.kinds[f] == "codebook_shared" else None
        return QuantizedTable(self.kinds[f], self.bits[f], self.embedding_dim, getattr(self, f"table_{f}"),
                              self.methods[f], cb)

    @property
    def nbytes(self) -> int:
        """Bytes of all quantized tables."""
        return sum(self.table(f).nbytes for f in range(self.num_tables))

    def meta(self) -> list[dict[str, Any]]:
        """JSON description of each table (what :mod:`recpipe.quant.io` writes)."""
        return [{"kind": k, "bits": b, "method": m, "rows": r, "dim": self.embedding_dim}
                for k, b, m, r in zip(self.kinds, self.bits, self.methods, self.table_sizes)]

    def extra_repr(self) -> str:
        return (f"tables={self.num_tables}, rows={sum(self.table_sizes)}, dim={self.embedding_dim}, "
                f"bits={self.bits}, pooling={self.pooling}")

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Pools every bag of every feature from the quantized tables.

        Args:
            indices: (T,) int64 table-local ids (Batch TBE layout).
            offsets: (F * B + 1,) int64 feature-major bag boundaries, ``offsets[0] == 0``.
            batch_size: B.

        Returns:
            (B, F, D) float32 pooled embeddings.
        """
        num_f, b = self.num_tables, batch_size
        if offsets.dim() != 1 or offsets.numel() != num_f * b + 1:
            raise ValueError(f"QuantizedEmbeddingCollection: offsets has {offsets.numel()} entries, expected "
                             f"F * B + 1 = {num_f} * {b} + 1")
        if b == 0:
            return torch.zeros(0, num_f, self.embedding_dim, device=offsets.device)
        bounds = offsets[::b].tolist()  # (F + 1,) feature boundaries in `indices`: one device sync in all
        pooled = []
        for f in range(num_f):
            off = offsets[f * b: (f + 1) * b + 1]  # (B + 1,)
            start, end = bounds[f], bounds[f + 1]
            try:
                pooled.append(self.table(f).lookup(indices[start:end], off - start, _MODES[self.pooling]))  # (B, D)
            except IndexError as e:
                raise IndexError(f"QuantizedEmbeddingCollection feature {f}: {e}") from e
        return torch.stack(pooled, dim=1)  # (B, F, D)

    def grow(self, new_sizes: Sequence[int]) -> None:
        """Quantized tables are frozen: grow the float model and quantize again."""
        raise ValueError("QuantizedEmbeddingCollection cannot grow; grow the float model and re-quantize it")


def table_weights(collection: EmbeddingCollection) -> list[torch.Tensor]:
    """The F float tables of a collection as (R_f, D) views of its flat weight."""
    offs = collection.table_offsets.tolist()
    w = collection.weight.detach()
    return [w[offs[f]: offs[f + 1]] for f in range(collection.num_tables)]


def _float_collection(model: GraphModel) -> EmbeddingCollection:
    emb = model.embedding
    if not isinstance(emb, EmbeddingCollection):
        raise ValueError(f"quantize_model needs a GraphModel with a float EmbeddingCollection, got "
                         f"{type(emb).__name__}")
    return emb


@torch.no_grad()
def evaluate_ne(model: GraphModel, batches: Iterable[Batch]) -> float:
    """NE of a model over batches (base rate = the label rate of these same rows)."""
    preds, labels = predict(model, batches)
    if not preds.numel():
        raise ValueError("evaluate_ne: no evaluation batches")
    return normalized_entropy(preds, labels)


def choose_bits(model: GraphModel, cfg: QuantConfig,
                eval_batches: Sequence[Batch] | None = None) -> tuple[list[int], MeasuredChoice | None]:
    """Bits per table under ``cfg.mixed`` ("measured" needs held-out ``eval_batches``).

    Returns:
        (bits per table, the measured search record or None).
    """
    emb = _float_collection(model)
    sizes = emb.table_sizes
    mixed = cfg.mixed
    if mixed.mode == "uniform":
        return [cfg.bits] * len(sizes), None
    if mixed.mode == "rule":
        return rule_bits(sizes, mixed.rule), None
    if not eval_batches:
        raise ValueError("mixed precision mode 'measured' needs held-out evaluation batches")
    weights = table_weights(emb)
    offs = emb.table_offsets.tolist()
    trial_model = copy.deepcopy(model)  # its weight is overwritten per trial; the caller's model is untouched
    trial_weight = trial_model.embedding.weight
    decoded: dict[tuple[int, int], torch.Tensor] = {}

    def ne_for(assignment: Sequence[int | None]) -> float:
        with torch.no_grad():
            trial_weight.copy_(emb.weight)
            for f, bits in enumerate(assignment):
                if bits is not None:
                    if (f, bits) not in decoded:
                        decoded[(f, bits)] = quantize_table(weights[f], cfg, bits).dequantize()
                    trial_weight[offs[f]: offs[f + 1]] = decoded[(f, bits)]
        return evaluate_ne(trial_model, eval_batches)

    choice = measured_bits([fp32_bytes(n, emb.embedding_dim) for n in sizes], ne_for, mixed.candidates,
                           mixed.ne_tolerance)
    return choice.bits, choice


def quantize_collection(collection: EmbeddingCollection, cfg: TableQuantConfig,
                        bits: Sequence[int]) -> QuantizedEmbeddingCollection:
    """Quantizes every table of a float collection with ``bits[f]`` for table f."""
    weights = table_weights(collection)
    if len(bits) != len(weights):
        raise ValueError(f"quantize_collection: {len(bits)} widths for {len(weights)} tables")
    tables = [quantize_table(w, cfg, b) for w, b in zip(weights, bits)]
    return QuantizedEmbeddingCollection(tables, collection.pooling)


def quantize_model(model: GraphModel, cfg: QuantConfig, eval_batches: Sequence[Batch] | None = None) -> GraphModel:
    """A copy of ``model`` whose embedding collection is quantized (the float model is left as it is).

    Args:
        model: a built GraphModel with a float :class:`EmbeddingCollection`.
        cfg: method, bits and mixed-precision policy.
        eval_batches: held-out batches, needed only by the "measured" mixed-precision policy.

    Returns:
        The quantized model (in eval mode); its ``quant_choice`` attribute holds the measured search record
        (None for the other policies).
    """
    emb = _float_collection(model)
    cfg.validate_dim(emb.embedding_dim)  # before any (possibly long) measured search
    bits, choice = choose_bits(model, cfg, eval_batches)
    quantized = quantize_collection(emb, cfg, bits)
    out = copy.deepcopy(model, memo={id(emb): None})  # copies everything but the float tables
    out.embedding = quantized.to(emb.weight.device)
    out.quant_choice = choice
    logger.info("quantized %d tables (bits %s, method %s): %d -> %d bytes", emb.num_tables, bits, cfg.method,
                fp32_bytes(sum(emb.table_sizes), emb.embedding_dim), quantized.nbytes)
    return out.eval()
