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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import dagster as dg

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.engine.holes import resolve_holes, utc_now
from tidb_pipeline.engine.replica import ensure_schema, latest_schemas
from tidb_pipeline.defs.tables import TableNames, changefeed_key, column_policy, group_name, hash_salt, table_keys, table_names
from tidb_pipeline.replication.avro_types import EXTENSION_FIELDS, load_schema
from tidb_pipeline.replication.checksum import mysql_table
from tidb_pipeline.replication.columns import kept_names
from tidb_pipeline.replication.ddl import Statement, TableRef
from tidb_pipeline.replication.holes import OffsetSources, create_offset_gaps_sql, unmerged_tops_sql
from tidb_pipeline.replication.merge import unconverted_table
from tidb_pipeline.replication.pending import landed_bounds_sql, parse_bounds
from tidb_pipeline.replication.mode_columns import HISTORY, SOFT_DELETE, mode_column_names
from tidb_pipeline.replication.modes import current_rows_sql, mode_counts_sql
from tidb_pipeline.replication.ticdc_schema import sanitize_name
from tidb_pipeline.resources.ticdc import TiCDCError, TiCDCResource
from tidb_pipeline.resources.tidb import TiDBResource
from tidb_pipeline.resources.warehouse import Warehouse, is_missing_object, warehouse_session
from tidb_pipeline.defs.check_results import (
    CheckSettings,
    _count,
    _dead_letters,
    _partitions_text,
    _rows,
    backlog_per_partition,
    changefeed_result,
    compare_content,
    continuity_result,
    freshness_result,
    key_of,
    lag_aware_result,
    read_lag,
    read_watermarks,
    replica_column_types,
    schema_differences,
)

RECONCILE_JOB = "reconcile"


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
    """Holes above the watermarks, reading only the unmerged range of the landing table: in built-in mode the
    landed-offsets table bounds it (as for the merge), otherwise the rows above the watermarks are read."""
    names = r.names
    now = utc_now()
    with _session(r, res) as wh:
        watermarks = read_watermarks(wh, names)
        merged = {p: w.offset for p, w in watermarks.items()}
        landed = _landed_offsets(wh, names)
        bounds = None if landed is None else parse_bounds(landed)
        try:
            if bounds is None:  # connector mode, or a landed-offsets table not seeded yet
                tops = {int(p): int(o) for p, o in wh.execute(unmerged_tops_sql(names.landing, merged))}
                through = {p: max(merged.get(p, -1), tops.get(p, -1)) for p in sorted({*merged, *tops})}
            else:
                through = {int(p): int(last) for p, _w, last in landed or ()}
            ensure_schema(wh, names.offset_gaps)  # the check may run before any merge made the control schema
            wh.execute(create_offset_gaps_sql(names.offset_gaps))
            src = OffsetSources(names.landing, names.watermarks, names.replica, names.topic,
                                _dead_letters(wh, names, r.settings), names.offset_gaps)
            gaps = resolve_holes(wh, res.kafka, src, now, bounds, above=merged if bounds is None else None)
        except Exception as exc:  # noqa: BLE001 - nothing landed yet
            if not is_missing_object(exc):
                raise
            return dg.AssetCheckResult(passed=True, metadata={"note": f"{names.landing.label} does not exist yet"})
    return continuity_result(names.topic, gaps, now, r.config.hole_grace_seconds, {
        "landed_through": _partitions_text(through),
        "merged_watermarks": _partitions_text(merged),
    })


def _landed_offsets(wh: Warehouse, names: TableNames) -> list[tuple[Any, ...]] | None:
    """The landed-offsets table's (partition, merged watermark, highest landed) rows; None in connector mode or
    before the built-in loader created it."""
    if names.landed_offsets is None:
        return None
    try:
        return [tuple(row) for row in wh.execute(landed_bounds_sql(names.landed_offsets, names.watermarks,
                                                                   names.replica, names.landing, names.topic))]
    except Exception as exc:  # noqa: BLE001 - no load created it yet
        if not is_missing_object(exc):
            raise
        return None


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
