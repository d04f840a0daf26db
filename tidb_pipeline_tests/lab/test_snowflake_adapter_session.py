"""The lab adapter's rewrites for the warehouse seam, against the lab's Snowflake through the real connector.

Each statement here is what production sends to Snowflake (`tidb_pipeline.resources.warehouse` and the
loader and merge behind it); the lab must run it with Snowflake's meaning. Sessions log in without a
current database, as the pipeline's do when SNOWFLAKE_DATABASE is unset.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector

from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args, lab_env
from tidb_pipeline.lab.snowflake_adapter import LabSession, session_parameters, temporary_tables
from tidb_pipeline.replication.ddl import TableRef, quote_ident
from tidb_pipeline.resources.warehouse import Warehouse, is_missing_object, parallel_tables

pytestmark = pytest.mark.integration


@pytest.fixture
def database(snowflake: Any, lab_settings: LabSettings) -> str:
    name = f"ADAPTER_{uuid.uuid4().hex[:8].upper()}"
    with snowflake_connection(lab_settings) as conn:
        Warehouse(conn).execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(name)}")
        Warehouse(conn).execute(f'CREATE SCHEMA IF NOT EXISTS {quote_ident(name)}."S"')
    return name


def snowflake_connection(settings: LabSettings) -> Any:
    return snowflake.connector.connect(**connection_args(settings))


@pytest.fixture
def wh(lab_settings: LabSettings, database: str) -> Iterator[Warehouse]:
    conn = snowflake_connection(lab_settings)
    try:
        yield Warehouse(conn)  # its first statement sends the session pins
    finally:
        conn.close()


def test_session_pins_are_accepted_and_recorded() -> None:
    session = LabSession()
    sql = ("ALTER SESSION SET LOCK_TIMEOUT = 600 STATEMENT_TIMEOUT_IN_SECONDS = 3600 TIMEZONE = 'UTC' "
           "TIMESTAMP_NTZ_OUTPUT_FORMAT = 'YYYY-MM-DD HH24:MI:SS.FF6'")
    assert session_parameters(sql, session).startswith("SELECT 'Statement executed successfully.'")
    assert session.parameters == {"LOCK_TIMEOUT": "600", "STATEMENT_TIMEOUT_IN_SECONDS": "3600", "TIMEZONE": "UTC",
                                  "TIMESTAMP_NTZ_OUTPUT_FORMAT": "YYYY-MM-DD HH24:MI:SS.FF6"}
    # Anything else stays fakesnow's to answer (it implements AUTOCOMMIT itself).
    assert session_parameters("ALTER SESSION SET AUTOCOMMIT = FALSE", session) == "ALTER SESSION SET AUTOCOMMIT = FALSE"


def test_temporary_table_rewrite_is_idempotent() -> None:
    session = LabSession()
    create = 'CREATE TEMPORARY TABLE IF NOT EXISTS "D"."S"."LOAD_X" ("V" VARIANT)'
    bare = temporary_tables(create, session)
    assert bare == 'CREATE TEMPORARY TABLE IF NOT EXISTS "LOAD_X" ("V" VARIANT)'
    assert temporary_tables(bare, session) == bare
    assert temporary_tables('SELECT * FROM "D"."S"."LOAD_X", "D"."S"."OTHER"', session) == \
        'SELECT * FROM "LOAD_X", "D"."S"."OTHER"'


def test_pins_and_qualified_temporary_tables_run(wh: Warehouse, database: str) -> None:
    t = TableRef("S", "LOAD_T_ROWS", database).sql
    with wh.temporary_table(f'CREATE TEMPORARY TABLE IF NOT EXISTS {t} ("A" NUMBER(10,0), "B" VARCHAR)', t):
        wh.execute(f"INSERT INTO {t} SELECT column1, column2 FROM VALUES (%s, %s), (%s, %s)", (1, "x", 2, "y"))
        assert sorted(wh.execute(f'SELECT "A", "B" FROM {t}')) == [(1, "x"), (2, "y")]
    with pytest.raises(Exception) as gone:
        wh.execute(f"SELECT * FROM {t}")
    assert is_missing_object(gone.value)


def test_a_merge_in_a_transaction_commits_or_rolls_back_whole(wh: Warehouse, database: str) -> None:
    target, marks = TableRef("S", "T", database).sql, TableRef("S", "MARKS", database).sql
    wh.execute(f'CREATE TABLE {target} ("K" NUMBER(10,0), "V" VARCHAR)')
    wh.execute(f'CREATE TABLE {marks} ("M" NUMBER(10,0))')
    merge = (f'MERGE INTO {target} t USING (SELECT column1 AS "K", column2 AS "V" FROM VALUES (%s, %s), (%s, %s)) s '
             'ON t."K" = s."K" WHEN MATCHED THEN UPDATE SET "V" = s."V" '
             'WHEN NOT MATCHED THEN INSERT ("K", "V") VALUES (s."K", s."V")')
    with wh.transaction():
        assert wh.execute(f"SELECT COUNT(*) FROM {target}") == [(0,)]
        wh.execute(merge, (1, "a", 2, "b"))
        wh.execute(f"INSERT INTO {marks} VALUES (%s)", (1,))
    with pytest.raises(RuntimeError, match="stop"), wh.transaction():
        wh.execute(merge, (1, "changed", 3, "c"))
        wh.execute(f"INSERT INTO {marks} VALUES (%s)", (2,))
        raise RuntimeError("stop before COMMIT")
    assert sorted(wh.execute(f'SELECT "K", "V" FROM {target}')) == [(1, "a"), (2, "b")]
    assert wh.execute(f'SELECT "M" FROM {marks}') == [(1,)]


def test_remove_deletes_the_staged_files(wh: Warehouse, database: str, tmp_path: Path) -> None:
    stage = TableRef("S", "STAGE", database).sql
    wh.execute(f"CREATE STAGE IF NOT EXISTS {stage}")
    for name in ("a.parquet", "b.parquet"):
        (tmp_path / name).write_bytes(b"x")
        wh.execute(f"PUT 'file://{tmp_path / name}' @{stage}/topic/batch1/ AUTO_COMPRESS = FALSE")
    wh.execute(f"PUT 'file://{tmp_path / 'a.parquet'}' @{stage}/topic/batch2/ AUTO_COMPRESS = FALSE")
    wh.execute(f"REMOVE @{stage}/topic/batch1/")
    assert [r[0].split("/", 1)[1] for r in wh.execute(f"LIST @{stage}")] == ["topic/batch2/a.parquet"]


def test_a_merge_after_other_writes_of_its_transaction_is_refused_not_run_half_atomic(wh: Warehouse, database: str) -> None:
    target = TableRef("S", "T", database).sql
    wh.execute(f'CREATE TABLE {target} ("K" NUMBER(10,0))')
    with pytest.raises(Exception, match="a MERGE after other writes"), wh.transaction():
        wh.execute(f"INSERT INTO {target} VALUES (%s)", (1,))
        wh.execute(f'MERGE INTO {target} t USING (SELECT 2 AS "K") s ON t."K" = s."K" '
                   'WHEN NOT MATCHED THEN INSERT ("K") VALUES (s."K")')
    assert wh.execute(f'SELECT "K" FROM {target}') == []  # the INSERT was rolled back with the transaction


def test_the_lab_limits_parallel_tables_by_its_own_environment(lab_settings: LabSettings) -> None:
    # Concurrency cannot be rewritten server-side: the lab sets it in the environment it hands the pipeline.
    assert parallel_tables(lab_env(lab_settings)) == 1
    assert parallel_tables({}) == 8  # production: a warehouse's default concurrency
