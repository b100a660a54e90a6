"""JsonConfig: nested frozen dataclasses round-trip through JSON; unknown keys are named."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from recpipe.config import ConfigError, JsonConfig
from recpipe.models.spec import ArchSpec, BlockSpec, SpecError, dcn_spec, deepfm_spec, dlrm_spec


@dataclass(frozen=True)
class Inner(JsonConfig):
    lr: float = 0.1
    widths: tuple[int, ...] = (4, 2)


@dataclass(frozen=True)
class Outer(JsonConfig):
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    optional: Inner | None = None
    tags: dict = field(default_factory=dict)


def test_roundtrip_nested():
    o = Outer(name="y", inner=Inner(lr=0.5, widths=(8,)), optional=Inner(), tags={"a": 1})
    assert Outer.from_json(o.to_json()) == o
    assert Outer.from_dict({"inner": {"lr": 1}}).inner.lr == 1.0
    assert isinstance(Outer.from_dict({"inner": {"lr": 1}}).inner.lr, float)
    assert Outer.from_dict({}) == Outer()


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"Outer.inner: unknown keys \['lrr'\]"):
        Outer.from_dict({"inner": {"lrr": 1}})
    with pytest.raises(ConfigError, match="expected a mapping"):
        Outer.from_dict({"inner": 3})


@pytest.mark.parametrize("spec", [dlrm_spec(), dcn_spec(), deepfm_spec()])
def test_arch_spec_presets_roundtrip(spec):
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec and again.fingerprint() == spec.fingerprint()


def test_spec_validation_and_canonical_form():
    with pytest.raises(SpecError, match="input 'later' is neither"):
        ArchSpec(blocks=(BlockSpec("a", "mlp", ("later",), units=(4,)), BlockSpec("later", "mlp", ("dense",), (4,))))
    with pytest.raises(SpecError, match="type 'attn'"):
        ArchSpec(blocks=(BlockSpec("a", "attn", ("dense",)),))
    with pytest.raises(SpecError, match="efc needs units"):
        ArchSpec(blocks=(BlockSpec("a", "efc", ("sparse",)),))
    a = ArchSpec(blocks=(BlockSpec("x", "dot", ("sparse", "dense")), BlockSpec("y", "mlp", ("x",), (8,))))
    b = ArchSpec(blocks=(BlockSpec("p", "dot", ("dense", "sparse")), BlockSpec("q", "mlp", ("p",), (8,))))
    c = ArchSpec(blocks=(BlockSpec("p", "fm", ("dense", "sparse")), BlockSpec("q", "mlp", ("p",), (8,))))
    assert a.canonical() == b.canonical() and a.canonical() != c.canonical()
    assert a.output_blocks() == ["y"]
    assert dcn_spec().output_blocks() == ["cross", "deep"]


def test_integral_floats_from_kfp_structs_become_ints():
    o = Inner.from_dict({"lr": 1, "widths": [4.0, 2.0]})
    assert o.widths == (4, 2) and all(type(x) is int for x in o.widths)
    assert type(o.lr) is float
    assert Outer.from_dict({"optional": {"widths": [3.0]}}).optional.widths == (3,)


def test_schema_ints_survive_float_round_trip():
    from recpipe.schema import Schema, criteo_schema

    d = criteo_schema(20000).to_dict()
    for f in d["sparse"]:
        f["num_embeddings"] = float(f["num_embeddings"])
    s = Schema.from_dict(d)
    assert s.table_sizes() == [20000] * 26 and all(type(x) is int for x in s.table_sizes())


@pytest.mark.parametrize("payload,needle", [
    ({"name": 3}, "Outer.name: expected str, got int"),
    ({"inner": {"lr": "0.1"}}, "Outer.inner.lr: expected float, got str"),
    ({"inner": {"widths": [4, 0.5]}}, r"Outer.inner.widths\[1\]: expected int, got float"),
    ({"inner": {"widths": [True]}}, r"Outer.inner.widths\[0\]: expected int, got bool"),
])
def test_scalar_types_are_checked(payload, needle):
    with pytest.raises(ConfigError, match=needle):
        Outer.from_dict(payload)


@dataclass(frozen=True)
class Flags(JsonConfig):
    enabled: bool = False


def test_string_false_is_not_silently_truthy():
    with pytest.raises(ConfigError, match="Flags.enabled: expected bool, got str"):
        Flags.from_dict({"enabled": "false"})
    assert Flags.from_dict({"enabled": True}).enabled is True
