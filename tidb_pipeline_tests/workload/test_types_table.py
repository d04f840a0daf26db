"""The type-coverage table covers every row of the TiCDC Avro type table and round-trips its edge values."""

from __future__ import annotations

from typing import Any

import pymysql

from tidb_pipeline.lab.mariadb import MariaDBService
from tidb_pipeline.workload import types_table as tt
from tidb_pipeline_tests.workload.mariadb_fixture import private_mariadb  # noqa: F401 - fixture

# Every tidb_type in spec/ticdc-avro.md's table.
SPEC_TIDB_TYPES = {
    "INT", "INT UNSIGNED", "BIGINT", "BIGINT UNSIGNED", "FLOAT", "DOUBLE", "DECIMAL", "TEXT", "BLOB", "BIT",
    "ENUM", "SET", "JSON", "DATE", "DATETIME", "TIMESTAMP", "TIME", "YEAR",
}


def test_every_spec_type_has_a_column() -> None:
    assert set(tt.TIDB_TYPES.values()) == SPEC_TIDB_TYPES


def test_edge_values_are_present() -> None:
    values = [row.get(c) for row in tt.ROWS for c in tt.COLUMN_NAMES]
    assert 2**64 - 1 in values and 2**63 + 1 in values  # BIGINT UNSIGNED above the signed range
    assert any(isinstance(v, str) and "😀" in v for v in values)
    negatives = [row["c_time"] for row in tt.ROWS if row.get("c_time") is not None]
    assert any(t.total_seconds() < 0 for t in negatives)
    assert {"id": 4} in tt.ROWS  # a row of NULLs and defaults


def _conn(svc: MariaDBService) -> pymysql.Connection:
    kw: dict[str, Any] = dict(svc.connect_kwargs())
    return pymysql.connect(**kw)


def test_three_default_shapes_exist(private_mariadb: MariaDBService) -> None:  # noqa: F811
    with _conn(private_mariadb) as conn:
        tt.create_types_table(conn, "lab_types_shape")
        with conn.cursor() as cur:
            cur.execute(
                "SELECT column_name, is_nullable, column_default FROM information_schema.columns "
                "WHERE table_schema = 'lab_types_shape' AND table_name = %s AND column_name IN "
                "('c_int', 'c_label', 'c_flag', 'c_status', 'c_amount', 'id') ORDER BY ordinal_position",
                (tt.TABLE,),
            )
            shapes = [tuple(r) for r in cur.fetchall()]
    assert shapes == [
        ("id", "NO", None),
        ("c_int", "YES", "NULL"),
        ("c_label", "YES", "'fresh'"),
        ("c_flag", "NO", "1"),
        ("c_status", "NO", "'new'"),
        ("c_amount", "NO", "0.00"),
    ]


def test_rows_round_trip_through_insert_update_delete(private_mariadb: MariaDBService) -> None:  # noqa: F811
    with _conn(private_mariadb) as conn:
        tt.create_types_table(conn)
        tt.create_types_table(conn)  # idempotent
        assert tt.insert_types_rows(conn) == [1, 2, 3, 4]
        assert tt.read_types_rows(conn) == tt.expected_rows()
        # Types, not just values: 2**64-1 stays an int, decimals stay Decimal, bytes stay bytes.
        got = tt.read_types_rows(conn)
        for row_id, row in tt.expected_rows().items():
            assert {k: type(v) for k, v in got[row_id].items()} == {k: type(v) for k, v in row.items()}

        assert tt.update_types_rows(conn) == 2
        assert tt.read_types_rows(conn) == tt.expected_rows(updated=True)

        assert tt.delete_types_rows(conn, [1, 3]) == 2
        expected = tt.expected_rows(updated=True)
        assert tt.read_types_rows(conn) == {2: expected[2], 4: expected[4]}
        assert tt.delete_types_rows(conn, []) == 0
