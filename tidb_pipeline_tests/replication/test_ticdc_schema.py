"""TiCDC's Avro schemas from information_schema rows, and datums for snapshot values read over PyMySQL."""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal

import fastavro
import pytest

from tidb_pipeline.lab.ticdc import codec
from tidb_pipeline.replication import ticdc_schema as ts
from tidb_pipeline.replication.avro_types import replica_columns
from tidb_pipeline.replication.landing import compile_record_encoder
from tidb_pipeline_tests import ticdc_golden as golden_vectors


def _col(name: str, data_type: str, column_type: str, nullable: bool = False, **extra: object) -> dict:
    row = {"COLUMN_NAME": name, "DATA_TYPE": data_type, "COLUMN_TYPE": column_type,
           "IS_NULLABLE": "YES" if nullable else "NO", "COLUMN_DEFAULT": None, "NUMERIC_PRECISION": None,
           "NUMERIC_SCALE": None, "DATETIME_PRECISION": None, "CHARACTER_OCTET_LENGTH": None}  # fmt: skip
    row.update(extra)
    return row


def _idx(name: str, unique: bool, *cols: str) -> list[dict]:
    return [{"INDEX_NAME": name, "NON_UNIQUE": 0 if unique else 1, "SEQ_IN_INDEX": i + 1, "COLUMN_NAME": c}
            for i, c in enumerate(cols)]  # fmt: skip


COLUMNS = [
    _col("id", "int", "int(11)", NUMERIC_PRECISION=10, NUMERIC_SCALE=0),
    _col("code", "varchar", "varchar(8)"),
    _col("amount", "decimal", "decimal(12,2)", True, NUMERIC_PRECISION=12, NUMERIC_SCALE=2),
    _col("at", "datetime", "datetime(3)", True, DATETIME_PRECISION=3),
    _col("doc", "longtext", "longtext", True),
]


def test_the_lab_codec_re_exports_this_module() -> None:
    # One builder: the lab change feed registers exactly the schemas production code computes.
    for name in ("key_schema", "value_schema", "CodecConfig", "Column", "TableInfo", "TableIneligibleError",
                 "column_from_information_schema", "choose_handle_key", "tso_from_ms", "ms_from_tso", "zone"):
        assert getattr(codec, name) is getattr(ts, name), name


def test_table_info_picks_the_handle_key_as_ticdc_does() -> None:
    pk = ts.table_info("shop", "t", COLUMNS, _idx("uq_code", True, "code") + _idx("PRIMARY", True, "id"))
    assert pk.handle_key == ("id",)
    # No primary key: the shortest NOT NULL unique index; a unique index over a nullable column never counts.
    uniq = ts.table_info("shop", "t", COLUMNS, _idx("uq_amount", True, "amount") + _idx("uq_both", True, "id", "code")
                         + _idx("uq_code", True, "code") + _idx("ix", False, "id"))  # fmt: skip
    assert uniq.handle_key == ("code",)
    with pytest.raises(ts.TableIneligibleError, match="shop.t has neither a primary key"):
        ts.table_info("shop", "t", COLUMNS, _idx("uq_amount", True, "amount"))
    as_json = ts.table_info("shop", "t", COLUMNS, _idx("PRIMARY", True, "id"), json_columns=["doc"])
    assert [c.tidb_type for c in as_json.columns] == ["INT", "TEXT", "DECIMAL", "DATETIME", "JSON"]


def test_virtual_generated_columns_are_not_replicated_stored_ones_are() -> None:
    golden = next(c for c in golden_vectors.load("derived_from_code.json")["cases"]
                  if c["id"] == "virtual_generated_column")
    # information_schema rows of golden["table"] (TiDB and MariaDB both mark generated columns in EXTRA).
    columns = [_col("id", "int", "int(11)", NUMERIC_PRECISION=10, NUMERIC_SCALE=0, EXTRA=""),
               _col("a", "int", "int(11)", NUMERIC_PRECISION=10, NUMERIC_SCALE=0, EXTRA=""),
               _col("v", "int", "int(11)", True, NUMERIC_PRECISION=10, NUMERIC_SCALE=0, EXTRA="VIRTUAL GENERATED"),
               _col("s", "int", "int(11)", True, NUMERIC_PRECISION=10, NUMERIC_SCALE=0, EXTRA="STORED GENERATED")]
    info = ts.table_info("d", "g", columns, _idx("PRIMARY", True, "id"))
    fields = [f["name"] for f in json.loads(ts.value_schema(info, ts.CodecConfig()))["fields"]]
    assert fields == golden["expected_value_fields"]
    # "a unique index containing a virtual generated column is never the handle key": without a primary key
    # the NOT NULL unique index (a, v) does not qualify, only (a, s) ... and the virtual column is no unique column.
    not_null = [dict(c, IS_NULLABLE="NO") for c in columns]
    info = ts.table_info("d", "g", not_null, _idx("uq_v", True, "v") + _idx("uq_av", True, "a", "v")
                         + _idx("uq_as", True, "a", "s"))  # fmt: skip
    assert info.handle_key == ("a", "s")
    assert [c.name for c in info.columns] == ["id", "a", "s"] and info.unique_keys == (("a",), ("a", "s"))
    assert [c.name for c in info.unique_columns] == ["a", "s"]
    with pytest.raises(ts.TableIneligibleError):
        ts.table_info("d", "g", not_null, _idx("uq_v", True, "v"))


def test_schemas_are_ticdcs_bytes() -> None:
    info = ts.table_info("shop", "t", COLUMNS[:4], _idx("PRIMARY", True, "id"))
    cfg = ts.CodecConfig(enable_tidb_extension=True)
    assert ts.key_schema(info, cfg) == (
        '{"type":"record","name":"t","namespace":"default.shop","fields":'
        '[{"name":"id","type":{"type":"int","connect.parameters":{"tidb_type":"INT"}}}]}'
    )
    value = json.loads(ts.value_schema(info, cfg))
    assert value["fields"] == [
        {"name": "id", "type": {"connect.parameters": {"tidb_type": "INT"}, "type": "int"}},
        {"name": "code", "type": {"connect.parameters": {"tidb_type": "TEXT"}, "type": "string"}},
        {"default": None, "name": "amount", "type": ["null", {"connect.parameters": {"tidb_type": "DECIMAL"},
         "logicalType": "decimal", "precision": 12, "scale": 2, "type": "bytes"}]},
        {"default": None, "name": "at", "type": ["null", {"connect.parameters": {"tidb_type": "DATETIME"},
         "type": "string"}]},
        {"default": "", "name": "_tidb_op", "type": "string"},
        {"default": 0, "name": "_tidb_commit_ts", "type": "long"},
        {"default": 0, "name": "_tidb_commit_physical_time", "type": "long"},
    ]  # fmt: skip
    # What the replica DDL is made from: the extension fields are metadata, not columns.
    assert [(c.name, c.sql_type, c.is_key) for c in replica_columns(value, ts.key_schema(info, cfg))] == [
        ("id", "NUMBER(10,0)", True), ("code", "VARCHAR", False), ("amount", "NUMBER(12,2)", False),
        ("at", "TIMESTAMP_NTZ(6)", False)]  # fmt: skip


PRECISE = ts.CodecConfig()
STRINGS = ts.CodecConfig(decimal_handling_mode="string", bigint_unsigned_handling_mode="string")


def C(name: str, data_type: str, **kw: object) -> ts.Column:  # noqa: N802 - reads like a constructor
    return ts.Column(name, data_type, True, **kw)


# (column, value as PyMySQL returns it, datum in precise/long mode, datum in string mode)
CASES = [
    (C("i", "int"), 7, 7, 7),
    (C("u", "int", unsigned=True), 4_294_967_295, 4_294_967_295, 4_294_967_295),
    (C("b", "bigint"), -(2**63), -(2**63), -(2**63)),
    (C("bu", "bigint", unsigned=True), 2**64 - 1, -1, "18446744073709551615"),
    (C("f", "float"), 1.1, codec._float32(1.1), codec._float32(1.1)),
    (C("d", "double"), 2.5e-300, 2.5e-300, 2.5e-300),
    (C("dec", "decimal", precision=10, scale=3), Decimal("-1.5"), Decimal("-1.500"), "-1.500"),
    # 65 digits: more than Python's default decimal context holds (the demo's backfill failed on it).
    (C("wide", "decimal", precision=65, scale=30), Decimal("-" + "9" * 35 + "." + "9" * 30),
     Decimal("-" + "9" * 35 + "." + "9" * 30), "-" + "9" * 35 + "." + "9" * 30),
    (C("bit", "bit", precision=12), b"\x00\x05", b"\x05", b"\x05"),
    (C("bin", "binary", precision=4), b"ab\x00\x00", b"ab\x00\x00", b"ab\x00\x00"),
    (C("e", "enum", members=("x", "y")), "y", "y", "y"),
    (C("s", "set", members=("a", "b", "c")), "a,c", "a,c", "a,c"),
    (C("j", "json"), '{"a": [1, 2]}', '{"a": [1, 2]}', '{"a": [1, 2]}'),
    (C("dt", "date"), dt.date(2024, 2, 29), "2024-02-29", "2024-02-29"),
    (C("zero", "date"), "0000-00-00", "0000-00-00", "0000-00-00"),
    (C("ts", "datetime", scale=3), dt.datetime(2024, 1, 2, 3, 4, 5, 678000), "2024-01-02 03:04:05.678",
     "2024-01-02 03:04:05.678"),
    (C("tm", "time", scale=2), -dt.timedelta(hours=838, minutes=59, seconds=59, microseconds=500000),
     "-838:59:59.50", "-838:59:59.50"),
    (C("y", "year"), 2155, 2155, 2155),
    (C("t", "text"), "ünï ✓", "ünï ✓", "ünï ✓"),
    (C("n", "varchar"), None, None, None),
]  # fmt: skip


@pytest.mark.parametrize(("col", "value", "precise", "strings"), CASES, ids=[c[0].name for c in CASES])
def test_snapshot_values_become_ticdcs_datums(col: ts.Column, value: object, precise: object, strings: object) -> None:
    assert ts.snapshot_value(col, value, PRECISE) == precise
    assert ts.snapshot_value(col, value, STRINGS) == strings


@pytest.mark.parametrize("cfg", [PRECISE, STRINGS], ids=["precise", "string"])
def test_snapshot_datums_match_the_change_feeds_for_values_both_read_alike(cfg: ts.CodecConfig) -> None:
    # Where PyMySQL and the binlog reader hand over the same Python value, both paths give one datum.
    same = [c for c in CASES if c[0].data_type not in ("bit", "set", "json", "year")]
    for col, value, _, _ in same:
        assert ts.snapshot_value(col, value, cfg) == codec.avro_value(col, codec.internal_value(col, value), cfg), col


def test_a_snapshot_row_lands_as_the_same_json_as_the_change_feeds_record() -> None:
    cols = tuple(c for c, *_ in CASES)
    info = ts.TableInfo("shop", "all", cols, ("i",))
    row = [v for _, v, *_ in CASES]
    for cfg in (PRECISE, STRINGS):
        plain = ts.value_schema(info, cfg)
        encode = compile_record_encoder(plain)
        # The change feed's record as a Kafka consumer decodes it (fastavro), minus the extension fields.
        internal = {c.name: (codec.internal_value(c, v) if c.data_type not in ("bit", "set") else None)
                    for c, v in zip(cols, row)}  # fmt: skip
        internal["bit"], internal["s"] = 5, 0b101
        parsed = fastavro.parse_schema(json.loads(plain))
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, codec.value_datum(info, internal, cfg))
        buf.seek(0)
        decoded = fastavro.schemaless_reader(buf, parsed, None)
        assert encode(ts.snapshot_datum(info, row, cfg)) == encode(decoded)
