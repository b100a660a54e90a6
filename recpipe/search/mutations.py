"""Single-token mutations of an architecture (AutoCTR section 3): each changes ONE thing in the DAG.

Every mutation returns a spec that :class:`~recpipe.models.spec.ArchSpec` validates (block inputs only name
raw inputs or EARLIER blocks, so the graph stays acyclic by construction) and that lies inside the
:class:`~recpipe.search.space.SearchSpace`; :func:`mutate` retries until the result differs from the parent
as a graph (``canonical()``), so a mutation is never a no-op.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from recpipe.models.spec import ArchSpec, BlockSpec, SpecError
from recpipe.search.space import SearchSpace, fresh_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mutation:
    """A mutated child: the new ``spec``, the mutation ``kind`` and a human-readable ``detail``."""

    spec: ArchSpec
    kind: str
    detail: str


MutationFn = Callable[[SearchSpace, ArchSpec, np.random.Generator], "tuple[ArchSpec, str] | None"]


def _with_blocks(spec: ArchSpec, blocks: list[BlockSpec]) -> ArchSpec:
    return ArchSpec(blocks=tuple(blocks), embedding_dim=spec.embedding_dim, head=spec.head,
                    version=spec.version, extra=spec.extra)


def _replace(block: BlockSpec, **changes: object) -> BlockSpec:
    return block.replace(**changes)


def change_type(space: SearchSpace, spec: ArchSpec, rng: np.random.Generator) -> tuple[ArchSpec, str] | None:
    """Changes one block's type (mlp/fm/dot/efc/crossnet), keeping its inputs."""
    i = int(rng.integers(len(spec.blocks)))
    old = spec.blocks[i]
    choices = [t for t in space.cfg.block_types if t != old.type]
    if not choices:
        return None
    new_type = str(rng.choice(choices))
    blocks = list(spec.blocks)
    blocks[i] = space.block_of_type(rng, old.name, new_type, old.inputs)
    return _with_blocks(spec, blocks), f"{old.name}: {old.type} -> {new_type}"


def add_edge(space: SearchSpace, spec: ArchSpec, rng: np.random.Generator) -> tuple[ArchSpec, str] | None:
    """Adds one input edge from a raw input or an earlier block."""
    i = int(rng.integers(len(spec.blocks)))
    b = spec.blocks[i]
    if len(b.inputs) >= space.cfg.max_inputs:
        return None
    cands = [n for n in (*space.raw_inputs, *(x.name for x in spec.blocks[:i])) if n not in b.inputs]
    if not cands:
        return None
    src = str(rng.choice(cands))
    order = {n: k for k, n in enumerate((*space.raw_inputs, *(x.name for x in spec.blocks)))}
    blocks = list(spec.blocks)
    blocks[i] = _replace(b, inputs=tuple(sorted((*b.inputs, src), key=order.__getitem__)))
    return _with_blocks(spec, blocks), f"{b.name}: + input {src}"


def remove_edge(space: SearchSpace, spec: ArchSpec, rng: np.random.Generator) -> tuple[ArchSpec, str] | None:
    """Removes one input edge of a block that has at least two."""
    multi = [i for i, b in enumerate(spec.blocks) if len(b.inputs) >= 2]
    if not multi:
        return None
    i = int(rng.choice(multi))
    b = spec.blocks[i]
    src = str(rng.choice(b.inputs))
    blocks = list(spec.blocks)
    blocks[i] = _replace(b, inputs=tuple(s for s in b.inputs if s != src))
    return _with_blocks(spec, blocks), f"{b.name}: - input {src}"


def change_width(space: SearchSpace, spec: ArchSpec, rng: np.random.Generator) -> tuple[ArchSpec, str] | None:
    """Changes one MLP layer's width or an EFC block's output field count."""
    c = space.cfg
    cands = [i for i, b in enumerate(spec.blocks) if b.type in ("mlp", "efc")]
    if not cands:
        return None
    i = int(rng.choice(cands))
    b = spec.blocks[i]
    j = int(rng.integers(len(b.units)))
    options = [w for w in (c.mlp_widths if b.type == "mlp" else c.efc_fields) if w != b.units[j]]
    if not options:
        return None
    w = int(rng.choice(options))
    units = list(b.units)
    units[j] = w
    blocks = list(spec.blocks)
    blocks[i] = _replace(b, units=tuple(units))
    return _with_blocks(spec, blocks), f"{b.name}: units[{j}] {b.units[j]} -> {w}"


def change_depth(space: SearchSpace, spec: ArchSpec, rng: np.random.Generator) -> tuple[ArchSpec, str] | None:
    """Adds or removes one MLP layer, or one CrossNet layer."""
    c = space.cfg
    cands = [i for i, b in enumerate(spec.blocks) if b.type in ("mlp", "crossnet")]
    if not cands:
        return None
    i = int(rng.choice(cands))
    b = spec.blocks[i]
    depth, cap = (len(b.units), c.mlp_max_layers) if b.type == "mlp" else (b.layers, c.cross_max_layers)
    moves = [m for m in (-1, 1) if 1 <= depth + m <= cap]
    if not moves:
        return None
    m = int(rng.choice(moves))
    blocks = list(spec.blocks)
    if b.type == "crossnet":
        blocks[i] = _replace(b, layers=b.layers + m)
    elif m > 0:
        j = int(rng.integers(len(b.units) + 1))
        units = (*b.units[:j], int(rng.choice(c.mlp_widths)), *b.units[j:])
        blocks[i] = _replace(b, units=units)
    else:
        j = int(rng.integers(len(b.units)))
        blocks[i] = _replace(b, units=tuple(u for k, u in enumerate(b.units) if k != j))
    return _with_blocks(spec, blocks), f"{b.name}: depth {depth} -> {depth + m}"


def add_block(space: SearchSpace, spec: ArchSpec, rng: np.random.Generator) -> tuple[ArchSpec, str] | None:
    """Inserts a random block at a random position, reading raw inputs and/or blocks before it."""
    if len(spec.blocks) >= space.cfg.max_blocks:
        return None
    p = int(rng.integers(len(spec.blocks) + 1))
    available = [*space.raw_inputs, *(b.name for b in spec.blocks[:p])]
    new = space.random_block(rng, fresh_name(spec), available)
    blocks = [*spec.blocks[:p], new, *spec.blocks[p:]]
    return _with_blocks(spec, blocks), f"+ block {new.name} ({new.type}) at {p} <- {list(new.inputs)}"


def remove_block(space: SearchSpace, spec: ArchSpec, rng: np.random.Generator) -> tuple[ArchSpec, str] | None:
    """Removes one block; a consumer left without inputs reads one of the removed block's inputs instead."""
    if len(spec.blocks) < 2:
        return None
    i = int(rng.integers(len(spec.blocks)))
    gone = spec.blocks[i]
    blocks = []
    for b in spec.blocks[:i] + spec.blocks[i + 1:]:
        if gone.name in b.inputs:
            rest = tuple(s for s in b.inputs if s != gone.name)
            b = _replace(b, inputs=rest or (str(rng.choice(gone.inputs)),))
        blocks.append(b)
    return _with_blocks(spec, blocks), f"- block {gone.name} ({gone.type})"


MUTATIONS: dict[str, MutationFn] = {
    "change_type": change_type,
    "add_edge": add_edge,
    "remove_edge": remove_edge,
    "change_width": change_width,
    "change_depth": change_depth,
    "add_block": add_block,
    "remove_block": remove_block,
}
"""Every single-token mutation, by name (the name is recorded in the search history)."""


def mutate(space: SearchSpace, spec: ArchSpec, rng: np.random.Generator, *, kinds: tuple[str, ...] | None = None,
           max_tries: int = 200) -> Mutation:
    """One random single-token mutation of ``spec`` that stays in ``space`` and changes the graph.

    Args:
        space: the search space (the child must satisfy :meth:`SearchSpace.contains`).
        spec: the parent.
        rng: randomness (the only source, so a seed reproduces the child).
        kinds: restrict to these mutation names (default: all of :data:`MUTATIONS`).
        max_tries: attempts before giving up.

    Raises:
        SpecError: when no mutation applies (e.g. a one-block space with one block type).
    """
    names = list(kinds or MUTATIONS)
    unknown = set(names) - set(MUTATIONS)
    if unknown:
        raise SpecError(f"mutate: unknown mutation kinds {sorted(unknown)}; known {sorted(MUTATIONS)}")
    parent = spec.canonical()
    for _ in range(max_tries):
        kind = str(rng.choice(names))
        out = MUTATIONS[kind](space, spec, rng)
        if out is None:
            continue
        child, detail = out
        if child.canonical() != parent and space.contains(child):
            return Mutation(child, kind, detail)
    raise SpecError(f"mutate: no valid mutation of {spec.canonical()} in {max_tries} tries (kinds {names})")


def neighbours(space: SearchSpace, spec: ArchSpec, rng: np.random.Generator, n: int,
               exclude: set[str] | frozenset[str] = frozenset()) -> list[Mutation]:
    """Up to ``n`` distinct mutations of ``spec`` whose canonical forms are not in ``exclude``.

    Used to build the candidate pool the ranker scores. Fewer than ``n`` come back when the neighbourhood is
    exhausted (tries are bounded by ``20 * n``).
    """
    seen = set(exclude) | {spec.canonical()}
    out: list[Mutation] = []
    for _ in range(20 * n):
        if len(out) >= n:
            break
        m = mutate(space, spec, rng)
        key = m.spec.canonical()
        if key not in seen:
            seen.add(key)
            out.append(m)
    if len(out) < n:
        logger.debug("neighbours: only %d of %d new mutations of %s", len(out), n, spec.fingerprint())
    return out
