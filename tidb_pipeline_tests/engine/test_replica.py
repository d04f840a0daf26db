"""merge_replica's per-process DDL memo (the warehouse seam's): DDL once per replica and schema version, re-checked
when a merge finds an object missing; and the session pins the merge's session sets first.

Runs on in-process fakesnow with a stub registry (the schemas are the merge tests' own).
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from tidb_pipeline.config import SnowflakeSessionConfig
from tidb_pipeline.engine.replica import forget_ensured, merge_replica
from tidb_pipeline.lab.snowflake_adapter import session_of
from tidb_pipeline.replication.ddl import table_columns_sql
from tidb_pipeline.resources.warehouse import Warehouse
from tidb_pipeline_tests.replication.support import NOW, Replica, fake_snowflake, field, record, with_extension
from tidb_pipeline_tests.replication.test_merge import KEY, VALUE, k, v


class _Registry:
    """Answers get_latest_version like the Schema Registry for one topic's key and value subjects."""

    def __init__(self, key: dict, value: dict, version: int = 1) -> None:
        self.subjects = {"key": json.dumps(key), "value": json.dumps(value)}
        self.version = version

    def get_latest_version(self, subject: str) -> Any:
        text = self.subjects[subject.rsplit("-", 1)[1]]
        return SimpleNamespace(schema=SimpleNamespace(schema_str=text), version=self.version)


class _Recording:
    """The connection, with every SQL text it executes recorded."""

    def __init__(self, conn: Any) -> None:
        self._conn, self.sql = conn, []

    def cursor(self) -> Any:
        cur, sql = self._conn.cursor(), self.sql

        class _Cursor:
            def execute(self, text: str, params: Any = None) -> Any:
                sql.append(text)
                return cur.execute(text, params)

            def __getattr__(self, name: str) -> Any:
                return getattr(cur, name)

        return _Cursor()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture
def replica():
    forget_ensured()
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE)
        conn.cursor().execute(f"DROP TABLE {r.plan.replica.sql}")  # merge_replica creates it
        yield r
    forget_ensured()


def _merge(r: Replica, conn: Any, registry: _Registry, log: logging.Logger | None = None) -> Any:
    return merge_replica(connection=conn, registry=registry, topic="tidb_test_t", landing=r.plan.landing,
                         replica=r.plan.replica, watermarks=r.plan.watermarks, now=NOW, log=log)


def _ddl(sql: list[str]) -> list[str]:
    return [s for s in sql if s.lstrip().upper().startswith(("CREATE", "ALTER")) or "information_schema" in s.lower()]


def test_ddl_runs_once_per_schema_version(replica: Replica) -> None:
    conn, registry = _Recording(replica.conn), _Registry(KEY, VALUE)
    replica.land([(0, 0, k(1), v(1, "a"))])
    first = _merge(replica, conn, registry)
    assert first is not None and (first.counts.inserted, first.row_count) == (1, 1)
    assert len(_ddl(conn.sql)) >= 3  # schema, watermark table, replica table (+ its column listing)
    conn.sql.clear()
    replica.land([(0, 1, k(2), v(2, "b"))])
    second = _merge(replica, conn, registry)
    assert second is not None and (second.counts.inserted, second.row_count) == (1, 2)
    assert _ddl(conn.sql) == []
    # A new schema version is checked again (its columns may be new).
    registry.version = 2
    _merge(replica, conn, registry)
    assert len(_ddl(conn.sql)) >= 3
    assert replica.rows() == [(1, "a", Decimal("1.00")), (2, "b", Decimal("1.00"))]


def test_a_table_dropped_behind_the_cache_is_recreated_and_the_merge_retried(
    replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    registry = _Registry(KEY, VALUE)
    replica.land([(0, 0, k(1), v(1, "a"))])
    _merge(replica, replica.conn, registry)
    replica.conn.cursor().execute(f"DROP TABLE {replica.plan.replica.sql}")
    replica.land([(0, 1, k(2), v(2, "b"))])
    log = logging.getLogger("test_replica")
    with caplog.at_level(logging.WARNING, logger="test_replica"):
        outcome = _merge(replica, replica.conn, registry, log)
    assert outcome is not None and outcome.counts.inserted == 1
    assert [r.getMessage().split(" failed with")[0] for r in caplog.records] == [
        f"merge into {replica.plan.replica.label}"]
    # The rows above the watermark: key 1 was merged into the table that was dropped.
    assert replica.rows() == [(2, "b", Decimal("1.00"))]
    assert replica.watermarks() == [(0, 1)]


def test_the_merge_session_sets_the_configured_pins_before_anything_else(replica: Replica) -> None:
    replica.land([(0, 0, k(1), v(1, "a"))])
    conn = _Recording(replica.conn)
    session = SnowflakeSessionConfig(lock_timeout_s=30, statement_timeout_s=120)
    outcome = _merge(replica, Warehouse(conn, session), _Registry(KEY, VALUE))
    assert outcome is not None and outcome.counts.inserted == 1
    assert conn.sql[0] == (
        "ALTER SESSION SET LOCK_TIMEOUT = 30 STATEMENT_TIMEOUT_IN_SECONDS = 120 TIMEZONE = 'UTC' "
        "TIMESTAMP_NTZ_OUTPUT_FORMAT = 'YYYY-MM-DD HH24:MI:SS.FF6' DATE_OUTPUT_FORMAT = 'YYYY-MM-DD' "
        "TIME_OUTPUT_FORMAT = 'HH24:MI:SS.FF6'")
    assert sum(s.startswith("ALTER SESSION") for s in conn.sql) == 1
    # The lab's engine received them (its adapter records what it cannot enforce).
    assert session_of(replica.conn).parameters == {
        "LOCK_TIMEOUT": "30", "STATEMENT_TIMEOUT_IN_SECONDS": "120", "TIMEZONE": "UTC",
        "TIMESTAMP_NTZ_OUTPUT_FORMAT": "YYYY-MM-DD HH24:MI:SS.FF6", "DATE_OUTPUT_FORMAT": "YYYY-MM-DD",
        "TIME_OUTPUT_FORMAT": "HH24:MI:SS.FF6"}


# TiDB column `Mixed Case` arrives as TiCDC's sanitised Avro field `Mixed_Case`.
NAMED_VALUE = with_extension(record("t", [field("id", "long", "BIGINT"),
                                          field("Mixed_Case", "string", "TEXT", nullable=True)]))


def _named(i: int, text: str) -> dict:
    return {"id": i, "Mixed_Case": text, "_tidb_op": "c", "_tidb_commit_ts": 1, "_tidb_commit_physical_time": 1}


def test_tidb_names_are_asked_only_by_the_ddl_and_kept_in_the_memo_next_to_the_schema_version() -> None:
    forget_ensured()
    asked: list[int] = []

    def tidb_columns() -> list[str]:
        asked.append(1)
        return ["id", "Mixed Case"]

    with fake_snowflake() as conn:
        r = Replica(conn, KEY, NAMED_VALUE, names={"Mixed_Case": "Mixed Case"})
        conn.cursor().execute(f"DROP TABLE {r.plan.replica.sql}")  # merge_replica creates it
        registry = _Registry(KEY, NAMED_VALUE)

        def merge() -> Any:
            return merge_replica(connection=conn, registry=registry, topic="tidb_test_t", landing=r.plan.landing,
                                 replica=r.plan.replica, watermarks=r.plan.watermarks, now=NOW,
                                 source_columns=tidb_columns)

        def replica_columns_now() -> list[str]:
            return [row[0] for row in Warehouse.of(conn).execute(table_columns_sql(r.plan.replica))]

        r.land([(0, 0, k(1), _named(1, "a"))])
        first = merge()
        assert first is not None and [c.name for c in first.columns] == ["id", "Mixed Case"] and asked == [1]
        assert first.added_columns == ("id", "Mixed Case") and replica_columns_now() == ["id", "Mixed Case"]
        # The DDL is skipped: the columns' TiDB names come from the memo, and TiDB is not asked again.
        r.land([(0, 1, k(2), _named(2, "b"))])
        second = merge()
        assert second is not None and [c.name for c in second.columns] == ["id", "Mixed Case"] and asked == [1]
        assert r.rows() == [(1, "a"), (2, "b")]
        # The replica dropped behind the memo: recreated under TiDB's names on the retry, and merged into.
        conn.cursor().execute(f"DROP TABLE {r.plan.replica.sql}")
        r.land([(0, 2, k(3), _named(3, "c"))])
        third = merge()
        assert third is not None and [c.name for c in third.columns] == ["id", "Mixed Case"] and asked == [1, 1]
        assert replica_columns_now() == ["id", "Mixed Case"] and r.rows() == [(3, "c")]
    forget_ensured()
