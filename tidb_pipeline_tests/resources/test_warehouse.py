"""The warehouse seam against a recording stand-in connection: session pins, the DDL memo, transactions.

The same seam against the lab's Snowflake runs in tidb_pipeline_tests/lab/test_snowflake_adapter_session.py
and, through the loader and the merge, in tidb_pipeline_tests/defs/test_landing.py and test_replica.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from tidb_pipeline.config import SnowflakeSessionConfig, parse_config
from tidb_pipeline.resources.warehouse import (
    DEFAULT_PARALLEL_TABLES,
    DdlMemo,
    Warehouse,
    alter_session_sql,
    is_missing_object,
    parallel_tables,
)


class SnowflakeError(Exception):
    """Shaped like `snowflake.connector.errors.ProgrammingError`: a message and Snowflake's error number."""

    def __init__(self, msg: str, errno: int) -> None:
        super().__init__(msg)
        self.errno = errno


class Connection:
    """Records every statement; `fail(predicate, error)` makes matching statements raise."""

    host, port, account, database = "acme.snowflakecomputing.com", 443, "acme", "TIDB_REPLICA"

    def __init__(self) -> None:
        self.sql: list[str] = []
        self.failures: list[tuple[Callable[[str], bool], Exception]] = []

    def fail(self, predicate: Callable[[str], bool], error: Exception) -> None:
        self.failures.append((predicate, error))

    def cursor(self) -> Any:
        conn = self

        class Cursor:
            rowcount = 0

            def execute(self, sql: str, params: Any = None) -> Cursor:
                conn.sql.append(sql)
                for predicate, error in conn.failures:
                    if predicate(sql):
                        raise error
                self.rowcount = 1
                return self

            def fetchall(self) -> list[tuple[Any, ...]]:
                return [(1,)]

        return Cursor()


MISSING = SnowflakeError("SQL compilation error: Object 'TIDB_REPLICA.LANDING.T' does not exist or not authorized.", 2003)


def test_session_parameters_are_set_once_before_the_first_statement() -> None:
    conn = Connection()
    session = parse_config({"snowflake": {"session": {"lock_timeout_s": 30, "timezone": "Europe/Berlin"}}}).snowflake.session
    wh = Warehouse.of(conn, session)
    assert wh.execute("SELECT 1") == [(1,)]
    wh.execute("SELECT 2")
    assert Warehouse.of(conn) is wh  # one Warehouse per connection: the pins are not sent again
    Warehouse.of(conn).execute("SELECT 3")
    assert conn.sql == [
        "ALTER SESSION SET LOCK_TIMEOUT = 30 STATEMENT_TIMEOUT_IN_SECONDS = 3600 TIMEZONE = 'Europe/Berlin' "
        "TIMESTAMP_NTZ_OUTPUT_FORMAT = 'YYYY-MM-DD HH24:MI:SS.FF6' DATE_OUTPUT_FORMAT = 'YYYY-MM-DD' "
        "TIME_OUTPUT_FORMAT = 'HH24:MI:SS.FF6'",
        "SELECT 1", "SELECT 2", "SELECT 3",
    ]


def test_other_pins_for_the_same_connection_are_sent_before_its_next_statement() -> None:
    conn = Connection()
    Warehouse.of(conn).execute("SELECT 1")
    Warehouse.of(conn, SnowflakeSessionConfig(statement_timeout_s=60)).execute("SELECT 2")
    assert [s.split(" TIMEZONE")[0] for s in conn.sql] == [
        "ALTER SESSION SET LOCK_TIMEOUT = 600 STATEMENT_TIMEOUT_IN_SECONDS = 3600", "SELECT 1",
        "ALTER SESSION SET LOCK_TIMEOUT = 600 STATEMENT_TIMEOUT_IN_SECONDS = 60", "SELECT 2"]


def test_alter_session_literals_are_quoted() -> None:
    assert alter_session_sql({"QUERY_TAG": "it's \\ here", "LOCK_TIMEOUT": 5}) == \
        "ALTER SESSION SET QUERY_TAG = 'it''s \\\\ here' LOCK_TIMEOUT = 5"


def test_a_missing_object_is_recognised_by_snowflakes_error_number_not_its_text() -> None:
    assert is_missing_object(MISSING)
    assert is_missing_object(SnowflakeError("Schema 'X' does not exist or not authorized.", 2003))
    assert not is_missing_object(SnowflakeError("Table T does not exist (said some other engine)", 1003))
    assert not is_missing_object(RuntimeError("does not exist"))


def test_transaction_commits_or_rolls_back_and_reraises() -> None:
    conn = Connection()
    wh = Warehouse(conn)
    with wh.transaction():
        wh.execute("UPDATE t SET x = 1")
    conn.fail(lambda s: s.startswith("INSERT"), SnowflakeError("boom", 100))
    with pytest.raises(SnowflakeError, match="boom"), wh.transaction():
        wh.execute("INSERT INTO t VALUES (1)")
    assert conn.sql[1:] == ["BEGIN", "UPDATE t SET x = 1", "COMMIT", "BEGIN", "INSERT INTO t VALUES (1)", "ROLLBACK"]


def test_a_rollback_that_fails_does_not_hide_the_error_that_caused_it() -> None:
    conn = Connection()
    conn.fail(lambda s: s.startswith(("INSERT", "ROLLBACK")), SnowflakeError("first", 100))
    wh = Warehouse(conn)
    with pytest.raises(SnowflakeError, match="first"), wh.transaction():
        wh.execute("INSERT INTO t VALUES (1)")


def _run(wh: Warehouse, ddl: list[str], work: Callable[[], Any], version: Any = None,
         log: logging.Logger | None = None) -> Any:
    return wh.ensured("objects", lambda: ddl.append("ddl"), work, version=version, what="load of t",
                      log=log or logging.getLogger("test_warehouse"))


def test_memo_runs_the_ddl_once_per_server_and_version() -> None:
    memo, ddl = DdlMemo(), []
    wh = Warehouse(Connection(), memo=memo)
    assert _run(wh, ddl, lambda: "done") == "done"
    _run(wh, ddl, lambda: "done")
    assert ddl == ["ddl"]
    _run(wh, ddl, lambda: "done", version=2)  # a new definition (e.g. a new schema version) is checked again
    assert ddl == ["ddl", "ddl"]
    other = Connection()
    other.host = "other.snowflakecomputing.com"
    _run(Warehouse(other, memo=memo), ddl, lambda: "done", version=2)  # another server is not trusted
    assert ddl == ["ddl", "ddl", "ddl"]


def test_memo_is_invalidated_when_the_object_is_missing_and_the_work_retried_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memo, ddl, attempts = DdlMemo(), [], []
    wh = Warehouse(Connection(), memo=memo)
    _run(wh, ddl, lambda: None)

    def work() -> str:
        attempts.append(len(ddl))
        if len(attempts) == 1:
            raise MISSING  # someone dropped a table behind the memo
        return "landed"

    with caplog.at_level(logging.WARNING, logger="test_warehouse"):
        assert _run(wh, ddl, work) == "landed"
    assert attempts == [1, 2]  # the first try skipped the DDL, the retry ran after it ran again
    assert [r.getMessage().split(" failed with")[0] for r in caplog.records] == ["load of t"]
    assert memo.holds(wh.memo_key("objects"))


def test_a_missing_object_right_after_the_ddl_is_raised_and_nothing_is_remembered() -> None:
    memo, ddl = DdlMemo(), []
    wh = Warehouse(Connection(), memo=memo)

    def work() -> None:
        raise MISSING

    with pytest.raises(SnowflakeError):
        _run(wh, ddl, work)
    assert ddl == ["ddl"] and not memo.holds(wh.memo_key("objects"))


def test_other_errors_are_raised_without_a_retry_and_the_memo_kept() -> None:
    memo, ddl, calls = DdlMemo(), [], []
    wh = Warehouse(Connection(), memo=memo)
    _run(wh, ddl, lambda: None)

    def work() -> None:
        calls.append(1)
        raise SnowflakeError("Numeric value 'x' is not recognized", 100038)

    with pytest.raises(SnowflakeError):
        _run(wh, ddl, work)
    assert (calls, ddl) == ([1], ["ddl"]) and memo.holds(wh.memo_key("objects"))


def test_shared_ddl_runs_once_per_process_and_again_after_a_missing_object() -> None:
    """Objects several tables share (schemas, control tables) are created by the first table's DDL step only; when
    a later table's work finds one gone, its step had skipped it, so everything is created again, work retried."""
    memo, conn, attempts = DdlMemo(), Connection(), []
    wh = Warehouse(conn, memo=memo)
    shared = 'CREATE TABLE IF NOT EXISTS "D"."S"."SHARED" (x INT)'

    def ensure(own: str) -> Callable[[], None]:
        return lambda: (wh.ensure_once(shared), wh.execute(f"CREATE TABLE IF NOT EXISTS {own} (x INT)"))[-1]

    def work() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise MISSING  # someone dropped SHARED behind the memo
        return "merged"

    wh.ensured("a", ensure("A"), lambda: None)
    wh.ensured("b", ensure("B"), lambda: None)
    assert wh.ensured("c", ensure("C"), work, log=logging.getLogger("test_warehouse")) == "merged"
    assert [s.split(" (")[0].split()[-1] for s in conn.sql if s.startswith("CREATE")] == \
        ['"D"."S"."SHARED"', "A", "B", "C", '"D"."S"."SHARED"', "C"]
    assert attempts == [1, 1]


def test_a_temporary_table_is_dropped_even_when_its_job_fails() -> None:
    conn = Connection()
    wh = Warehouse(conn)
    with pytest.raises(ValueError), wh.temporary_table('CREATE TEMPORARY TABLE "D"."S"."T" (x INT)', '"D"."S"."T"'):
        raise ValueError("the job failed")
    assert conn.sql[1:] == ['CREATE TEMPORARY TABLE "D"."S"."T" (x INT)', 'DROP TABLE IF EXISTS "D"."S"."T"']


def test_parallel_tables_from_the_environment() -> None:
    assert parallel_tables({}) == DEFAULT_PARALLEL_TABLES == 8
    assert parallel_tables({"SNOWFLAKE_PARALLEL_TABLES": "1"}) == 1
    for bad in ("0", "65", "many"):
        with pytest.raises(ValueError, match=f"SNOWFLAKE_PARALLEL_TABLES='{bad}' must be a whole number from 1 to 64"):
            parallel_tables({"SNOWFLAKE_PARALLEL_TABLES": bad})
