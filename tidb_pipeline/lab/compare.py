"""Full-content comparison of a TiDB/MariaDB table with its Snowflake replica (tests and the demo).

Every row of both sides is read and compared value by value after mapping each side to one canonical
Python value per column type (decimals compared exactly as Decimal, datetimes exactly, JSON as parsed
objects, TIME as its TiDB text). A TiDB zero date (`0000-00-00`, which PyMySQL returns as text) compares as
NULL: the replica's documented mapping (README, "Values Snowflake cannot hold"). This is the lab's proof; the
production content check uses chunked checksums instead of moving whole tables.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tidb_pipeline.replication.ddl import TableRef, quote_ident
from tidb_pipeline.resources.tidb import quote_mysql


ZERO_DATE = "0000-00-00"


@dataclass(frozen=True)
class TableComparison:
    source: str
    replica: str
    source_rows: int
    replica_rows: int
    missing: int  # keys in the source, absent from the replica
    extra: int  # keys in the replica, absent from the source
    different: int  # keys on both sides with different values
    examples: tuple[str, ...] = field(default_factory=tuple)

    @property
    def equal(self) -> bool:
        return self.missing == self.extra == self.different == 0 and self.source_rows == self.replica_rows


def _time_text(value: dt.timedelta) -> str:
    sign = "-" if value < dt.timedelta(0) else ""
    total = abs(value)
    seconds = total.days * 86400 + total.seconds
    text = f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return text + (f".{total.microseconds:06d}" if total.microseconds else "")


def canonical(data_type: str, value: Any) -> Any:
    """One comparable value for a column of MySQL DATA_TYPE `data_type`, from either side."""
    if value is None:
        return None
    t = data_type.lower()
    if t == "json":
        return json.loads(value) if isinstance(value, (str, bytes)) else value
    if t == "time":
        text = _time_text(value) if isinstance(value, dt.timedelta) else str(value)
        # Replicas keep TiDB's text (fsp digits); trailing zero fractions are the same time.
        return text.rstrip("0").rstrip(".") if "." in text else text
    if t in ("decimal", "numeric"):
        return Decimal(str(value))
    if t in ("tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"):
        return int(value)
    if t in ("float", "double", "real"):
        return float(value)
    if t == "bit":
        # A BIT value is a number; its byte width differs between drivers (8 bytes vs minimal).
        return int.from_bytes(bytes(value), "big") if isinstance(value, (bytes, bytearray)) else int(value)
    if t in ("binary", "varbinary", "blob", "tinyblob", "mediumblob", "longblob"):
        return bytes(value)
    if t in ("datetime", "timestamp", "date") and str(value).startswith(ZERO_DATE):
        return None  # stored as NULL in the replica (and listed by the no_unconverted_values check)
    if t in ("datetime", "timestamp"):
        return value.replace(tzinfo=None) if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if t == "date":
        return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _read_source(source_conn: Any, db: str, table: str) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
    """(column name, DATA_TYPE) pairs and every row of a source table, over the columns TiCDC replicates
    (a virtual generated column never reaches the replica, as TiCDC never sends one)."""
    with source_conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
            "AND TABLE_NAME = %s AND UPPER(EXTRA) NOT LIKE '%%VIRTUAL GENERATED%%' ORDER BY ORDINAL_POSITION",
            (db, table),
        )
        columns = [(r[0], r[1]) for r in cur.fetchall()]
        if not columns:
            raise ValueError(f"source table {db}.{table} not found")
        cur.execute(f"SELECT {', '.join(quote_mysql(c) for c, _ in columns)} FROM {quote_mysql(db)}.{quote_mysql(table)}")
        return columns, list(cur.fetchall())


def _diff(
    source: str, target: str, columns: Sequence[tuple[str, str]], key: Sequence[str],
    source_rows: Sequence[Sequence[Any]], target_rows: Sequence[Sequence[Any]],
) -> TableComparison:
    """Compare two row sets by key after mapping each value to its canonical form."""
    names = [c for c, _ in columns]
    key_idx = [names.index(k) for k in key]

    def index(rows: Sequence[Sequence[Any]]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        out = {}
        for row in rows:
            canon = tuple(canonical(t, v) for (_, t), v in zip(columns, row))
            out[tuple(canon[i] for i in key_idx)] = canon
        return out

    src, rep = index(source_rows), index(target_rows)
    missing = [k for k in src if k not in rep]
    extra = [k for k in rep if k not in src]
    different = [k for k in src if k in rep and src[k] != rep[k]]
    examples: list[str] = []
    for k in different[:3]:
        diffs = [f"{n}: {a!r} != {b!r}" for n, a, b in zip(names, src[k], rep[k]) if a != b]
        examples.append(f"key {k}: " + "; ".join(diffs))
    examples += [f"missing key {k}" for k in missing[:2]] + [f"extra key {k}" for k in extra[:2]]
    return TableComparison(
        source, target, len(source_rows), len(target_rows), len(missing), len(extra), len(different), tuple(examples)
    )


def compare_table(
    source_conn: Any, db: str, table: str, snowflake_conn: Any, replica: TableRef, key: Sequence[str],
    only: Sequence[str] | None = None,
) -> TableComparison:
    """Read both tables in full and compare them row by row by key (`only`: just these columns, key included)."""
    columns, source_rows = _read_source(source_conn, db, table)
    if only is not None:
        keep = [i for i, (c, _) in enumerate(columns) if c in only]
        columns, source_rows = [columns[i] for i in keep], [tuple(r[i] for i in keep) for r in source_rows]
    names = [c for c, _ in columns]
    sf = snowflake_conn.cursor()
    # MariaDB reports JSON columns as LONGTEXT; the replica's VARIANT type says which columns hold JSON.
    info = f"{quote_ident(replica.database)}.information_schema.columns" if replica.database else "information_schema.columns"
    sf.execute(f"SELECT column_name, data_type FROM {info} WHERE table_schema = %s AND table_name = %s",
               (replica.schema, replica.name))
    variant = {r[0] for r in sf.fetchall() if str(r[1]).upper() == "VARIANT"}
    columns = [(c, "json" if c in variant else t) for c, t in columns]
    sf.execute(f"SELECT {', '.join(quote_ident(c) for c in names)} FROM {replica.sql}")
    replica_rows = [list(row) for row in sf.fetchall()]

    return _diff(f"{db}.{table}", replica.label, columns, key, source_rows, replica_rows)


def compare_sql_table(
    source_conn: Any, db: str, table: str, target_conn: Any, target: Any, key: Sequence[str], *, dialect: str
) -> TableComparison:
    """`compare_table` for a SQL applier target (a `replication.sqlserver.TargetTable` read through SQLAlchemy).

    The target keeps the JDBC sink's types (dates and times as the strings TiCDC sent, decimals as numeric);
    `canonical` maps both sides by the source column's type, so equal contents compare equal.
    """
    import sqlalchemy as sa

    from tidb_pipeline.replication.sqlserver import quote_ident as quote_sql

    columns, source_rows = _read_source(source_conn, db, table)
    names = [c for c, _ in columns]
    result = target_conn.execute(sa.text(
        f"SELECT {', '.join(quote_sql(c, dialect) for c in names)} FROM {target.sql(dialect)}"  # type: ignore[arg-type]
    ))
    target_rows = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in result]

    return _diff(f"{db}.{table}", target.label, columns, key, source_rows, target_rows)
