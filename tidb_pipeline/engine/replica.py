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

Schema changes follow the table's `SchemaChangePolicy` (config.py) when a `DdlSource` is given
(`follow_schema_changes`, `replication.schema_changes`): with each new schema version, renames from TiDB's DDL
history, then type changes, added and dropped columns; in every merge, after its offset ranges are fixed, a
TRUNCATE from the history empties the replica (once, recorded; in soft_delete and history modes it flags
the rows or closes their versions instead) and the merge treats changes committed before it as deletes. Every change applied is a row of the control schema's `SCHEMA_CHANGES` table and in the run's
metadata, with the schema version before and after.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient

from tidb_pipeline.config import SchemaChangePolicy
from tidb_pipeline.engine.holes import resolve_holes
from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns, source_names, with_names
from tidb_pipeline.replication.ddl import (
    TableRef,
    add_columns_sql,
    create_dead_letter_sql,
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
from tidb_pipeline.replication.mode_columns import HISTORY, REPLICA, SOFT_DELETE, mode_of_columns
from tidb_pipeline.replication.modes import create_mode_replica_sql, run_history_merge
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.replication import schema_changes as sc
from tidb_pipeline.replication.ticdc_schema import sanitize_name
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
    schema_changes: tuple[sc.ColumnChange, ...] = ()  # applied (or first seen) in this run
    schema_version_before: int | None = None  # the version the replica followed before this run's changes


def latest_schemas(registry: SchemaRegistryClient, topic: str) -> tuple[str, str, int] | None:
    """(key schema, value schema, value version) of the topic's latest subjects, or None before any data."""
    key_subject, value_subject = subject_names(topic)  # TiCDC's: dots in the topic become `_`
    key, value = latest_version(registry, key_subject), latest_version(registry, value_subject)
    if key is None or value is None:
        return None
    return key.schema.schema_str, value.schema.schema_str, value.version


def ensure_schema(warehouse: Warehouse, table: TableRef, *, once: bool = False) -> None:
    """Create `table`'s database (when it names one) and schema if missing; with `once`, only the first time in
    this process (`Warehouse.ensure_once`: for DDL steps run through `Warehouse.ensured`, which re-creates
    after a missing-object error)."""
    run = warehouse.ensure_once if once else warehouse.execute
    if table.database:
        run(f"CREATE DATABASE IF NOT EXISTS {quote_ident(table.database)}")
        run(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.database)}.{quote_ident(table.schema)}")
    else:
        run(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.schema)}")


def ensure_replica(
    warehouse: Warehouse, replica: TableRef, columns: tuple[ReplicaColumn, ...], *,
    source_columns: Callable[[], Sequence[str]] | None = None, policy: Policy | None = None, source: str = "",
    mode: str = REPLICA,
) -> tuple[tuple[ReplicaColumn, ...], tuple[str, ...]]:
    """Create the replica (in the shape of `mode`) if missing and add the columns a newer schema brings.

    An existing replica in another mode's shape is refused: changing a table's mode is the `switch_mode` job's
    work (README "Replica modes"), never a side effect of a merge.

    With `source_columns` (TiDB's column names, asked only for fields the replica does not have yet), the
    columns are first renamed from TiCDC's Avro field names to TiDB's (`source_names`); then the column
    `policy` (`replication.columns`) applies (`source` names the TiDB table in its errors). Returns the columns
    under their replica names and the names added.
    """
    ensure_schema(warehouse, replica)
    existing = [r[0] for r in warehouse.execute(table_columns_sql(replica))]
    if existing and (found := mode_of_columns(existing)) != mode:
        raise ValueError(f"replica {replica.label} is in mode {found} but the config says mode {mode}; pause its "
                         f"merges and run the switch_mode job for it (README \"Replica modes\"), or set mode: {found}")
    if source_columns is not None:
        # An excluded column is absent from the replica: its name comes from TiDB like a new column's.
        columns = with_names(columns, source_names([c.field for c in columns], replica=existing,
                                                   source=source_columns))
    columns = apply_policy(columns, policy, source or replica.label)
    warehouse.execute(create_mode_replica_sql(replica, columns, mode))
    # A replica always has a column: none listed means the CREATE above made it with every column.
    for sql in add_columns_sql(replica, existing, columns) if existing else ():
        warehouse.execute(sql)
    have = set(existing)
    return columns, tuple(c.name for c in columns if c.name not in have)


@dataclass(frozen=True)
class DdlSource:
    """TiDB's DDL job history for one table (`TiDBResource.ddl_jobs` / `last_ddl_job_id`) and its policy."""

    db: str
    table: str
    jobs: Callable[[int], Sequence[tuple[int, Any]]]  # (job_id, job_meta) after a job id
    last_job_id: Callable[[], int]
    policy: SchemaChangePolicy = SchemaChangePolicy()

    def owns(self, job: sc.DdlJob) -> bool:
        return (job.db.lower(), job.table.lower()) == (self.db.lower(), self.table.lower())

    def table_jobs(self, after: int) -> list[sc.DdlJob]:
        return [j for j in (sc.parse_ddl_job(i, meta) for i, meta in self.jobs(after)) if self.owns(j)]


def _record(wh: Warehouse, log_table: TableRef, replica: TableRef, changes: Sequence[sc.ColumnChange], *,
            before: int | None, after: int | None, when: dt.datetime) -> None:
    for change in changes:
        wh.execute(sc.record_change_sql(log_table, replica, change, before=before, after=after, now=when))


def follow_schema_changes(
    wh: Warehouse, replica: TableRef, fields: tuple[ReplicaColumn, ...], version: int, ddl: DdlSource,
    log_table: TableRef, when: dt.datetime, source_columns: Callable[[], Sequence[str]] | None,
    columns_policy: Policy | None = None, source: str = "",
) -> tuple[tuple[sc.ColumnChange, ...], int | None]:
    """Apply renames, type changes and drops a new schema version brings, per `ddl.policy`; record them.

    Runs before `ensure_replica` (which creates the table or adds the new columns). Returns the changes and
    the schema version the replica followed before them. A change the policy refuses raises
    `SchemaChangeError` naming table, column, types and what to do.
    """
    policy, label = ddl.policy, f"{ddl.db}.{ddl.table}"
    existing = {str(r[0]): sc.snowflake_type(r[1], r[2], r[3]) for r in wh.execute(sc.replica_types_sql(replica))}
    recorded = sc.parse_recorded(wh.execute(sc.read_changes_sql(log_table, replica)))
    if not existing or recorded.last_job_id is None:
        # A new replica (or one older than this record): DDL before now is already in its rows or not its own.
        base = sc.ColumnChange(sc.BASELINE, "", job_id=ddl.last_job_id(), detail="DDL history followed from here")
        _record(wh, log_table, replica, [base], before=None, after=version, when=when)
        return ((base,) if existing else ()), None
    before = recorded.version
    changes: list[sc.ColumnChange] = []
    wanted_fields = {c.field for c in fields}
    for job, old, new in sc.renames_from(ddl.table_jobs(recorded.baseline_job_id or 0), ddl.db, ddl.table):
        if old in existing and new not in existing and sanitize_name(new) in wanted_fields:
            if policy.rename_column == "fail":
                raise sc.SchemaChangeError(
                    f"{label}: column {old!r} was renamed to {new!r} (DDL job {job.job_id}) and "
                    f"schema_changes.rename_column is 'fail'; rename replica column {replica.label}.{old} yourself "
                    f"(ALTER TABLE ... RENAME COLUMN) or set rename_column: follow")
            wh.execute(sc.rename_column_sql(replica, old, new))
            existing = {(new if n == old else n): t for n, t in existing.items()}
            changes.append(sc.ColumnChange(sc.RENAME, old, new_name=new, job_id=job.job_id, ddl_tso=job.finished_ts))
    names = source_names([c.field for c in fields], replica=list(existing), source=source_columns)
    # As ensure_replica will make them: excluded columns gone, hashed ones VARCHAR (replication.columns).
    wanted = apply_policy(with_names(fields, names), columns_policy, source or replica.label)
    for c in wanted:
        if c.name not in existing:
            if policy.add_column == "fail":
                raise sc.SchemaChangeError(f"{label}: column {c.name!r} ({c.sql_type}) was added and "
                                           "schema_changes.add_column is 'fail'; set add_column: follow")
            changes.append(sc.ColumnChange(sc.ADD, c.name, new_type=c.sql_type))
            continue
        old_type = existing[c.name]
        how = sc.type_change(old_type, c.sql_type)
        if how == "same":
            continue
        if how == "widen" and policy.widen_type == "alter":
            wh.execute(sc.alter_type_sql(replica, c.name, c.sql_type))
            changes.append(sc.ColumnChange(sc.WIDEN, c.name, old_type, c.sql_type))
            continue
        reason = ("widening, and schema_changes.widen_type is 'fail'" if how == "widen" else
                  f"{how}: Snowflake cannot change it in place; schema_changes.incompatible_type is 'fail'")
        raise sc.SchemaChangeError(sc.type_refusal(replica, ddl.db, ddl.table, c.name, old_type, c.sql_type, reason))
    kept = {c.name for c in wanted}
    for name in existing:
        if name in kept or name in recorded.dropped:
            continue
        first_seen = recorded.drops.get(name)
        if first_seen is None:
            first_seen = when.replace(tzinfo=None)
            detail = ("kept, no longer filled" if policy.drop_column == "keep"
                      else f"kept, no longer filled; dropped {policy.drop_after_hours:g} h after first seen")
            changes.append(sc.ColumnChange(sc.DROP_KEPT, name, existing[name], detail=detail))
        if policy.drop_column == "drop" and \
                when.replace(tzinfo=None) - first_seen >= dt.timedelta(hours=policy.drop_after_hours):
            wh.execute(sc.drop_column_sql(replica, name))
            changes.append(sc.ColumnChange(sc.DROP, name, existing[name],
                                           detail=f"dropped {policy.drop_after_hours:g} h after it left TiDB"))
    _record(wh, log_table, replica, changes, before=before, after=version, when=when)
    return tuple(changes), before


def apply_truncates(wh: Warehouse, replica: TableRef, ddl: DdlSource, log_table: TableRef, version: int | None,
                    when: dt.datetime, mode: str = REPLICA, keys: Sequence[str] = (),
                    ) -> tuple[int | None, tuple[sc.ColumnChange, ...]]:
    """Apply a TRUNCATE in TiDB's history not applied yet as the replica's `mode` says (`sc.truncate_statements`;
    `keys` are its key columns; module docstring of `replication.schema_changes`); returns the latest truncate
    TSO (for `MergePlan.truncated_at`) and what ran.

    Call it after the merge's offset ranges are fixed: every row merged before then was committed before any
    truncate this reads.
    """
    recorded = sc.parse_recorded(wh.execute(sc.read_changes_sql(log_table, replica)))
    if ddl.policy.truncate != "follow" or recorded.baseline_job_id is None:
        return recorded.truncated_at, ()
    start = max(recorded.last_truncate_job_id or 0, recorded.baseline_job_id)
    read = [sc.parse_ddl_job(i, meta) for i, meta in ddl.jobs(start)]
    mine = [j for j in read if ddl.owns(j)]
    jobs = [j for j in mine if j.is_truncate and j.job_id not in recorded.job_ids
            and j.finished_ts > (recorded.truncated_at or 0)]
    what = {REPLICA: "replica emptied", SOFT_DELETE: "rows flagged _DELETED",
            HISTORY: "current versions closed by a delete version"}[mode]
    done = tuple(sc.ColumnChange(sc.TRUNCATE, "", job_id=j.job_id, ddl_tso=j.finished_ts,
                                 detail=f"{what}; changes committed at or before it are deletes")
                 for j in jobs)
    if jobs:
        with wh.transaction():
            for j in sorted(jobs, key=lambda j: j.finished_ts):  # each in turn: a later one finds nothing left
                for stmt in sc.truncate_statements(replica, mode, j.finished_ts, keys):
                    wh.execute(stmt)
            _record(wh, log_table, replica, done, before=recorded.version, after=version, when=when)
    if len(read) >= sc.HISTORY_STEP:
        # Every merge reads the history from here on: move past other tables' jobs (and this table's applied
        # ones), but never past a rename of this table not applied yet (its schema version may not be here yet).
        waiting = [j.job_id for j in mine if j.column_renames() and j.job_id not in recorded.job_ids]
        seen = min(waiting) - 1 if waiting else read[-1].job_id
        if seen > start:
            _record(wh, log_table, replica, [sc.ColumnChange(sc.HISTORY_SEEN, "", job_id=seen)],
                    before=recorded.version, after=None, when=when)
    if not jobs:
        return recorded.truncated_at, ()
    return max(j.finished_ts for j in jobs), done


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
    ddl: DdlSource | None = None,
    policy: Policy | None = None,
    hash_salt: Callable[[], str] | None = None,
    source: str = "",
    mode: str = REPLICA,
) -> MergeOutcome | None:
    """Bring the replica up to date with its landing table; None when the topic has no schema yet.

    `source_columns` returns TiDB's column names of the table: the replica takes them instead of TiCDC's
    sanitised Avro field names. It is called only when the schema brings a field the replica lacks.
    `dead_letters` (the built-in loader's quarantine) and `offset_gaps` (`replication.holes`) name offsets
    that count as present; with `offset_gaps` and `kafka` a hole is decided with Kafka before merging.
    `landed_offsets` (built-in landing: the loader's landed-offsets table) says where the pending rows end,
    so only they are read from the landing table, and nothing is when no partition moved.
    With `ddl`, schema changes follow its policy and TiDB's DDL history (`follow_schema_changes`, `apply_truncates`).
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
    memo_key = ("replica", replica, watermarks, dead_letters, offset_gaps, mode, landed_offsets)
    ddl_version = (version, fields, policy)
    # The columns under their replica names: as the DDL found them when it last ran for this schema version
    # (kept in the memo next to it), or as this run's DDL finds them.
    known = wh.memo.recall(wh.memo_key(memo_key), ddl_version)
    if known is None:
        # Without the names the DDL found, it must run (even if another session remembers it meanwhile).
        wh.memo.forget(wh.memo_key(memo_key))
    columns: list[tuple[ReplicaColumn, ...]] = [known or fields]
    added: list[str] = []
    changes: list[sc.ColumnChange] = []
    before: list[int | None] = [None]
    log_table = sc.schema_changes_table(watermarks)

    def ensure() -> tuple[ReplicaColumn, ...]:
        # The control tables are shared by every replica: created once per process (`Warehouse.ensure_once`).
        ensure_schema(wh, watermarks, once=True)
        wh.ensure_once(create_watermark_sql(watermarks))
        wh.ensure_once(create_unconverted_sql(unconverted_table(watermarks)))
        for ref, create in ((dead_letters, create_dead_letter_sql), (offset_gaps, create_offset_gaps_sql),
                            (landed_offsets, create_landed_offsets_sql)):
            if ref is not None:  # the pending-ranges queries read them
                ensure_schema(wh, ref, once=True)
                wh.ensure_once(create(ref))
        if ddl is not None:
            wh.ensure_once(sc.create_schema_changes_sql(log_table))
            got_changes, before[0] = follow_schema_changes(wh, replica, fields, version, ddl, log_table, when,
                                                           source_columns, policy, source)
            changes.extend(got_changes)
        columns[0], got = ensure_replica(wh, replica, fields, source_columns=source_columns, policy=policy,
                                         source=source, mode=mode)
        added[:] = got
        if ddl is not None:
            renames = sc.parse_recorded(wh.execute(sc.read_changes_sql(log_table, replica))).renames
            columns[0] = sc.with_previous_fields(columns[0], renames, sanitize_name)
        return columns[0]

    def merge() -> tuple[MergeCounts, tuple[MergeRange, ...], tuple[Held, ...], tuple[Gap, ...]]:
        # Built after the DDL: the plan reads the landing rows by field name into TiDB-named columns.
        plan = MergePlan(replica, landing, watermarks, columns[0], topic=topic, dead_letters=dead_letters,
                         offset_gaps=offset_gaps, mode=mode, landed=landed_offsets)
        pending = read_pending(wh, plan)
        if ddl is not None:  # after the ranges are fixed (see apply_truncates)
            truncated_at, done = apply_truncates(wh, replica, ddl, log_table, version, when, mode,
                                                 [k.name for k in plan.keys])
            changes.extend(done)
            plan = replace(plan, truncated_at=truncated_at)
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
        run = run_history_merge if mode == HISTORY else run_merge
        counts, ranges = run(wh, plan, when, ranges=pending.ranges)
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
    for change in changes:
        log.info("schema change on %s: %s", replica.label, change.describe())
    return MergeOutcome(replica, counts, ranges, columns[0], tuple(added), int(row_count), version, held=held,
                        gaps=gaps, schema_changes=tuple(changes), schema_version_before=before[0])
