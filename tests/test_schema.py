"""Feature schema: Criteo preset, user schemas from YAML/JSON, errors that name the field, Arrow contract."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from recpipe.schema import (
    DAY_COLUMN,
    DenseFeature,
    LabelSpec,
    Schema,
    SchemaError,
    SparseFeature,
    criteo_schema,
)

USER_YAML = """
name: shop_clicks
label: {name: clicked}
dense:
  - {name: price, transform: log1p}
  - {name: age_days, transform: none, clip_min: null}
sparse:
  - {name: user_id, num_embeddings: 1000}
  - {name: tags, multi_hot: true, separator: "|", num_embeddings: 50, encoding: vocab, min_count: 3}
event_time: {name: ts, unit: ms}
"""


def test_criteo_preset_layout():
    s = criteo_schema(1000)
    assert s.raw_columns == ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]
    assert s.num_dense == 13 and s.num_sparse == 26
    assert s.table_sizes() == [1000] * 26
    assert criteo_schema(list(range(2, 28))).table_sizes() == list(range(2, 28))


def test_arrow_contract_types_and_roundtrip_through_metadata():
    s = Schema.from_dict(__import__("yaml").safe_load(USER_YAML))
    a = s.arrow_schema()
    assert a.field("clicked").type == pa.float32()
    assert a.field("price").type == pa.float32()
    assert a.field("user_id").type == pa.int64()
    assert a.field("tags").type == pa.list_(pa.int64())
    assert a.field(DAY_COLUMN).type == pa.string()
    assert Schema.from_arrow(a) == s


def test_load_yaml_and_json(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text(USER_YAML)
    s = Schema.load(y)
    assert s.sparse[1].multi_hot and s.sparse[1].encoding == "vocab" and s.sparse[1].min_count == 3
    assert s.event_time.unit == "ms" and s.dense[1].clip_min is None
    j = tmp_path / "s.json"
    s.save(j)
    assert Schema.load(j) == s
    assert json.loads(j.read_text())["name"] == "shop_clicks"


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["sparse"].append({"name": "price"}), "'price' is declared twice"),
    (lambda d: d["dense"][0].update(transform="sqrt"), "dense field 'price': transform 'sqrt'"),
    (lambda d: d["sparse"][0].update(num_embeddings=1), "sparse field 'user_id': num_embeddings"),
    (lambda d: d["sparse"][0].update(encoding="bloom"), "sparse field 'user_id': encoding 'bloom'"),
    (lambda d: d["sparse"][0].update(colour="red"), "sparse[0] ('user_id'): unknown keys ['colour']"),
    (lambda d: d["dense"].append({"transform": "none"}), "dense[2]: missing required key 'name'"),
    (lambda d: d.update(labels="x"), "unknown top-level keys ['labels']"),
    (lambda d: d["dense"].append({"name": "day"}), "'day' uses a reserved column name"),
    (lambda d: d["event_time"].update(unit="h"), "event_time 'ts': unit"),
])
def test_errors_name_the_field(tmp_path, mutate, needle):
    import yaml

    d = yaml.safe_load(USER_YAML)
    mutate(d)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(SchemaError) as e:
        Schema.load(p)
    assert needle in str(e.value)
    assert str(p) in str(e.value) or "shop_clicks" in str(e.value)


def test_invalid_files_name_the_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(SchemaError, match="broken.json: invalid JSON"):
        Schema.load(p)
    with pytest.raises(SchemaError, match="missing.yaml: cannot read"):
        Schema.load(tmp_path / "missing.yaml")


def test_check_table_names_missing_and_mistyped_columns():
    s = Schema("t", LabelSpec("y"), (DenseFeature("a"),), (SparseFeature("c", num_embeddings=10),))
    good = s.arrow_schema()
    s.check_table(good, source="f.parquet")
    with pytest.raises(SchemaError, match="f.parquet: missing column 'c'"):
        s.check_table(pa.schema([("y", pa.float32()), ("a", pa.float32())]), source="f.parquet")
    with pytest.raises(SchemaError, match="column 'a' has type double"):
        s.check_table(pa.schema([("y", pa.float32()), ("a", pa.float64()), ("c", pa.int64())]), source="f")


def test_with_table_sizes():
    s = criteo_schema(100).with_table_sizes({"C1": 7, "C26": 9})
    assert s.table_sizes()[0] == 7 and s.table_sizes()[-1] == 9 and s.table_sizes()[1] == 100
    with pytest.raises(SchemaError, match="unknown sparse features"):
        s.with_table_sizes({"nope": 3})
