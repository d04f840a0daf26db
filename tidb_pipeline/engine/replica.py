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

The merge never passes a hole in a partition's offsets (`replication.holes`): when one holds a partition
back and the offset-gaps table is given, the hole is decided with Kafka first (`engine.holes.resolve_holes`),
so offsets Kafka never had are skipped in this same run, and the outcome names what stays held back.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient

from tidb_pipeline.engine.holes import resolve_holes
from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns, source_names, with_names
from tidb_pipeline.replication.ddl import (
    TableRef,
    add_columns_sql,
    create_dead_letter_sql,
    create_replica_sql,
    create_unconverted_sql,
    create_watermark_sql,
    quote_ident,
    table_columns_sql,
)
from tidb_pipeline.replication.columns import Policy, apply_policy, needs_salt, set_salt_statement
from tidb_pipeline.replication.holes import ABSENT, Gap, create_offset_gaps_sql
from tidb_pipeline.replication.landing import create_landed_offsets_sql
from tidb_pipeline.replication.merge import (
    Held,
    MergeCounts,
    MergePlan,
    MergeRange,
    parse_bounds,
    pending_bounds_sql,
    read_pending,
    run_merge,
    unconverted_table,
)
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import latest_version, subject_names
from tidb_pipeline.resources.warehouse import DDL_MEMO, Warehouse

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
    key_subject, value_subject = subject_names(topic)  # TiCDC's: dots in the topic become `_`
    key, value = latest_version(registry, key_subject), latest_version(registry, value_subject)
    if key is None or value is None:
        return None
    return key.schema.schema_str, value.schema.schema_str, value.version


def ensure_schema(warehouse: Warehouse, table: TableRef) -> None:
    """Create `table`'s database (when it names one) and schema if missing."""
    if table.database:
        warehouse.execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(table.database)}")
        warehouse.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.database)}.{quote_ident(table.schema)}")
    else:
        warehouse.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.schema)}")


def ensure_replica(
    warehouse: Warehouse, replica: TableRef, columns: tuple[ReplicaColumn, ...], *,
    source_columns: Callable[[], Sequence[str]] | None = None, policy: Policy | None = None, source: str = "",
) -> tuple[tuple[ReplicaColumn, ...], tuple[str, ...]]:
    """Create the replica if missing and add the columns a newer schema brings.

    With `source_columns` (TiDB's column names, asked only for fields the replica does not have yet), the
    columns are first renamed from TiCDC's Avro field names to TiDB's (`source_names`); then the column
    `policy` (`replication.columns`) applies (`source` names the TiDB table in its errors). Returns the columns
    under their replica names and the names added.
    """
    ensure_schema(warehouse, replica)
    existing = [r[0] for r in warehouse.execute(table_columns_sql(replica))]
    if source_columns is not None:
        # An excluded column is absent from the replica: its name comes from TiDB like a new column's.
        columns = with_names(columns, source_names([c.field for c in columns], replica=existing,
                                                   source=source_columns))
    columns = apply_policy(columns, policy, source or replica.label)
    warehouse.execute(create_replica_sql(replica, columns))
    # A replica always has a column: none listed means the CREATE above made it with every column.
    for sql in add_columns_sql(replica, existing, columns) if existing else ():
        warehouse.execute(sql)
    have = set(existing)
    return columns, tuple(c.name for c in columns if c.name not in have)


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
    source_columns: Callable[[], Sequence[str]] | None = None,
    dead_letters: TableRef | None = None,
    offset_gaps: TableRef | None = None,
    kafka: KafkaResource | None = None,
    landed_offsets: TableRef | None = None,
    policy: Policy | None = None,
    hash_salt: Callable[[], str] | None = None,
    source: str = "",
) -> MergeOutcome | None:
    """Bring the replica up to date with its landing table; None when the topic has no schema yet.

    `source_columns` returns TiDB's column names of the table: the replica takes them instead of TiCDC's
    sanitised Avro field names. It is called only when the schema brings a field the replica lacks.
    `dead_letters` (the built-in loader's quarantine) and `offset_gaps` (`replication.holes`) name offsets
    that count as present; with `offset_gaps` and `kafka` a hole is decided with Kafka before merging.
    `landed_offsets` (built-in landing: the loader's landed-offsets table) says where the pending rows end,
    so only they are read from the landing table, and nothing is when no partition moved.
    `policy` is the table's column policy (`replication.columns`, errors name `source`); `hash_salt` returns
    the salt of its hashed columns, asked only when the replica has one (set as a session variable, bound).
    """
    log = log or logging.getLogger(__name__)
    schemas = latest_schemas(registry, topic)
    if schemas is None:
        log.info("no schema registered for %s yet: nothing to merge", topic)
        return None
    key_schema, value_schema, version = schemas
    fields = replica_columns(value_schema, key_schema)
    when = now or dt.datetime.now(dt.timezone.utc)
    wh = Warehouse.of(connection)
    memo_key = ("replica", replica, watermarks, dead_letters, offset_gaps, landed_offsets)
    ddl_version = (version, fields, policy)
    # The columns under their replica names: as the DDL found them when it last ran for this schema version
    # (kept in the memo next to it), or as this run's DDL finds them.
    known = wh.memo.recall(wh.memo_key(memo_key), ddl_version)
    if known is None:
        # Without the names the DDL found, it must run (even if another session remembers it meanwhile).
        wh.memo.forget(wh.memo_key(memo_key))
    columns: list[tuple[ReplicaColumn, ...]] = [known or fields]
    added: list[str] = []

    def ensure() -> tuple[ReplicaColumn, ...]:
        ensure_schema(wh, watermarks)
        wh.execute(create_watermark_sql(watermarks))
        wh.execute(create_unconverted_sql(unconverted_table(watermarks)))
        for ref, ddl in ((dead_letters, create_dead_letter_sql), (offset_gaps, create_offset_gaps_sql),
                         (landed_offsets, create_landed_offsets_sql)):
            if ref is not None:  # the pending-ranges queries read them
                ensure_schema(wh, ref)
                wh.execute(ddl(ref))
        columns[0], got = ensure_replica(wh, replica, fields, source_columns=source_columns, policy=policy,
                                         source=source)
        added[:] = got
        return columns[0]

    def merge() -> tuple[MergeCounts, tuple[MergeRange, ...], tuple[Held, ...], tuple[Gap, ...]]:
        # Built after the DDL: the plan reads the landing rows by field name into TiDB-named columns.
        plan = MergePlan(replica, landing, watermarks, columns[0], topic=topic, dead_letters=dead_letters,
                         offset_gaps=offset_gaps, landed=landed_offsets)
        pending = read_pending(wh, plan)
        gaps: tuple[Gap, ...] = ()
        if pending.held and offset_gaps is not None:
            # Built-in landing: only the pending range of the landing table is read for the holes too.
            bounds = parse_bounds(wh.execute(pending_bounds_sql(plan))) if plan.landed is not None else None
            gaps = tuple(resolve_holes(wh, kafka, plan.offsets, when, bounds))
            if any(g.status == ABSENT for g in gaps):  # offsets Kafka never had: pass them now
                pending = read_pending(wh, plan)
        if pending.ranges and needs_salt(plan.columns):
            if hash_salt is None:
                raise ValueError(f"{replica.label} hashes columns but no salt was given (hash_salt_env)")
            wh.execute_secret(set_salt_statement(hash_salt()))
        counts, ranges = run_merge(wh, plan, when, ranges=pending.ranges)
        for h in pending.held:
            log.warning("merge of %s holds partition %s at offset %s: %s", replica.label, h.partition,
                        h.merged_through, h)
        return counts, ranges, pending.held, gaps

    # The DDL runs once per process and schema version (columns a new version brings are added then).
    counts, ranges, held, gaps = wh.ensured(memo_key, ensure, merge, version=ddl_version,
                                            what=f"merge into {replica.label}", log=log)
    if added:
        log.info("added columns %s to %s (schema version %s)", ", ".join(added), replica.label, version)
    (row_count,) = wh.execute(f"SELECT COUNT(*) FROM {replica.sql}")[0]
    return MergeOutcome(replica, counts, ranges, columns[0], tuple(added), int(row_count), version, held=held,
                        gaps=gaps)
