import json
from decimal import Decimal

import pytest

from tidb_pipeline.replication.ddl import TableRef, create_landing_sql
from tidb_pipeline.replication.wire import ParquetFiles
from tidb_pipeline.replication.landing import (
    RecordEncoder,
    compile_record_encoder,
    create_load_rows_sql,
    land_rows_statements,
    stage_file_statements,
)
from tidb_pipeline_tests.replication.support import (
    ALL_TYPES_KEY,
    ALL_TYPES_VALUE,
    avro_round_trip,
    decimal_type,
    fake_snowflake,
    field,
    record,
)

ALL_VALUES = {
    "id": 1,
    "c_int": -5,
    "c_int_unsigned": 16777215,
    "c_int_unsigned_long": 4294967295,
    "c_bigint": -(2**63),
    "c_bigint_unsigned": -1,  # 2^64-1 as TiCDC's long mode wraps it
    "c_bigint_unsigned_str": "18446744073709551615",
    "c_float": 1.1,
    "c_double": 0.1 + 0.2,
    "c_decimal": Decimal("12.50"),
    "c_decimal_wide": Decimal("12345678901234567890123456789012345.123456789012345678901234567890"),
    "c_decimal_str": "123.4500",
    "c_text": 'é "q"\n\\',
    "c_blob": b"\x00\xff",
    "c_bit": b"\x02\x01",
    "c_enum": "b",
    "c_set": "a,c",
    "c_json": '{"k": [1, null]}',
    "c_date": "2024-02-29",
    "c_datetime": "2024-02-29 23:59:59.123456",
    "c_timestamp": "1970-01-01 00:00:01",
    "c_time": "-838:59:59",
    "c_year": 2155,
    "_tidb_op": "c",
    "_tidb_commit_ts": 463_000_000_000_000_001,
    "_tidb_commit_physical_time": 1_764_072_000_000,
}
ALL_CONTENT = (
    '{"id":1,"c_int":-5,"c_int_unsigned":16777215,"c_int_unsigned_long":4294967295,'
    '"c_bigint":-9223372036854775808,"c_bigint_unsigned":-1,"c_bigint_unsigned_str":"18446744073709551615",'
    '"c_float":1.1,"c_double":0.30000000000000004,"c_decimal":12.50,'
    '"c_decimal_wide":"12345678901234567890123456789012345.123456789012345678901234567890",'
    '"c_decimal_str":"123.4500","c_text":"é \\"q\\"\\n\\\\","c_blob":"AP8=","c_bit":"AgE=","c_enum":"b",'
    '"c_set":"a,c","c_json":"{\\"k\\": [1, null]}","c_date":"2024-02-29",'
    '"c_datetime":"2024-02-29 23:59:59.123456","c_timestamp":"1970-01-01 00:00:01","c_time":"-838:59:59",'
    '"c_year":2155,"_tidb_op":"c","_tidb_commit_ts":463000000000000001,"_tidb_commit_physical_time":1764072000000}'
)


def test_value_after_avro_decode_encodes_like_the_connector():
    decoded = avro_round_trip(ALL_TYPES_VALUE, ALL_VALUES)
    assert decoded["c_float"] != 1.1  # fastavro widens the float32; the encoder must narrow it back
    content = RecordEncoder(ALL_TYPES_KEY, ALL_TYPES_VALUE).content(decoded)
    assert content == ALL_CONTENT
    assert json.loads(content)["c_text"] == ALL_VALUES["c_text"]


def test_nulls_and_tombstone():
    nulls = {k: (None if k.startswith("c_") else v) for k, v in ALL_VALUES.items()}
    encoder = RecordEncoder(ALL_TYPES_KEY, ALL_TYPES_VALUE)
    assert json.loads(encoder.content(avro_round_trip(ALL_TYPES_VALUE, nulls))) == nulls
    assert encoder.content(None) == "{}"


def test_metadata_layout_with_avro_key():
    encoder = RecordEncoder(ALL_TYPES_KEY, ALL_TYPES_VALUE)
    assert encoder.metadata("tidb_types_all_types", 3, 42, 1_764_072_000_000, {"id": 7}) == (
        '{"topic":"tidb_types_all_types","partition":3,"offset":42,"CreateTime":1764072000000,"key":{"id":7}}'
    )
    assert encoder.metadata("t", 0, 1, 5, None, timestamp_type="LogAppendTime") == (
        '{"topic":"t","partition":0,"offset":1,"LogAppendTime":5}'
    )
    assert encoder.metadata("t", 0, 1, None, {"id": 1}) == '{"topic":"t","partition":0,"offset":1,"key":{"id":1}}'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0E-10"), "0.0000000000"),
        (Decimal("-0.01"), "-0.01"),
        (Decimal("1E+2"), "100"),
        (Decimal("99999999.99"), "99999999.99"),
    ],
)
def test_decimals_are_plain_json_numbers_with_scale(value, text):
    encode = compile_record_encoder(record("t", [field("d", decimal_type(10, 2), "DECIMAL")]))
    assert encode({"d": value}) == '{"d":' + text + "}"
    assert json.loads(encode({"d": value}), parse_float=Decimal)["d"] == value


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.1, "1.1"), (0.1, "0.1"), (3.4028234663852886e38, "3.4028235e+38"), (-2.5, "-2.5"), (16777217.0, "16777216.0")],
)
def test_float32_values_get_their_shortest_text(value, text):
    schema = record("t", [field("f", "float", "FLOAT")])
    encode = compile_record_encoder(schema)
    assert encode(avro_round_trip(schema, {"f": value})) == '{"f":' + text + "}"


def test_non_finite_floats_are_refused():
    encode = compile_record_encoder(record("t", [field("f", "double", "DOUBLE")]))
    with pytest.raises(ValueError, match="no JSON representation"):
        encode({"f": float("nan")})


def test_staged_parquet_loads_into_the_landing_layout(tmp_path):
    # The one staging path (engine.staging): Parquet string columns, PUT, COPY with PARSE_JSON, INSERT.
    encoder = RecordEncoder(ALL_TYPES_KEY, ALL_TYPES_VALUE)
    records = [(0, 5, {"id": 1}, avro_round_trip(ALL_TYPES_VALUE, ALL_VALUES)), (1, 9, {"id": 2}, None)]
    rows = [(encoder.metadata("topic", p, o, 1000, k), encoder.content(v)) for p, o, k, v in records]
    files = ParquetFiles(str(tmp_path), "batch", rows_per_file=10)
    for metadata, content in rows:
        files.add_row(metadata, content)
    files.flush()
    (path,) = files.paths
    landing, load = TableRef("S", "LANDING"), '"DB"."S"."LANDING_ROWS"'  # the lab adapter's temporary tables are qualified
    with fake_snowflake() as conn:
        cur = conn.cursor()
        cur.execute(create_landing_sql(landing))
        cur.execute(create_load_rows_sql(load))
        cur.execute("CREATE STAGE LANDING_STAGE")
        cur.execute(f"PUT 'file://{path}' @LANDING_STAGE/batch/ AUTO_COMPRESS = FALSE")
        for stmt in [*stage_file_statements(load, "@LANDING_STAGE/batch/batch-00000.parquet"),
                     *land_rows_statements(landing, load, {})]:
            cur.execute(stmt.sql, stmt.params or None)
        cur.execute(f"SELECT RECORD_METADATA, RECORD_CONTENT FROM {landing.sql} ORDER BY RECORD_METADATA:offset::int")
        loaded = [(json.loads(m), json.loads(c)) for m, c in cur.fetchall()]
        assert loaded == [(json.loads(m), json.loads(c)) for m, c in rows]
        cur.execute(f"SELECT COUNT(*) FROM {load}")
        assert cur.fetchall() == [(0,)]
