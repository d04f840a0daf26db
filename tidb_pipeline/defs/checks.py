"""Asset checks that prove each replica right, plus the changefeed's health, and the job that runs them.

On every replica `snowflake/<replica_schema>/<TABLE>`:
- `row_count_matches_source`: replica COUNT(*) vs TiDB COUNT(*). Equal passes. A difference is WARN when the
  pipeline is behind (Kafka end offsets beyond the merged watermarks, or the TiCDC checkpoint more than a
  few seconds behind now, or the checkpoint unknown), ERROR when it is caught up and still differs.
- `content_matches_source`: chunked checksums over primary-key ranges on both sides
  (`tidb_pipeline.replication.checksum`), naming the differing ranges; lag-aware like the row count.
- `landing_continuity`: no offset hole above the merged watermark outlasts the grace period
  (`hole_grace_seconds`). Dead-lettered offsets count as present; each hole is decided with Kafka
  (`engine.holes`): offsets Kafka never had are skipped, records Kafka has but that have not landed hold the
  merge back and are ERROR once first seen longer ago than the grace, records deleted from Kafka before
  they landed are ERROR at once. Holes at or below the watermark are cleanup's doing and harmless (the
  merge never passes a hole).
- `no_unconverted_values`: ERROR while the replica holds NULL in place of a value Snowflake could not convert
  (TiDB zero dates and the like; `replication.merge`, "Conversions"), naming the column, the key, the raw text
  and the landing partition/offset of each.
- `schema_drift`: TiDB columns vs the latest Avro value schema vs the replica's columns (WARN).
- `replica_freshness`: while records wait, the replica's freshness policy verdict (`defs/freshness.py`).
On `ticdc/<changefeed>`: `changefeed_healthy`, state normal and checkpoint lag under thresholds.

Read order matters for the lag-aware verdicts: the watermarks are read before the replica is counted, and
Kafka/TiCDC after the source is counted, so a change racing the check can only make it look behind (WARN),
never caught up (a false ERROR).

None of the checks is blocking: replicas are leaves here (nothing downstream to stop), and the checks run in
the reconciliation job, not in the merge job (a blocking check would only fail that run). Make
`row_count`/`content` blocking if assets downstream of a replica are ever added.
"""

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import dagster as dg

from tidb_pipeline.config import FreshnessConfig, PipelineConfig, TableConfig
from tidb_pipeline.engine.changefeed import lag_seconds as checkpoint_lag_s  # one TSO-lag rule for asset and check
from tidb_pipeline.defs.freshness import freshness_state
from tidb_pipeline.engine.holes import overdue, resolve_holes, utc_now
from tidb_pipeline.engine.landing import DEAD_LETTER_TABLE  # the table the built-in loader quarantines into
from tidb_pipeline.engine.replica import ensure_schema, latest_schemas
from tidb_pipeline.defs.tables import TableNames, changefeed_key, column_policy, group_name, hash_salt, table_keys, table_names
from tidb_pipeline.replication.avro_types import EXTENSION_FIELDS, load_schema
from tidb_pipeline.replication.checksum import (
    RANGE_KINDS,
    ChecksumColumn,
    ChunkResult,
    boundaries_sql,
    bucket_chunks,
    checksum_column,
    checksums_sql,
    chunk_count,
    compare_chunks,
    mysql_table,
    parse_checksums,
    range_chunks,
)
from tidb_pipeline.replication.columns import Policy, check_names, kept, kept_names
from tidb_pipeline.replication.columns import treatment as policy_treatment
from tidb_pipeline.replication.ddl import Statement, TableRef, quote_ident
from tidb_pipeline.replication.holes import ABSENT, Gap, OffsetSources, create_offset_gaps_sql
from tidb_pipeline.replication.merge import unconverted_table
from tidb_pipeline.replication.mode_columns import HISTORY, SOFT_DELETE, mode_column_names
from tidb_pipeline.replication.modes import current_rows_sql, mode_counts_sql
from tidb_pipeline.replication.ticdc_schema import sanitize_name
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.ticdc import TiCDCError, TiCDCResource
from tidb_pipeline.resources.tidb import TiDBResource
from tidb_pipeline.resources.warehouse import Warehouse, is_missing_object, warehouse_session

RECONCILE_JOB = "reconcile"
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


def spans_sql(landing: TableRef) -> Statement:
    """Per partition: first and last landed offset, and how many distinct offsets (metadata only)."""
    return Statement(
        'SELECT "RECORD_METADATA":"partition"::int AS p, MIN("RECORD_METADATA":"offset"::int), '
        'MAX("RECORD_METADATA":"offset"::int), COUNT(DISTINCT "RECORD_METADATA":"offset"::int) '
        f"FROM {landing.sql} GROUP BY 1 ORDER BY 1"
    )


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


# --- one check of one replica -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    """What a check needs to know about one replicated table."""

    config: PipelineConfig
    table: TableConfig
    names: TableNames
    settings: CheckSettings

    @property
    def source(self) -> str:
        return f"{self.table.db}.{self.table.table}"


def _session(r: Replica, res: Any) -> AbstractContextManager[Warehouse]:
    """A warehouse session from the `snowflake` resource, with the config's session pins."""
    return warehouse_session(res.snowflake, r.config.snowflake.session)


def mode_metadata(wh: Warehouse, replica: TableRef, mode: str) -> dict[str, Any]:
    """What a check leaves out in the table's mode: soft-deleted rows, or the non-current versions."""
    stmt = mode_counts_sql(replica, mode)
    out: dict[str, Any] = {"mode": mode}
    if stmt is None:
        return out
    row = wh.execute(stmt)[0]
    if mode == SOFT_DELETE:
        out["soft_deleted_rows"] = int(row[0] or 0)
    elif mode == HISTORY:
        out["versions"], out["current_versions"] = int(row[0] or 0), int(row[1] or 0)
    return out


def _row_count(r: Replica, res: Any) -> dg.AssetCheckResult:
    tidb: TiDBResource = res.tidb
    mode = r.table.mode
    with _session(r, res) as wh:
        watermarks = read_watermarks(wh, r.names)
        # In soft_delete and history mode, the rows not deleted / the current versions stand for the source.
        replica_rows = _count(wh, f"SELECT COUNT(*) FROM {current_rows_sql(r.names.replica, mode)}")
        extra = mode_metadata(wh, r.names.replica, mode)
    source_rows = tidb.count_rows(r.table.db, r.table.table)
    lag = read_lag(config=r.config, names=r.names, watermarks=watermarks, kafka=res.kafka, ticdc=res.ticdc)
    return lag_aware_result(equal=source_rows == replica_rows, lag=lag, settings=r.settings, what="row counts",
                            metadata={"source_rows": source_rows, "replica_rows": replica_rows,
                                      "difference": replica_rows - source_rows, **extra})


def _content(r: Replica, res: Any) -> dg.AssetCheckResult:
    tidb: TiDBResource = res.tidb
    key = key_of(tidb, r.table)
    source_columns = tidb.columns(r.table.db, r.table.table)
    with _session(r, res) as sf, tidb.get_connection() as source_conn:
        watermarks = read_watermarks(sf, r.names)
        with source_conn.cursor() as cur:
            source_rows = _count(cur, f"SELECT COUNT(*) FROM {mysql_table(r.table.db, r.table.table)}")
        comparison = compare_content(
            tidb_conn=source_conn, snowflake_conn=sf, table=r.table, replica=r.names.replica, key=key,
            source_columns=source_columns, source_rows=source_rows, settings=r.settings,
            policy=column_policy(r.table), salt=hash_salt(r.table), mode=r.table.mode,
        )
        extra = mode_metadata(sf, r.names.replica, r.table.mode)
    lag = read_lag(config=r.config, names=r.names, watermarks=watermarks, kafka=res.kafka, ticdc=res.ticdc)
    differing = comparison.differing
    return lag_aware_result(equal=not differing, lag=lag, settings=r.settings, what="chunk checksums", metadata={
        "chunks_checked": len(comparison.results),
        "chunks_differing": len(differing),
        "differing_ranges": [c.describe() for c in differing[:50]],
        "columns_compared": len(comparison.columns),
        "columns_not_in_replica": list(comparison.skipped),
        "columns_hashed_compared": [c.name for c in comparison.columns if c.kind == "hash"],
        "columns_masked_compared": [c.name for c in comparison.columns if c.kind == "mask"],
        **extra,
    })


def _continuity(r: Replica, res: Any) -> dg.AssetCheckResult:
    names = r.names
    now = utc_now()
    with _session(r, res) as wh:
        watermarks = read_watermarks(wh, names)
        try:
            spans = {int(p): (int(a), int(b)) for p, a, b, _n in wh.execute(spans_sql(names.landing))}
        except Exception as exc:  # noqa: BLE001 - nothing landed yet
            if not is_missing_object(exc):
                raise
            return dg.AssetCheckResult(passed=True, metadata={"note": f"{names.landing.label} does not exist yet"})
        ensure_schema(wh, names.offset_gaps)  # the check may run before any merge made the control schema
        wh.execute(create_offset_gaps_sql(names.offset_gaps))
        src = OffsetSources(names.landing, names.watermarks, names.replica, names.topic,
                            _dead_letters(wh, names, r.settings), names.offset_gaps)
        gaps = resolve_holes(wh, res.kafka, src, now)
    return continuity_result(names.topic, gaps, now, r.config.hole_grace_seconds, {
        "landed_offsets": _partitions_text({p: f"{a}..{b}" for p, (a, b) in spans.items()}),
        "merged_watermarks": _partitions_text({p: w.offset for p, w in watermarks.items()}),
    })


def _quarantine(r: Replica, res: Any) -> dg.AssetCheckResult:
    names = r.names
    with _session(r, res) as wh:
        dead = _dead_letters(wh, names, r.settings)
        if dead is None:
            return dg.AssetCheckResult(passed=True, metadata={"quarantined": 0})
        rows = wh.execute(Statement(
            f'SELECT "PARTITION", "OFFSET", "ERROR" FROM {dead.sql} WHERE "TOPIC" = %s '
            'ORDER BY "PARTITION", "OFFSET"', (names.topic,)))
    metadata: dict[str, Any] = {
        "quarantined": len(rows),
        "dead_letter_table": dead.label,
        "first_records": [f"p{p}@{o}: {str(e)[:120]}" for p, o, e in rows[:20]],
    }
    if rows:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
                                   description=f"{len(rows)} record(s) of {names.topic} quarantined in {dead.label}")
    return dg.AssetCheckResult(passed=True, metadata=metadata)


def unconverted_values_sql(unconverted: TableRef, replica: TableRef) -> Statement:
    """The replica's unconverted-value records: column, key, raw text, partition, offset."""
    return Statement(
        f'SELECT "COLUMN_NAME", "KEY", "RAW_VALUE", "PARTITION", "OFFSET" FROM {unconverted.sql} '
        'WHERE "REPLICA_TABLE" = %s ORDER BY "COLUMN_NAME", "KEY"', (replica.label,))


def unconverted_result(rows: Sequence[tuple[Any, ...]], replica: TableRef, table: str) -> dg.AssetCheckResult:
    """ERROR naming each value the replica holds as NULL because Snowflake could not convert it."""

    def where(p: Any, o: Any) -> str:
        return "backfill" if p is None else f"p{p}@{o}"

    per_column: dict[str, int] = {}
    for column, *_ in rows:
        per_column[column] = per_column.get(column, 0) + 1
    if not rows:
        return dg.AssetCheckResult(passed=True, metadata={"unconverted_values": 0})
    metadata: dict[str, Any] = {
        "unconverted_values": len(rows),
        "per_column": ", ".join(f"{c}: {n}" for c, n in per_column.items()),
        "values": [f"column {c} key {k}: {v!r} ({where(p, o)})" for c, k, v, p, o in rows[:50]],
    }
    c, k, v, _p, _o = rows[0]
    return dg.AssetCheckResult(
        passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
        description=(f"{len(rows)} value(s) of {table} could not be converted and are NULL in {replica.label}, "
                     f"e.g. column {c} key {k}: {v!r}; fix them in TiDB (the next change of a row replaces its "
                     "record) or accept the NULLs"),
    )


def _unconverted(r: Replica, res: Any) -> dg.AssetCheckResult:
    with res.snowflake.get_connection() as conn:
        try:
            rows = _rows(conn.cursor(), unconverted_values_sql(unconverted_table(r.names.watermarks), r.names.replica))
        except Exception as exc:  # noqa: BLE001 - no merge has created the table yet
            if not is_missing_object(exc):
                raise
            rows = []
    return unconverted_result(rows, r.names.replica, r.source)


def _drift(r: Replica, res: Any) -> dg.AssetCheckResult:
    all_cols = [c.name for c in res.tidb.columns(r.table.db, r.table.table)]
    # Columns the policy leaves out are expected to be missing from the replica.
    tidb_cols = list(kept_names(column_policy(r.table), all_cols))
    left_out = {sanitize_name(c) for c in all_cols if c not in tidb_cols}
    schemas = latest_schemas(res.schema_registry.get_client(), r.names.topic)
    avro_cols = [] if schemas is None else [
        f["name"] for f in load_schema(schemas[1])["fields"] if f["name"] not in EXTENSION_FIELDS | left_out
    ]
    with _session(r, res) as wh:
        # The columns a mode adds (`_DELETED`, `_VALID_FROM`, ...) are the pipeline's own, not drift.
        replica_cols = [c for c in replica_column_types(wh, r.names.replica) 
                        if c not in mode_column_names(r.table.mode)]
    drift = schema_differences(tidb_cols, avro_cols if schemas else None, replica_cols)
    metadata = {"differences": drift.problems, "notes": drift.notes,
                "schema_version": schemas[2] if schemas else "none registered"}
    if drift.problems:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)
    return dg.AssetCheckResult(passed=True, metadata=metadata)


def _freshness(r: Replica, res: Any, instance: dg.DagsterInstance) -> dg.AssetCheckResult:
    with _session(r, res) as wh:
        watermarks = read_watermarks(wh, r.names)
    end = res.kafka.end_offsets([r.names.topic]).get(r.names.topic, {})
    record = instance.get_latest_materialization_event(table_keys(r.config, r.table).replica)
    last = None if record is None else dt.datetime.fromtimestamp(record.timestamp, dt.timezone.utc).replace(tzinfo=None)
    return freshness_result(backlog_per_partition(end, watermarks), watermarks,
                            dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), r.config.freshness_of(r.table), last)


@dataclass(frozen=True)
class CheckKind:
    """One check run on every replica: its name, what it reads, its per-replica description and its body."""

    name: str
    resources: frozenset[str]
    describe: Callable[[Replica], str]
    run: Callable[..., dg.AssetCheckResult]  # (replica, context.resources[, context.instance]) -> result
    needs_instance: bool = False


CHECK_KINDS: tuple[CheckKind, ...] = (
    CheckKind("row_count_matches_source", frozenset({"tidb", "snowflake", "kafka", "ticdc"}),
              lambda r: f"Replica row count equals `SELECT COUNT(*)` of TiDB `{r.source}` (lag-aware).", _row_count),
    CheckKind("content_matches_source", frozenset({"tidb", "snowflake", "kafka", "ticdc"}),
              lambda r: "Chunked checksums over primary-key ranges equal on TiDB and the replica (lag-aware).", _content),
    CheckKind("landing_continuity", frozenset({"snowflake", "kafka"}),
              lambda r: f"No offset hole above the merged watermark of landing table {r.names.landing.label} "
              f"outlasts {r.config.hole_grace_seconds:g} s (offsets Kafka never had are skipped).", _continuity),
    CheckKind("no_quarantined_records", frozenset({"snowflake"}),
              lambda r: f"No record of topic `{r.names.topic}` sits in the dead-letter table (poison records "
              "are quarantined there with their offsets instead of being skipped).", _quarantine),
    CheckKind("no_unconverted_values", frozenset({"snowflake"}),
              lambda r: "No value of the replica is NULL because Snowflake could not convert it (TiDB zero dates "
              "and the like): each one is listed with its column and key.", _unconverted),
    CheckKind("schema_drift", frozenset({"tidb", "schema_registry", "snowflake"}),
              lambda r: "TiDB columns vs the topic's latest Avro value schema vs the replica's columns.", _drift),
    CheckKind("replica_freshness", frozenset({"snowflake", "kafka"}),
              lambda r: "While records wait in Kafka, time since the replica was last materialized, against its "
              "freshness policy's windows.", _freshness, needs_instance=True),
)


def error_result(key: dg.AssetCheckKey, exc: Exception) -> dg.AssetCheckResult:
    """What a check that raised shows: ERROR naming the exception, so the other replicas' results still stand."""
    error = f"{type(exc).__name__}: {exc}"[:1000]
    return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=False,
                               severity=dg.AssetCheckSeverity.ERROR, description=f"the check raised {error}"[:500],
                               metadata={"error": error})


# --- the factories -----------------------------------------------------------------------------------------


def build_kind_checks(
    *, kind: CheckKind, replicas: Sequence[Replica], name: str
) -> dg.AssetChecksDefinition:
    """One op running check `kind` on each selected replica; per-replica check keys as with one check each.

    One definition per kind instead of one per replica keeps loading 500 tables fast; `can_subset` keeps
    running a single replica's check (UI, job selection) from touching the others.
    """
    by_key = {dg.AssetCheckKey(table_keys(r.config, r.table).replica, kind.name): r for r in replicas}
    specs = [dg.AssetCheckSpec(k.name, asset=k.asset_key, description=kind.describe(r), blocking=False)
             for k, r in by_key.items()]

    @dg.multi_asset_check(name=name, specs=specs, can_subset=True, required_resource_keys=set(kind.resources),
                          description=f"`{kind.name}` on each selected replica of {len(specs)}.")
    def _checks(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        selected = context.selected_asset_check_keys
        for key, replica in by_key.items():
            if key not in selected:
                continue
            try:
                r = kind.run(replica, context.resources, context.instance) if kind.needs_instance \
                    else kind.run(replica, context.resources)
            except Exception as exc:  # noqa: BLE001 - one replica's failure must not hide the others' results
                context.log.exception(f"{kind.name} on {key.asset_key.to_user_string()} raised")
                yield error_result(key, exc)
                continue
            yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=r.passed,
                                      severity=r.severity, metadata=r.metadata, description=r.description)

    return _checks


def build_replica_checks(
    *, config: PipelineConfig, tables: Sequence[TableConfig], settings: CheckSettings = CheckSettings(), suffix: str
) -> list[dg.AssetChecksDefinition]:
    """The checks of `CHECK_KINDS` on each table's replica, one definition per kind (op `<kind>_<suffix>`)."""
    replicas = [Replica(config, t, table_names(config, t), settings) for t in tables]
    return [build_kind_checks(kind=k, replicas=replicas, name=f"{k.name}_{suffix}") for k in CHECK_KINDS]


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
    """The changefeed's check, and per table group one definition per replica check kind."""
    return [build_changefeed_check(config=config, settings=settings),
            *(c for tables in config.groups.values()
              for c in build_replica_checks(config=config, tables=tables, settings=settings,
                                            suffix=group_name(tables[0])))]


def build_reconcile_job(*, checks: Sequence[dg.AssetChecksDefinition]) -> "dg.UnresolvedAssetJobDefinition":
    return dg.define_asset_job(
        RECONCILE_JOB, selection=dg.AssetSelection.checks(*checks),
        description="Prove the replicas right: row counts, chunked checksums, continuity, drift, freshness, changefeed.",
    )
