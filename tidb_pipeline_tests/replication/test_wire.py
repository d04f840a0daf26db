import io
import json
from decimal import Decimal

import fastavro
import pytest

from tidb_pipeline.replication.wire import (
    LineBuilder,
    ParquetFiles,
    PoisonRecord,
    UnknownSchemaId,
    decode,
    poison_metadata,
    schema_id,
    split,
)
from tidb_pipeline_tests.replication.support import KEY, decimal_type, field, landing_line, record, small_value, with_extension

VALUE = small_value(field("data", "bytes", "BLOB", nullable=True))


def wire(sid: int, schema: dict, obj: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\x00" + sid.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), obj)
    return buf.getvalue()


ROW = {"id": 7, "name": 'a "q"', "price": Decimal("12.50"), "data": b"\x00\xff",
       "_tidb_op": "c", "_tidb_commit_ts": 5, "_tidb_commit_physical_time": 6}


def test_split_reads_the_header():
    data = wire(258, KEY, {"id": 1})
    assert schema_id(data) == 258
    assert split(data) == (258, data[5:])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "0 bytes is too short"),
        (b"\x00\x00\x01", "3 bytes is too short"),
        (b"\x01\x00\x00\x00\x01\x02", "magic byte is 0x01"),
        (b'{"id": 1}', "magic byte is 0x7b"),
    ],
)
def test_bad_headers_are_poison(data, reason):
    with pytest.raises(PoisonRecord, match=reason) as info:
        schema_id(data)
    assert reason in info.value.reason


def test_decode_gives_fastavro_values_and_rejects_truncated_or_padded_bodies():
    parsed = fastavro.parse_schema(VALUE)
    data = wire(2, VALUE, ROW)
    assert decode(data, parsed) == ROW
    for cut in (5, 8, len(data) - 1):
        with pytest.raises(PoisonRecord, match="does not match its schema"):
            decode(data[:cut], parsed)
    with pytest.raises(PoisonRecord, match="2 bytes left over"):
        decode(data + b"xx", parsed)
    with pytest.raises(PoisonRecord, match="too short"):
        decode(b"\x00\x00", parsed)


def test_line_builder_writes_the_connector_layout():
    builder = LineBuilder("tidb_test_t", {1: json.dumps(KEY), 2: json.dumps(VALUE)})
    line = landing_line(builder, 3, 42, 1, 1_764_072_000_000, wire(1, KEY, {"id": 7}), wire(2, VALUE, ROW))
    assert line == (
        '{"RECORD_METADATA":{"topic":"tidb_test_t","partition":3,"offset":42,"CreateTime":1764072000000,'
        '"key":{"id":7}},"RECORD_CONTENT":{"id":7,"name":"a \\"q\\"","price":12.50,"data":"AP8=",'
        '"_tidb_op":"c","_tidb_commit_ts":5,"_tidb_commit_physical_time":6}}\n'
    )
    tombstone = landing_line(builder, 0, 1, 2, 9, wire(1, KEY, {"id": 7}), None)
    assert json.loads(tombstone) == {
        "RECORD_METADATA": {"topic": "tidb_test_t", "partition": 0, "offset": 1, "LogAppendTime": 9, "key": {"id": 7}},
        "RECORD_CONTENT": {},
    }
    no_timestamp = landing_line(builder, 0, 2, 0, -1, None, wire(2, VALUE, ROW))
    assert json.loads(no_timestamp)["RECORD_METADATA"] == {"topic": "tidb_test_t", "partition": 0, "offset": 2}


def test_line_builder_reports_unknown_ids_and_poison():
    builder = LineBuilder("t", {1: json.dumps(KEY), 2: json.dumps(VALUE)})
    key = wire(1, KEY, {"id": 1})
    with pytest.raises(UnknownSchemaId) as info:
        landing_line(builder, 0, 0, 1, 0, key, wire(99, VALUE, ROW))
    assert info.value.schema_id == 99
    with pytest.raises(PoisonRecord, match="magic byte"):
        landing_line(builder, 0, 0, 1, 0, b"\x05" + key[1:], None)
    with pytest.raises(PoisonRecord, match="does not match"):
        landing_line(builder, 0, 0, 1, 0, key, wire(2, VALUE, ROW)[:-3])
    builder.add_schemas({99: json.dumps(VALUE)})
    assert json.loads(landing_line(builder, 0, 0, 1, 0, key, wire(99, VALUE, ROW)))["RECORD_CONTENT"]["id"] == 7


def test_poison_metadata_has_no_key():
    assert poison_metadata("t", 1, 5, 1, 10) == '{"topic":"t","partition":1,"offset":5,"CreateTime":10}'
    assert poison_metadata("t", 1, 5, 0, -1) == '{"topic":"t","partition":1,"offset":5}'


def test_a_corrupt_key_is_poison_even_when_its_value_is_fine():
    # TiCDC's key fields are value fields too, but the key is decoded anyway: the connector would fail on
    # this record, so it is quarantined, not landed with a key made up from the value.
    key_schema = record("t", [field("id", "long", "BIGINT")])
    key, value = wire(1, key_schema, {"id": 7}), wire(2, VALUE, ROW)
    builder = LineBuilder("t", {1: json.dumps(key_schema), 2: json.dumps(VALUE)})
    assert json.loads(builder.row(0, 1, 1, 9, key, value)[0])["key"] == {"id": 7}
    with pytest.raises(PoisonRecord, match="does not match its schema"):
        builder.row(0, 2, 1, 9, key[:-1], value)


def test_parquet_files_split_by_rows_and_hold_the_two_json_texts(tmp_path):
    import pyarrow.parquet as pq

    seen = []
    files = ParquetFiles(str(tmp_path), "p", rows_per_file=2, on_file=lambda path, rows: seen.append((path, rows)))
    rows = [(f'{{"offset":{i}}}', '{"s":"é \\"q\\""}') for i in range(5)]
    for metadata, content in rows:
        files.add_row(metadata, content)
    files.flush()
    assert [r for _, r in seen] == [2, 2, 1] and files.rows == 5 and [p for p, _ in seen] == files.paths
    assert all(p.endswith(".parquet") for p in files.paths)
    read = [row for p in files.paths for row in pq.read_table(p).to_pylist()]
    assert read == [{"RECORD_METADATA": m, "RECORD_CONTENT": c} for m, c in rows]


def test_row_texts_equal_the_record_encoders_for_every_record_shape():
    # `LineBuilder.row` resolves everything per (key, value) schema pair once and inlines the metadata text;
    # it must write exactly what `RecordEncoder.metadata` / `content` write, on the first record of a pair
    # and on the cached path after it. Nullable ints and decimals take the encoder's inlined formatting.
    from tidb_pipeline.replication.landing import RecordEncoder

    value_schema = with_extension(record("t", [
        field("id", "long", "BIGINT"), field("n", "long", "BIGINT", nullable=True),
        field("d", decimal_type(12, 3), "DECIMAL", nullable=True), field("price", decimal_type(10, 2), "DECIMAL"),
        field("s", "string", "TEXT", nullable=True),
    ]))
    builder = LineBuilder("tidb_x.t", {1: json.dumps(KEY), 2: json.dumps(value_schema)})
    reference = RecordEncoder(json.dumps(KEY), json.dumps(value_schema))
    ext = {"_tidb_op": "u", "_tidb_commit_ts": 2**62, "_tidb_commit_physical_time": 1_764_072_000_000}
    values = [
        {"id": -7, "n": None, "d": None, "price": Decimal("0.00"), "s": None, **ext},
        {"id": 2**40, "n": -3, "d": Decimal("-12.500"), "price": Decimal("99999999.99"), "s": 'é "\n', **ext},
    ]
    for _ in range(2):  # the second round runs on the cached row function
        for ts_type, ts in ((0, -1), (1, 1_764_072_000_123), (2, 5)):
            for v in [*values, None]:
                key = wire(1, KEY, {"id": v["id"] if v else 9})
                got = builder.row(4, 10**12, ts_type, ts, key, None if v is None else wire(2, value_schema, v))
                ts_key = {1: "CreateTime", 2: "LogAppendTime"}.get(ts_type)
                expected = (reference.metadata("tidb_x.t", 4, 10**12, ts if ts_key else None,
                                               {"id": v["id"] if v else 9}, ts_key or ""), reference.content(v))
                assert got == expected
    no_key = builder.row(0, 1, 1, 3, None, wire(2, value_schema, values[0]))
    assert no_key[0] == '{"topic":"tidb_x.t","partition":0,"offset":1,"CreateTime":3}'


def test_a_pair_without_the_key_columns_stays_poison_on_every_record():
    other = record("t", [field("other", "long", "BIGINT")])
    builder = LineBuilder("t", {1: json.dumps(KEY), 3: json.dumps(other)})
    for offset in range(2):
        with pytest.raises(PoisonRecord, match="lacks key column"):
            builder.row(0, offset, 1, 0, wire(1, KEY, {"id": 1}), wire(3, other, {"other": 1}))
