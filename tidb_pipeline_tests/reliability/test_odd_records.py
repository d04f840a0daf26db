"""Odd records, without the lab: what the line builder accepts and what it declares poison."""

from __future__ import annotations

import io
import json

import fastavro
import pytest

from tidb_pipeline.replication.wire import LineBuilder, PoisonRecord
from tidb_pipeline_tests.replication.support import landing_line

KEY = {"type": "record", "name": "t", "namespace": "default.db",
       "fields": [{"name": "id", "type": {"type": "long", "connect.parameters": {"tidb_type": "BIGINT"}}}]}
VALUE = {**KEY, "fields": [*KEY["fields"], {"name": "note", "type": ["null", "string"], "default": None}]}
NO_KEY_VALUE = {**KEY, "fields": [{"name": "note", "type": ["null", "string"], "default": None}]}


def _wire(schema_id: int, schema: dict, datum: dict) -> bytes:
    buf = io.BytesIO(b"\x00" + schema_id.to_bytes(4, "big"))
    buf.seek(5)
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), datum)
    return buf.getvalue()


def builder() -> LineBuilder:
    return LineBuilder("topic", {1: json.dumps(KEY), 2: json.dumps(VALUE), 3: json.dumps(NO_KEY_VALUE)})


def test_a_value_whose_schema_lacks_the_key_column_is_poison_not_a_delete():
    # The merge treats content without the key field as a delete: landing it would remove row 7.
    with pytest.raises(PoisonRecord, match="value schema lacks key column\\(s\\) id"):
        landing_line(builder(), 0, 5, 1, 0, _wire(1, KEY, {"id": 7}), _wire(3, NO_KEY_VALUE, {"note": "x"}))


def test_a_tombstone_and_a_full_value_still_land():
    b = builder()
    key = _wire(1, KEY, {"id": 7})
    assert json.loads(landing_line(b, 0, 5, 1, 99, key, None))["RECORD_CONTENT"] == {}
    line = json.loads(landing_line(b, 0, 6, 1, 99, key, _wire(2, VALUE, {"id": 7, "note": "x" * 600_000})))
    assert line["RECORD_METADATA"] == {"topic": "topic", "partition": 0, "offset": 6, "CreateTime": 99, "key": {"id": 7}}
    assert line["RECORD_CONTENT"] == {"id": 7, "note": "x" * 600_000}
