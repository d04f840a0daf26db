"""TiDB names through TiCDC's sanitising and back: Avro field names, topics, and the replica's column names.

TiCDC writes `Mixed Case` as the Avro field `Mixed_Case` (tiflow `common.SanitizeName`); the replica must
carry `Mixed Case`. The golden vectors are upstream TiCDC's own tests (`tidb_pipeline_tests/ticdc_golden/`).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from tidb_pipeline.config import parse_config
from tidb_pipeline.defs.check_results import schema_differences
from tidb_pipeline.lab.ticdc import codec
from tidb_pipeline.replication import ticdc_schema as ts
from tidb_pipeline.replication.avro_types import ColumnNameError, ReplicaColumn, replica_columns, source_names
from tidb_pipeline.replication.ddl import TableRef
from tidb_pipeline.replication.merge import MergePlan, MergeRange, run_merge, source_sql
from tidb_pipeline_tests.replication.support import NOW, Replica, decimal_type, fake_snowflake, field, record, with_extension

# A copy of shared/ticdc_golden/names.json (each case names the upstream test it comes from).
GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "ticdc_golden" / "names.json").read_text())


def test_sanitize_name_and_namespace_match_ticdc() -> None:
    for name, want in GOLDEN["sanitize_name"]["cases"]:
        assert ts.sanitize_name(name) == want, name
    for namespace, schema, want in GOLDEN["avro_namespace"]["cases"]:
        assert ts.avro_namespace(namespace, schema) == want
    # The first character: a digit is kept behind the `_`, anything else is replaced (`i == 0` in Go is a byte
    # index, so only the first rune is "first").
    assert [ts.sanitize_name(n) for n in ("Mixed Case", "-x", "1st", "数量", "a.b-c d", "select")] == [
        "Mixed_Case", "_x", "_1st", "__", "a_b_c_d", "select"]


def test_topic_names_match_ticdc() -> None:
    for expr, schema, table, want in GOLDEN["topic_substitute"]["cases"]:
        assert codec.topic_name(expr, schema, table) == want, (expr, schema, table)
        if "{schema}" in expr and "{table}" in expr:  # the only patterns the config accepts (Avro)
            config = parse_config({"source": {"topic_pattern": expr}, "tables": [{"db": schema, "table": table or "t"}]})
            assert config.topic(config.tables[0]) == want
    config = parse_config({"tables": [{"db": "d", "table": "t" * 300}]})
    assert len(config.topic(config.tables[0])) == 249  # Kafka's limit, TiCDC cuts there


def test_subjects_and_topic_expressions_match_ticdc() -> None:
    for topic, key, value in GOLDEN["subject_names"]["cases"]:
        assert codec.subject_names(topic) == (key, value)
    for expr, valid in GOLDEN["avro_topic_expression_valid"]["cases"]:
        if valid:
            codec.validate_topic_expression(expr)
        else:
            with pytest.raises(ValueError):
                codec.validate_topic_expression(expr)


# --- field names back to TiDB's column names -------------------------------------------------------------


def test_source_names_prefer_the_replica_then_ask_tidb_once() -> None:
    asked: list[int] = []

    def tidb() -> list[str]:
        asked.append(1)
        return ["Order Id", "Mixed Case", "1st", "select", "数量"]

    fields = ["Order_Id", "Mixed_Case", "_1st", "select", "__"]
    assert source_names(fields, source=tidb) == {
        "Order_Id": "Order Id", "Mixed_Case": "Mixed Case", "_1st": "1st", "select": "select", "__": "数量"}
    assert asked == [1]  # one question for every field
    # Every field already has its replica column: TiDB is not asked at all (steady-state merges).
    assert source_names(fields, replica=["Order Id", "Mixed Case", "1st", "select", "数量"], source=tidb)["__"] == "数量"
    assert asked == [1]
    # A column the replica lacks (added by ALTER TABLE) is named from TiDB; a field TiDB no longer has keeps
    # its Avro name; without TiDB a field keeps its Avro name.
    assert source_names(["Order_Id", "new_col", "gone"], replica=["Order Id"], source=lambda: ["Order Id", "new col"]) \
        == {"Order_Id": "Order Id", "new_col": "new col", "gone": "gone"}
    assert source_names(["Mixed_Case"]) == {"Mixed_Case": "Mixed_Case"}


def test_columns_that_sanitise_alike_are_refused_as_ticdc_refuses_them() -> None:
    with pytest.raises(ColumnNameError, match=r"'a b', 'a-b' all become Avro field 'a_b'.*rename"):
        source_names(["a_b"], source=lambda: ["a b", "a-b"])
    with pytest.raises(ColumnNameError, match="stale replica columns"):
        source_names(["a_b"], replica=["a b", "a-b"], source=lambda: [])
    info = ts.TableInfo("d", "t", (ts.Column("id", "int", False), ts.Column("a b", "int", True),
                                   ts.Column("a-b", "int", True)), ("id",))
    # TiCDC adds no collision suffix: goavro refuses a record whose fields repeat a name.
    with pytest.raises(ts.FieldNameCollisionError, match=r"columns 'a b' and 'a-b' both become field 'a_b'"):
        ts.value_schema(info, ts.CodecConfig())


def test_replica_columns_take_tidb_names_and_keep_the_field_for_json_paths() -> None:
    key = record("t", [field("Order_Id", "long", "BIGINT")])
    value = record("t", [field("Order_Id", "long", "BIGINT"), field("Mixed_Case", "string", "TEXT", nullable=True)])
    columns = replica_columns(value, key, {"Order_Id": "Order Id", "Mixed_Case": "Mixed Case"})
    assert [(c.name, c.field, c.is_key) for c in columns] == [("Order Id", "Order_Id", True),
                                                              ("Mixed Case", "Mixed_Case", False)]
    sql = source_sql(_plan(columns), [MergeRange(0, -1, 9)]).sql
    assert 'STRIP_NULL_VALUE(l."RECORD_METADATA":"key":"Order_Id")::NUMBER(19,0) AS "Order Id"' in sql
    assert 'STRIP_NULL_VALUE(x."__TP_CONTENT":"Mixed_Case")::VARCHAR AS "Mixed Case"' in sql
    assert '"Order Id"' not in sql.split("OBJECT_CONSTRUCT(")[1].split(")")[0]  # key text reads the field


def _plan(columns: tuple[ReplicaColumn, ...]) -> MergePlan:
    return MergePlan(TableRef("S", "T"), TableRef("S", "L"), TableRef("S", "W"), columns)


def test_merge_writes_tidb_names_from_sanitised_fields() -> None:
    """Insert, update, delete and a key change through a MERGE whose every column name differs from its field."""
    names = {"Order_Id": "Order Id", "Mixed_Case": "Mixed Case", "select": "select", "_1st": "1st",
             "__": "数量", "a_b_c": "a.b-c"}
    key = record("t", [field("Order_Id", "long", "BIGINT")])
    value = with_extension(record("t", [
        field("Order_Id", "long", "BIGINT"), field("Mixed_Case", "string", "TEXT", nullable=True),
        field("select", "int", "INT", nullable=True), field("_1st", decimal_type(8, 2), "DECIMAL", nullable=True),
        field("__", "string", "TEXT", nullable=True), field("a_b_c", "string", "DATE", nullable=True),
    ]))

    def row(i: int, text: str | None) -> dict:
        return {"Order_Id": i, "Mixed_Case": text, "select": i * 2, "_1st": Decimal(f"{i}.25"), "__": "数",
                "a_b_c": "2026-12-07", "_tidb_op": "c", "_tidb_commit_ts": 1, "_tidb_commit_physical_time": 1}

    with fake_snowflake() as conn:
        r = Replica(conn, key, value, name="Order Items", names=names)
        r.land([(0, 0, {"Order_Id": 1}, row(1, "a")), (0, 1, {"Order_Id": 2}, row(2, "b")),
                (0, 2, {"Order_Id": 3}, row(3, "c")), (0, 3, {"Order_Id": 1}, row(1, "a2")),
                (0, 4, {"Order_Id": 2}, None), (0, 5, {"Order_Id": 3}, None), (0, 6, {"Order_Id": 30}, row(30, None))])
        run_merge(conn, r.plan, NOW)
        cur = conn.cursor()
        cur.execute('SELECT "Order Id", "Mixed Case", "select", "1st", "数量", "a.b-c"::VARCHAR '
                    'FROM "S"."Order Items" ORDER BY 1')
        assert [tuple(x) for x in cur.fetchall()] == [
            (1, "a2", 2, Decimal("1.25"), "数", "2026-12-07"), (30, None, 60, Decimal("30.25"), "数", "2026-12-07")]


def test_schema_drift_compares_tidb_names_with_sanitised_fields() -> None:
    tidb = ["Order Id", "Mixed Case", "数量"]
    avro = ["Order_Id", "Mixed_Case", "__"]
    assert schema_differences(tidb, avro, tidb).problems == []  # the replica carries TiDB's names: no drift
    drift = schema_differences(tidb, avro, ["Order Id", "Mixed_Case"])
    assert drift.problems == [
        "replica is missing column '数量' (the next merge adds it)",
        "replica column 'Mixed_Case' holds TiDB column 'Mixed Case' under TiCDC's Avro name; rename it to "
        "'Mixed Case' (ALTER TABLE ... RENAME COLUMN)",
    ]
    assert schema_differences(tidb + ["new col"], avro, tidb).problems == [
        "column 'new col' is in TiDB but no change record carries it yet"]


def test_lab_change_feed_fails_such_a_table_as_ticdc_does() -> None:
    from tidb_pipeline.lab.ticdc import capture
    from tidb_pipeline.lab.ticdc.store import Changefeed

    cf = Changefeed(id="c", sink_uri="kafka://k:9092/t?protocol=avro",
                    replica_config={"sink": {"schema_registry": "http://r"}}, start_ts=1, state="normal",
                    checkpoint_ts=1, binlog_file=None, binlog_pos=None, error=None, created_at=0.0)
    info = ts.TableInfo("d", "t", (ts.Column("id", "int", False), ts.Column("a b", "int", True),
                                   ts.Column("a-b", "int", True)), ("id",))
    with pytest.raises(capture.CaptureError, match="'a b' and 'a-b' both become field 'a_b'") as err:
        capture.Capture(cf, None, {})._codec(info)  # type: ignore[arg-type]
    assert err.value.code == "CDC:ErrAvroSchemaAPIError"  # goavro's refusal, wrapped as TiCDC wraps it
