"""The one model class: builds any :class:`recpipe.models.spec.ArchSpec` (DLRM, DCN, DeepFM, searched graphs).

Semantics follow ``spec.py`` exactly:

* inputs: ``"dense"`` is flat (B, N); ``"sparse"`` is field (B, F, D) from the :class:`EmbeddingCollection`;
* flat-wanting blocks (mlp, crossnet) flatten field inputs (B, K, D) → (B, K*D) and concatenate;
* field-wanting blocks (dot, fm, efc) stack field inputs as fields and turn each flat input (B, W) into one
  more field with a Linear W → D (identity when W == D);
* the outputs of blocks nobody consumes are flattened, concatenated, passed through the optional ``head`` MLP
  and a final Linear to one logit per example.

An input of zero size (no dense features, no sparse features, a dot block over one field) contributes nothing
to the blocks that consume it; a block left with nothing at all is a :class:`SpecError`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from recpipe.data.batch import Batch
from recpipe.models.spec import FLAT_BLOCKS, ArchSpec, BlockSpec, SpecError
from recpipe.modules.embedding import EmbeddingCollection
from recpipe.modules.interaction import EFC, CrossNet, DotInteraction, FMInteraction
from recpipe.modules.mlp import MLP, dlrm_init_

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeShape:
    """A node's output kind: ``flat`` with ``size`` = W columns, or ``field`` with ``size`` = K fields of D."""

    kind: str
    size: int

    def flat_width(self, dim: int) -> int:
        """Columns after flattening: W, or K * D."""
        return self.size if self.kind == "flat" else self.size * dim


class _FlatToField(nn.Module):
    """(B, W) → (B, 1, D) with a Linear W → D, or a reshape when W == D."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.proj: nn.Module = nn.Identity() if width == dim else nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).unsqueeze(1)  # (B, 1, D)


class _Flatten(nn.Module):
    """(B, K, D) → (B, K*D); flat inputs pass through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)  # (B, K*D)


class GraphBlock(nn.Module):
    """One spec block: per-input adapters, then the block's layer.

    Attributes:
        spec: the block's :class:`BlockSpec`.
        sources: names of the inputs actually used (zero-size inputs dropped), aligned with ``adapters``.
        shape: the output :class:`NodeShape`.
    """

    def __init__(self, spec: BlockSpec, in_shapes: dict[str, NodeShape], dim: int) -> None:
        super().__init__()
        self.spec = spec
        self.sources = [s for s in spec.inputs if in_shapes[s].size > 0]
        if not self.sources:
            raise SpecError(f"block {spec.name!r}: every input ({', '.join(spec.inputs)}) is empty "
                            f"(no dense/sparse features or a zero-width block)")
        adapters: list[nn.Module] = []
        if spec.type in FLAT_BLOCKS:
            width = 0
            for s in self.sources:
                adapters.append(_Flatten())
                width += in_shapes[s].flat_width(dim)
            if spec.type == "mlp":
                self.op: nn.Module = MLP(width, spec.units)
                self.shape = NodeShape("flat", int(spec.units[-1]))
            else:
                self.op = CrossNet(width, spec.layers)
                self.shape = NodeShape("flat", width)
        else:
            fields = 0
            for s in self.sources:
                shp = in_shapes[s]
                adapters.append(nn.Identity() if shp.kind == "field" else _FlatToField(shp.size, dim))
                fields += shp.size if shp.kind == "field" else 1
            if spec.type == "dot":
                self.op = DotInteraction(fields)
                self.shape = NodeShape("flat", fields * (fields - 1) // 2)
            elif spec.type == "fm":
                self.op = FMInteraction()
                self.shape = NodeShape("flat", dim)
            else:  # efc
                self.op = EFC(fields, int(spec.units[0]))
                self.shape = NodeShape("field", int(spec.units[0]))
        self.adapters = nn.ModuleList(adapters)
        self.field_input = spec.type not in FLAT_BLOCKS

    def forward(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Consumes the named node outputs; returns (B, W) or (B, K, D)."""
        parts = [a(values[s]) for a, s in zip(self.adapters, self.sources)]
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, K, D) or (B, W)
        return self.op(x)


class GraphModel(nn.Module):
    """A CTR model built from an architecture spec.

    Args:
        spec: the architecture.
        num_dense: N, dense features per example.
        table_sizes: rows of each of the F embedding tables (may be empty for dense-only data).
        pooling: ``"sum"`` or ``"mean"`` pooling of multi-hot bags.

    Attributes:
        embedding: the :class:`EmbeddingCollection` (None when F = 0). Anything with the same
            ``forward(indices, offsets, batch_size) -> (B, F, D)`` may replace it (e.g. a quantized collection).
            It checks ids against table sizes every call (one host sync on GPU); set
            ``model.embedding.validate_indices = False`` once the data is known to be in range.
        blocks: the spec's blocks in spec order.
        head: optional MLP over the concatenated outputs; ``out``: final Linear → 1 logit.
    """

    def __init__(self, spec: ArchSpec, num_dense: int, table_sizes: Sequence[int], pooling: str = "sum") -> None:
        super().__init__()
        spec.validate()
        if num_dense < 0:
            raise SpecError(f"num_dense must be >= 0, got {num_dense}")
        self.spec = spec
        self.num_dense = int(num_dense)
        self.pooling = pooling
        dim = spec.embedding_dim
        self.embedding = EmbeddingCollection(table_sizes, dim, pooling=pooling) if len(table_sizes) else None
        shapes: dict[str, NodeShape] = {"dense": NodeShape("flat", self.num_dense),
                                        "sparse": NodeShape("field", len(table_sizes))}
        blocks = []
        for b in spec.blocks:
            block = GraphBlock(b, shapes, dim)
            shapes[b.name] = block.shape
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.output_names = [n for n in spec.output_blocks() if shapes[n].size > 0]
        width = sum(shapes[n].flat_width(dim) for n in self.output_names)
        if width == 0:
            raise SpecError(f"output blocks {spec.output_blocks()} produce no columns")
        self.head = MLP(width, spec.head) if spec.head else None
        self.out = nn.Linear(self.head.out_features if self.head is not None else width, 1)
        dlrm_init_(self.out)
        self.shapes = shapes
        self.schema = None  # set by build_model/load_model: the dataset Schema, when known

    @property
    def table_sizes(self) -> list[int]:
        """Current rows of each embedding table (grows with :meth:`grow_tables`)."""
        if self.embedding is None:
            return []
        return list(self.embedding.table_sizes)

    @property
    def num_sparse(self) -> int:
        """F."""
        return self.shapes["sparse"].size

    def config_dict(self) -> dict[str, Any]:
        """What :func:`recpipe.models.io.save_model` writes to rebuild this model."""
        return {"spec": self.spec.to_dict(), "num_dense": self.num_dense, "table_sizes": self.table_sizes,
                "pooling": self.pooling}

    def grow_tables(self, new_sizes: Sequence[int]) -> None:
        """Appends rows to embedding tables; see :meth:`EmbeddingCollection.grow`."""
        if self.embedding is None:
            raise ValueError("grow_tables: this model has no embedding tables")
        self.embedding.grow(new_sizes)

    def score(self, dense: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Logits from raw tensors.

        Args:
            dense: (B, N) float dense features.
            indices: (T,) int64 table-local sparse ids (TBE layout).
            offsets: (F * B + 1,) int64 feature-major bag boundaries.

        Returns:
            (B,) logits.
        """
        if dense.dim() != 2 or dense.shape[1] != self.num_dense:
            raise ValueError(f"GraphModel: dense must be (B, {self.num_dense}), got {tuple(dense.shape)}")
        batch = dense.shape[0]
        values: dict[str, torch.Tensor] = {"dense": dense}
        if self.embedding is not None:
            values["sparse"] = self.embedding(indices, offsets, batch)  # (B, F, D)
        for spec, block in zip(self.spec.blocks, self.blocks):
            values[spec.name] = block(values)
        outs = [values[n].flatten(1) for n in self.output_names]  # each (B, W_i)
        x = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # (B, sum W_i)
        if self.head is not None:
            x = self.head(x)
        return self.out(x).squeeze(-1)  # (B,)

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B,) logits for a :class:`Batch`."""
        return self.score(batch.dense, batch.indices, batch.offsets)
