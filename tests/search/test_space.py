"""Search space and single-token mutations: every child is a valid, acyclic, in-space spec that builds."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from recpipe.models.graph import GraphModel
from recpipe.models.spec import INPUTS, ArchSpec, BlockSpec, SpecError, dlrm_spec
from recpipe.search.mutations import MUTATIONS, mutate, neighbours, remove_block
from recpipe.search.space import SearchSpace, SpaceConfig, complexity, node_shapes
from recpipe.search.data import planted_rows

NUM_DENSE = 3
TABLES = [11, 7, 5, 9]
SEED = 1234
WALK_STEPS = 400
BUILD_EVERY = 8  # build + forward/backward every 8th child (and every kind at least once): keeps the test < 5 s


def _space(**kw) -> SearchSpace:
    cfg = SpaceConfig(embedding_dim=4, mlp_widths=(4, 8, 16), efc_fields=(2, 3), **kw)
    return SearchSpace(cfg, NUM_DENSE, len(TABLES))


def _acyclic(spec: ArchSpec) -> bool:
    """Independent check: Kahn's algorithm over the block graph consumes every block."""
    names = {b.name for b in spec.blocks}
    indeg = {b.name: sum(s in names for s in b.inputs) for b in spec.blocks}
    consumers = collections.defaultdict(list)
    for b in spec.blocks:
        for s in b.inputs:
            if s in names:
                consumers[s].append(b.name)
    ready = [n for n, d in indeg.items() if d == 0]
    seen = 0
    while ready:
        n = ready.pop()
        seen += 1
        for c in consumers[n]:
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    return seen == len(spec.blocks)


def _forward_backward(spec: ArchSpec) -> None:
    torch.manual_seed(0)
    model = GraphModel(spec, NUM_DENSE, TABLES)
    batch = planted_rows(6, num_dense=NUM_DENSE, table_sizes=tuple(TABLES), seed=3).batch(0, 6)
    logits = model(batch)
    assert logits.shape == (6,)
    assert torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{spec.canonical()}: no gradient for {missing}"


def test_random_specs_are_in_space_and_shapes_match_graph_model():
    space = _space()
    rng = np.random.default_rng(SEED)
    for _ in range(20):
        spec = space.random_spec(rng)
        assert space.contains(spec), space.problems(spec)
        assert space.cfg.init_min_blocks <= len(spec.blocks) <= space.cfg.init_max_blocks
        model = GraphModel(spec, NUM_DENSE, TABLES)
        mine = node_shapes(spec, NUM_DENSE, len(TABLES))
        for b in spec.blocks:
            assert (model.shapes[b.name].kind, model.shapes[b.name].size) == (mine[b.name].kind, mine[b.name].size)


def test_random_walk_of_mutations_always_valid_acyclic_and_trainable():
    space = _space()
    rng = np.random.default_rng(SEED)
    spec = space.random_spec(rng)
    built_kinds: set[str] = set()
    kinds = collections.Counter()
    for step in range(WALK_STEPS):
        m = mutate(space, spec, rng)
        child = ArchSpec.from_dict(m.spec.to_dict())  # JSON round trip re-validates
        assert child.canonical() == m.spec.canonical()
        assert child.canonical() != spec.canonical(), f"step {step}: {m.kind} was a no-op"
        assert space.contains(child), (m.kind, space.problems(child))
        assert _acyclic(child)
        for i, b in enumerate(child.blocks):  # inputs name raw inputs or earlier blocks only
            assert set(b.inputs) <= set(INPUTS) | {x.name for x in child.blocks[:i]}
        if step % BUILD_EVERY == 0 or m.kind not in built_kinds:
            _forward_backward(child)
            built_kinds.add(m.kind)
        kinds[m.kind] += 1
        spec = child
    assert set(kinds) == set(MUTATIONS), f"kinds never drawn: {set(MUTATIONS) - set(kinds)}"


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_each_kind_alone_stays_valid(kind):
    space = _space()
    rng = np.random.default_rng(SEED)
    applied = 0
    for _ in range(30):
        parent = space.random_spec(rng)
        try:
            m = mutate(space, parent, rng, kinds=(kind,), max_tries=20)
        except SpecError:
            continue  # not applicable to this parent (e.g. no mlp block to widen)
        assert m.kind == kind
        assert space.contains(m.spec) and _acyclic(m.spec)
        n_before, n_after = len(parent.blocks), len(m.spec.blocks)
        expected = {"add_block": n_before + 1, "remove_block": n_before - 1}.get(kind, n_before)
        assert n_after == expected
        applied += 1
    assert applied >= 10


def test_remove_block_rewires_orphaned_consumer():
    space = _space()
    spec = ArchSpec(embedding_dim=4, blocks=(
        BlockSpec("a", "mlp", ("dense",), units=(8,)),
        BlockSpec("b", "fm", ("a", "sparse")),
        BlockSpec("c", "mlp", ("a",), units=(4,)),
    ))

    class _PickFirst:  # a stand-in RNG that always removes block 0 and picks the first choice
        def integers(self, n):
            return 0

        def choice(self, seq):
            return seq[0]

    child, _ = remove_block(space, spec, _PickFirst())
    assert [b.name for b in child.blocks] == ["b", "c"]
    assert child.blocks[0].inputs == ("sparse",)  # lost "a", kept its other input
    assert child.blocks[1].inputs == ("dense",)  # lost its only input, now reads a's input


def test_space_limits_are_enforced():
    space = _space(max_blocks=3, init_max_blocks=3, max_inputs=2)
    rng = np.random.default_rng(SEED)
    spec = space.random_spec(rng)
    for _ in range(200):
        spec = mutate(space, spec, rng).spec
        assert len(spec.blocks) <= 3
        assert max(len(b.inputs) for b in spec.blocks) <= 2
    one_field_dot = ArchSpec(embedding_dim=4, blocks=(BlockSpec("x", "dot", ("dense",)),))
    assert any("degenerate" in p for p in space.problems(one_field_dot))


def test_dense_free_dataset_never_reads_dense():
    space = SearchSpace(SpaceConfig(embedding_dim=4), num_dense=0, num_sparse=3)
    rng = np.random.default_rng(SEED)
    spec = space.random_spec(rng)
    for _ in range(100):
        spec = mutate(space, spec, rng).spec
        assert all("dense" not in b.inputs for b in spec.blocks)


def test_canonical_dedup_ignores_names_and_neighbours_are_new():
    a = dlrm_spec(embedding_dim=4, bottom=(8,), top=(8,))
    renamed = ArchSpec(embedding_dim=4, blocks=tuple(
        b.replace(name=f"z_{b.name}", inputs=tuple(s if s in INPUTS else f"z_{s}" for s in b.inputs))
        for b in a.blocks))
    assert renamed.canonical() == a.canonical() and renamed.fingerprint() == a.fingerprint()
    space = _space()
    rng = np.random.default_rng(SEED)
    first = neighbours(space, a, rng, 10)
    keys = [m.spec.canonical() for m in first]
    assert len(set(keys)) == len(keys) and a.canonical() not in keys
    second = neighbours(space, a, rng, 10, exclude=set(keys))
    assert not {m.spec.canonical() for m in second} & set(keys)


def test_complexity_counts_the_matrix_products_graph_model_runs():
    """complexity() == FLOPs/2 per example measured by torch's FLOP counter (+ FM's element-wise K*D)."""
    space = _space()
    rng = np.random.default_rng(SEED)
    batch_size = 5
    batch = planted_rows(batch_size, num_dense=NUM_DENSE, table_sizes=tuple(TABLES), seed=4).batch(0, batch_size)
    specs = [space.random_spec(rng) for _ in range(12)] + [dlrm_spec(embedding_dim=4, bottom=(8, 4), top=(8,))]
    for spec in specs:
        model = GraphModel(spec, NUM_DENSE, TABLES)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(batch)
        shapes = node_shapes(spec, NUM_DENSE, len(TABLES))
        fields = {b.name: sum(shapes[s].fields() for s in b.inputs) for b in spec.blocks}
        # Not matrix products, so the FLOP counter skips them: FM's K*D products, and an EFC over ONE field
        # (einsum turns a size-1 contraction into a broadcast multiply).
        elementwise = sum(fields[b.name] * 4 for b in spec.blocks if b.type == "fm")
        elementwise += sum(b.units[0] * 4 for b in spec.blocks if b.type == "efc" and fields[b.name] == 1)
        assert counter.get_total_flops() // 2 // batch_size == \
            complexity(spec, NUM_DENSE, len(TABLES)) - elementwise, spec.canonical()
