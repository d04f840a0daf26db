"""The Snowflake Sink stand-in writes what connector 3.x / 4.x writes (pure parts; the lab run is in
tidb_pipeline_tests/defs/test_connector_mode_end_to_end.py)."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from tidb_pipeline.lab.connector_landing import ConnectorJson, SinkSpec, connector_row, deliver, java_decimal

from tidb_pipeline_tests.replication.support import decimal_type, fake_snowflake, field, record


def _line(row: tuple[str | None, str | None] | None) -> str | None:
    """The row's columns as one JSON object text; a column that is SQL NULL is left out."""
    if row is None:
        return None
    cols = [f'"{name}":{text}' for name, text in zip(("RECORD_METADATA", "RECORD_CONTENT"), row) if text is not None]
    return "{" + ",".join(cols) + "}\n"

KEY = record("t", [field("id", "long", "BIGINT")])
VALUE = record("t", [field("id", "long", "BIGINT"), field("f", "float", "FLOAT", nullable=True),
                     field("d", decimal_type(65, 30), "DECIMAL", nullable=True),
                     field("b", "bytes", "BLOB", nullable=True)])  # fmt: skip
CONFIG = {"name": "sink", "topics": "tidb_a_t", "snowflake.database.name": "DB", "snowflake.schema.name": "LAND",
          "snowflake.topic2table.map": "tidb_a_t:T_LANDING", "snowflake.ingestion.method": "SNOWPIPE"}


@pytest.mark.parametrize(("value", "text"), [
    (Decimal("0E-30"), "0E-30"),  # a zero with scale 30: BigDecimal.toString
    (Decimal("-0.000000000000000000000000000001"), "-1E-30"),
    (Decimal("1234.50"), "1234.50"),
    (Decimal("0.0000001000"), "1.000E-7"),
    (Decimal("1" * 38), "1" * 38),  # 38 digits: still a number
    (Decimal("9" * 35 + "." + "9" * 30), json.dumps("9" * 35 + "." + "9" * 30)),  # 65 digits: a string
])  # fmt: skip
def test_decimals_as_the_connector_writes_them(value: Decimal, text: str) -> None:
    assert java_decimal(value) == text


class Registry:
    def __init__(self) -> None:
        self.schemas = {1: json.dumps(KEY), 2: json.dumps(VALUE)}

    def get_schema(self, sid: int) -> Any:
        return type("S", (), {"schema_str": self.schemas[sid]})()


class Msg:
    def __init__(self, key: dict, value: dict | None, offset: int = 7, ts_type: int = 1) -> None:
        self._key, self._value, self._offset, self._ts_type = self._wire(1, KEY, key), (
            None if value is None else self._wire(2, VALUE, value)), offset, ts_type

    @staticmethod
    def _wire(sid: int, schema: dict, datum: dict) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), datum)
        return b"\x00" + sid.to_bytes(4, "big") + buf.getvalue()

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def topic(self) -> str:
        return "tidb_a_t"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return self._ts_type, 1_700_000_000_000


VALUE_ROW = {"id": 5, "f": 1.100000023841858, "d": Decimal("0E-30"), "b": b"\x00\xff"}


def test_three_x_layout() -> None:
    spec = SinkSpec.from_connector_config(CONFIG)
    writer = ConnectorJson(Registry())  # type: ignore[arg-type]
    line = _line(connector_row(spec, "3.x", writer, Msg({"id": 5}, VALUE_ROW), {"id": 5}, VALUE_ROW, 0))
    assert line == ('{"RECORD_METADATA":{"topic":"tidb_a_t","offset":7,"partition":2,"CreateTime":1700000000000,'
                    '"schema_id":2,"key":{"id":5},"key_schema_id":1},'
                    '"RECORD_CONTENT":{"id":5,"f":1.1,"d":0E-30,"b":"AP8="}}\n')
    tomb = _line(connector_row(spec, "3.x", writer, Msg({"id": 5}, None, ts_type=2), {"id": 5}, None, 0))
    assert tomb == ('{"RECORD_METADATA":{"topic":"tidb_a_t","offset":7,"partition":2,"LogAppendTime":1700000000000,'
                    '"schema_id":0,"key":{"id":5},"key_schema_id":1},"RECORD_CONTENT":{}}\n')


def test_four_x_layout_has_push_time_headers_and_null_tombstones() -> None:
    spec = SinkSpec.from_connector_config({**CONFIG, "snowflake.ingestion.method": "SNOWPIPE_STREAMING"})
    writer = ConnectorJson(Registry())  # type: ignore[arg-type]
    line = _line(connector_row(spec, "4.x", writer, Msg({"id": 5}, VALUE_ROW), {"id": 5}, VALUE_ROW, 42))
    assert json.loads(line.replace("0E-30", "0"))["RECORD_METADATA"] == {
        "offset": 7, "topic": "tidb_a_t", "partition": 2, "key": {"id": 5}, "CreateTime": 1_700_000_000_000,
        "SnowflakeConnectorPushTime": 42, "headers": {}}
    tomb = json.loads(_line(connector_row(spec, "4.x", writer, Msg({"id": 5}, None), {"id": 5}, None, 42)))
    assert "RECORD_CONTENT" not in tomb  # loads as SQL NULL


def test_sink_spec_follows_the_pinned_properties() -> None:
    assert SinkSpec.from_connector_config(CONFIG).drop_tombstones is False
    ignore = SinkSpec.from_connector_config({**CONFIG, "behavior.on.null.values": "IGNORE"})
    writer = ConnectorJson(Registry())  # type: ignore[arg-type]
    assert _line(connector_row(ignore, "3.x", writer, Msg({"id": 5}, None), {"id": 5}, None, 0)) is None  # a lost delete
    no_meta = SinkSpec.from_connector_config({**CONFIG, "snowflake.metadata.offset.and.partition": "false"})
    line = json.loads(_line(connector_row(no_meta, "3.x", writer, Msg({"id": 5}, None), {"id": 5}, None, 0)))
    assert "offset" not in line["RECORD_METADATA"]
    with pytest.raises(ValueError, match="schematization=true"):
        SinkSpec.from_connector_config({**CONFIG, "snowflake.enable.schematization": "true"})


def test_streaming_and_snowpipe_behaviours_do_not_mix() -> None:
    snowpipe = SinkSpec.from_connector_config(CONFIG)
    streaming = SinkSpec.from_connector_config({**CONFIG, "snowflake.ingestion.method": "SNOWPIPE_STREAMING"})
    with pytest.raises(ValueError, match="4.x ingests with SNOWPIPE_STREAMING only"):
        deliver(snowpipe, kafka=None, registry=None, connection=None, layout="4.x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly-once and in order"):
        deliver(streaming, kafka=None, registry=None, connection=None, withhold_files=1)  # type: ignore[arg-type]


def test_why_connector_mode_needs_string_decimals() -> None:
    """A DECIMAL(65,30) written as the connector writes it is not TiDB's value text in the replica's VARCHAR.

    On Snowflake the JSON number is also stored as a double (spec/confluent.md), so digits beyond ~15 are lost;
    the lab's engine keeps a plain JSON number's digits, so that loss cannot be shown here. What can be shown:
    the zero of a DECIMAL(65,30), which the connector writes as `0E-30`, does not come back as TiDB's text
    `0.000000000000000000000000000000`, while the string decimal TiCDC sends in string mode does.
    """
    tidb_text = "0." + "0" * 30
    with fake_snowflake() as conn:
        cur = conn.cursor()
        cur.execute("SELECT PARSE_JSON(%s):d::VARCHAR, PARSE_JSON(%s):d::VARCHAR",
                    ('{"d":' + java_decimal(Decimal(tidb_text)) + "}", '{"d":' + json.dumps(tidb_text) + "}"))
        precise, string = cur.fetchone()
    assert java_decimal(Decimal(tidb_text)) == "0E-30" and precise != tidb_text
    assert string == tidb_text
