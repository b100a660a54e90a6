"""Feature schema and the Parquet contract between ingestion and training.

A :class:`Schema` names the label, the dense (numeric) features and the sparse (categorical) features of a
dataset, plus the optional event-time / day columns. It is the single source of truth for:

* how raw input is parsed (column order of a TSV/CSV, or column names of a Parquet input),
* the Arrow schema of the *processed* day-partitioned Parquet that training reads
  (``label: float32``, dense ``float32``, sparse ``int64`` or ``list<int64>`` for multi-hot, ``day: string``),
* the embedding-table sizes the model builds (``num_embeddings`` per sparse feature).

Only pyarrow and the standard library are imported here (see DESIGN.md's layering table), so Beam workers and
the training core share it.

Example YAML a user brings for a non-Criteo dataset::

    name: shop_clicks
    label: {name: clicked}
    dense:
      - {name: price, transform: log1p}
      - {name: age_days}
    sparse:
      - {name: user_id, num_embeddings: 1000000}
      - {name: tags, multi_hot: true, separator: "|", num_embeddings: 5000}
    event_time: {name: ts, unit: s}
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pyarrow as pa

SCHEMA_VERSION = 1
"""Version of the processed-Parquet contract; bumped on any incompatible change."""

DAY_COLUMN = "day"
"""Column (and hive partition key) holding the ISO date ``YYYY-MM-DD`` of each processed row."""

ROW_ID_COLUMN = "row_id"
"""Optional int64 column: position of the row inside its day, used for exactly-once cursors."""

DENSE_TRANSFORMS = ("none", "log1p")
SPARSE_ENCODINGS = ("hash", "vocab")


class SchemaError(ValueError):
    """Raised when a schema file or a table does not match the contract; the message names the field."""


@dataclass(frozen=True)
class LabelSpec:
    """The binary label column: raw values must be 0 or 1 (anything else is a bad row)."""

    name: str = "label"


@dataclass(frozen=True)
class DenseFeature:
    """A numeric feature.

    Attributes:
        name: column name.
        fill_value: value used where the raw value is missing.
        clip_min: raw values below this are clipped (Criteo has a few negative counts); ``None`` disables.
        transform: ``"log1p"`` (default, for heavy-tailed counts) or ``"none"``.
    """

    name: str
    fill_value: float = 0.0
    clip_min: float | None = 0.0
    transform: str = "log1p"


@dataclass(frozen=True)
class SparseFeature:
    """A categorical feature, one id per row or several (multi-hot).

    Attributes:
        name: column name.
        num_embeddings: id space after encoding: hash bucket count, or the vocabulary capacity hint.
        multi_hot: whether a row carries a list of values (raw: ``separator``-joined string or a list column).
        separator: separator of multi-hot raw strings.
        encoding: ``"hash"`` (fixed-seed hashing into ``num_embeddings`` buckets) or ``"vocab"``
            (append-only frequency-thresholded vocabulary).
        min_count: with ``"vocab"``, values seen fewer times than this map to the reserved rare id.
        embedding_dim: optional embedding dim of this feature; the current models use one D for every table,
            so it must be None or equal to the architecture's D (the model builder checks and names the field).
    """

    name: str
    num_embeddings: int = 1 << 20
    multi_hot: bool = False
    separator: str = "|"
    encoding: str = "hash"
    min_count: int = 1
    embedding_dim: int | None = None


@dataclass(frozen=True)
class EventTime:
    """Optional event-time column: ``unit`` is ``s`` or ``ms`` since the epoch (UTC)."""

    name: str
    unit: str = "s"


@dataclass(frozen=True)
class Schema:
    """A dataset's feature schema. Construct directly, from :func:`criteo_schema`, or :meth:`load`."""

    name: str
    label: LabelSpec
    dense: tuple[DenseFeature, ...]
    sparse: tuple[SparseFeature, ...]
    event_time: EventTime | None = None
    version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dense", tuple(self.dense))
        object.__setattr__(self, "sparse", tuple(self.sparse))
        self.validate()

    # ------------------------------------------------------------------ properties
    @property
    def dense_names(self) -> list[str]:
        return [f.name for f in self.dense]

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def num_dense(self) -> int:
        """N, the number of dense features."""
        return len(self.dense)

    @property
    def num_sparse(self) -> int:
        """F, the number of sparse features."""
        return len(self.sparse)

    @property
    def raw_columns(self) -> list[str]:
        """Column order of a raw delimited file: label, dense..., sparse... (Criteo's layout)."""
        return [self.label.name, *self.dense_names, *self.sparse_names]

    def table_sizes(self) -> list[int]:
        """``num_embeddings`` of each sparse feature, in schema order."""
        return [f.num_embeddings for f in self.sparse]

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Checks names are unique and every field's settings are legal; raises :class:`SchemaError`."""
        if not self.name:
            raise SchemaError("schema: 'name' must be a non-empty string")
        seen: set[str] = set()
        reserved = {DAY_COLUMN, ROW_ID_COLUMN}
        for kind, names in (("label", [self.label.name]), ("dense", self.dense_names),
                            ("sparse", self.sparse_names)):
            for n in names:
                if not isinstance(n, str) or not n:
                    raise SchemaError(f"schema {self.name!r}: {kind} feature has an empty name")
                if n in seen:
                    raise SchemaError(f"schema {self.name!r}: field {n!r} is declared twice")
                if n in reserved:
                    raise SchemaError(f"schema {self.name!r}: field {n!r} uses a reserved column name")
                seen.add(n)
        for f in self.dense:
            if f.transform not in DENSE_TRANSFORMS:
                raise SchemaError(f"schema {self.name!r}: dense field {f.name!r}: transform {f.transform!r} "
                                  f"not in {DENSE_TRANSFORMS}")
        for f in self.sparse:
            if not isinstance(f.num_embeddings, int) or f.num_embeddings < 2:
                raise SchemaError(f"schema {self.name!r}: sparse field {f.name!r}: num_embeddings must be an "
                                  f"int >= 2, got {f.num_embeddings!r}")
            if f.encoding not in SPARSE_ENCODINGS:
                raise SchemaError(f"schema {self.name!r}: sparse field {f.name!r}: encoding {f.encoding!r} "
                                  f"not in {SPARSE_ENCODINGS}")
            if f.min_count < 1:
                raise SchemaError(f"schema {self.name!r}: sparse field {f.name!r}: min_count must be >= 1")
            if f.embedding_dim is not None and f.embedding_dim < 1:
                raise SchemaError(f"schema {self.name!r}: sparse field {f.name!r}: embedding_dim must be >= 1")
        if self.event_time is not None and self.event_time.unit not in ("s", "ms"):
            raise SchemaError(f"schema {self.name!r}: event_time {self.event_time.name!r}: unit must be 's' or 'ms'")
        if not self.dense and not self.sparse:
            raise SchemaError(f"schema {self.name!r}: needs at least one dense or sparse feature")

    # ------------------------------------------------------------------ Arrow contract
    def arrow_schema(self, *, with_day: bool = True, with_row_id: bool = False) -> pa.Schema:
        """Arrow schema of processed Parquet: label float32, dense float32, sparse int64 / list<int64>."""
        fields = [pa.field(self.label.name, pa.float32(), nullable=False)]
        fields += [pa.field(n, pa.float32(), nullable=False) for n in self.dense_names]
        for f in self.sparse:
            t = pa.list_(pa.int64()) if f.multi_hot else pa.int64()
            fields.append(pa.field(f.name, t, nullable=False))
        if with_row_id:
            fields.append(pa.field(ROW_ID_COLUMN, pa.int64(), nullable=False))
        if with_day:
            fields.append(pa.field(DAY_COLUMN, pa.string(), nullable=False))
        meta = {b"recpipe.schema": json.dumps(self.to_dict()).encode(),
                b"recpipe.schema_version": str(self.version).encode()}
        return pa.schema(fields, metadata=meta)

    def check_table(self, table_schema: pa.Schema, *, source: str = "<table>") -> None:
        """Checks that a processed table has every column with the contract's type; names the bad field."""
        want = self.arrow_schema(with_day=False)
        for f in want:
            idx = table_schema.get_field_index(f.name)
            if idx < 0:
                raise SchemaError(f"{source}: missing column {f.name!r} required by schema {self.name!r}")
            got = table_schema.field(idx).type
            if not got.equals(f.type):
                raise SchemaError(f"{source}: column {f.name!r} has type {got}, schema {self.name!r} wants {f.type}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra"] = dict(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> "Schema":
        """Builds a schema from a mapping (as parsed from YAML/JSON); errors name the offending field."""
        if not isinstance(d, Mapping):
            raise SchemaError(f"{source}: schema must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SchemaError(f"{source}: unknown top-level keys {sorted(unknown)}")
        try:
            label_d = d.get("label", {"name": "label"})
            if isinstance(label_d, str):
                label_d = {"name": label_d}
            label = _build(LabelSpec, label_d, f"{source}: label")
            dense = tuple(_build(DenseFeature, _named(x), f"{source}: dense[{i}]")
                          for i, x in enumerate(d.get("dense", []) or []))
            sparse = tuple(_build(SparseFeature, _named(x), f"{source}: sparse[{i}]")
                           for i, x in enumerate(d.get("sparse", []) or []))
            et = d.get("event_time")
            event_time = _build(EventTime, _named(et), f"{source}: event_time") if et else None
        except TypeError as e:  # wrong value shapes inside a field
            raise SchemaError(f"{source}: {e}") from e
        if "name" not in d:
            raise SchemaError(f"{source}: missing required key 'name'")
        return cls(name=d["name"], label=label, dense=dense, sparse=sparse, event_time=event_time,
                   version=int(d.get("version", SCHEMA_VERSION)), extra=dict(d.get("extra", {}) or {}))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Schema":
        """Loads a schema from a ``.yaml``/``.yml`` or ``.json`` file."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise SchemaError(f"{path}: cannot read schema file: {e}") from e
        if path.endswith((".yaml", ".yml")):
            import yaml  # pyyaml; only needed for YAML schemas

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise SchemaError(f"{path}: invalid YAML: {e}") from e
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise SchemaError(f"{path}: invalid JSON: {e}") from e
        return cls.from_dict(data, source=path)

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json())

    @classmethod
    def from_arrow(cls, arrow_schema: pa.Schema, *, source: str = "<parquet>") -> "Schema":
        """Recovers the schema stored in processed Parquet metadata by :meth:`arrow_schema`."""
        meta = arrow_schema.metadata or {}
        raw = meta.get(b"recpipe.schema")
        if raw is None:
            raise SchemaError(f"{source}: no recpipe schema in the Parquet metadata")
        return cls.from_dict(json.loads(raw), source=source)

    def with_table_sizes(self, sizes: Mapping[str, int]) -> "Schema":
        """Returns a copy with ``num_embeddings`` replaced for the named sparse features (e.g. vocab sizes)."""
        unknown = set(sizes) - set(self.sparse_names)
        if unknown:
            raise SchemaError(f"schema {self.name!r}: unknown sparse features {sorted(unknown)}")
        sparse = tuple(dataclasses.replace(f, num_embeddings=int(sizes.get(f.name, f.num_embeddings)))
                       for f in self.sparse)
        return dataclasses.replace(self, sparse=sparse)


def _named(x: Any) -> Mapping[str, Any]:
    return {"name": x} if isinstance(x, str) else x


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise SchemaError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise SchemaError(f"{where} ({d.get('name', '?')!r}): unknown keys {sorted(unknown)}")
    if "name" in names and "name" not in d and cls is not LabelSpec:
        raise SchemaError(f"{where}: missing required key 'name'")
    hints = typing.get_type_hints(cls)
    # KFP parameters travel as protobuf Structs, where every number is a float: restore integral ints
    fixed = {k: int(v) if hints.get(k) in (int, int | None) and isinstance(v, float) and v.is_integer() else v
             for k, v in d.items()}
    return cls(**fixed)


CRITEO_NUM_DENSE = 13
CRITEO_NUM_SPARSE = 26


def criteo_schema(num_embeddings: int | Iterable[int] = 1 << 20, *, encoding: str = "hash",
                  min_count: int = 1) -> Schema:
    """Criteo's layout: ``label``, dense ``I1..I13`` (log1p of clipped counts), sparse ``C1..C26``.

    Args:
        num_embeddings: one bucket count for every table, or 26 counts.
        encoding: ``"hash"`` or ``"vocab"``.
        min_count: vocabulary frequency threshold (``"vocab"`` only).
    """
    sizes = [num_embeddings] * CRITEO_NUM_SPARSE if isinstance(num_embeddings, int) else list(num_embeddings)
    if len(sizes) != CRITEO_NUM_SPARSE:
        raise SchemaError(f"criteo schema: need {CRITEO_NUM_SPARSE} table sizes, got {len(sizes)}")
    return Schema(
        name="criteo",
        label=LabelSpec("label"),
        dense=tuple(DenseFeature(f"I{i}") for i in range(1, CRITEO_NUM_DENSE + 1)),
        sparse=tuple(SparseFeature(f"C{i}", num_embeddings=int(s), encoding=encoding, min_count=min_count)
                     for i, s in enumerate(sizes, start=1)),
    )
