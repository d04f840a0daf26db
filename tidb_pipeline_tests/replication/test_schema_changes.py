"""The schema-change policy's decisions and TiDB's DDL history, without a lab (issue 17)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from tidb_pipeline.config import ConfigError, SchemaChangePolicy, parse_config
from tidb_pipeline.engine.replica import DdlSource, apply_truncates, follow_schema_changes
from tidb_pipeline.replication import schema_changes as sc
from tidb_pipeline.replication.avro_types import ReplicaColumn
from tidb_pipeline.replication.ddl import Statement, TableRef
from tidb_pipeline.replication.ticdc_schema import sanitize_name
from tidb_pipeline.resources.tidb import ddl_history_sql

REPLICA = TableRef("REPLICA", "T", "DB")
LOG = sc.schema_changes_table(TableRef("PIPELINE", "MERGE_WATERMARKS", "DB"))
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("NUMBER(10,0)", "NUMBER(19,0)", "widen"),  # INT -> BIGINT
    ("NUMBER(5,2)", "NUMBER(12,2)", "widen"),  # DECIMAL(5,2) -> DECIMAL(12,2)
    ("NUMBER(12,2)", "NUMBER(5,2)", "narrow"),
    ("NUMBER(5,2)", "NUMBER(12,4)", "incompatible"),  # Snowflake never changes a scale in place
    ("NUMBER(19,0)", "VARCHAR", "incompatible"),
    ("TEXT", "VARCHAR", "same"),  # information_schema's spelling of VARCHAR
    ("TIMESTAMP_NTZ", "TIMESTAMP_NTZ(6)", "same"),
    ("VARCHAR(24)", "VARCHAR(200)", "widen"),
    ("VARCHAR(200)", "VARCHAR(24)", "narrow"),
    ("FLOAT", "FLOAT", "same"),
])
def test_type_change_follows_snowflakes_alter_column_rules(old: str, new: str, expected: str) -> None:
    assert sc.type_change(old, new) == expected


def test_information_schema_types_read_in_the_replicas_spelling() -> None:
    assert sc.snowflake_type("NUMBER", 10, 0) == "NUMBER(10,0)"
    assert sc.snowflake_type("TEXT", None, None) == "VARCHAR"
    assert sc.snowflake_type("TIMESTAMP_NTZ") == "TIMESTAMP_NTZ"


def _meta(**kw: Any) -> bytes:
    """A history row's job_meta as TiDB encodes model.Job (JSON; BinlogInfo under `binlog`)."""
    job = {"id": kw.get("id", 7), "type": kw.get("type", 12), "schema_id": 2, "table_id": 90,
           "schema_name": kw.get("db", "shop"), "table_name": kw.get("table", "orders"), "state": 6,
           "query": kw["query"], "binlog": {"SchemaVersion": 51, "DBInfo": None, "TableInfo": {"id": 90},
                                            "FinishedTS": kw.get("ts", 449578123456790529)}}
    return json.dumps(job).encode()


def test_a_history_row_decodes_to_its_job_with_the_finish_tso() -> None:
    job = sc.parse_ddl_job(7, _meta(type=11, query="TRUNCATE TABLE orders", ts=449578123456790529))
    assert (job.job_id, job.db, job.table, job.is_truncate, job.finished_ts) == (
        7, "shop", "orders", True, 449578123456790529)
    rename = sc.parse_ddl_job(8, _meta(query="ALTER TABLE `shop`.`orders` RENAME COLUMN `a b` TO c, CHANGE d e INT"))
    assert rename.column_renames() == [("a b", "c"), ("d", "e")]
    assert sc.parse_ddl_job(9, _meta(query="ALTER TABLE orders CHANGE c c BIGINT")).column_renames() == []
    older = json.loads(_meta(type=11, query="truncate table orders", table=""))
    older["binlog"]["TableInfo"] = {"id": 91, "name": {"O": "Orders", "L": "orders"}}
    assert sc.parse_ddl_job(10, json.dumps(older)).table == "Orders"  # names from the finished table info


def test_the_history_query_names_its_configured_table() -> None:
    assert ddl_history_sql("mysql.tidb_ddl_history") == (
        "SELECT job_id, job_meta FROM `mysql`.`tidb_ddl_history` WHERE job_id > %s ORDER BY job_id")
    with pytest.raises(ValueError, match="must be <database>.<table>"):
        ddl_history_sql("tidb_ddl_history")


def _col(name: str, sql_type: str, key: bool = False) -> ReplicaColumn:
    return ReplicaColumn(name, sql_type, not key, "X", key, "string")


class FakeWarehouse:
    """Answers the replica-types and schema-changes queries; records every other statement."""

    def __init__(self, types: dict[str, str], recorded: list[tuple[Any, ...]]) -> None:
        self.types, self.recorded, self.sent = types, recorded, []

    def execute(self, stmt: Statement | str, params: Any = ()) -> list[tuple[Any, ...]]:
        sql = stmt.sql if isinstance(stmt, Statement) else stmt
        if "information_schema.columns" in sql:
            out = []
            for n, t in self.types.items():
                family, _, rest = t.partition("(")
                p, _, s = rest.rstrip(")").partition(",")
                out.append((n, family, int(p) if p else None, int(s) if s else None))
            return out
        if sql.startswith("SELECT") and sc.SCHEMA_CHANGES_TABLE in sql:
            return self.recorded
        self.sent.append(sql if isinstance(stmt, str) else (sql, stmt.params))
        return []


BASE = [("baseline", None, None, 3, None, 1, NOW.replace(tzinfo=None))]


def _follow(wh: FakeWarehouse, fields: tuple[ReplicaColumn, ...], policy: SchemaChangePolicy = SchemaChangePolicy(),
            jobs: list[tuple[int, bytes]] = (), when: dt.datetime = NOW) -> tuple[sc.ColumnChange, ...]:
    ddl = DdlSource("shop", "orders", lambda after: [j for j in jobs if j[0] > after], lambda: 3, policy)
    changes, before = follow_schema_changes(wh, REPLICA, fields, 2, ddl, LOG, when, None)
    assert before == (1 if wh.recorded else None)
    return changes


def test_widen_alters_in_place_and_records_versions_before_and_after() -> None:
    wh = FakeWarehouse({"id": "NUMBER(10,0)", "price": "NUMBER(5,2)"}, BASE)
    changes = _follow(wh, (_col("id", "NUMBER(10,0)", True), _col("price", "NUMBER(12,2)")))
    assert [c.describe() for c in changes] == ["widen_type 'price' NUMBER(5,2) -> NUMBER(12,2)"]
    assert wh.sent[0] == 'ALTER TABLE "DB"."REPLICA"."T" ALTER COLUMN "price" SET DATA TYPE NUMBER(12,2)'
    (_, params), = wh.sent[1:]
    assert params[1:5] == ("widen_type", "price", "NUMBER(5,2)", "NUMBER(12,2)") and params[8:10] == (1, 2)


@pytest.mark.parametrize(("new", "policy", "why"), [
    ("NUMBER(3,2)", SchemaChangePolicy(), "narrow"),
    ("NUMBER(12,4)", SchemaChangePolicy(), "incompatible"),
    ("NUMBER(12,2)", SchemaChangePolicy(widen_type="fail"), "widening, and schema_changes.widen_type is 'fail'"),
])
def test_a_type_change_the_policy_refuses_names_table_column_types_and_the_rebuild(
    new: str, policy: SchemaChangePolicy, why: str,
) -> None:
    wh = FakeWarehouse({"id": "NUMBER(10,0)", "price": "NUMBER(5,2)"}, BASE)
    with pytest.raises(sc.SchemaChangeError) as info:
        _follow(wh, (_col("id", "NUMBER(10,0)", True), _col("price", new)), policy)
    msg = str(info.value)
    assert f"shop.orders column 'price' changed type NUMBER(5,2) -> {new} ({why}" in msg
    assert "dagster job launch -j backfill" in msg and '"tables": ["shop.orders"]' in msg
    assert wh.sent == []  # nothing altered, nothing recorded


def test_rename_follows_the_ddl_history_not_the_avro_schema() -> None:
    jobs = [(5, _meta(id=5, query="ALTER TABLE orders RENAME COLUMN name TO label"))]
    wh = FakeWarehouse({"id": "NUMBER(10,0)", "name": "TEXT"}, BASE)
    fields = (_col("id", "NUMBER(10,0)", True), _col("label", "VARCHAR"))
    changes = _follow(wh, fields, jobs=jobs)
    assert [c.describe() for c in changes] == ["rename_column 'name' -> 'label' (DDL job 5)"]
    assert wh.sent[0] == 'ALTER TABLE "DB"."REPLICA"."T" RENAME COLUMN "name" TO "label"'
    # Without the history entry the same schema is a drop (kept) plus an add: nothing is guessed.
    wh = FakeWarehouse({"id": "NUMBER(10,0)", "name": "TEXT"}, BASE)
    assert [c.kind for c in _follow(wh, fields)] == ["add_column", "drop_column_kept"]
    with pytest.raises(sc.SchemaChangeError, match="rename_column is 'fail'"):
        _follow(FakeWarehouse({"id": "NUMBER(10,0)", "name": "TEXT"}, BASE), fields,
                SchemaChangePolicy(rename_column="fail"), jobs)


def test_a_dropped_column_is_kept_or_dropped_after_the_window() -> None:
    fields = (_col("id", "NUMBER(10,0)", True),)
    keep = FakeWarehouse({"id": "NUMBER(10,0)", "gone": "TEXT"}, BASE)
    assert [c.describe() for c in _follow(keep, fields)] == ["drop_column_kept 'gone' VARCHAR: kept, no longer filled"]
    assert not any("DROP COLUMN" in str(s) for s in keep.sent)
    seen = NOW.replace(tzinfo=None) - dt.timedelta(hours=2)
    policy = SchemaChangePolicy(drop_column="drop", drop_after_hours=3)
    recorded = [*BASE, ("drop_column_kept", "gone", None, None, None, 1, seen)]
    assert _follow(FakeWarehouse({"id": "NUMBER(10,0)", "gone": "TEXT"}, recorded), fields, policy) == ()
    later = FakeWarehouse({"id": "NUMBER(10,0)", "gone": "TEXT"}, recorded)
    (dropped,) = _follow(later, fields, policy, when=NOW + dt.timedelta(hours=1))
    assert dropped.kind == "drop_column" and later.sent[0] == 'ALTER TABLE "DB"."REPLICA"."T" DROP COLUMN "gone"'


def test_a_new_replica_records_where_the_history_is_followed_from() -> None:
    wh = FakeWarehouse({}, [])
    assert _follow(wh, (_col("id", "NUMBER(10,0)", True),)) == ()
    (_, params), = wh.sent
    assert params[1] == "baseline" and params[6] == 3  # the newest job when the replica was made


def test_recorded_state_gives_the_latest_truncate_and_renames_in_order() -> None:
    rows = [*BASE, ("truncate", None, None, 9, 100, 2, NOW), ("truncate", None, None, 12, 250, 2, NOW),
            ("rename_column", "b", "c", 15, 300, 3, NOW), ("rename_column", "a", "b", 11, 200, 2, NOW)]
    rec = sc.parse_recorded(rows)
    assert (rec.truncated_at, rec.last_truncate_job_id, rec.baseline_job_id, rec.version) == (250, 12, 3, 3)
    assert rec.renames == (("a", "b"), ("b", "c"))
    (c,) = sc.with_previous_fields((_col("c", "VARCHAR"),), rec.renames, sanitize_name)
    assert c.previous_fields == ("b", "a")


def test_policy_config_is_validated_with_the_field_named() -> None:
    with pytest.raises(ConfigError, match=r"tables\.0\.schema_changes\.drop_column: Input should be 'keep' or 'drop'"):
        parse_config({"tables": [{"db": "a", "table": "b", "schema_changes": {"drop_column": "purge"}}]})
    with pytest.raises(ConfigError, match="drop_after_hours"):
        parse_config({"schema_changes": {"drop_after_hours": -1}})
    with pytest.raises(ConfigError, match=r"schema_changes\.truncate: 'follow' needs source\.enable_tidb_extension"):
        parse_config({"source": {"enable_tidb_extension": False}, "tables": [{"db": "a", "table": "b"}]})
    cfg = parse_config({"tables": [{"db": "a", "table": "b"}]})
    assert cfg.schema_changes_of(cfg.tables[0]) == SchemaChangePolicy(
        add_column="follow", drop_column="keep", drop_after_hours=168, widen_type="alter", incompatible_type="fail",
        rename_column="follow", truncate="follow")


class _Transactions(FakeWarehouse):
    def transaction(self) -> Any:
        import contextlib

        self.sent.append("BEGIN")
        return contextlib.nullcontext()


def test_a_truncate_empties_the_replica_once_and_the_history_read_moves_on() -> None:
    others = [(i, _meta(id=i, table=f"other{i}", query="ALTER TABLE x ADD COLUMN c INT")) for i in range(4, 150)]
    truncate = (150, _meta(id=150, type=11, query="TRUNCATE TABLE orders", ts=900))
    rename = (160, _meta(id=160, query="ALTER TABLE orders RENAME COLUMN a TO b"))
    jobs = [*others, truncate, *[(i, _meta(id=i, table="x", query="TRUNCATE TABLE x", type=11)) for i in range(151, 160)],
            rename, (161, _meta(id=161, table="x", query="DROP TABLE x", type=4))]
    ddl = DdlSource("shop", "orders", lambda after: [j for j in jobs if j[0] > after], lambda: 3)
    wh = _Transactions({}, BASE)
    truncated_at, done = apply_truncates(wh, REPLICA, ddl, LOG, 2, NOW)
    assert truncated_at == 900 and [c.describe() for c in done] == [
        "truncate at TSO 900 (DDL job 150): replica emptied; changes committed at or before it are deletes"]
    assert wh.sent[:2] == ["BEGIN", 'DELETE FROM "DB"."REPLICA"."T"']
    # The history is read from job 159 on next time: past other tables' jobs, not past the unapplied rename.
    (_, seen), = [s for s in wh.sent[2:] if s[1][1] == "history_seen"]
    assert seen[6] == 159
    # Once recorded, the same truncate is not applied again, and its TSO still bounds the merge.
    recorded = [*BASE, ("truncate", None, None, 150, 900, 2, NOW), ("history_seen", None, None, 159, None, None, NOW)]
    again = _Transactions({}, recorded)
    assert apply_truncates(again, REPLICA, ddl, LOG, 2, NOW) == (900, ())
    assert again.sent == []
    assert sc.parse_recorded(recorded).baseline_job_id == 159
