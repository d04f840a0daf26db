"""The lab adapter's rewrites: what fakesnow is given for the Snowflake SQL the merge sends, idempotent."""

from __future__ import annotations

import pytest

from tidb_pipeline.lab.snowflake_adapter import REWRITES, LabSession, rewrite
from tidb_pipeline.replication.avro_types import ReplicaColumn
from tidb_pipeline.replication.merge import json_to_sql

V = 'x."__TP_CONTENT":"a (b)\'s"'


def _col(sql_type: str, tidb_type: str) -> ReplicaColumn:
    return ReplicaColumn("c", sql_type, True, tidb_type, False, "string")


@pytest.mark.parametrize(("column", "expected"), [
    (_col("VARCHAR", "TEXT"), f"IFF(IS_NULL_VALUE({V}), NULL, {V}::VARCHAR)"),
    (_col("DATE", "DATE"), f"TRY_CAST(TRY_STRPTIME(IFF(IS_NULL_VALUE({V}), NULL, {V}::VARCHAR), '%Y-%m-%d') AS DATE)"),
    (_col("VARIANT", "JSON"), f"TRY_CAST(IFF(IS_NULL_VALUE({V}), NULL, {V}::VARCHAR) AS JSON)"),
    (_col("NUMBER(10,0)", "INT"), f"STRIP_NULL_VALUE({V})::NUMBER(10,0)"),  # fakesnow casts these right
])  # fmt: skip
def test_conversions_as_fakesnow_gets_them(column: ReplicaColumn, expected: str) -> None:
    assert rewrite(json_to_sql(column, V), LabSession()) == expected


def test_timestamps_use_microsecond_strptime_and_every_rewrite_is_idempotent() -> None:
    once = rewrite(json_to_sql(_col("TIMESTAMP_NTZ(6)", "DATETIME"), V), LabSession())
    assert "'%Y-%m-%d %H:%M:%S.%f'" in once and "'%Y-%m-%d %H:%M:%S'" in once
    assert "STRIP_NULL_VALUE" not in once and "TRY_TO_TIMESTAMP_NTZ" not in once
    assert rewrite(once, LabSession()) == once
    for step in REWRITES:
        assert step(step(once, LabSession()), LabSession()) == step(once, LabSession())


def test_text_inside_literals_and_unknown_formats_are_left_alone() -> None:
    sql = "SELECT 'STRIP_NULL_VALUE(x)::VARCHAR', TRY_TO_DATE(d, 'DD/MM/YYYY'), TRY_TO_DATE(d)"
    assert rewrite(sql, LabSession()) == sql


def test_a_renamed_columns_coalesced_paths_cast_like_paths() -> None:
    """After a rename the merge reads `COALESCE(new, old)` (replication.schema_changes); fakesnow would keep the
    JSON quotes when casting that, so each path is cast on its own, first non-NULL one first."""
    new, old = 'x."__TP_CONTENT":"label"', 'x."__TP_CONTENT":"name"'
    once = rewrite(json_to_sql(_col("VARCHAR", "TEXT"), f"COALESCE({new}, {old})"), LabSession())
    assert once == (f"IFF(IS_NULL_VALUE(COALESCE({new}, {old})), NULL, CASE WHEN {new} IS NOT NULL THEN "
                    f"{new}::VARCHAR WHEN {old} IS NOT NULL THEN {old}::VARCHAR END)")
    assert rewrite(once, LabSession()) == once
    assert rewrite("SELECT 'COALESCE(a, b)::VARCHAR', COALESCE(a, b)::NUMBER", LabSession()) == \
        "SELECT 'COALESCE(a, b)::VARCHAR', COALESCE(a, b)::NUMBER"


def test_concurrent_sessions_run_one_statement_at_a_time_without_write_conflicts() -> None:
    """Sessions of the lab server ensuring the same new tables and writing their own rows at once (a merge run's
    tables in threads): DuckDB alone fails the racing creates ("Catalog write-write conflict"); through the
    adapter every statement runs alone, so all succeed and every row is there."""
    import threading
    import warnings

    from fakesnow.instance import FakeSnow

    from tidb_pipeline.lab.snowflake_adapter import install

    install()
    fs = FakeSnow()
    fs.connect().cursor().execute("CREATE DATABASE IF NOT EXISTS D")
    fs.connect().cursor().execute('CREATE SCHEMA IF NOT EXISTS D."S"')
    sessions, tables = 6, 8
    errors: list[BaseException] = []
    start = threading.Barrier(sessions)

    def session(i: int) -> None:
        cur = fs.connect().cursor()
        start.wait()
        try:
            for t in range(tables):
                cur.execute(f'CREATE TABLE IF NOT EXISTS D."S"."T{t}" ("K" INT, "V" INT)')
                cur.execute(f'INSERT INTO D."S"."T{t}" VALUES ({i}, 0)')
                cur.execute(f'UPDATE D."S"."T{t}" SET "V" = {t} WHERE "K" = {i}')
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fakesnow's Arrow copy note
        threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        cur = fs.connect().cursor()
        for t in range(tables):
            cur.execute(f'SELECT "K", "V" FROM D."S"."T{t}" ORDER BY "K"')
            assert cur.fetchall() == [(i, t) for i in range(sessions)]
