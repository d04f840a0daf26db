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
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tidb_pipeline.defs.holes import resolve_holes
from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns
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
from tidb_pipeline.resources.warehouse import DDL_MEMO, Warehouse

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


def ensure_schema(warehouse: Warehouse, table: TableRef) -> None:
    """Create `table`'s database (when it names one) and schema if missing."""
    if table.database:
        warehouse.execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(table.database)}")
        warehouse.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.database)}.{quote_ident(table.schema)}")
    else:
        warehouse.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.schema)}")


def ensure_replica(warehouse: Warehouse, replica: TableRef, columns: tuple[ReplicaColumn, ...]) -> tuple[str, ...]:
    """Create the replica if missing and add the columns a newer schema brings; returns the added names."""
    ensure_schema(warehouse, replica)
    warehouse.execute(create_replica_sql(replica, columns))
    existing = [r[0] for r in warehouse.execute(table_columns_sql(replica))]
    for sql in add_columns_sql(replica, existing, columns):
        warehouse.execute(sql)
    have = set(existing)
    return tuple(c.name for c in columns if c.name not in have)


def forget_ensured() -> None:
    """Drop the per-process DDL memo (the next merge or load of every table re-checks its objects)."""
    DDL_MEMO.forget()


def merge_replica(
    *,
    connection: Warehouse | Any,
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
    wh = Warehouse.of(connection)
    added: list[str] = []

    def ensure() -> None:
        ensure_schema(wh, watermarks)
        wh.execute(create_watermark_sql(watermarks))
        for ref, ddl in ((dead_letters, create_dead_letter_sql), (offset_gaps, create_offset_gaps_sql)):
            if ref is not None:  # the pending-ranges query reads both
                ensure_schema(wh, ref)
                wh.execute(ddl(ref))
        added[:] = ensure_replica(wh, replica, columns)

    def merge_once() -> tuple[MergeCounts, tuple[MergeRange, ...], tuple[Held, ...], tuple[Gap, ...]]:
        pending = parse_pending(wh.execute(pending_ranges_sql(plan)))
        gaps: tuple[Gap, ...] = ()
        if pending.held and offset_gaps is not None:
            gaps = tuple(resolve_holes(wh, kafka, plan.offsets, when))
            if any(g.status == ABSENT for g in gaps):  # offsets Kafka never had: pass them now
                pending = parse_pending(wh.execute(pending_ranges_sql(plan)))
        counts, ranges = run_merge(wh, plan, when, ranges=pending.ranges)
        for h in pending.held:
            log.warning("merge of %s holds partition %s at offset %s: %s", replica.label, h.partition,
                        h.merged_through, h)
        return counts, ranges, pending.held, gaps

    # The DDL runs once per process and schema version (columns a new version brings are added then).
    counts, ranges, held, gaps = wh.ensured(
        ("replica", replica, watermarks, dead_letters, offset_gaps), ensure, merge_once,
        version=(version, columns), what=f"merge into {replica.label}", log=log)
    if added:
        log.info("added columns %s to %s (schema version %s)", ", ".join(added), replica.label, version)
    (row_count,) = wh.execute(f"SELECT COUNT(*) FROM {replica.sql}")[0]
    return MergeOutcome(replica, counts, ranges, columns, tuple(added), int(row_count), version, held=held, gaps=gaps)
