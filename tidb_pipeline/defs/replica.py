"""One replica merge, as the replica asset runs it.

The replica's columns come from the topic's latest Avro value schema in the registry (never hand-written
DDL): the table is created on first use, and columns a newer schema version adds are added before the
merge (`ALTER TABLE ... ADD COLUMN`), so rows landed with the new schema merge into them. The MERGE itself,
its watermark and its idempotency live in `tidb_pipeline.replication.merge`.

Column names are TiDB's, not the Avro field names TiCDC sanitises (`Mixed Case` arrives as `Mixed_Case`).
They come from TiDB itself, through the `tidb` resource, and only when a schema brings a field the replica
does not have yet (its first merge, a new column): a replica column keeps its name once created, so
steady-state merges read nothing from TiDB, and a column added by `ALTER TABLE` gets its TiDB name without
re-running `discover` (a name list in the config would be stale from that moment).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns, source_names, with_names
from tidb_pipeline.replication.ddl import (
    TableRef,
    add_columns_sql,
    create_replica_sql,
    create_watermark_sql,
    quote_ident,
    table_columns_sql,
)
from tidb_pipeline.replication.merge import MergeCounts, MergePlan, MergeRange, run_merge
from tidb_pipeline.replication.ticdc_schema import subject_names

_SUBJECT_NOT_FOUND = 40401


@dataclass(frozen=True)
class MergeOutcome:
    replica: TableRef
    counts: MergeCounts
    ranges: tuple[MergeRange, ...]
    columns: tuple[ReplicaColumn, ...]
    added_columns: tuple[str, ...] = ()
    row_count: int | None = None
    schema_version: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def latest_schemas(registry: SchemaRegistryClient, topic: str) -> tuple[str, str, int] | None:
    """(key schema, value schema, value version) of the topic's latest subjects, or None before any data."""
    key_subject, value_subject = subject_names(topic)  # TiCDC's: dots in the topic become `_`
    try:
        key = registry.get_latest_version(key_subject)
        value = registry.get_latest_version(value_subject)
    except SchemaRegistryError as exc:
        if exc.error_code == _SUBJECT_NOT_FOUND:
            return None
        raise
    return key.schema.schema_str, value.schema.schema_str, value.version


def _execute(cursor: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    cursor.execute(sql, params or None)
    try:
        return list(cursor.fetchall())
    except Exception:  # noqa: BLE001 - statements without a result set
        return []


def use_schema_sql(table: TableRef) -> str:
    """`USE SCHEMA` of `table`'s schema (with its database when it names one), quoted."""
    if table.database:
        return f"USE SCHEMA {quote_ident(table.database)}.{quote_ident(table.schema)}"
    return f"USE SCHEMA {quote_ident(table.schema)}"


def ensure_schema(cursor: Any, table: TableRef) -> None:
    if table.database:
        _execute(cursor, f"CREATE DATABASE IF NOT EXISTS {quote_ident(table.database)}")
        _execute(cursor, f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.database)}.{quote_ident(table.schema)}")
    else:
        _execute(cursor, f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.schema)}")


def ensure_replica(
    cursor: Any, replica: TableRef, columns: tuple[ReplicaColumn, ...], *,
    source_columns: Callable[[], Sequence[str]] | None = None,
) -> tuple[tuple[ReplicaColumn, ...], tuple[str, ...]]:
    """Create the replica if missing and add the columns a newer schema brings.

    With `source_columns` (TiDB's column names, asked only for fields the replica does not have yet), the
    columns are first renamed from TiCDC's Avro field names to TiDB's (`source_names`). Returns the columns
    under their replica names and the names added.
    """
    ensure_schema(cursor, replica)
    stmt = table_columns_sql(replica)
    existing = [r[0] for r in _execute(cursor, stmt.sql, stmt.params)]
    if source_columns is not None:
        columns = with_names(columns, source_names([c.field for c in columns], replica=existing,
                                                   source=source_columns))
    _execute(cursor, create_replica_sql(replica, columns))
    # A replica always has a column: none listed means the CREATE above made it with every column.
    for sql in add_columns_sql(replica, existing, columns) if existing else ():
        _execute(cursor, sql)
    have = set(existing)
    return columns, tuple(c.name for c in columns if c.name not in have)


# (server, replica, watermarks) -> (schema version, columns as the schema names them, columns under their
# replica names) whose DDL this process has already run.
_ensured: dict[tuple[Any, ...], tuple[int, tuple[ReplicaColumn, ...], tuple[ReplicaColumn, ...]]] = {}
_ensured_lock = threading.Lock()


def _ddl_cache_key(connection: Any, replica: TableRef, watermarks: TableRef) -> tuple[Any, ...]:
    # The server is part of the key: one process may talk to several accounts (tests, labs).
    server = tuple(getattr(connection, a, None) for a in ("host", "port", "account"))
    return (*server, replica.sql, watermarks.sql)


def forget_ensured() -> None:
    """Drop the per-process DDL cache (the next merge of every replica re-checks its objects)."""
    with _ensured_lock:
        _ensured.clear()


def merge_replica(
    *,
    connection: Any,
    registry: SchemaRegistryClient,
    topic: str,
    landing: TableRef,
    replica: TableRef,
    watermarks: TableRef,
    now: dt.datetime | None = None,
    log: logging.Logger | None = None,
    source_columns: Callable[[], Sequence[str]] | None = None,
) -> MergeOutcome | None:
    """Bring the replica up to date with its landing table; None when the topic has no schema yet.

    `source_columns` returns TiDB's column names of the table: the replica takes them instead of TiCDC's
    sanitised Avro field names. It is called only when the schema brings a field the replica lacks.
    """
    log = log or logging.getLogger(__name__)
    schemas = latest_schemas(registry, topic)
    if schemas is None:
        log.info("no schema registered for %s yet: nothing to merge", topic)
        return None
    key_schema, value_schema, version = schemas
    fields = replica_columns(value_schema, key_schema)
    when = now or dt.datetime.now(dt.timezone.utc)
    cache_key = _ddl_cache_key(connection, replica, watermarks)
    with _ensured_lock:
        entry = _ensured.get(cache_key)
    cached = entry is not None and entry[:2] == (version, fields)
    columns = entry[2] if entry is not None and cached else fields
    added: tuple[str, ...] = ()

    def ensure() -> tuple[tuple[ReplicaColumn, ...], tuple[str, ...]]:
        cursor = connection.cursor()
        ensure_schema(cursor, watermarks)
        _execute(cursor, create_watermark_sql(watermarks))
        named, got = ensure_replica(cursor, replica, fields, source_columns=source_columns)
        with _ensured_lock:
            _ensured[cache_key] = (version, fields, named)
        return named, got

    if not cached:
        columns, added = ensure()
    else:
        # The skipped CREATE DATABASE / SCHEMA also made the replica's schema current, as Snowflake does.
        # Our SQL is fully qualified, but fakesnow's rewrites call helpers of the current database
        # (`_fs_to_timestamp`) and put the MERGE's temporary table in the current schema.
        _execute(connection.cursor(), use_schema_sql(replica))
    plan = MergePlan(replica, landing, watermarks, columns)
    try:
        counts, ranges = run_merge(connection, plan, when)
    except Exception as exc:  # noqa: BLE001 - re-raised unless the skipped DDL explains it
        if not cached:
            raise
        with _ensured_lock:
            _ensured.pop(cache_key, None)
        log.warning("merge into %s failed with its DDL skipped (%s: %s); checking its tables and retrying once",
                    replica.label, type(exc).__name__, exc)
        columns, added = ensure()
        plan = MergePlan(replica, landing, watermarks, columns)
        counts, ranges = run_merge(connection, plan, when)
    if added:
        log.info("added columns %s to %s (schema version %s)", ", ".join(added), replica.label, version)
    (row_count,) = _execute(connection.cursor(), f"SELECT COUNT(*) FROM {replica.sql}")[0]
    return MergeOutcome(replica, counts, ranges, columns, added, int(row_count), version)
