"""AutoCTR's search space: DAGs of at most K interaction blocks, expressed as :class:`ArchSpec` JSON.

A :class:`SearchSpace` knows the dataset's N (dense features) and F (sparse features) and the choices a block
may take (widths, depths, field counts). It samples random architectures, checks that a spec lies inside the
space, and infers every node's output shape (needed by the complexity estimate, the encoding and the
"no degenerate interaction" rule). Mutations live in :mod:`recpipe.search.mutations`.

Shapes follow :mod:`recpipe.models.spec`: a node is either *flat* ``(B, W)`` or *field* ``(B, K, D)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from recpipe.config import JsonConfig
from recpipe.models.spec import BLOCK_TYPES, FIELD_BLOCKS, INPUTS, ArchSpec, BlockSpec, SpecError

FLAT = "flat"
FIELD = "field"


@dataclass(frozen=True)
class SpaceConfig(JsonConfig):
    """The choices of the search space.

    Attributes:
        max_blocks: K, the most blocks an architecture may have (AutoCTR uses 7).
        init_min_blocks: fewest blocks of a randomly initialised architecture.
        init_max_blocks: most blocks of a randomly initialised architecture.
        max_inputs: most inputs one block may take.
        mlp_widths: widths an MLP layer may take.
        mlp_max_layers: deepest MLP block.
        efc_fields: output field counts an EFC block may take.
        cross_max_layers: deepest CrossNet block.
        embedding_dim: D written into every spec (trials may shrink it for low fidelity).
        block_types: block types the search may use (a subset of ``recpipe.models.spec.BLOCK_TYPES``).
    """

    max_blocks: int = 7
    init_min_blocks: int = 2
    init_max_blocks: int = 4
    max_inputs: int = 3
    mlp_widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    mlp_max_layers: int = 3
    efc_fields: tuple[int, ...] = (2, 4, 8, 16)
    cross_max_layers: int = 4
    embedding_dim: int = 16
    block_types: tuple[str, ...] = BLOCK_TYPES

    def __post_init__(self) -> None:
        if self.max_blocks < 1 or not 1 <= self.init_min_blocks <= self.init_max_blocks <= self.max_blocks:
            raise SpecError(f"SpaceConfig: need 1 <= init_min_blocks <= init_max_blocks <= max_blocks, got "
                            f"{self.init_min_blocks}, {self.init_max_blocks}, {self.max_blocks}")
        if self.max_inputs < 1 or self.mlp_max_layers < 1 or self.cross_max_layers < 1:
            raise SpecError("SpaceConfig: max_inputs, mlp_max_layers and cross_max_layers must be >= 1")
        if not self.mlp_widths or not self.efc_fields or min(*self.mlp_widths, *self.efc_fields) < 1:
            raise SpecError("SpaceConfig: mlp_widths and efc_fields must be non-empty and positive")
        bad = set(self.block_types) - set(BLOCK_TYPES)
        if bad or not self.block_types:
            raise SpecError(f"SpaceConfig: block_types {sorted(bad)} not in {BLOCK_TYPES}")


@dataclass(frozen=True)
class NodeShape:
    """Output shape of a node: ``kind`` flat → (B, size); field → (B, size, D)."""

    kind: str
    size: int

    def flat_width(self, embedding_dim: int) -> int:
        """Width after a flat-wanting block flattens this node: W, or K * D."""
        return self.size if self.kind == FLAT else self.size * embedding_dim

    def fields(self) -> int:
        """Fields this node contributes to a field-wanting block: K, or 1 (a flat input becomes one field)."""
        return self.size if self.kind == FIELD else 1


def node_shapes(spec: ArchSpec, num_dense: int, num_sparse: int) -> dict[str, NodeShape]:
    """Output shape of every input and block, following ``recpipe.models.spec`` semantics.

    Args:
        spec: the architecture.
        num_dense: N.
        num_sparse: F.

    Returns:
        name → :class:`NodeShape`, inputs first then blocks in spec order.
    """
    d = spec.embedding_dim
    shapes = {"dense": NodeShape(FLAT, num_dense), "sparse": NodeShape(FIELD, num_sparse)}
    for b in spec.blocks:
        ins = [shapes[s] for s in b.inputs]
        if b.type == "mlp":
            shapes[b.name] = NodeShape(FLAT, b.units[-1])
        elif b.type == "crossnet":
            shapes[b.name] = NodeShape(FLAT, sum(s.flat_width(d) for s in ins))
        elif b.type == "dot":
            k = sum(s.fields() for s in ins)
            shapes[b.name] = NodeShape(FLAT, k * (k - 1) // 2)
        elif b.type == "fm":
            shapes[b.name] = NodeShape(FLAT, d)
        else:  # efc
            shapes[b.name] = NodeShape(FIELD, b.units[0])
    return shapes


def complexity(spec: ArchSpec, num_dense: int, num_sparse: int) -> int:
    """Multiply-adds per example of the dense (non-embedding) part, the cost term of the survival rule.

    Counts every matrix product :class:`~recpipe.models.graph.GraphModel` runs: MLP layers ``in * out``;
    CrossNet (DCN-V2, a W x W matrix per layer) ``layers * W^2``; a flat input entering a field block
    ``W * D`` (its projection to one field, skipped when W == D); dot ``K^2 D`` (the full Gram matrix);
    EFC ``K * M * D``; the optional head and the final Linear ``in * out``. FM has no matrix product; it is
    counted as its ``K * D`` element-wise products so it is not free.
    """
    d = spec.embedding_dim
    shapes = node_shapes(spec, num_dense, num_sparse)
    total = 0
    for b in spec.blocks:
        ins = [shapes[s] for s in b.inputs if shapes[s].size > 0]
        if b.type in FIELD_BLOCKS:
            total += sum(s.size * d for s in ins if s.kind == FLAT and s.size != d)
            k = sum(s.fields() for s in ins)
            if b.type == "dot":
                total += k * k * d
            elif b.type == "fm":
                total += k * d
            else:  # efc
                total += k * b.units[0] * d
        elif b.type == "mlp":
            width = sum(s.flat_width(d) for s in ins)
            for u in b.units:
                total += width * u
                width = u
        else:  # crossnet
            width = sum(s.flat_width(d) for s in ins)
            total += b.layers * width * width
    width = sum(shapes[n].flat_width(d) for n in spec.output_blocks())
    for u in (*spec.head, 1):
        total += width * u
        width = u
    return int(total)


class SearchSpace:
    """Samples and checks architectures for a dataset with N dense and F sparse features.

    Args:
        cfg: the space's choices.
        num_dense: N (0 allowed: then no block may read ``"dense"``).
        num_sparse: F (0 allowed: then no block may read ``"sparse"``).
    """

    def __init__(self, cfg: SpaceConfig, num_dense: int, num_sparse: int) -> None:
        if num_dense < 0 or num_sparse < 0 or num_dense + num_sparse == 0:
            raise SpecError(f"SearchSpace: need N >= 0, F >= 0 and N + F > 0, got N={num_dense}, F={num_sparse}")
        self.cfg = cfg
        self.num_dense = num_dense
        self.num_sparse = num_sparse
        self.raw_inputs = tuple(n for n, k in zip(INPUTS, (num_dense, num_sparse)) if k > 0)

    # ------------------------------------------------------------------ checks
    def problems(self, spec: ArchSpec) -> list[str]:
        """Why ``spec`` is outside this space (empty list when inside). The spec itself is already valid.

        Beyond the size limits: dot / FM need at least two fields (else their output is empty or zero), and
        every raw input the dataset has must be read by some block (a CTR model ignoring its ids is useless).
        """
        out: list[str] = []
        c = self.cfg
        if len(spec.blocks) > c.max_blocks:
            out.append(f"{len(spec.blocks)} blocks > max_blocks {c.max_blocks}")
        if spec.embedding_dim != c.embedding_dim:
            out.append(f"embedding_dim {spec.embedding_dim} != space's {c.embedding_dim}")
        shapes = node_shapes(spec, self.num_dense, self.num_sparse)
        for b in spec.blocks:
            where = f"block {b.name!r}"
            if b.type not in c.block_types:
                out.append(f"{where}: type {b.type!r} not searched")
            if len(b.inputs) > c.max_inputs:
                out.append(f"{where}: {len(b.inputs)} inputs > max_inputs {c.max_inputs}")
            for s in b.inputs:
                if s in INPUTS and s not in self.raw_inputs:
                    out.append(f"{where}: reads {s!r} but the dataset has no such features")
            if b.type == "mlp" and (len(b.units) > c.mlp_max_layers or set(b.units) - set(c.mlp_widths)):
                out.append(f"{where}: mlp units {list(b.units)} outside widths {list(c.mlp_widths)} "
                           f"x <= {c.mlp_max_layers} layers")
            if b.type == "efc" and b.units[0] not in c.efc_fields:
                out.append(f"{where}: efc fields {b.units[0]} not in {list(c.efc_fields)}")
            if b.type == "crossnet" and b.layers > c.cross_max_layers:
                out.append(f"{where}: crossnet layers {b.layers} > {c.cross_max_layers}")
            if b.type in ("dot", "fm") and sum(shapes[s].fields() for s in b.inputs) < 2:
                out.append(f"{where}: {b.type} over fewer than 2 fields is degenerate")
            if shapes[b.name].size < 1:
                out.append(f"{where}: empty output")
        read = {s for b in spec.blocks for s in b.inputs}
        for raw in self.raw_inputs:  # every block reaches the logit, so reading an input means using it
            if raw not in read:
                out.append(f"no block reads the {raw!r} input")
        return out

    def contains(self, spec: ArchSpec) -> bool:
        return not self.problems(spec)

    def complexity(self, spec: ArchSpec) -> int:
        return complexity(spec, self.num_dense, self.num_sparse)

    # ------------------------------------------------------------------ random sampling
    def random_block(self, rng: np.random.Generator, name: str, available: list[str]) -> BlockSpec:
        """A random block named ``name`` reading one or two (at most ``max_inputs``) of ``available``.

        Later nodes are picked more often (weight = position), so random graphs are deep as well as wide.
        """
        btype = str(rng.choice(self.cfg.block_types))
        n_in = int(rng.integers(1, min(self.cfg.max_inputs, len(available), 2) + 1))
        w = np.arange(1, len(available) + 1, dtype=float)
        picks = rng.choice(len(available), size=n_in, replace=False, p=w / w.sum())
        inputs = tuple(available[i] for i in sorted(picks))
        return self.block_of_type(rng, name, btype, inputs)

    def block_of_type(self, rng: np.random.Generator, name: str, btype: str, inputs: tuple[str, ...]) -> BlockSpec:
        """A block of ``btype`` reading ``inputs``, with random settings drawn from the space's choices."""
        c = self.cfg
        if btype == "mlp":
            depth = int(rng.integers(1, c.mlp_max_layers + 1))
            units = tuple(int(x) for x in rng.choice(c.mlp_widths, size=depth))
            return BlockSpec(name, "mlp", inputs, units=units)
        if btype == "efc":
            return BlockSpec(name, "efc", inputs, units=(int(rng.choice(c.efc_fields)),))
        if btype == "crossnet":
            return BlockSpec(name, "crossnet", inputs, layers=int(rng.integers(1, c.cross_max_layers + 1)))
        return BlockSpec(name, btype, inputs)

    def random_spec(self, rng: np.random.Generator, max_tries: int = 1000) -> ArchSpec:
        """A random architecture inside the space (init_min_blocks..init_max_blocks blocks)."""
        c = self.cfg
        for _ in range(max_tries):
            n = int(rng.integers(c.init_min_blocks, c.init_max_blocks + 1))
            available = list(self.raw_inputs)
            blocks = []
            for i in range(n):
                blk = self.random_block(rng, f"b{i}", available)
                blocks.append(blk)
                available.append(blk.name)
            spec = ArchSpec(blocks=tuple(blocks), embedding_dim=c.embedding_dim)
            if self.contains(spec):
                return spec
        raise SpecError(f"SearchSpace: no valid random spec in {max_tries} tries; space config {c.to_dict()}")


def fresh_name(spec: ArchSpec) -> str:
    """A block name ``b<i>`` not used in ``spec``."""
    used = {b.name for b in spec.blocks}
    i = len(spec.blocks)
    while f"b{i}" in used:
        i += 1
    return f"b{i}"


def spec_from_mapping(d: Mapping[str, object], *, where: str) -> ArchSpec:
    """Parses a spec dict (from JSON) naming ``where`` (file and line) on failure."""
    try:
        return ArchSpec.from_dict(d)  # type: ignore[arg-type]
    except (SpecError, TypeError, ValueError, KeyError) as e:
        raise SpecError(f"{where}: invalid architecture spec: {e}") from e
