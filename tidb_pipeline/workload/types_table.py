"""`lab_types.types_coverage`: one table with a column for every row of the TiCDC Avro type table.

See /work/shared/spec/ticdc-avro.md: integers signed and unsigned (BIGINT UNSIGNED above 2^63, which
TiCDC's default `long` mode wraps negative), FLOAT, DOUBLE, DECIMAL (small and 65-digit), the
CHAR/VARCHAR/TEXT and BINARY/VARBINARY/BLOB families, BIT, ENUM, SET, JSON, DATE, DATETIME(6),
TIMESTAMP(3), TIME (negative too), YEAR, and the three default shapes the Avro schema distinguishes:
nullable with default NULL (`["null", T]`), nullable with a non-NULL default (`[T, "null"]`) and
NOT NULL with a default.

`ROWS` holds the rows `insert_types_rows` writes, as the Python values PyMySQL reads back, so a test
(or a replica check) can compare whole contents. TIMESTAMP values are written and read in UTC: the
session time zone is pinned so the expected values hold on any server. FLOAT values have at most six
significant digits: the text protocol sends FLOAT rounded to six.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import pymysql

from tidb_pipeline.workload.schema import create_database_sql, quote_ident

DATABASE = "lab_types"
TABLE = "types_coverage"

# (column, SQL type and nullability/default, tidb_type TiCDC reports). Order = table column order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "BIGINT NOT NULL", "BIGINT"),
    ("c_tinyint", "TINYINT NULL DEFAULT NULL", "INT"),
    ("c_smallint", "SMALLINT NULL DEFAULT NULL", "INT"),
    ("c_mediumint", "MEDIUMINT NULL DEFAULT NULL", "INT"),
    ("c_int", "INT NULL DEFAULT NULL", "INT"),
    ("c_bigint", "BIGINT NULL DEFAULT NULL", "BIGINT"),
    ("c_tinyint_u", "TINYINT UNSIGNED NULL DEFAULT NULL", "INT UNSIGNED"),
    ("c_smallint_u", "SMALLINT UNSIGNED NULL DEFAULT NULL", "INT UNSIGNED"),
    ("c_mediumint_u", "MEDIUMINT UNSIGNED NULL DEFAULT NULL", "INT UNSIGNED"),
    ("c_int_u", "INT UNSIGNED NULL DEFAULT NULL", "INT UNSIGNED"),
    ("c_bigint_u", "BIGINT UNSIGNED NULL DEFAULT NULL", "BIGINT UNSIGNED"),
    ("c_float", "FLOAT NULL DEFAULT NULL", "FLOAT"),
    ("c_double", "DOUBLE NULL DEFAULT NULL", "DOUBLE"),
    ("c_decimal", "DECIMAL(10,2) NULL DEFAULT NULL", "DECIMAL"),
    ("c_decimal_wide", "DECIMAL(65,30) NULL DEFAULT NULL", "DECIMAL"),
    # 37, not 38: fakesnow (the lab's Snowflake) stores NUMBER(38,0) as a BIGINT; Snowflake itself holds 38 digits.
    ("c_decimal_int", "DECIMAL(37,0) NULL DEFAULT NULL", "DECIMAL"),
    ("c_char", "CHAR(10) NULL DEFAULT NULL", "TEXT"),
    ("c_varchar", "VARCHAR(255) NULL DEFAULT NULL", "TEXT"),
    ("c_text", "TEXT NULL", "TEXT"),
    ("c_longtext", "LONGTEXT NULL", "TEXT"),
    ("c_binary", "BINARY(4) NULL DEFAULT NULL", "BLOB"),
    ("c_varbinary", "VARBINARY(64) NULL DEFAULT NULL", "BLOB"),
    ("c_blob", "BLOB NULL", "BLOB"),
    ("c_bit1", "BIT(1) NULL DEFAULT NULL", "BIT"),
    ("c_bit64", "BIT(64) NULL DEFAULT NULL", "BIT"),
    ("c_enum", "ENUM('small','medium','large') NULL DEFAULT NULL", "ENUM"),
    ("c_set", "SET('a','b','c') NULL DEFAULT NULL", "SET"),
    ("c_json", "JSON NULL", "JSON"),
    ("c_date", "DATE NULL DEFAULT NULL", "DATE"),
    ("c_datetime", "DATETIME(6) NULL DEFAULT NULL", "DATETIME"),
    ("c_timestamp", "TIMESTAMP(3) NULL DEFAULT NULL", "TIMESTAMP"),
    ("c_time", "TIME NULL DEFAULT NULL", "TIME"),
    ("c_time6", "TIME(6) NULL DEFAULT NULL", "TIME"),
    ("c_year", "YEAR NULL DEFAULT NULL", "YEAR"),
    # The default shapes Avro tells apart.
    ("c_label", "VARCHAR(20) NULL DEFAULT 'fresh'", "TEXT"),
    ("c_flag", "TINYINT NOT NULL DEFAULT 1", "INT"),
    ("c_status", "VARCHAR(16) NOT NULL DEFAULT 'new'", "TEXT"),
    ("c_amount", "DECIMAL(10,2) NOT NULL DEFAULT 0.00", "DECIMAL"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c[0] for c in COLUMNS)
TIDB_TYPES: dict[str, str] = {c[0]: c[2] for c in COLUMNS}

# Built from strings: arithmetic such as unary minus would round to the 28-digit default context.
_WIDE_MAX = Decimal("9" * 35 + "." + "9" * 30)
_WIDE_MIN = Decimal("-" + "9" * 35 + "." + "9" * 30)
_UNICODE = "héllo wörld · 日本語 · 😀"

_NULL_ROW = {name: None for name in COLUMN_NAMES}
_DEFAULTS = {"c_label": "fresh", "c_flag": 1, "c_status": "new", "c_amount": Decimal("0.00")}

# The rows `insert_types_rows` writes, keyed by column, as PyMySQL returns them; a column a row leaves out
# takes its default (see `expected_rows`).
ROWS: tuple[dict[str, Any], ...] = (
    {  # minimums and empties
        "id": 1, "c_tinyint": -128, "c_smallint": -32768, "c_mediumint": -8388608, "c_int": -(2**31),
        "c_bigint": -(2**63), "c_tinyint_u": 0, "c_smallint_u": 0, "c_mediumint_u": 0, "c_int_u": 0,
        "c_bigint_u": 0, "c_float": -3.40282e38, "c_double": -1.7976931348623157e308,
        "c_decimal": Decimal("-99999999.99"), "c_decimal_wide": _WIDE_MIN, "c_decimal_int": Decimal("-" + "9" * 37),
        "c_char": "", "c_varchar": "", "c_text": "", "c_longtext": "", "c_binary": b"\x00\x00\x00\x00",
        "c_varbinary": b"", "c_blob": b"", "c_bit1": b"\x00", "c_bit64": b"\x00" * 8, "c_enum": "small",
        "c_set": "", "c_json": [], "c_date": dt.date(1000, 1, 1), "c_datetime": dt.datetime(1000, 1, 1),
        "c_timestamp": dt.datetime(1970, 1, 1, 0, 0, 1), "c_time": -dt.timedelta(hours=838, minutes=59, seconds=59),
        "c_time6": -dt.timedelta(hours=838, minutes=59, seconds=59), "c_year": 1901, "c_label": None,
        "c_flag": -128, "c_status": "", "c_amount": Decimal("-99999999.99"),
    },
    {  # maximums and full widths
        "id": 2, "c_tinyint": 127, "c_smallint": 32767, "c_mediumint": 8388607, "c_int": 2**31 - 1,
        "c_bigint": 2**63 - 1, "c_tinyint_u": 255, "c_smallint_u": 65535, "c_mediumint_u": 16777215,
        "c_int_u": 2**32 - 1, "c_bigint_u": 2**64 - 1, "c_float": 3.40282e38, "c_double": 1.7976931348623157e308,
        "c_decimal": Decimal("99999999.99"), "c_decimal_wide": _WIDE_MAX, "c_decimal_int": Decimal("9" * 37),
        "c_char": "ZZZZZZZZZZ", "c_varchar": "é" * 255, "c_text": "t" * 20000,
        "c_longtext": "L" * 100_000, "c_binary": b"\xff\xff\xff\xff", "c_varbinary": bytes(range(64)),
        "c_blob": bytes(range(256)) * 16, "c_bit1": b"\x01", "c_bit64": b"\xff" * 8, "c_enum": "large",
        "c_set": "a,b,c", "c_json": {"nested": {"list": [1, 2.5, None, True, "s"]}, "big": 9007199254740993},
        "c_date": dt.date(9999, 12, 31), "c_datetime": dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
        "c_timestamp": dt.datetime(2038, 1, 19, 3, 14, 7, 999000),
        "c_time": dt.timedelta(hours=838, minutes=59, seconds=59),
        "c_time6": dt.timedelta(hours=838, minutes=59, seconds=58, microseconds=999999), "c_year": 2155,
        "c_label": "x" * 20, "c_flag": 127, "c_status": "z" * 16, "c_amount": Decimal("99999999.99"),
    },
    {  # ordinary values, unicode, BIGINT UNSIGNED just above 2^63, negative fractional TIME
        "id": 3, "c_tinyint": 7, "c_smallint": -7, "c_mediumint": 70000, "c_int": 123456789,
        "c_bigint": 1234567890123456789, "c_tinyint_u": 200, "c_smallint_u": 40000, "c_mediumint_u": 9000000,
        "c_int_u": 3_000_000_000, "c_bigint_u": 2**63 + 1, "c_float": 0.25, "c_double": 3.141592653589793,
        "c_decimal": Decimal("1234.50"), "c_decimal_wide": Decimal("-0.000000000000000000000000000001"),
        "c_decimal_int": Decimal("12345678901234567890123456789"), "c_char": "日本", "c_varchar": _UNICODE,
        "c_text": _UNICODE * 3, "c_longtext": "line1\nline2\ttab \\ backslash ' quote \" dq",
        "c_binary": b"ab\x00\x01", "c_varbinary": "😀".encode(), "c_blob": b"\x00\xff" * 10, "c_bit1": b"\x01",
        "c_bit64": (2**63 + 5).to_bytes(8, "big"), "c_enum": "medium", "c_set": "a,c",
        "c_json": {"k": "v", "ü": "日本", "n": [1, 2.5, None, False]},
        "c_date": dt.date(2024, 2, 29), "c_datetime": dt.datetime(2024, 2, 29, 12, 34, 56, 123456),
        "c_timestamp": dt.datetime(2024, 2, 29, 12, 34, 56, 789000), "c_time": -dt.timedelta(seconds=1),
        "c_time6": -dt.timedelta(hours=12, minutes=34, seconds=56, microseconds=789012), "c_year": 2024,
        "c_label": "set", "c_flag": 0, "c_status": "active", "c_amount": Decimal("19.99"),
    },
    {"id": 4},  # nothing else given: NULL where the default is NULL, the declared default elsewhere
)

# What `update_types_rows` changes, and the rows after it (row 4 gets values, row 3 goes back to NULLs).
UPDATES: dict[int, dict[str, Any]] = {
    3: {name: None for name in COLUMN_NAMES if name not in ("id", "c_flag", "c_status", "c_amount")},
    4: {
        "c_bigint_u": 2**63, "c_decimal_wide": Decimal("0.123456789012345678901234567890"), "c_varchar": "updated ✓",
        "c_json": {"updated": True}, "c_time": dt.timedelta(hours=-1), "c_set": "b", "c_enum": "small",
        "c_timestamp": dt.datetime(2001, 2, 3, 4, 5, 6, 7000), "c_bit64": (1).to_bytes(8, "big"), "c_flag": 9,
    },
}


def create_types_table(conn: pymysql.Connection, database: str = DATABASE) -> None:
    """Create `database` (utf8mb4) and `types_coverage` in it, if missing."""
    cols = ",\n  ".join(f"{quote_ident(name)} {sql}" for name, sql, _ in COLUMNS)
    with conn.cursor() as cur:
        cur.execute(create_database_sql(database))
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {quote_ident(database)}.{quote_ident(TABLE)} (\n  {cols},\n"
            "  PRIMARY KEY (`id`) /*T![clustered_index] CLUSTERED */\n) DEFAULT CHARSET=utf8mb4"
        )
    conn.commit()


def _bind(name: str, value: Any) -> Any:
    if name == "c_json" and value is not None:
        return json.dumps(value, ensure_ascii=False)
    if name == "c_time6" or name == "c_time":
        return None if value is None else _time_literal(value)
    return value


def _time_literal(value: dt.timedelta) -> str:
    """'[-]HH:MM:SS.ffffff'; PyMySQL's own timedelta escaping gets negative values with fractions wrong."""
    total_us = value.days * 86_400_000_000 + value.seconds * 1_000_000 + value.microseconds
    sign = "-" if total_us < 0 else ""
    total_us = abs(total_us)
    seconds, us = divmod(total_us, 1_000_000)
    return f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{us:06d}"


def _pin_utc(cur: pymysql.cursors.Cursor) -> None:
    cur.execute("SET time_zone = '+00:00'")


def insert_types_rows(
    conn: pymysql.Connection, database: str = DATABASE, rows: Sequence[Mapping[str, Any]] = ROWS
) -> list[int]:
    """Insert `rows` (default: ROWS) in one transaction; columns a row leaves out take their defaults."""
    table = f"{quote_ident(database)}.{quote_ident(TABLE)}"
    with conn.cursor() as cur:
        _pin_utc(cur)
        for row in rows:
            names = [n for n in COLUMN_NAMES if n in row]
            cur.execute(
                f"INSERT INTO {table} ({', '.join(quote_ident(n) for n in names)}) "
                f"VALUES ({', '.join(['%s'] * len(names))})",
                [_bind(n, row[n]) for n in names],
            )
    conn.commit()
    return [int(r["id"]) for r in rows]


def update_types_rows(
    conn: pymysql.Connection, database: str = DATABASE, updates: Mapping[int, Mapping[str, Any]] = UPDATES
) -> int:
    """Apply `updates` ({id: {column: value}}) in one transaction; returns the rows changed."""
    table = f"{quote_ident(database)}.{quote_ident(TABLE)}"
    changed = 0
    with conn.cursor() as cur:
        _pin_utc(cur)
        for row_id, values in updates.items():
            sets = ", ".join(f"{quote_ident(n)} = %s" for n in values)
            changed += cur.execute(
                f"UPDATE {table} SET {sets} WHERE `id` = %s", [*(_bind(n, v) for n, v in values.items()), row_id]
            )
    conn.commit()
    return changed


def delete_types_rows(conn: pymysql.Connection, ids: Iterable[int], database: str = DATABASE) -> int:
    """Delete rows by id in one transaction; returns how many went."""
    ids = list(ids)
    if not ids:
        return 0
    with conn.cursor() as cur:
        n = cur.execute(
            f"DELETE FROM {quote_ident(database)}.{quote_ident(TABLE)} WHERE `id` IN ({', '.join(['%s'] * len(ids))})",
            ids,
        )
    conn.commit()
    return n


def read_types_rows(conn: pymysql.Connection, database: str = DATABASE) -> dict[int, dict[str, Any]]:
    """All rows by id, JSON parsed, in the shapes of `ROWS`."""
    with conn.cursor() as cur:
        _pin_utc(cur)
        cur.execute(
            f"SELECT {', '.join(quote_ident(n) for n in COLUMN_NAMES)} "
            f"FROM {quote_ident(database)}.{quote_ident(TABLE)} ORDER BY `id`"
        )
        out = {}
        for values in cur.fetchall():
            row = dict(zip(COLUMN_NAMES, values))
            if isinstance(row["c_json"], (str, bytes)):
                row["c_json"] = json.loads(row["c_json"])
            out[int(row["id"])] = row
    conn.commit()
    return out


def expected_rows(updated: bool = False) -> dict[int, dict[str, Any]]:
    """The table's contents after `insert_types_rows` (and `update_types_rows` when `updated`)."""
    rows = {int(r["id"]): {**_NULL_ROW, **_DEFAULTS, **r} for r in ROWS}
    if updated:
        for row_id, values in UPDATES.items():
            rows[row_id].update(values)
    return rows
