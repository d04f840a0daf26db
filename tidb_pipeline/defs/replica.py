"""One replica merge, as the replica asset runs it.

The replica's columns come from the topic's latest Avro value schema in the registry (never hand-written
DDL): the table is created on first use, and columns a newer schema version adds are added before the
merge (`ALTER TABLE ... ADD COLUMN`), so rows landed with the new schema merge into them. The MERGE itself,
its watermark and its idempotency live in `tidb_pipeline.replication.merge`.

The merge never passes a hole in a partition's offsets (`replication.holes`): when one holds a partition
back and the offset-gaps table is given, the hole is decided with Kafka first (`defs.holes.resolve_holes`),
so offsets Kafka never had are skipped in this same run, and the outcome names what stays held back.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns
from tidb_pipeline.defs.holes import resolve_holes
from tidb_pipeline.replication.ddl import (
    TableRef,
    add_columns_sql,
    create_dead_letter_sql,
    create_replica_sql,
    create_watermark_sql,
    quote_ident,
    table_columns_sql,
)
from tidb_pipeline.replication.holes import ABSENT, Gap, create_offset_gaps_sql
from tidb_pipeline.replication.merge import (
    Held,
    MergeCounts,
    MergePlan,
    MergeRange,
    parse_pending,
    pending_ranges_sql,
    run_merge,
)
from tidb_pipeline.resources.kafka import KafkaResource

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
    held: tuple[Held, ...] = ()  # partitions a hole holds back after this merge
    gaps: tuple[Gap, ...] = ()  # how this run decided the holes it met (ABSENT ones were skipped)


def latest_schemas(registry: SchemaRegistryClient, topic: str) -> tuple[str, str, int] | None:
    """(key schema, value schema, value version) of the topic's latest subjects, or None before any data."""
    try:
        key = registry.get_latest_version(f"{topic}-key")
        value = registry.get_latest_version(f"{topic}-value")
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


def ensure_replica(cursor: Any, replica: TableRef, columns: tuple[ReplicaColumn, ...]) -> tuple[str, ...]:
    """Create the replica if missing and add the columns a newer schema brings; returns the added names."""
    ensure_schema(cursor, replica)
    _execute(cursor, create_replica_sql(replica, columns))
    stmt = table_columns_sql(replica)
    existing = [r[0] for r in _execute(cursor, stmt.sql, stmt.params)]
    added = add_columns_sql(replica, existing, columns)
    for sql in added:
        _execute(cursor, sql)
    have = set(existing)
    return tuple(c.name for c in columns if c.name not in have)


# (server, replica, watermarks) -> (schema version, columns) whose DDL this process has already run.
_ensured: dict[tuple[Any, ...], tuple[int, tuple[ReplicaColumn, ...]]] = {}
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
    dead_letters: TableRef | None = None,
    offset_gaps: TableRef | None = None,
    kafka: KafkaResource | None = None,
) -> MergeOutcome | None:
    """Bring the replica up to date with its landing table; None when the topic has no schema yet.

    `dead_letters` (the built-in loader's quarantine) and `offset_gaps` (`replication.holes`) name offsets
    that count as present; with `offset_gaps` and `kafka` a hole is decided with Kafka before merging.
    """
    log = log or logging.getLogger(__name__)
    schemas = latest_schemas(registry, topic)
    if schemas is None:
        log.info("no schema registered for %s yet: nothing to merge", topic)
        return None
    key_schema, value_schema, version = schemas
    columns = replica_columns(value_schema, key_schema)
    plan = MergePlan(replica, landing, watermarks, columns, topic=topic, dead_letters=dead_letters,
                     offset_gaps=offset_gaps)
    when = now or dt.datetime.now(dt.timezone.utc)
    cache_key = _ddl_cache_key(connection, replica, watermarks)
    with _ensured_lock:
        cached = _ensured.get(cache_key) == (version, columns)
    added: tuple[str, ...] = ()

    def ensure() -> tuple[str, ...]:
        cursor = connection.cursor()
        ensure_schema(cursor, watermarks)
        _execute(cursor, create_watermark_sql(watermarks))
        for ref, ddl in ((dead_letters, create_dead_letter_sql), (offset_gaps, create_offset_gaps_sql)):
            if ref is not None:  # the pending-ranges query reads both
                ensure_schema(cursor, ref)
                _execute(cursor, ddl(ref))
        got = ensure_replica(cursor, replica, columns)
        with _ensured_lock:
            _ensured[cache_key] = (version, columns)
        return got

    if not cached:
        added = ensure()
    else:
        # The skipped CREATE DATABASE / SCHEMA also made the replica's schema current, as Snowflake does.
        # Our SQL is fully qualified, but fakesnow's rewrites call helpers of the current database
        # (`_fs_to_timestamp`) and put the MERGE's temporary table in the current schema.
        _execute(connection.cursor(), use_schema_sql(replica))
    def merge_once() -> tuple[MergeCounts, tuple[MergeRange, ...], tuple[Held, ...], tuple[Gap, ...]]:
        stmt = pending_ranges_sql(plan)
        pending = parse_pending(_execute(connection.cursor(), stmt.sql, stmt.params))
        gaps: tuple[Gap, ...] = ()
        if pending.held and offset_gaps is not None:
            gaps = tuple(resolve_holes(connection, kafka, plan.offsets, when))
            if any(g.status == ABSENT for g in gaps):  # offsets Kafka never had: pass them now
                pending = parse_pending(_execute(connection.cursor(), stmt.sql, stmt.params))
        counts, ranges = run_merge(connection, plan, when, ranges=pending.ranges)
        for h in pending.held:
            log.warning("merge of %s holds partition %s at offset %s: %s", replica.label, h.partition,
                        h.merged_through, h)
        return counts, ranges, pending.held, gaps

    try:
        counts, ranges, held, gaps = merge_once()
    except Exception as exc:  # noqa: BLE001 - re-raised unless the skipped DDL explains it
        if not cached:
            raise
        with _ensured_lock:
            _ensured.pop(cache_key, None)
        log.warning("merge into %s failed with its DDL skipped (%s: %s); checking its tables and retrying once",
                    replica.label, type(exc).__name__, exc)
        added = ensure()
        counts, ranges, held, gaps = merge_once()
    if added:
        log.info("added columns %s to %s (schema version %s)", ", ".join(added), replica.label, version)
    (row_count,) = _execute(connection.cursor(), f"SELECT COUNT(*) FROM {replica.sql}")[0]
    return MergeOutcome(replica, counts, ranges, columns, added, int(row_count), version, held=held, gaps=gaps)
