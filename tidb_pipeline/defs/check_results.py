"""The readings and verdicts the replica checks are made of (`defs/checks.py` builds the checks from them).

Each reads one side (TiDB, Kafka, TiCDC, the warehouse) or turns readings into an `AssetCheckResult`; the
lag-aware rule and the read order it relies on are described in `defs/checks.py`.
"""

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from tidb_pipeline.config import FreshnessConfig, PipelineConfig, TableConfig
from tidb_pipeline.engine.changefeed import lag_seconds as checkpoint_lag_s  # one TSO-lag rule for asset and check
from tidb_pipeline.defs.freshness import freshness_state
from tidb_pipeline.engine.holes import overdue
from tidb_pipeline.engine.landing import DEAD_LETTER_TABLE  # the table the built-in loader quarantines into
from tidb_pipeline.defs.tables import TableNames
from tidb_pipeline.replication.checksum import (
    RANGE_KINDS,
    ChecksumColumn,
    checksum_column,
    chunk_count,
    mysql_table,
)
from tidb_pipeline.replication.checksum_chunks import (
    ChunkResult,
    boundaries_sql,
    bucket_chunks,
    checksums_sql,
    compare_chunks,
    parse_checksums,
    range_chunks,
)
from tidb_pipeline.replication.columns import Policy, check_names, kept
from tidb_pipeline.replication.columns import treatment as policy_treatment
from tidb_pipeline.replication.ddl import Statement, TableRef, quote_ident
from tidb_pipeline.replication.holes import ABSENT, Gap
from tidb_pipeline.replication.modes import current_rows_sql
from tidb_pipeline.replication.ticdc_schema import sanitize_name
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.ticdc import TiCDCError, TiCDCResource
from tidb_pipeline.resources.tidb import TiDBResource
from tidb_pipeline.resources.warehouse import Warehouse, is_missing_object

_HEALTHY_STATES = {"normal"}
_BROKEN_STATES = {"failed", "stopped", "error", "removed", "finished"}


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds; the defaults suit a merge every minute."""

    checkpoint_tolerance_s: float = 5.0  # checkpoint lag that still counts as caught up
    changefeed_warn_lag_s: float = 60.0
    changefeed_error_lag_s: float = 900.0
    rows_per_chunk: int = 50_000
    max_chunks: int = 256
    dead_letter_table: str = DEAD_LETTER_TABLE


# --- reading both sides ---------------------------------------------------------------------------------


def _rows(cursor: Any, stmt: Statement) -> list[tuple[Any, ...]]:
    """Rows of a statement on the TiDB side (a pymysql cursor)."""
    cursor.execute(stmt.sql, stmt.params or None)
    return [tuple(r) for r in cursor.fetchall()]


@dataclass(frozen=True)
class Watermark:
    offset: int
    merged_at: dt.datetime | None


def read_watermarks(warehouse: Warehouse | Any, names: TableNames) -> dict[int, Watermark]:
    """Merged watermark per partition for the replica; {} before the first merge."""
    try:
        rows = Warehouse.of(warehouse).execute(Statement(
            f'SELECT "PARTITION", "MERGED_OFFSET", "MERGED_AT" FROM {names.watermarks.sql} WHERE "REPLICA_TABLE" = %s',
            (names.replica.label,),
        ))
    except Exception as exc:  # noqa: BLE001 - no merge has created the table yet
        if is_missing_object(exc):
            return {}
        raise
    return {int(p): Watermark(int(o), at) for p, o, at in rows}


def backlog_per_partition(end_offsets: Mapping[int, int], watermarks: Mapping[int, Watermark]) -> dict[int, int]:
    """Records in Kafka not yet merged: end offset minus the next offset the merge would take."""
    return {p: max(0, end - (watermarks[p].offset + 1 if p in watermarks else 0)) for p, end in sorted(end_offsets.items())}


@dataclass(frozen=True)
class Lag:
    backlog: dict[int, int]
    checkpoint_lag_s: float | None  # None: TiCDC could not say
    note: str = ""

    def behind(self, tolerance_s: float) -> bool:
        return sum(self.backlog.values()) > 0 or self.checkpoint_lag_s is None or self.checkpoint_lag_s > tolerance_s

    def metadata(self) -> dict[str, Any]:
        return {
            "backlog_per_partition": _partitions_text(self.backlog),
            "backlog_records": sum(self.backlog.values()),
            "checkpoint_lag_s": round(self.checkpoint_lag_s, 3) if self.checkpoint_lag_s is not None
            else f"unknown ({self.note})",
        }


def _partitions_text(values: Mapping[int, Any]) -> str:
    return ", ".join(f"p{p}: {v}" for p, v in sorted(values.items())) or "(no partitions)"


def read_lags(
    *, config: PipelineConfig, watermarks: Mapping[str, Mapping[int, Watermark]], kafka: KafkaResource,
    ticdc: TiCDCResource,
) -> dict[str, Lag]:
    """Per topic: the Kafka backlog beyond its merged `watermarks` and TiCDC's checkpoint lag, in one Kafka and
    one TiCDC call for all topics. Call it after the source was read (see the module docstring)."""
    end = kafka.end_offsets(list(watermarks))
    try:
        with ticdc.get_client() as client:
            status = client.get_status(config.source.changefeed_id)
        cp, note = checkpoint_lag_s(status.checkpoint_ts, int(time.time() * 1000)), ""
    except (TiCDCError, OSError) as exc:  # unreachable or unknown changefeed: cannot claim caught up
        cp, note = None, f"TiCDC: {exc}"[:200]
    return {topic: Lag(backlog_per_partition(end.get(topic, {}), wm), cp, note) for topic, wm in watermarks.items()}


def read_lag(
    *, config: PipelineConfig, names: TableNames, watermarks: Mapping[int, Watermark], kafka: KafkaResource,
    ticdc: TiCDCResource,
) -> Lag:
    return read_lags(config=config, watermarks={names.topic: watermarks}, kafka=kafka, ticdc=ticdc)[names.topic]


def lag_aware_result(*, equal: bool, lag: Lag, settings: CheckSettings, what: str, metadata: dict[str, Any]) -> dg.AssetCheckResult:
    """Pass when equal; WARN when the pipeline is behind; ERROR when it is caught up and still differs."""
    metadata = {**metadata, **lag.metadata()}
    if equal:
        return dg.AssetCheckResult(passed=True, metadata=metadata)
    if lag.behind(settings.checkpoint_tolerance_s):
        metadata["verdict"] = f"{what} differ while the pipeline is behind; re-check once caught up"
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)
    metadata["verdict"] = f"{what} differ although every change is merged: the replica is wrong"
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)


def replica_column_types(warehouse: Warehouse | Any, replica: TableRef) -> dict[str, str]:
    info = f"{quote_ident(replica.database)}.information_schema.columns" if replica.database else "information_schema.columns"
    rows = Warehouse.of(warehouse).execute(Statement(
        f"SELECT column_name, data_type FROM {info} WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (replica.schema, replica.name),
    ))
    return {str(n): str(t).upper() for n, t in rows}


def _count(cursor: Any, sql: str) -> int:
    """COUNT(*) on either side: a `Warehouse` or a TiDB cursor."""
    if isinstance(cursor, Warehouse):
        return int(cursor.execute(sql)[0][0])
    cursor.execute(sql)
    return int(cursor.fetchone()[0])


def policy_column(column: ChecksumColumn, policy: Policy | None) -> ChecksumColumn:
    how = "" if policy is None else policy_treatment(policy, column.name)
    return ChecksumColumn(column.name, how) if how else column


def key_of(tidb: TiDBResource, table: TableConfig) -> tuple[str, ...]:
    key = table.key or tidb.handle_key(table.db, table.table)
    if not key:
        raise ValueError(f"{table.db}.{table.table} has no primary or NOT NULL unique key; TiCDC cannot replicate it")
    return key


@dataclass(frozen=True)
class ContentComparison:
    results: tuple[ChunkResult, ...]
    columns: tuple[ChecksumColumn, ...]
    skipped: tuple[str, ...]

    @property
    def differing(self) -> tuple[ChunkResult, ...]:
        return tuple(r for r in self.results if not r.equal)


def compare_content(
    *, tidb_conn: Any, snowflake_conn: Any, table: TableConfig, replica: TableRef, key: Sequence[str],
    source_columns: Sequence[Any], source_rows: int, settings: CheckSettings,
    policy: Policy | None = None, salt: Callable[[], str] | None = None, mode: str = "replica",
) -> ContentComparison:
    """Chunked checksums of the columns both sides have; chunks from TiDB's row-count quantiles.

    Under a column `policy` an excluded column is never read from TiDB, a masked one is compared as NULL (not
    read from TiDB either) and a hashed one by the same salted hash computed in TiDB (`salt()`, asked only then).
    The replica side reads the rows that stand for the source in the table's mode (`modes.current_rows_sql`).
    """
    warehouse = Warehouse.of(snowflake_conn)
    replica_types = replica_column_types(warehouse, replica)
    if policy is not None:
        check_names(policy, f"{table.db}.{table.table}", [c.name for c in source_columns], tuple(key))
    columns = tuple(
        policy_column(checksum_column(c.name, c.data_type, c.column_type, replica_types[c.name]), policy)
        for c in source_columns if c.name in replica_types and (policy is None or kept(policy, c.name))
    )
    skipped = tuple(c.name for c in source_columns if c.name not in replica_types)
    salt_value = salt() if salt is not None and any(c.kind == "hash" for c in columns) else None
    first = next((c for c in columns if c.name == key[0]), None)
    if first is None:
        raise ValueError(f"key column {key[0]!r} of {table.db}.{table.table} is missing from replica {replica.label}")
    wanted = chunk_count(source_rows, settings.rows_per_chunk, settings.max_chunks)
    if first.kind in RANGE_KINDS:
        with tidb_conn.cursor() as cur:
            starts = [r[0] for r in _rows(cur, boundaries_sql(table.db, table.table, first.name, wanted))]
        chunks = range_chunks(first.name, starts)
    else:
        chunks = bucket_chunks(first.name, wanted)
    with tidb_conn.cursor() as cur:
        source = parse_checksums(_rows(cur, checksums_sql("mysql", mysql_table(table.db, table.table), columns, first,
                                                          chunks, salt=salt_value)))
    replica_sums = parse_checksums(warehouse.execute(checksums_sql("snowflake", current_rows_sql(replica, mode), columns,
                                                                   first, chunks)))
    return ContentComparison(compare_chunks(chunks, source, replica_sums), columns, skipped)


# --- landing continuity ----------------------------------------------------------------------------------


def continuity_result(topic: str, gaps: Sequence[Gap], now: dt.datetime, grace_s: float,
                      metadata: dict[str, Any]) -> dg.AssetCheckResult:
    """ERROR when a hole above the watermark is LOST or has waited longer than the grace period; else pass."""
    late = overdue(gaps, now, grace_s)
    open_gaps = [g for g in gaps if g.status != ABSENT]
    metadata = {
        **metadata,
        "hole_grace_seconds": grace_s,
        "holes": [g.describe(topic) for g in open_gaps[:50]] or "(none)",
        "offsets_not_in_kafka": [g.describe(topic) for g in gaps if g.status == ABSENT][:50] or "(none)",
    }
    if late:
        first = late[0]
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata={**metadata, "overdue": [
                g.describe(topic) for g in late[:50]]},
            description=(f"{len(late)} hole(s) hold the merge back past the {grace_s:g} s grace period, first: "
                         f"topic {topic} partition {first.partition} offsets {first.first}..{first.last} "
                         "missing; nothing above them is merged. Re-deliver them (reset the sink's consumer "
                         "group to the first missing offset; the merge dedupes) or resnapshot with the backfill "
                         "job")[:1000],
        )
    return dg.AssetCheckResult(passed=True, metadata=metadata)


def _dead_letters(warehouse: Warehouse, names: TableNames, settings: CheckSettings) -> TableRef | None:
    ref = TableRef(names.control.schema, settings.dead_letter_table, names.control.database)
    try:
        warehouse.execute(Statement(f"SELECT COUNT(*) FROM {ref.sql} WHERE 1 = 0"))
    except Exception as exc:  # noqa: BLE001 - nothing was ever dead-lettered
        if is_missing_object(exc):
            return None
        raise
    return ref


@dataclass(frozen=True)
class Drift:
    problems: list[str]
    notes: list[str]


def schema_differences(tidb: Sequence[str], avro: Sequence[str] | None, replica: Sequence[str]) -> Drift:
    """Column-name differences between the three (types are not compared).

    TiDB and the replica use TiDB's names; `avro` holds TiCDC's field names, which are TiDB's sanitised
    (`Mixed Case` -> `Mixed_Case`), so a TiDB or replica name is compared with a field through `sanitize_name`.
    """
    problems: list[str] = []
    notes: list[str] = []
    if avro is None and replica:
        # A backfilled table nobody has changed since (TPC-C's `item`): TiCDC registers a schema only with the
        # first change record, so the replica, typed from the same TiCDC schema at the snapshot, is compared.
        notes.append("no Avro value schema registered yet: no change record has been written; the replica's "
                     "columns are compared with TiDB's")
        problems += [f"column {c!r} is in TiDB but not in the replica" for c in tidb if c not in replica]
        notes += [f"replica keeps column {c!r} dropped upstream" for c in replica if c not in tidb]
        return Drift(problems, notes)
    by_field = {sanitize_name(c): c for c in tidb}
    if avro is None:
        problems.append("no Avro value schema registered yet: no change record has been written")
        avro = []
    else:
        problems += [f"column {c!r} is in TiDB but no change record carries it yet"
                     for c in tidb if sanitize_name(c) not in avro]
        problems += [f"column {f!r} is in the Avro schema but no longer in TiDB" for f in avro if f not in by_field]
    replica_fields = {sanitize_name(c) for c in replica}
    problems += [f"replica is missing column {by_field.get(f, f)!r} (the next merge adds it)"
                 for f in avro if f not in replica_fields]
    for c in replica:
        source = by_field.get(sanitize_name(c))
        if source is not None and source != c and source not in replica:
            problems.append(f"replica column {c!r} holds TiDB column {source!r} under TiCDC's Avro name; "
                            f"rename it to {source!r} (ALTER TABLE ... RENAME COLUMN)")
    notes += [f"replica keeps column {c!r} dropped upstream"
              for c in replica if sanitize_name(c) not in avro and c not in tidb]
    return Drift(problems, notes)


def freshness_result(
    backlog: Mapping[int, int], watermarks: Mapping[int, Watermark], now: dt.datetime, limits: FreshnessConfig,
    last_materialized: dt.datetime | None = None,
) -> dg.AssetCheckResult:
    """The replica's `FreshnessPolicy` verdict while records wait (`defs/freshness.py`); PASS when none wait.

    Age counts from the replica's last materialization in Dagster (`last_materialized`), as the policy does,
    or from the last merge watermark when Dagster has none. All times naive UTC.
    """
    waiting = sum(backlog.values())
    merged = [w.merged_at for w in watermarks.values() if w.merged_at is not None]
    last = last_materialized or (max(merged) if merged else None)
    metadata: dict[str, Any] = {"backlog_records": waiting, "last_update": last.isoformat() if last else "never",
                                "warn_after_minutes": limits.warn_after_minutes,
                                "fail_after_minutes": limits.fail_after_minutes}
    if waiting == 0:
        return dg.AssetCheckResult(passed=True, metadata={**metadata, "note": "every record in Kafka is merged"})
    if last is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={**metadata, "note": "records wait and the replica was never merged"})
    age = (now - last).total_seconds()
    metadata["seconds_since_update"] = round(age, 1)
    state = freshness_state(age, limits)
    if state == "FAIL":
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)
    if state == "WARN":
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)
    return dg.AssetCheckResult(passed=True, metadata=metadata)


def changefeed_result(state: str, checkpoint_ts: int, now_ms: int, error: str | None,
                      settings: CheckSettings) -> dg.AssetCheckResult:
    lag = checkpoint_lag_s(checkpoint_ts, now_ms)
    metadata: dict[str, Any] = {"state": state, "checkpoint_ts": checkpoint_ts, "checkpoint_lag_s": round(lag, 3)}
    if error:
        metadata["error"] = error
    if state in _BROKEN_STATES:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)
    if state not in _HEALTHY_STATES or lag > settings.changefeed_warn_lag_s:
        severity = dg.AssetCheckSeverity.ERROR if lag > settings.changefeed_error_lag_s else dg.AssetCheckSeverity.WARN
        return dg.AssetCheckResult(passed=False, severity=severity, metadata=metadata)
    return dg.AssetCheckResult(passed=True, metadata=metadata)
