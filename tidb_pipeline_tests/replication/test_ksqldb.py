"""Stream names, statement text and the create/replace plan (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidb_pipeline.resources.ksqldb import describe_statement
from tidb_pipeline.replication.ksqldb import (
    RecordedVersions,
    StreamConflict,
    StreamPlan,
    StreamState,
    SubjectVersion,
    create_statement,
    plan_stream,
    quote_identifier,
    record_fields,
    split_statements,
    stream_name,
    string_literal,
)


@pytest.mark.parametrize(("topic", "stream"), [
    ("tidb_tpcc_item", "TIDB_TPCC_ITEM"),
    ("tidb_my-db_t.x", "TIDB_MY_DB_T_X"),
    ("1st_topic", "S_1ST_TOPIC"),
    ("tidb_Ünïcode_t", "TIDB__N_CODE_T"),
])
def test_stream_name_is_an_upper_case_identifier(topic: str, stream: str) -> None:
    assert stream_name(topic) == stream


@given(st.text(min_size=1, max_size=40))
def test_stream_name_always_valid(topic: str) -> None:
    name = stream_name(topic)
    assert name[0].isalpha() or name[0] == "_"
    assert all(c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_" for c in name)


def test_quoting() -> None:
    assert quote_identifier("A`B") == "`A``B`"
    assert string_literal("it's") == "'it''s'"


def test_statement_text() -> None:
    assert create_statement("TIDB_TPCC_ITEM", "tidb_tpcc_item") == (
        "CREATE STREAM `TIDB_TPCC_ITEM` WITH (KAFKA_TOPIC='tidb_tpcc_item', VALUE_FORMAT='AVRO', KEY_FORMAT='AVRO');"
    )
    assert create_statement("S", "o'brien", replace=True) == (
        "CREATE OR REPLACE STREAM `S` WITH (KAFKA_TOPIC='o''brien', VALUE_FORMAT='AVRO', KEY_FORMAT='AVRO');"
    )
    assert describe_statement("a`b") == "DESCRIBE `a``b`;"


def test_split_statements_respects_quotes() -> None:
    text = "CREATE STREAM `a;b` WITH (KAFKA_TOPIC='x;''y'); DESCRIBE `a;b`;\n  ;LIST STREAMS"
    assert split_statements(text) == [
        "CREATE STREAM `a;b` WITH (KAFKA_TOPIC='x;''y');", "DESCRIBE `a;b`;", "LIST STREAMS",
    ]


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_statements_stay_whole_whatever_the_names(stream: str, topic: str) -> None:
    text = create_statement(stream, topic) + " " + describe_statement(stream)
    assert split_statements(text) == [create_statement(stream, topic), describe_statement(stream)]


def test_record_fields() -> None:
    schema = {"type": "record", "name": "V", "fields": [{"name": "i_id", "type": "int"},
                                                         {"name": "i_name", "type": ["null", "string"]}]}
    assert record_fields(json.dumps(schema)) == ("i_id", "i_name")
    assert record_fields('"string"') == ()


VALUE = SubjectVersion("t-value", 2, 11, ("id", "name", "_tidb_op"))
KEY = SubjectVersion("t-key", 1, 10, ("id",))
STATE = StreamState(topic="t", key_format="AVRO", value_format="AVRO", value_columns=("ID", "NAME", "_TIDB_OP"))


def _plan(existing: StreamState | None = STATE, value: SubjectVersion | None = VALUE,
          key: SubjectVersion | None = KEY, recorded: RecordedVersions = RecordedVersions()) -> StreamPlan:
    return plan_stream(stream="S", topic="t", existing=existing, value=value, key=key, recorded=recorded)


def test_plan_waits_for_both_schemas() -> None:
    assert _plan(value=None) == StreamPlan("wait", None, ("subject t-value has no schema yet",))
    assert _plan(existing=None, key=None) == StreamPlan("wait", None, ("subject t-key has no schema yet",))


def test_plan_creates_when_missing() -> None:
    assert _plan(existing=None) == StreamPlan("create", create_statement("S", "t"), ("stream missing",))


def test_plan_noop_when_names_match_case_insensitively() -> None:
    with_pseudo = StreamState("t", "avro", "avro", ("ROWTIME", "id", "NAME", "_tidb_op"))
    assert _plan(existing=with_pseudo) == StreamPlan("noop", None)
    assert _plan(recorded=RecordedVersions(value=2, key=1)) == StreamPlan("noop", None)


def test_plan_replaces_on_new_columns() -> None:
    newer = SubjectVersion("t-value", 3, 12, ("id", "name", "_tidb_op", "price"))
    assert _plan(value=newer) == StreamPlan("replace", create_statement("S", "t", replace=True),
                                            ("value columns differ: new PRICE",))
    fewer = SubjectVersion("t-value", 3, 12, ("id", "_tidb_op"))
    assert _plan(value=fewer).reasons == ("value columns differ: gone NAME",)


def test_plan_replaces_on_recorded_version() -> None:
    # Same names, newer versions (e.g. a widened type): only the record can tell.
    assert _plan(recorded=RecordedVersions(value=1, key=1)).reasons == (
        "t-value is at version 2, the stream was built from 1",)
    assert _plan(recorded=RecordedVersions(value=2, key=0)).action == "replace"


def test_plan_refuses_what_replace_cannot_do() -> None:
    with pytest.raises(StreamConflict, match="reads topic 'other', not 't'.*drop the stream"):
        _plan(existing=StreamState("other", "AVRO", "AVRO", STATE.value_columns))
    with pytest.raises(StreamConflict, match="KEY_FORMAT=KAFKA, VALUE_FORMAT=AVRO"):
        _plan(existing=StreamState("t", "KAFKA", "AVRO", STATE.value_columns))
