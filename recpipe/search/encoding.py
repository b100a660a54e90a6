"""Fixed-length vector encoding of an architecture, the ranker's input features.

For a space of at most K blocks the vector has K slots followed by global counts. Slot ``j`` (the j-th block
in spec order, zeros when absent) holds:

* present flag, type one-hot (5, in ``BLOCK_TYPES`` order), is-output flag;
* input adjacency over ``[dense, sparse, block 0 .. block K-2]`` (K + 1 entries; only earlier blocks can be set);
* log2 of the output size (W for flat, K*D for field), MLP depth, log2 of the mean MLP width,
  log2 of the EFC field count, CrossNet layers, number of inputs.

Globals: number of blocks, number of edges, per-type counts (5), number of output blocks, longest path
length, log10 of :func:`~recpipe.search.space.complexity`, and how often each raw input is read (2).
"""
from __future__ import annotations

import math

import numpy as np

from recpipe.models.spec import BLOCK_TYPES, INPUTS, ArchSpec
from recpipe.search.space import SearchSpace, node_shapes

_SLOT_SCALARS = ("log2_out", "mlp_depth", "log2_mlp_width", "log2_efc_fields", "cross_layers", "num_inputs")
_GLOBALS = ("num_blocks", "num_edges", *(f"count_{t}" for t in BLOCK_TYPES), "num_outputs", "longest_path",
            "log10_complexity", "reads_dense", "reads_sparse")


def feature_names(max_blocks: int) -> list[str]:
    """Names of the encoding's columns, in order (for logging feature importances)."""
    names: list[str] = []
    for j in range(max_blocks):
        names += [f"s{j}_present", *(f"s{j}_{t}" for t in BLOCK_TYPES), f"s{j}_is_output"]
        names += [f"s{j}_in_{src}" for src in (*INPUTS, *(f"b{k}" for k in range(max_blocks - 1)))]
        names += [f"s{j}_{x}" for x in _SLOT_SCALARS]
    return names + list(_GLOBALS)


def encoding_size(max_blocks: int) -> int:
    return len(feature_names(max_blocks))


def encode(space: SearchSpace, spec: ArchSpec) -> np.ndarray:
    """Encodes ``spec`` as a float32 vector of length :func:`encoding_size` ``(space.cfg.max_blocks)``.

    Specs with the same ``canonical()`` get the same vector (inputs are positional, names never appear).
    """
    k = space.cfg.max_blocks
    if len(spec.blocks) > k:
        raise ValueError(f"encode: spec has {len(spec.blocks)} blocks, space allows {k}")
    d = spec.embedding_dim
    shapes = node_shapes(spec, space.num_dense, space.num_sparse)
    pos = {name: i for i, name in enumerate(INPUTS)}
    pos.update({b.name: len(INPUTS) + i for i, b in enumerate(spec.blocks)})
    outputs = set(spec.output_blocks())
    slot_len = 1 + len(BLOCK_TYPES) + 1 + (k + 1) + len(_SLOT_SCALARS)
    vec = np.zeros(k * slot_len + len(_GLOBALS), dtype=np.float32)
    depth: dict[str, int] = {name: 0 for name in INPUTS}
    for j, b in enumerate(spec.blocks):
        o = j * slot_len
        vec[o] = 1.0
        vec[o + 1 + BLOCK_TYPES.index(b.type)] = 1.0
        vec[o + 1 + len(BLOCK_TYPES)] = float(b.name in outputs)
        adj = o + 2 + len(BLOCK_TYPES)
        for src in b.inputs:
            vec[adj + pos[src]] = 1.0
        sc = adj + k + 1
        vec[sc] = math.log2(1 + shapes[b.name].flat_width(d))
        if b.type == "mlp":
            vec[sc + 1] = len(b.units)
            vec[sc + 2] = math.log2(sum(b.units) / len(b.units))
        if b.type == "efc":
            vec[sc + 3] = math.log2(b.units[0])
        if b.type == "crossnet":
            vec[sc + 4] = b.layers
        vec[sc + 5] = len(b.inputs)
        depth[b.name] = 1 + max(depth[s] for s in b.inputs)
    g = k * slot_len
    vec[g] = len(spec.blocks)
    vec[g + 1] = sum(len(b.inputs) for b in spec.blocks)
    for t_i, t in enumerate(BLOCK_TYPES):
        vec[g + 2 + t_i] = sum(b.type == t for b in spec.blocks)
    g2 = g + 2 + len(BLOCK_TYPES)
    vec[g2] = len(outputs)
    vec[g2 + 1] = max(depth[b.name] for b in spec.blocks)
    vec[g2 + 2] = math.log10(1 + space.complexity(spec))
    vec[g2 + 3] = sum("dense" in b.inputs for b in spec.blocks)
    vec[g2 + 4] = sum("sparse" in b.inputs for b in spec.blocks)
    return vec


def encode_many(space: SearchSpace, specs: list[ArchSpec]) -> np.ndarray:
    """(len(specs), encoding_size) float32 matrix."""
    if not specs:
        return np.zeros((0, encoding_size(space.cfg.max_blocks)), dtype=np.float32)
    return np.stack([encode(space, s) for s in specs])
