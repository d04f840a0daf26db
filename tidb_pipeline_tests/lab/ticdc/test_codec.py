"""Golden tests of the lab's TiCDC Avro codec: schemas byte-for-byte, values through confluent-kafka's reader."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tidb_pipeline.lab.ticdc import codec
from tidb_pipeline.lab.ticdc.codec import CodecConfig, Column, TableInfo
from tidb_pipeline_tests import ticdc_golden as golden_vectors

SPEC_KEY = '{"type":"record","name":"t","namespace":"default.test","fields":[{"name":"id","type":{"type":"long","connect.parameters":{"tidb_type":"BIGINT"}}}]}'
SPEC_VALUE = (
    '{"type":"record","name":"t","namespace":"default.test","fields":['
    '{"name":"id","type":{"type":"long","connect.parameters":{"tidb_type":"BIGINT"}}},'
    '{"default":null,"name":"name","type":["null",{"type":"string","connect.parameters":{"tidb_type":"TEXT"}}]},'
    '{"name":"price","type":{"type":"bytes","connect.parameters":{"tidb_type":"DECIMAL"},"logicalType":"decimal","precision":10,"scale":2}},'
    '{"default":1,"name":"flag","type":{"type":"int","connect.parameters":{"tidb_type":"INT"}}},'
    '{"default":"","name":"_tidb_op","type":"string"},'
    '{"default":0,"name":"_tidb_commit_ts","type":"long"},'
    '{"default":0,"name":"_tidb_commit_physical_time","type":"long"}]}'
)

# `CREATE TABLE test.t (id BIGINT PRIMARY KEY, name VARCHAR(32) NULL, price DECIMAL(10,2) NOT NULL,
# flag TINYINT NOT NULL DEFAULT 1)` as information_schema.COLUMNS on MariaDB reports it.
SPEC_ROWS = [
    {"COLUMN_NAME": "id", "DATA_TYPE": "bigint", "COLUMN_TYPE": "bigint(20)", "IS_NULLABLE": "NO",
     "COLUMN_DEFAULT": None, "NUMERIC_PRECISION": 19, "NUMERIC_SCALE": 0},
    {"COLUMN_NAME": "name", "DATA_TYPE": "varchar", "COLUMN_TYPE": "varchar(32)", "IS_NULLABLE": "YES",
     "COLUMN_DEFAULT": "NULL", "NUMERIC_PRECISION": None, "NUMERIC_SCALE": None},
    {"COLUMN_NAME": "price", "DATA_TYPE": "decimal", "COLUMN_TYPE": "decimal(10,2)", "IS_NULLABLE": "NO",
     "COLUMN_DEFAULT": None, "NUMERIC_PRECISION": 10, "NUMERIC_SCALE": 2},
    {"COLUMN_NAME": "flag", "DATA_TYPE": "tinyint", "COLUMN_TYPE": "tinyint(4)", "IS_NULLABLE": "NO",
     "COLUMN_DEFAULT": "1", "NUMERIC_PRECISION": 3, "NUMERIC_SCALE": 0},
]


def _spec_table() -> TableInfo:
    cols = tuple(codec.column_from_information_schema(r) for r in SPEC_ROWS)
    return TableInfo("test", "t", cols, codec.choose_handle_key(cols, [("PRIMARY", True, ["id"])]))


def test_spec_example_schemas_byte_for_byte() -> None:
    info = _spec_table()
    cfg = CodecConfig(enable_tidb_extension=True)
    assert codec.key_schema(info, cfg) == SPEC_KEY
    assert codec.value_schema(info, cfg) == SPEC_VALUE


def test_without_extension_the_value_schema_ends_at_the_last_column() -> None:
    fields = json.loads(codec.value_schema(_spec_table(), CodecConfig()))["fields"]
    assert [f["name"] for f in fields] == ["id", "name", "price", "flag"]


@pytest.fixture()
def registry() -> SchemaRegistryClient:
    # confluent-kafka's in-process registry: each test gets its own scope.
    return SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})


def _decode(registry: SchemaRegistryClient, framed: bytes) -> dict:
    deserializer = AvroDeserializer(registry, conf={"subject.name.strategy.type": "TOPIC"})
    return deserializer(framed, SerializationContext("t", MessageField.VALUE))


def _roundtrip(registry: SchemaRegistryClient, info: TableInfo, cfg: CodecConfig, values: dict, none_sources=None,
               tz: str = "UTC") -> dict:
    tc = codec.TableCodec(info, cfg)
    schema_id = registry.register_schema("t-value", Schema(tc.value_schema, "AVRO"))
    row = codec.row_internal(info, values, none_sources, tz=tz)
    framed = tc.encode_value(schema_id, row, op="c", commit_ts=codec.tso_from_ms(1_700_000_000_123, 5))
    assert framed[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    return _decode(registry, framed)


# (column, value as mysql-replication yields it, none_source, expected decoded value, expected field type)
TYPE_CASES = [
    (Column("c", "tinyint", True), -5, None, -5, {"type": "int", "connect.parameters": {"tidb_type": "INT"}}),
    (Column("c", "tinyint", True, unsigned=True), 200, None, 200,
     {"type": "int", "connect.parameters": {"tidb_type": "INT UNSIGNED"}}),
    (Column("c", "mediumint", True), -8_000_000, None, -8_000_000,
     {"type": "int", "connect.parameters": {"tidb_type": "INT"}}),
    (Column("c", "int", True), -2_000_000_000, None, -2_000_000_000,
     {"type": "int", "connect.parameters": {"tidb_type": "INT"}}),
    (Column("c", "int", True, unsigned=True), 4_000_000_000, None, 4_000_000_000,
     {"type": "long", "connect.parameters": {"tidb_type": "INT UNSIGNED"}}),
    (Column("c", "bigint", True), -(2**63), None, -(2**63),
     {"type": "long", "connect.parameters": {"tidb_type": "BIGINT"}}),
    (Column("c", "bigint", True, unsigned=True), 2**64 - 1, None, -1,
     {"type": "long", "connect.parameters": {"tidb_type": "BIGINT UNSIGNED"}}),
    (Column("c", "float", True), 1.100000023841858, None, pytest.approx(1.1, rel=1e-7),
     {"type": "float", "connect.parameters": {"tidb_type": "FLOAT"}}),
    (Column("c", "double", True), 2.2, None, 2.2, {"type": "double", "connect.parameters": {"tidb_type": "DOUBLE"}}),
    (Column("c", "decimal", True, precision=10, scale=2), Decimal("-12.34"), None, Decimal("-12.34"),
     {"type": "bytes", "connect.parameters": {"tidb_type": "DECIMAL"}, "logicalType": "decimal", "precision": 10,
      "scale": 2}),
    (Column("c", "varchar", True), "héllo", None, "héllo", {"type": "string", "connect.parameters": {"tidb_type": "TEXT"}}),
    (Column("c", "text", True), "long text", None, "long text",
     {"type": "string", "connect.parameters": {"tidb_type": "TEXT"}}),
    (Column("c", "binary", True, precision=4), b"a", None, b"a\x00\x00\x00",
     {"type": "bytes", "connect.parameters": {"tidb_type": "BLOB"}}),
    (Column("c", "blob", True), b"\xaa\xbb", None, b"\xaa\xbb",
     {"type": "bytes", "connect.parameters": {"tidb_type": "BLOB"}}),
    (Column("c", "bit", True, precision=10), "1010000001", None, b"\x02\x81",
     {"type": "bytes", "connect.parameters": {"length": "10", "tidb_type": "BIT"}}),
    (Column("c", "enum", True, members=("a", "b,c")), "b,c", None, "b,c",
     {"type": "string", "connect.parameters": {"allowed": "a,b\\,c", "tidb_type": "ENUM"}}),
    (Column("c", "set", True, members=("x", "y", "z")), {"z", "x"}, None, "x,z",
     {"type": "string", "connect.parameters": {"allowed": "x,y,z", "tidb_type": "SET"}}),
    (Column("c", "set", False, members=("x", "y")), None, "empty set", "",
     {"type": "string", "connect.parameters": {"allowed": "x,y", "tidb_type": "SET"}}),
    (Column("c", "json", True), '{"b":1,"a":[1,2.5,"s"]}', None, '{"a": [1, 2.5, "s"], "b": 1}',
     {"type": "string", "connect.parameters": {"tidb_type": "JSON"}}),
    (Column("c", "date", True), dt.date(2024, 2, 29), None, "2024-02-29",
     {"type": "string", "connect.parameters": {"tidb_type": "DATE"}}),
    (Column("c", "datetime", True, scale=3), dt.datetime(2024, 1, 2, 3, 4, 5, 123000), None, "2024-01-02 03:04:05.123",
     {"type": "string", "connect.parameters": {"tidb_type": "DATETIME"}}),
    (Column("c", "datetime", True, scale=0), dt.datetime(2024, 1, 2, 3, 4, 5), None, "2024-01-02 03:04:05",
     {"type": "string", "connect.parameters": {"tidb_type": "DATETIME"}}),
    (Column("c", "timestamp", True, scale=6), dt.datetime(2024, 1, 2, 3, 4, 5, 654321), None,
     "2024-01-02 03:04:05.654321", {"type": "string", "connect.parameters": {"tidb_type": "TIMESTAMP"}}),
    # mysql-replication 1.0.17 reads TIME2 -12:34:56.78 as -(12:34:56 + 0.22); the codec restores it.
    (Column("c", "time", True, scale=2), dt.timedelta(days=-1, seconds=41103, microseconds=780000), None,
     "-12:34:56.78", {"type": "string", "connect.parameters": {"tidb_type": "TIME"}}),
    (Column("c", "time", True, scale=0), dt.timedelta(hours=838, minutes=59, seconds=59), None, "838:59:59",
     {"type": "string", "connect.parameters": {"tidb_type": "TIME"}}),
    (Column("c", "year", True), 2024, None, 2024, {"type": "int", "connect.parameters": {"tidb_type": "YEAR"}}),
]


@pytest.mark.parametrize(("column", "value", "none_source", "expected", "field_type"), TYPE_CASES,
                         ids=[f"{c.data_type}-{i}" for i, (c, *_rest) in enumerate(TYPE_CASES)])
def test_each_type_encodes_and_decodes(registry, column, value, none_source, expected, field_type) -> None:
    info = TableInfo("db", "t", (Column("id", "int", False), column), ("id",))
    decoded = _roundtrip(registry, info, CodecConfig(enable_tidb_extension=True), {"id": 1, "c": value},
                         {"c": none_source} if none_source else None)
    assert decoded == {"id": 1, "c": expected, "_tidb_op": "c",
                       "_tidb_commit_ts": codec.tso_from_ms(1_700_000_000_123, 5),
                       "_tidb_commit_physical_time": 1_700_000_000_123}
    field = json.loads(codec.value_schema(info, CodecConfig()))["fields"][1]
    expected_type = field_type if not column.nullable else ["null", field_type]
    assert field["type"] == expected_type


@pytest.mark.parametrize("cfg", [CodecConfig(enable_tidb_extension=True),
                                 CodecConfig(decimal_handling_mode="string", bigint_unsigned_handling_mode="string")],
                         ids=["precise-extension", "strings"])
def test_table_codecs_planned_encoders_write_the_reference_bytes(cfg: CodecConfig) -> None:
    """TableCodec's per-table plan (names, converters, headers) writes exactly what the reference functions do."""
    columns = tuple(Column(f"c{i}", c.data_type, c.nullable, c.default, c.unsigned, c.precision, c.scale, c.members)
                    for i, (c, *_rest) in enumerate(TYPE_CASES))
    info = TableInfo("db", "t", (Column("id", "int", False), *columns), ("id",))
    tc = codec.TableCodec(info, cfg)
    ts = codec.tso_from_ms(1_700_000_000_123, 5)
    values = {"id": 3, **{f"c{i}": value for i, (_c, value, *_rest) in enumerate(TYPE_CASES)}}
    sources = {f"c{i}": none_source for i, (_c, _v, none_source, *_rest) in enumerate(TYPE_CASES) if none_source}
    row = codec.row_internal(info, values, sources)
    for op in ("c", "u", "d"):
        assert tc.encode_value(7, row, op=op, commit_ts=ts) == codec.confluent_frame(
            7, tc.value_parsed, codec.value_datum(info, row, cfg, op=op, commit_ts=ts)), op
    assert tc.encode_key(9, row) == codec.confluent_frame(9, tc.key_parsed, codec.key_datum(info, row, cfg))


def test_null_values_decode_as_none(registry) -> None:
    cols = tuple(case[0] for case in TYPE_CASES if case[0].nullable)
    renamed = tuple(Column(f"c{i}", c.data_type, True, None, c.unsigned, c.precision, c.scale, c.members)
                    for i, c in enumerate(cols))
    info = TableInfo("db", "t", (Column("id", "int", False), *renamed), ("id",))
    decoded = _roundtrip(registry, info, CodecConfig(), {"id": 7})
    assert decoded == {"id": 7, **{c.name: None for c in renamed}}


def test_timestamp_is_rendered_in_the_changefeed_time_zone(registry) -> None:
    info = TableInfo("db", "t", (Column("id", "int", False), Column("c", "timestamp", True, scale=0)), ("id",))
    decoded = _roundtrip(registry, info, CodecConfig(), {"id": 1, "c": dt.datetime(2024, 1, 2, 20, 0, 0)},
                         tz="Asia/Shanghai")
    assert decoded["c"] == "2024-01-03 04:00:00"


def test_string_handling_modes(registry) -> None:
    cfg = CodecConfig(decimal_handling_mode="string", bigint_unsigned_handling_mode="string")
    info = TableInfo("db", "t", (Column("id", "int", False), Column("d", "decimal", False, precision=5, scale=2),
                                 Column("u", "bigint", False, unsigned=True)), ("id",))
    decoded = _roundtrip(registry, info, cfg, {"id": 1, "d": Decimal("1.5"), "u": 2**64 - 1})
    assert decoded == {"id": 1, "d": "1.50", "u": "18446744073709551615"}
    fields = json.loads(codec.value_schema(info, cfg))["fields"]
    assert fields[1:] == [
        {"name": "d", "type": {"type": "string", "connect.parameters": {"tidb_type": "DECIMAL"}}},
        {"name": "u", "type": {"type": "string", "connect.parameters": {"tidb_type": "BIGINT UNSIGNED"}}},
    ]


def test_defaults_follow_ticdc() -> None:
    rows = [
        # nullable with a non-null default: [T, "null"] carrying the default
        {"COLUMN_NAME": "v", "DATA_TYPE": "varchar", "COLUMN_TYPE": "varchar(5)", "IS_NULLABLE": "YES",
         "COLUMN_DEFAULT": "'it''s'"},
        # FLOAT defaults go through float32 as TiCDC's ParseFloat(v, 32) does
        {"COLUMN_NAME": "f", "DATA_TYPE": "float", "COLUMN_TYPE": "float", "IS_NULLABLE": "NO", "COLUMN_DEFAULT": "1.1"},
        # a decimal (logical type) never gets a non-null default
        {"COLUMN_NAME": "d", "DATA_TYPE": "decimal", "COLUMN_TYPE": "decimal(5,1)", "IS_NULLABLE": "NO",
         "COLUMN_DEFAULT": "1.5", "NUMERIC_PRECISION": 5, "NUMERIC_SCALE": 1},
        {"COLUMN_NAME": "ts", "DATA_TYPE": "timestamp", "COLUMN_TYPE": "timestamp", "IS_NULLABLE": "NO",
         "COLUMN_DEFAULT": "current_timestamp()", "DATETIME_PRECISION": 0},
        # BIT defaults are bytes, which Go's json.Marshal writes as base64
        {"COLUMN_NAME": "b", "DATA_TYPE": "bit", "COLUMN_TYPE": "bit(1)", "IS_NULLABLE": "YES",
         "COLUMN_DEFAULT": "b'1'", "NUMERIC_PRECISION": 1},
        {"COLUMN_NAME": "e", "DATA_TYPE": "enum", "COLUMN_TYPE": "enum('a','b')", "IS_NULLABLE": "NO",
         "COLUMN_DEFAULT": "'b'"},
    ]
    cols = tuple(codec.column_from_information_schema(r) for r in rows)
    info = TableInfo("db", "t", (Column("id", "int", False), *cols), ("id",))
    fields = json.loads(codec.value_schema(info, CodecConfig()))["fields"][1:]
    assert [(f.get("default", "<none>"), f["name"], f["type"] if isinstance(f["type"], str) else
             (f["type"][1] if isinstance(f["type"], list) else f["type"]["type"])) for f in fields] == [
        ("it's", "v", "null"),
        (1.100000023841858, "f", "float"),
        ("<none>", "d", "bytes"),
        ("CURRENT_TIMESTAMP", "ts", "string"),
        ("AQ==", "b", "null"),
        ("b", "e", "string"),
    ]


def test_handle_key_prefers_primary_then_smallest_not_null_unique() -> None:
    cols = (Column("a", "int", False), Column("b", "int", False), Column("c", "int", True), Column("d", "int", False))
    assert codec.choose_handle_key(cols, [("u3", True, ["a", "b", "d"]), ("u1", True, ["d"]), ("PRIMARY", True, ["b"])]) == ("b",)
    assert codec.choose_handle_key(cols, [("u2", True, ["a", "b"]), ("u1n", True, ["c"]), ("u1", True, ["d"])]) == ("d",)
    assert codec.choose_handle_key(cols, [("uc", True, ["c"]), ("i", False, ["a"])]) == ()
    with pytest.raises(codec.TableIneligibleError, match="CDC:ErrTableIneligible"):
        TableInfo("db", "t", cols, ())


def test_key_fields_follow_table_column_order() -> None:
    info = TableInfo("db", "t", (Column("x", "int", False), Column("a", "int", False), Column("b", "int", False)),
                     ("b", "x"))
    assert [f["name"] for f in json.loads(codec.key_schema(info, CodecConfig()))["fields"]] == ["x", "b"]


def test_names_and_topics_are_sanitised_like_ticdc() -> None:
    assert [codec.sanitize_name(n) for n in ["t", "1a", "a-b", "_x", "中文", "a.b"]] == ["t", "_1a", "a_b", "_x", "__", "a_b"]
    assert codec.avro_namespace("default", "my-db") == "default.my_db"
    assert codec.topic_name("tidb_{schema}_{table}", "my db", "a$b.c") == "tidb_my_db_a_b.c"
    assert codec.subject_names("tidb_x.y") == ("tidb_x_y-key", "tidb_x_y-value")
    codec.validate_topic_expression("tidb_{schema}_{table}")
    with pytest.raises(ValueError, match=r"\{schema\} and \{table\}"):
        codec.validate_topic_expression("tidb_{table}")


def test_index_value_dispatch_matches_tiflow_vectors() -> None:
    # Expected partitions from tiflow's index_value_test.go (16 partitions).
    single = TableInfo("test", "t1", (Column("a", "bigint", False), Column("b", "bigint", False)), ("a",))
    composite = TableInfo("test", "t2", (Column("a", "bigint", False), Column("b", "bigint", False)), ("a", "b"))
    got = [
        codec.partition_for("index-value", single, {"a": 11, "b": 22}, 16),
        codec.partition_for("index-value", single, {"a": 22, "b": 22}, 16),
        codec.partition_for("index-value", single, {"a": 11, "b": 33}, 16),
        codec.partition_for("index-value", composite, {"a": 11, "b": 22}, 16),
        codec.partition_for("index-value", composite, {"a": 11, "b": 0}, 16),
        codec.partition_for("index-value", composite, {"a": 11, "b": 33}, 16),
    ]
    assert got == [2, 11, 2, 5, 14, 2]


def _golden_info(case: dict) -> TableInfo:
    columns = case.get("columns", ["id"])
    return TableInfo(case["schema"], case["table"], tuple(Column(c, "bigint", False) for c in columns),
                     tuple(case.get("handle", columns[:1])))


def test_every_partition_rule_matches_tiflow_vectors() -> None:
    vectors = golden_vectors.load("dispatch.json")
    for kind in ("index_value", "table"):
        n = vectors[kind]["partitions"]
        for case in vectors[kind]["cases"]:
            rule = kind.replace("_", "-")
            row = case.get("row", {"id": 1})
            assert codec.partition_for(rule, _golden_info(case), row, n) == case["expected"], (kind, case)
    info = TableInfo("test", "t", (Column("id", "bigint", False),), ("id",))
    for case in vectors["ts"]["cases"]:
        assert codec.partition_for("ts", info, {"id": 1}, vectors["ts"]["partitions"],
                                   commit_ts=case["commit_ts"]) == case["expected"]  # fmt: skip
    default = vectors["default_rule"]
    for case in default["cases"]:
        assert codec.partition_for(case["rule"], _golden_info(case), case["row"], case["partitions"]) == case["expected"]
    # `default`, an empty rule and an unknown one are the table dispatcher; `rowid` is index-value.
    assert {rule: codec.partition_kind(rule) for rule in default["rule_kinds"]} == default["rule_kinds"]
    assert codec.partition_kind("Index-Value") == "index-value"  # tiflow lower-cases the rule
    # A table's rows all land in one partition under the table rule, whatever the key.
    t1 = _golden_info({"schema": "test", "table": "t1", "columns": ["a", "b"], "handle": ["a"]})
    assert {codec.partition_for(r, t1, {"a": a, "b": 0}, 16) for r in ("default", "", "nonsense") for a in range(20)} == {15}


def test_columns_rule_hashes_the_named_columns_after_the_table() -> None:
    info = TableInfo("test", "t1", (Column("a", "bigint", False), Column("b", "bigint", False)), ("a",))
    # With the handle key as its columns, the columns dispatcher computes the index-value hash.
    assert [codec.partition_for("columns", info, {"a": a, "b": 5}, 16, columns=("a",)) for a in (11, 22)] == [2, 11]
    by_b = {codec.partition_for("columns", info, {"a": a, "b": 5}, 16, columns=("b",)) for a in range(30)}
    assert len(by_b) == 1


def test_a_topic_rule_without_placeholders_is_a_static_topic() -> None:
    (case,) = golden_vectors.load("names.json")["hard_coded_topic_rule"]["cases"]
    assert codec.is_static_topic(case[0]) and case[1] == "static"
    assert not codec.is_static_topic("tidb_{schema}_{table}") and not codec.is_static_topic("bad topic")


def test_go_float_strings() -> None:
    assert [codec.go_float_string(x) for x in [1.0, 0.1, 1e21, -2.5e-7]] == ["1", "0.1", "1000000000000000000000", "-0.00000025"]
    assert codec.go_float_string(codec.internal_value(Column("f", "float", False), 1.100000023841858), 32) == "1.1"


def test_tso_helpers() -> None:
    assert codec.tso_from_ms(1_700_000_000_000, 3) == (1_700_000_000_000 << 18) | 3
    assert codec.ms_from_tso(codec.tso_from_ms(1_700_000_000_000, 3)) == 1_700_000_000_000


def test_parse_members_and_defaults_unescape_mariadb_quoting() -> None:
    assert codec.parse_members("enum('a','it''s','x,y')") == ("a", "it's", "x,y")
    assert codec.parse_default("NULL", "int") is None
    assert codec.parse_default("'a''b'", "varchar") == "a'b"
    assert codec.parse_default("current_timestamp(3)", "datetime") == "CURRENT_TIMESTAMP"
