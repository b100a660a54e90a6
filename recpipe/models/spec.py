"""The JSON architecture spec: a DAG of interaction blocks. DLRM, DCN, DeepFM and AutoCTR's searched models
are all specs, built by one model class (``recpipe.models.graph.GraphModel``).

Nodes and tensor kinds:

* Input ``"dense"``: (B, N) — the dense features. Input ``"sparse"``: (B, F, D) — the pooled embeddings.
* Every block has a ``name`` and a list of ``inputs`` naming inputs or EARLIER blocks (so the list order is a
  topological order and the graph is acyclic by construction).
* A block's output is either *flat* (B, W) or *field* (B, K, D).

Blocks (``type``):

=========  ===========  ==========================================================  ==============
type       wants        semantics                                                   output
=========  ===========  ==========================================================  ==============
mlp        flat         concat inputs → Linear+ReLU per ``units`` entry             (B, units[-1])
crossnet   flat         concat inputs (width W) → ``layers`` DCN cross layers        (B, W)
dot        field        stack inputs as fields → upper triangle of pairwise dots     (B, K(K-1)/2)
fm         field        stack inputs as fields → FM second-order vector             (B, D)
efc        field        stack inputs as fields → Linear over the field axis to       (B, units[0], D)
                        ``units[0]`` fields
=========  ===========  ==========================================================  ==============

Adapting inputs: a *flat*-wanting block flattens a field input (B, K, D) to (B, K*D). A *field*-wanting block
takes a field input as its K fields and turns a flat input (B, W) into one extra field with a Linear W→D
(identity when W == D). So every (type, inputs) combination is valid; search mutations never need repair.

Output: every block output not consumed by another block (plus none of the raw inputs) is flattened and
concatenated; a final Linear gives the logit (B,). With ``"head": [u1, u2]`` an MLP of those widths sits
before that final Linear.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from recpipe.config import JsonConfig

INPUTS = ("dense", "sparse")
BLOCK_TYPES = ("mlp", "crossnet", "dot", "fm", "efc")
FLAT_BLOCKS = ("mlp", "crossnet")
FIELD_BLOCKS = ("dot", "fm", "efc")
SPEC_VERSION = 1


class SpecError(ValueError):
    """An architecture spec is malformed; the message names the block."""


@dataclass(frozen=True)
class BlockSpec(JsonConfig):
    """One block. ``units``: MLP widths / EFC output field count; ``layers``: CrossNet depth."""

    name: str
    type: str
    inputs: tuple[str, ...]
    units: tuple[int, ...] = ()
    layers: int = 1


@dataclass(frozen=True)
class ArchSpec(JsonConfig):
    """A whole architecture. ``embedding_dim`` is D for every table."""

    blocks: tuple[BlockSpec, ...]
    embedding_dim: int = 16
    head: tuple[int, ...] = ()
    version: int = SPEC_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "head", tuple(self.head))
        self.validate()

    def validate(self) -> None:
        """Names unique, inputs refer to inputs or earlier blocks, sizes positive; raises :class:`SpecError`."""
        if self.embedding_dim < 1:
            raise SpecError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if not self.blocks:
            raise SpecError("a spec needs at least one block")
        known = set(INPUTS)
        for i, b in enumerate(self.blocks):
            where = f"block {i} ({b.name!r})"
            if not b.name or b.name in known:
                raise SpecError(f"{where}: name empty or already used")
            if b.type not in BLOCK_TYPES:
                raise SpecError(f"{where}: type {b.type!r} not in {BLOCK_TYPES}")
            if not b.inputs:
                raise SpecError(f"{where}: needs at least one input")
            for src in b.inputs:
                if src not in known:
                    raise SpecError(f"{where}: input {src!r} is neither an input nor an earlier block")
            if len(set(b.inputs)) != len(b.inputs):
                raise SpecError(f"{where}: duplicate inputs {list(b.inputs)}")
            if b.type == "mlp" and (not b.units or min(b.units) < 1):
                raise SpecError(f"{where}: mlp needs positive units")
            if b.type == "efc" and (len(b.units) != 1 or b.units[0] < 1):
                raise SpecError(f"{where}: efc needs units=[output fields >= 1]")
            if b.type == "crossnet" and b.layers < 1:
                raise SpecError(f"{where}: crossnet needs layers >= 1")
            known.add(b.name)
        if any(u < 1 for u in self.head):
            raise SpecError(f"head widths must be positive, got {list(self.head)}")

    def output_blocks(self) -> list[str]:
        """Blocks no other block consumes, in spec order: they feed the final Linear."""
        used = {src for b in self.blocks for src in b.inputs}
        return [b.name for b in self.blocks if b.name not in used]

    def canonical(self) -> str:
        """A string equal for graphs that differ only in block names (for de-duplication)."""
        rename: dict[str, str] = {k: k for k in INPUTS}
        parts = []
        for i, b in enumerate(self.blocks):
            rename[b.name] = f"#{i}"
            ins = sorted(rename[s] for s in b.inputs)
            parts.append(f"{b.type}({','.join(ins)};{list(b.units)};{b.layers if b.type == 'crossnet' else 0})")
        return f"D{self.embedding_dim}|" + "|".join(parts) + f"|head{list(self.head)}"

    def fingerprint(self) -> str:
        return hashlib.sha1(self.canonical().encode()).hexdigest()[:12]

    @classmethod
    def load(cls, path: str) -> "ArchSpec":
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def dlrm_spec(embedding_dim: int = 16, bottom: tuple[int, ...] = (64, 32), top: tuple[int, ...] = (64, 32)) -> ArchSpec:
    """DLRM: bottom MLP on dense (last width D) → dot interaction with embeddings → top MLP → logit."""
    return ArchSpec(embedding_dim=embedding_dim, blocks=(
        BlockSpec("bottom", "mlp", ("dense",), units=(*bottom, embedding_dim)),
        BlockSpec("interact", "dot", ("bottom", "sparse")),
        BlockSpec("top", "mlp", ("bottom", "interact"), units=top),
    ))


def dcn_spec(embedding_dim: int = 16, layers: int = 3, deep: tuple[int, ...] = (128, 64)) -> ArchSpec:
    """DCN: cross network and deep MLP side by side over [dense, embeddings]."""
    return ArchSpec(embedding_dim=embedding_dim, blocks=(
        BlockSpec("cross", "crossnet", ("dense", "sparse"), layers=layers),
        BlockSpec("deep", "mlp", ("dense", "sparse"), units=deep),
    ))


def deepfm_spec(embedding_dim: int = 16, deep: tuple[int, ...] = (128, 64)) -> ArchSpec:
    """DeepFM-like: FM over [dense-as-field, embeddings] beside a deep MLP."""
    return ArchSpec(embedding_dim=embedding_dim, blocks=(
        BlockSpec("fm", "fm", ("dense", "sparse")),
        BlockSpec("deep", "mlp", ("dense", "sparse"), units=deep),
    ))


PRESETS = {"dlrm": dlrm_spec, "dcn": dcn_spec, "deepfm": deepfm_spec}
