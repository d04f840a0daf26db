"""Asset checks that prove each replica right, plus the changefeed's health, and the job that runs them.

On every replica `snowflake/<replica_schema>/<TABLE>`:
- `row_count_matches_source`: replica COUNT(*) vs TiDB COUNT(*). Equal passes. A difference is WARN when the
  pipeline is behind (Kafka end offsets beyond the merged watermarks, or the TiCDC checkpoint more than a
  few seconds behind now, or the checkpoint unknown), ERROR when it is caught up and still differs.
- `content_matches_source`: chunked checksums over primary-key ranges on both sides
  (`tidb_pipeline.replication.checksum`), naming the differing ranges; lag-aware like the row count.
- `landing_continuity`: no offset holes per partition in the landing table (dead-lettered offsets count as
  present). Cleanup deletes merged rows oldest first, so the rows left start at a floor; a hole above that
  floor, or between the merged watermark and the first landed offset above it, is ERROR.
- `schema_drift`: TiDB columns vs the latest Avro value schema vs the replica's columns (WARN).
- `replica_freshness`: time since the last merge while records wait (WARN / ERROR over thresholds).
On `ticdc/<changefeed>`: `changefeed_healthy`, state normal and checkpoint lag under thresholds.

Read order matters for the lag-aware verdicts: the watermarks are read before the replica is counted, and
Kafka/TiCDC after the source is counted, so a change racing the check can only make it look behind (WARN),
never caught up (a false ERROR).

None of the checks is blocking: replicas are leaves here (nothing downstream to stop), and the checks run in
the reconciliation job, not in the merge job (a blocking check would only fail that run). Make
`row_count`/`content` blocking if assets downstream of a replica are ever added.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.changefeed import lag_seconds as checkpoint_lag_s  # one TSO-lag rule for asset and check
from tidb_pipeline.defs.landing import DEAD_LETTER_TABLE  # the table the built-in loader quarantines into
from tidb_pipeline.defs.replica import latest_schemas
from tidb_pipeline.defs.tables import TableNames, changefeed_key, table_keys, table_names
from tidb_pipeline.replication.avro_types import EXTENSION_FIELDS, load_schema
from tidb_pipeline.replication.checksum import (
    RANGE_KINDS,
    ChecksumColumn,
    ChunkResult,
    boundaries_sql,
    bucket_chunks,
    checksum_column,
    checksums_sql,
    compare_chunks,
    mysql_table,
    parse_checksums,
    range_chunks,
)
from tidb_pipeline.replication.ddl import Statement, TableRef, quote_ident
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import TiCDCError, TiCDCResource
from tidb_pipeline.resources.tidb import TiDBResource

RECONCILE_JOB = "reconcile"
_HEALTHY_STATES = {"normal"}
_BROKEN_STATES = {"failed", "stopped", "error", "removed", "finished"}


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds; the defaults suit a merge every minute."""

    checkpoint_tolerance_s: float = 5.0  # checkpoint lag that still counts as caught up
    changefeed_warn_lag_s: float = 60.0
    changefeed_error_lag_s: float = 900.0
    freshness_warn_s: float = 600.0
    freshness_error_s: float = 3600.0
    rows_per_chunk: int = 50_000
    max_chunks: int = 256
    dead_letter_table: str = DEAD_LETTER_TABLE


# --- reading both sides ---------------------------------------------------------------------------------


def _rows(cursor: Any, stmt: Statement) -> list[tuple[Any, ...]]:
    cursor.execute(stmt.sql, stmt.params or None)
    return [tuple(r) for r in cursor.fetchall()]


def _missing_table(exc: Exception) -> bool:
    text = str(exc).lower()
    return "does not exist" in text or "not found" in text


@dataclass(frozen=True)
class Watermark:
    offset: int
    merged_at: dt.datetime | None


def read_watermarks(cursor: Any, names: TableNames) -> dict[int, Watermark]:
    """Merged watermark per partition for the replica; {} before the first merge."""
    try:
        rows = _rows(cursor, Statement(
            f'SELECT "PARTITION", "MERGED_OFFSET", "MERGED_AT" FROM {names.watermarks.sql} WHERE "REPLICA_TABLE" = %s',
            (names.replica.label,),
        ))
    except Exception as exc:  # noqa: BLE001 - no merge has created the table yet
        if _missing_table(exc):
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


def read_lag(
    *, config: PipelineConfig, names: TableNames, watermarks: Mapping[int, Watermark], kafka: KafkaResource,
    ticdc: TiCDCResource,
) -> Lag:
    end = kafka.end_offsets([names.topic]).get(names.topic, {})
    backlog = backlog_per_partition(end, watermarks)
    try:
        with ticdc.get_client() as client:
            status = client.get_status(config.source.changefeed_id)
    except (TiCDCError, OSError) as exc:  # unreachable or unknown changefeed: cannot claim caught up
        return Lag(backlog, None, f"TiCDC: {exc}"[:200])
    return Lag(backlog, checkpoint_lag_s(status.checkpoint_ts, int(time.time() * 1000)))


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


def replica_column_types(cursor: Any, replica: TableRef) -> dict[str, str]:
    info = f"{quote_ident(replica.database)}.information_schema.columns" if replica.database else "information_schema.columns"
    rows = _rows(cursor, Statement(
        f"SELECT column_name, data_type FROM {info} WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (replica.schema, replica.name),
    ))
    return {str(n): str(t).upper() for n, t in rows}


def _count(cursor: Any, sql: str) -> int:
    cursor.execute(sql)
    return int(cursor.fetchone()[0])


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
) -> ContentComparison:
    """Chunked checksums of the columns both sides have; chunks from TiDB's row-count quantiles."""
    replica_types = replica_column_types(snowflake_conn.cursor(), replica)
    columns = tuple(
        checksum_column(c.name, c.data_type, c.column_type, replica_types[c.name])
        for c in source_columns if c.name in replica_types
    )
    skipped = tuple(c.name for c in source_columns if c.name not in replica_types)
    first = next((c for c in columns if c.name == key[0]), None)
    if first is None:
        raise ValueError(f"key column {key[0]!r} of {table.db}.{table.table} is missing from replica {replica.label}")
    wanted = max(1, min(settings.max_chunks, -(-source_rows // settings.rows_per_chunk)))
    if first.kind in RANGE_KINDS:
        with tidb_conn.cursor() as cur:
            starts = [r[0] for r in _rows(cur, boundaries_sql(table.db, table.table, first.name, wanted))]
        chunks = range_chunks(first.name, starts)
    else:
        chunks = bucket_chunks(first.name, wanted)
    with tidb_conn.cursor() as cur:
        source = parse_checksums(_rows(cur, checksums_sql("mysql", mysql_table(table.db, table.table), columns, first, chunks)))
    replica_sums = parse_checksums(
        _rows(snowflake_conn.cursor(), checksums_sql("snowflake", replica.sql, columns, first, chunks))
    )
    return ContentComparison(compare_chunks(chunks, source, replica_sums), columns, skipped)


# --- landing continuity ----------------------------------------------------------------------------------


def continuity_sql(landing: TableRef, dead_letters: TableRef | None, topic: str) -> tuple[Statement, Statement]:
    """(holes: partition, first and last missing offset; spans: partition, first, last, distinct offsets)."""
    offsets = (
        f'SELECT "RECORD_METADATA":"partition"::int AS p, "RECORD_METADATA":"offset"::int AS o FROM {landing.sql}'
    )
    params: tuple[Any, ...] = ()
    if dead_letters is not None:
        offsets += f' UNION SELECT "PARTITION"::int, "OFFSET"::int FROM {dead_letters.sql} WHERE "TOPIC" = %s'
        params = (topic,)
    return Statement(
        f"SELECT x.p, x.prev + 1, x.o - 1 FROM (\n"
        f"  SELECT d.p, d.o, LAG(d.o) OVER (PARTITION BY d.p ORDER BY d.o) AS prev FROM ({offsets}) d\n"
        f") x WHERE x.o > x.prev + 1 ORDER BY 1, 2",
        params,
    ), Statement(
        f"SELECT d.p, MIN(d.o), MAX(d.o), COUNT(DISTINCT d.o) FROM ({offsets}) d GROUP BY d.p ORDER BY 1",
        params,
    )


@dataclass(frozen=True)
class Gap:
    partition: int
    first: int
    last: int

    def __str__(self) -> str:
        return f"partition {self.partition}: offsets {self.first}..{self.last} missing"


def find_gaps(
    holes: Sequence[tuple[int, int, int]], spans: Mapping[int, tuple[int, int]], watermarks: Mapping[int, Watermark]
) -> list[Gap]:
    """Holes between present offsets, plus a hole between the watermark and the first offset above it."""
    gaps = [Gap(int(p), int(a), int(b)) for p, a, b in holes]
    for p, (first, _last) in spans.items():
        wm = watermarks.get(p)
        if wm is not None and first > wm.offset + 1:
            gaps.append(Gap(p, wm.offset + 1, first - 1))
    return sorted(gaps, key=lambda g: (g.partition, g.first))


def _dead_letters(cursor: Any, names: TableNames, settings: CheckSettings) -> TableRef | None:
    ref = TableRef(names.control.schema, settings.dead_letter_table, names.control.database)
    try:
        _rows(cursor, Statement(f"SELECT COUNT(*) FROM {ref.sql} WHERE 1 = 0"))
    except Exception as exc:  # noqa: BLE001 - nothing was ever dead-lettered
        if _missing_table(exc):
            return None
        raise
    return ref


# --- the factories -----------------------------------------------------------------------------------------


def build_table_checks(
    *, config: PipelineConfig, table: TableConfig, settings: CheckSettings = CheckSettings()
) -> list[dg.AssetChecksDefinition]:
    """The six checks on one table's replica asset."""
    keys, names = table_keys(config, table), table_names(config, table)
    source = f"{table.db}.{table.table}"

    @dg.asset_check(asset=keys.replica, name="row_count_matches_source", blocking=False,
                    description=f"Replica row count equals `SELECT COUNT(*)` of TiDB `{source}` (lag-aware).")
    def _row_count(tidb: TiDBResource, snowflake: SnowflakeResource, kafka: KafkaResource,
                   ticdc: TiCDCResource) -> dg.AssetCheckResult:
        with snowflake.get_connection() as conn:
            cur = conn.cursor()
            watermarks = read_watermarks(cur, names)
            replica_rows = _count(cur, f"SELECT COUNT(*) FROM {names.replica.sql}")
        source_rows = tidb.count_rows(table.db, table.table)
        lag = read_lag(config=config, names=names, watermarks=watermarks, kafka=kafka, ticdc=ticdc)
        return lag_aware_result(equal=source_rows == replica_rows, lag=lag, settings=settings, what="row counts",
                                metadata={"source_rows": source_rows, "replica_rows": replica_rows,
                                          "difference": replica_rows - source_rows})

    @dg.asset_check(asset=keys.replica, name="content_matches_source", blocking=False,
                    description="Chunked checksums over primary-key ranges equal on TiDB and the replica (lag-aware).")
    def _content(tidb: TiDBResource, snowflake: SnowflakeResource, kafka: KafkaResource,
                 ticdc: TiCDCResource) -> dg.AssetCheckResult:
        key = key_of(tidb, table)
        source_columns = tidb.columns(table.db, table.table)
        with snowflake.get_connection() as sf, tidb.get_connection() as source_conn:
            watermarks = read_watermarks(sf.cursor(), names)
            with source_conn.cursor() as cur:
                source_rows = _count(cur, f"SELECT COUNT(*) FROM {mysql_table(table.db, table.table)}")
            comparison = compare_content(
                tidb_conn=source_conn, snowflake_conn=sf, table=table, replica=names.replica, key=key,
                source_columns=source_columns, source_rows=source_rows, settings=settings,
            )
        lag = read_lag(config=config, names=names, watermarks=watermarks, kafka=kafka, ticdc=ticdc)
        differing = comparison.differing
        return lag_aware_result(equal=not differing, lag=lag, settings=settings, what="chunk checksums", metadata={
            "chunks_checked": len(comparison.results),
            "chunks_differing": len(differing),
            "differing_ranges": [r.describe() for r in differing[:50]],
            "columns_compared": len(comparison.columns),
            "columns_not_in_replica": list(comparison.skipped),
        })

    @dg.asset_check(asset=keys.replica, name="landing_continuity", blocking=False,
                    description=f"No offset gaps per partition in landing table {names.landing.label}.")
    def _continuity(snowflake: SnowflakeResource) -> dg.AssetCheckResult:
        with snowflake.get_connection() as conn:
            cur = conn.cursor()
            watermarks = read_watermarks(cur, names)
            holes_stmt, spans_stmt = continuity_sql(names.landing, _dead_letters(cur, names, settings), names.topic)
            try:
                holes = _rows(cur, holes_stmt)
                spans = {int(p): (int(a), int(b)) for p, a, b, _n in _rows(cur, spans_stmt)}
            except Exception as exc:  # noqa: BLE001 - nothing landed yet
                if not _missing_table(exc):
                    raise
                return dg.AssetCheckResult(passed=True, metadata={"note": f"{names.landing.label} does not exist yet"})
        gaps = find_gaps(holes, spans, watermarks)
        metadata = {
            "landed_offsets": _partitions_text({p: f"{a}..{b}" for p, (a, b) in spans.items()}),
            "merged_watermarks": _partitions_text({p: w.offset for p, w in watermarks.items()}),
            "gaps": [str(g) for g in gaps[:50]],
        }
        if gaps:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)
        return dg.AssetCheckResult(passed=True, metadata=metadata)

    @dg.asset_check(asset=keys.replica, name="no_quarantined_records", blocking=False,
                    description=f"No record of topic `{names.topic}` sits in the dead-letter table (poison records "
                    "are quarantined there with their offsets instead of being skipped).")
    def _quarantine(snowflake: SnowflakeResource) -> dg.AssetCheckResult:
        with snowflake.get_connection() as conn:
            cur = conn.cursor()
            dead = _dead_letters(cur, names, settings)
            if dead is None:
                return dg.AssetCheckResult(passed=True, metadata={"quarantined": 0})
            rows = _rows(cur, Statement(
                f'SELECT "PARTITION", "OFFSET", "ERROR" FROM {dead.sql} WHERE "TOPIC" = %s '
                'ORDER BY "PARTITION", "OFFSET"', (names.topic,)))
        metadata = {
            "quarantined": len(rows),
            "dead_letter_table": dead.label,
            "first_records": [f"p{p}@{o}: {str(e)[:120]}" for p, o, e in rows[:20]],
        }
        if rows:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
                                       description=f"{len(rows)} record(s) of {names.topic} quarantined in {dead.label}")
        return dg.AssetCheckResult(passed=True, metadata=metadata)

    @dg.asset_check(asset=keys.replica, name="schema_drift", blocking=False,
                    description="TiDB columns vs the topic's latest Avro value schema vs the replica's columns.")
    def _drift(tidb: TiDBResource, schema_registry: SchemaRegistryResource,
               snowflake: SnowflakeResource) -> dg.AssetCheckResult:
        tidb_cols = [c.name for c in tidb.columns(table.db, table.table)]
        schemas = latest_schemas(schema_registry.get_client(), names.topic)
        avro_cols = [] if schemas is None else [
            f["name"] for f in load_schema(schemas[1])["fields"] if f["name"] not in EXTENSION_FIELDS
        ]
        with snowflake.get_connection() as conn:
            replica_cols = list(replica_column_types(conn.cursor(), names.replica))
        drift = schema_differences(tidb_cols, avro_cols if schemas else None, replica_cols)
        metadata = {"differences": drift.problems, "notes": drift.notes,
                    "schema_version": schemas[2] if schemas else "none registered"}
        if drift.problems:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)
        return dg.AssetCheckResult(passed=True, metadata=metadata)

    @dg.asset_check(asset=keys.replica, name="replica_freshness", blocking=False,
                    description="Time since the last merge while records wait in Kafka.")
    def _freshness(snowflake: SnowflakeResource, kafka: KafkaResource) -> dg.AssetCheckResult:
        with snowflake.get_connection() as conn:
            watermarks = read_watermarks(conn.cursor(), names)
        end = kafka.end_offsets([names.topic]).get(names.topic, {})
        return freshness_result(backlog_per_partition(end, watermarks), watermarks,
                                dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), settings)

    return [_row_count, _content, _continuity, _quarantine, _drift, _freshness]


@dataclass(frozen=True)
class Drift:
    problems: list[str]
    notes: list[str]


def schema_differences(tidb: Sequence[str], avro: Sequence[str] | None, replica: Sequence[str]) -> Drift:
    """Column-name differences between the three (names compared exactly; types are not compared)."""
    problems: list[str] = []
    notes: list[str] = []
    if avro is None:
        problems.append("no Avro value schema registered yet: no change record has been written")
        avro = []
    else:
        problems += [f"column {c!r} is in TiDB but no change record carries it yet" for c in tidb if c not in avro]
        problems += [f"column {c!r} is in the Avro schema but no longer in TiDB" for c in avro if c not in tidb]
    problems += [f"replica is missing column {c!r} (the next merge adds it)" for c in avro if c not in replica]
    notes += [f"replica keeps column {c!r} dropped upstream" for c in replica if c not in avro and c not in tidb]
    return Drift(problems, notes)


def freshness_result(
    backlog: Mapping[int, int], watermarks: Mapping[int, Watermark], now: dt.datetime, settings: CheckSettings
) -> dg.AssetCheckResult:
    waiting = sum(backlog.values())
    merged = [w.merged_at for w in watermarks.values() if w.merged_at is not None]
    last = max(merged) if merged else None
    metadata: dict[str, Any] = {"backlog_records": waiting, "last_merge": last.isoformat() if last else "never"}
    if waiting == 0:
        return dg.AssetCheckResult(passed=True, metadata={**metadata, "note": "every record in Kafka is merged"})
    if last is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={**metadata, "note": "records wait and the replica was never merged"})
    age = (now - last).total_seconds()
    metadata["seconds_since_merge"] = round(age, 1)
    if age > settings.freshness_error_s:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)
    if age > settings.freshness_warn_s:
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


def build_changefeed_check(*, config: PipelineConfig, settings: CheckSettings = CheckSettings()) -> dg.AssetChecksDefinition:
    changefeed_id = config.source.changefeed_id

    @dg.asset_check(asset=changefeed_key(config), name="changefeed_healthy", blocking=False,
                    description=f"TiCDC changefeed `{changefeed_id}` is normal and its checkpoint is recent.")
    def _changefeed(ticdc: TiCDCResource) -> dg.AssetCheckResult:
        try:
            with ticdc.get_client() as client:
                status = client.get_status(changefeed_id)
        except TiCDCError as exc:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                       metadata={"state": "unknown", "error": str(exc)[:500]})
        error = status.last_error.message if status.last_error else None
        return changefeed_result(status.state, status.checkpoint_ts, int(time.time() * 1000), error, settings)

    return _changefeed


def build_all_checks(*, config: PipelineConfig, settings: CheckSettings = CheckSettings()) -> list[dg.AssetChecksDefinition]:
    return [build_changefeed_check(config=config, settings=settings),
            *(c for t in config.tables for c in build_table_checks(config=config, table=t, settings=settings))]


def build_reconcile_job(*, checks: Sequence[dg.AssetChecksDefinition]) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        RECONCILE_JOB, selection=dg.AssetSelection.checks(*checks),
        description="Prove the replicas right: row counts, chunked checksums, continuity, drift, freshness, changefeed.",
    )


def build_reconcile_schedule(*, config: PipelineConfig) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"{RECONCILE_JOB}_schedule", job_name=RECONCILE_JOB, cron_schedule=config.reconcile_schedule.cron,
        default_status=dg.DefaultScheduleStatus.RUNNING if config.reconcile_schedule.enabled
        else dg.DefaultScheduleStatus.STOPPED,
    )
