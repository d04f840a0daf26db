import json

import pytest

from tidb_pipeline.replication.avro_types import ReplicaColumn, key_names, replica_columns, unwrap_unsigned
from tidb_pipeline_tests.replication.support import ALL_TYPES_KEY, ALL_TYPES_SQL, ALL_TYPES_VALUE, field, record

# The example of spec/ticdc-avro.md, verbatim (registry JSON text).
SPEC_KEY = (
    '{"type":"record","name":"t","namespace":"default.test","fields":['
    '{"name":"id","type":{"type":"long","connect.parameters":{"tidb_type":"BIGINT"}}}]}'
)
SPEC_VALUE = """{"type":"record","name":"t","namespace":"default.test","fields":[
 {"name":"id","type":{"type":"long","connect.parameters":{"tidb_type":"BIGINT"}}},
 {"default":null,"name":"name","type":["null",{"type":"string","connect.parameters":{"tidb_type":"TEXT"}}]},
 {"name":"price","type":{"type":"bytes","connect.parameters":{"tidb_type":"DECIMAL"},"logicalType":"decimal","precision":10,"scale":2}},
 {"default":1,"name":"flag","type":{"type":"int","connect.parameters":{"tidb_type":"INT"}}},
 {"default":"","name":"_tidb_op","type":"string"},
 {"default":0,"name":"_tidb_commit_ts","type":"long"},
 {"default":0,"name":"_tidb_commit_physical_time","type":"long"}]}"""


def test_spec_example_maps_to_typed_columns_without_extension_fields():
    assert replica_columns(SPEC_VALUE, SPEC_KEY) == (
        ReplicaColumn("id", "NUMBER(19,0)", False, "BIGINT", True, "long"),
        ReplicaColumn("name", "VARCHAR", True, "TEXT", False, "string"),
        ReplicaColumn("price", "NUMBER(10,2)", False, "DECIMAL", False, "bytes", 10, 2),
        ReplicaColumn("flag", "NUMBER(10,0)", False, "INT", False, "int"),
    )


def test_every_spec_type_maps_to_its_snowflake_type():
    columns = replica_columns(ALL_TYPES_VALUE, ALL_TYPES_KEY)
    assert {c.name: c.sql_type for c in columns} == ALL_TYPES_SQL
    assert [c.name for c in columns] == list(ALL_TYPES_SQL)  # table order kept
    assert [c.name for c in columns if c.is_key] == ["id"]
    assert [c.name for c in columns if c.wraps_unsigned] == ["c_bigint_unsigned"]
    assert all(c.nullable for c in columns if not c.is_key)


def test_non_null_default_union_order_is_nullable_too():
    value = record("t", [field("id", "int", "INT"), {"name": "v", "type": [{"type": "string"}, "null"], "default": "x"}])
    (_, v) = replica_columns(value, record("t", [field("id", "int", "INT")]))
    assert (v.nullable, v.sql_type, v.tidb_type) == (True, "VARCHAR", "")


def test_wide_decimal_precision_falls_back_to_varchar_and_38_stays_number():
    value = record(
        "t",
        [
            field("id", "int", "INT"),
            field("d38", {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 0}, "DECIMAL"),
            field("d39", {"type": "bytes", "logicalType": "decimal", "precision": 39, "scale": 0}, "DECIMAL"),
        ],
    )
    columns = replica_columns(value, record("t", [field("id", "int", "INT")]))
    assert [c.sql_type for c in columns] == ["NUMBER(10,0)", "NUMBER(38,0)", "VARCHAR"]


def test_unknown_tidb_type_falls_back_on_avro_type():
    value = record(
        "t",
        [field("id", "long", "BIGINT"), field("a", "long", "VECTOR"), field("b", "bytes", "GEOMETRY"), field("c", "boolean", "X")],
    )
    columns = replica_columns(value, record("t", [field("id", "long", "BIGINT")]))
    assert [c.sql_type for c in columns] == ["NUMBER(19,0)", "NUMBER(19,0)", "BINARY", "BOOLEAN"]


def test_composite_key_in_key_schema_order():
    key = record("t", [field("b", "int", "INT"), field("a", "string", "TEXT")])
    value = record("t", [field("a", "string", "TEXT"), field("x", "int", "INT"), field("b", "int", "INT")])
    assert key_names(key) == ("b", "a")
    assert [(c.name, c.is_key) for c in replica_columns(value, key)] == [("a", True), ("x", False), ("b", True)]


def test_key_field_missing_from_value_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'nope'"):
        replica_columns(record("t", [field("id", "int", "INT")]), record("t", [field("nope", "int", "INT")]))


def test_non_record_schema_is_rejected():
    with pytest.raises(ValueError, match="record schema"):
        replica_columns(json.dumps({"type": "string"}), ALL_TYPES_KEY)


def test_unwrap_unsigned_restores_values_above_int64():
    assert [unwrap_unsigned(v) for v in (None, 0, 2**63 - 1, -(2**63), -1)] == [None, 0, 2**63 - 1, 2**63, 2**64 - 1]
