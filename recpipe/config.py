"""Frozen dataclass configs that travel between processes as JSON (never pickles).

Every step's config subclasses :class:`JsonConfig`, which gives ``to_dict``/``from_dict``/``to_json``/
``from_json`` with nested dataclasses, tuples and optional fields handled, and unknown keys rejected with
the key's name. Configs of individual subsystems live beside their code (e.g. ``recpipe.train.loop``) and
use this base.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T", bound="JsonConfig")


class ConfigError(ValueError):
    """A config mapping does not fit its dataclass; the message names the key."""


@dataclasses.dataclass(frozen=True)
class JsonConfig:
    """Base for frozen, JSON-round-trippable configs."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], d: Mapping[str, Any] | None) -> T:
        return _from_plain(cls, d or {}, cls.__name__)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text) if text else {})

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)


def _to_plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _to_plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _to_plain(x) for k, x in v.items()}
    return v


def _from_plain(tp: Any, v: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if v is None:
            return None
        return _from_plain(args[0], v, where) if len(args) == 1 else v
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(v):
            return v
        if not isinstance(v, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(v).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(v) - names
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        kwargs = {k: _from_plain(hints[k], x, f"{where}.{k}") for k, x in v.items()}
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from e
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], x, f"{where}[{i}]") for i, x in enumerate(v))
        return tuple(v)
    if origin is list:
        (a,) = typing.get_args(tp) or (Any,)
        return [_from_plain(a, x, f"{where}[{i}]") for i, x in enumerate(v)]
    if tp is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if tp is int and isinstance(v, float) and v.is_integer():
        return int(v)  # JSON via protobuf Struct (KFP parameters) turns every number into a float
    if tp in (bool, int, float, str) and (type(v) is not tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(v).__name__} {v!r}")
    return v
