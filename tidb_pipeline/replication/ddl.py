"""DDL for the replica, landing, watermark and dead-letter tables.

Every identifier is quoted, so TiDB names that are mixed case, reserved words (`order`, `select`) or contain
`-` or spaces keep their exact spelling in Snowflake. Statements are `IF NOT EXISTS` so that running them
before every merge is cheap and idempotent; schema evolution only ever adds columns (never drops or retypes:
a column that vanished from the source may still be read downstream).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tidb_pipeline.replication.avro_types import ReplicaColumn

_STAGE_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Statement:
    """SQL text plus bound parameters (pyformat `%s`, the Snowflake connector's default)."""

    sql: str
    params: tuple[Any, ...] = ()


def quote_ident(name: str) -> str:
    """A Snowflake quoted identifier; embedded double quotes are doubled."""
    if not name:
        raise ValueError("empty identifier; every table and column needs a name")
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableRef:
    """A table's location; `sql` is the quoted, fully qualified name."""

    schema: str
    name: str
    database: str | None = None

    @property
    def sql(self) -> str:
        parts = [self.database] if self.database else []
        return ".".join(quote_ident(p) for p in [*parts, self.schema, self.name])

    @property
    def label(self) -> str:
        """Unquoted dotted name, used as the watermark table's key."""
        return ".".join(p for p in (self.database, self.schema, self.name) if p)


def stage_folder(name: str) -> str:
    """A stage path segment for a table name: kept when already safe, else sanitised plus a short hash.

    Stage paths are not identifiers and cannot be quoted, so a name with `/`, spaces, quotes or `'` must
    not reach `PUT`/`COPY`/`REMOVE` as is; the hash keeps two names that sanitise alike apart.
    """
    if name and not _STAGE_SAFE.search(name) and name not in (".", ".."):
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]
    return f"{_STAGE_SAFE.sub('_', name)[:64]}-{digest}"


def create_replica_sql(table: TableRef, columns: Sequence[ReplicaColumn]) -> str:
    keys = [c for c in columns if c.is_key]
    if not keys:
        raise ValueError(f"replica {table.label} has no key columns; TiCDC only replicates tables with a handle key")
    lines = [f"{quote_ident(c.name)} {c.sql_type}{' NOT NULL' if c.is_key else ''}" for c in columns]
    # Informational in Snowflake (not enforced); tools read it, and the lab's engine enforces it in tests.
    lines.append(f"PRIMARY KEY ({', '.join(quote_ident(c.name) for c in keys)})")
    return f"CREATE TABLE IF NOT EXISTS {table.sql} (\n  " + ",\n  ".join(lines) + "\n)"


def create_landing_sql(table: TableRef) -> str:
    """The Snowflake Kafka connector's non-schematized layout (spec/confluent.md)."""
    return f'CREATE TABLE IF NOT EXISTS {table.sql} ("RECORD_METADATA" VARIANT, "RECORD_CONTENT" VARIANT)'


def create_watermark_sql(table: TableRef) -> str:
    """One row per (replica, partition): the highest landing offset already merged into the replica."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table.sql} (\n"
        '  "REPLICA_TABLE" VARCHAR NOT NULL,\n'
        '  "PARTITION" NUMBER(10,0) NOT NULL,\n'
        '  "MERGED_OFFSET" NUMBER(19,0) NOT NULL,\n'
        '  "MERGED_AT" TIMESTAMP_NTZ(6),\n'
        '  PRIMARY KEY ("REPLICA_TABLE", "PARTITION")\n'
        ")"
    )


def create_unconverted_sql(table: TableRef) -> str:
    """Values the merge or backfill could not convert (stored NULL instead): one row per replica, column and key.

    `KEY` is the key as JSON text (`merge.key_text_sql`); PARTITION/OFFSET locate the landing row (NULL for a
    backfilled row); `RAW_VALUE` is the text TiCDC sent.
    """
    return (
        f"CREATE TABLE IF NOT EXISTS {table.sql} (\n"
        '  "REPLICA_TABLE" VARCHAR NOT NULL,\n'
        '  "COLUMN_NAME" VARCHAR NOT NULL,\n'
        '  "KEY" VARCHAR NOT NULL,\n'
        '  "RAW_VALUE" VARCHAR,\n'
        '  "PARTITION" NUMBER(10,0),\n'
        '  "OFFSET" NUMBER(19,0),\n'
        '  "FOUND_AT" TIMESTAMP_NTZ(6)\n'
        ")"
    )


def create_dead_letter_sql(table: TableRef) -> str:
    """Records that could not be decoded or loaded, kept raw with the reason, so the stream can move on."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table.sql} (\n"
        '  "TOPIC" VARCHAR NOT NULL,\n'
        '  "PARTITION" NUMBER(10,0) NOT NULL,\n'
        '  "OFFSET" NUMBER(19,0) NOT NULL,\n'
        '  "RECORD_METADATA" VARIANT,\n'
        '  "RAW_KEY" BINARY,\n'
        '  "RAW_VALUE" BINARY,\n'
        '  "ERROR" VARCHAR NOT NULL,\n'
        '  "FAILED_AT" TIMESTAMP_NTZ(6)\n'
        ")"
    )


def add_columns_sql(table: TableRef, existing: Iterable[str], wanted: Sequence[ReplicaColumn]) -> list[str]:
    """`ALTER TABLE ... ADD COLUMN` for each wanted column the table lacks (exact-name match); never drops."""
    have = set(existing)
    return [
        f"ALTER TABLE {table.sql} ADD COLUMN {quote_ident(c.name)} {c.sql_type}"
        for c in wanted
        if c.name not in have
    ]


def table_columns_sql(table: TableRef) -> Statement:
    """Query listing a table's column names (exact case), for `add_columns_sql`'s `existing`."""
    # Snowflake's information_schema is per database, so qualify it when the table names one.
    info = f"{quote_ident(table.database)}.information_schema.columns" if table.database else "information_schema.columns"
    return Statement(
        f"SELECT column_name FROM {info} WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (table.schema, table.name),
    )
