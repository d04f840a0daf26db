"""Row-count and content checks on the SQL Server tables, as the Snowflake replicas have them.

On every `sqlserver/<database>/<topic>` asset (written by the built-in applier or by the SQL Server Sink;
the table is the same), when `sqlserver.enabled`:
- `row_count_matches_source`: target COUNT(*) vs TiDB COUNT(*).
- `content_matches_source`: chunked checksums over primary-key ranges (or key hash buckets), computed in the
  target database with its dialect's SQL (`replication.checksum`, dialects `mssql` and `postgresql`) and
  in TiDB, naming the ranges that differ.
Both are lag-aware with the Snowflake checks' rule (`defs.check_results.lag_aware_result`): equal passes; a
difference is WARN while the pipeline is behind, ERROR once it is caught up. "Behind" is TiCDC's checkpoint
(as for Snowflake) plus Kafka records not yet in the table: for the built-in applier, the topic's end
offsets beyond the next offsets it stored in its offsets table (written in the same transaction as the
rows); for the SQL Server Sink, beyond its consumer group's committed offsets (`connect-<sink name>`, the
self-managed worker's group). A managed sink's group is `connect-lcc-<id>`, so it has no offsets under
that name: the backlog is then reported as unknown and a difference is at most WARN, never a false ERROR.

Read order, as for Snowflake: stored/committed offsets before the target is read, Kafka and TiCDC after
every source table is read, so a change racing the check can only make it look behind. Kafka and TiCDC
are read once per check run for all selected tables.

Each check kind is one `multi_asset_check` over every table (definitions load in constant time whatever
the table count); a table whose check cannot run gets an ERROR result naming the cause, the others still run.
"""

# No `from __future__ import annotations`: Dagster reads the check functions' annotations at runtime.
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import sqlalchemy as sa
from confluent_kafka import ConsumerGroupTopicPartitions

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.check_results import (
    CheckSettings,
    ContentComparison,
    Lag,
    Watermark,
    policy_column,
    key_of,
    lag_aware_result,
    read_lags,
)
from tidb_pipeline.defs.checks import error_result
from tidb_pipeline.defs.sqlserver_assets import sqlserver_key
from tidb_pipeline.defs.tables import hash_salt
from tidb_pipeline.replication.columns import kept
from tidb_pipeline.replication import checksum as ck
from tidb_pipeline.replication import checksum_chunks as ckc
from tidb_pipeline.replication import sqlserver as sql
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.sqlserver import SqlServerResource
from tidb_pipeline.resources.ticdc import TiCDCResource
from tidb_pipeline.resources.tidb import SourceColumn, TiDBResource

ROW_COUNT_CHECK = "row_count_matches_source"
CONTENT_CHECK = "content_matches_source"


@dataclass(frozen=True)
class TargetLag(Lag):
    """`Lag` whose Kafka backlog may be unknown (a sink's consumer group without committed offsets)."""

    backlog_note: str | None = None  # set: the backlog is unknown, for this reason

    def behind(self, tolerance_s: float) -> bool:
        return self.backlog_note is not None or super().behind(tolerance_s)

    def metadata(self) -> dict[str, Any]:
        out = super().metadata()
        if self.backlog_note is not None:
            out["backlog_per_partition"] = out["backlog_records"] = f"unknown ({self.backlog_note})"
        return out


@dataclass(frozen=True)
class _Target:
    table: TableConfig
    topic: str
    ref: sql.TargetTable  # as the applier names it (offsets rows carry its label)


# --- reading the target -----------------------------------------------------------------------------------


def _default_schema(conn: sa.Connection, schema: str | None) -> str:
    return schema or str(conn.dialect.default_schema_name or "")


def target_exists(conn: sa.Connection, ref: sql.TargetTable) -> bool:
    return sa.inspect(conn).has_table(ref.name, schema=ref.schema)


def target_column_types(conn: sa.Connection, ref: sql.TargetTable) -> dict[str, str]:
    """Column name -> information_schema DATA_TYPE (lower case); {} when the table does not exist."""
    rows = conn.execute(sa.text(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = :s AND table_name = :t "
        "ORDER BY ordinal_position"
    ), {"s": _default_schema(conn, ref.schema), "t": ref.name})
    return {str(n): str(t).lower() for n, t in rows}


def applier_offsets(conn: sa.Connection, dialect: sql.Dialect, target: _Target) -> dict[int, Watermark]:
    """The built-in applier's stored next offsets as merged watermarks (next - 1); {} before its first run."""
    offsets = sql.TargetTable(sql.OFFSETS_TABLE, target.ref.schema)
    if not target_exists(conn, offsets):
        return {}
    rows = conn.execute(sa.text(sql.select_offsets_sql(offsets, dialect)),
                        {"table_name": target.ref.label, "topic": target.topic})
    return {int(p): Watermark(int(o) - 1, None) for p, o in rows}


def sink_group(config: PipelineConfig) -> str:
    """The SQL Server Sink's consumer group on a self-managed Connect worker."""
    return f"connect-{config.connectors.sqlserver_sink_name}"


def group_offsets(kafka: KafkaResource, group: str, topics: Sequence[str]) -> dict[str, dict[int, Watermark]]:
    """Committed offsets of `group` per topic as watermarks (committed - 1); topics without any are absent."""
    admin = kafka.admin()  # kept referenced until the future resolves
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                               request_timeout=kafka.request_timeout_s)[group]
    wanted, out = set(topics), dict[str, dict[int, Watermark]]()
    for tp in future.result(timeout=kafka.request_timeout_s + 5).topic_partitions or []:
        if tp.topic in wanted and tp.offset >= 0:
            out.setdefault(tp.topic, {})[tp.partition] = Watermark(tp.offset - 1, None)
    return out


def read_target_lags(
    *, config: PipelineConfig, watermarks: Mapping[str, Mapping[int, Watermark] | None], kafka: KafkaResource,
    ticdc: TiCDCResource, unknown_note: str = "",
) -> dict[str, TargetLag]:
    """`check_results.read_lags`, where a topic without watermarks (None) has an unknown backlog for `unknown_note`."""
    lags = read_lags(config=config, watermarks={t: wm or {} for t, wm in watermarks.items()}, kafka=kafka,
                        ticdc=ticdc)
    return {topic: TargetLag(lag.backlog, lag.checkpoint_lag_s, lag.note, None if watermarks[topic] is not None
                             else unknown_note) for topic, lag in lags.items()}


# --- content --------------------------------------------------------------------------------------------


def compare_target_content(
    *, tidb_conn: Any, target_conn: sa.Connection, table: TableConfig, ref: sql.TargetTable, key: Sequence[str],
    source_columns: Sequence[SourceColumn], source_rows: int, settings: CheckSettings,
) -> ContentComparison:
    """Chunked checksums of the columns both sides have, TiDB vs the SQL target (no table: every chunk empty)."""
    dialect = sql.check_dialect(target_conn.dialect.name)
    types = target_column_types(target_conn, ref)
    exists = bool(types)
    if not exists:  # not created yet: the source's chunks are compared against nothing
        types = {c.name: "" for c in source_columns}
    # The column policy as the applier follows it (`replication.columns`; `check_results.compare_content` for Snowflake).
    policy = table.column_policy
    columns = tuple(policy_column(ck.target_checksum_column(c.name, c.data_type, c.column_type, types[c.name]), policy)
                    for c in source_columns if c.name in types and (policy is None or kept(policy, c.name)))
    skipped = tuple(c.name for c in source_columns if c.name not in types)
    salt = hash_salt(table)() if any(c.kind == "hash" for c in columns) else None
    first = next((c for c in columns if c.name == key[0]), None)
    if first is None:
        raise ValueError(f"key column {key[0]!r} of {table.db}.{table.table} is missing from target table {ref.label}")
    wanted = ck.chunk_count(source_rows, settings.rows_per_chunk, settings.max_chunks)
    if exists and ck.target_range_splittable(first, types[first.name]):
        with tidb_conn.cursor() as cur:
            stmt = ckc.boundaries_sql(table.db, table.table, first.name, wanted)
            cur.execute(stmt.sql, stmt.params)
            chunks = ckc.range_chunks(first.name, [r[0] for r in cur.fetchall()])
    else:
        chunks = ckc.bucket_chunks(first.name, wanted)
    with tidb_conn.cursor() as cur:
        stmt = ckc.checksums_sql("mysql", ck.mysql_table(table.db, table.table), columns, first, chunks, salt=salt)
        cur.execute(stmt.sql, stmt.params or None)
        source = ckc.parse_checksums(cur.fetchall())
    target: dict[int, tuple[int, int]] = {}
    if exists:
        stmt = ckc.checksums_sql(dialect, ck.target_table(dialect, ref.name, ref.schema), columns, first, chunks)
        target = ckc.parse_checksums(target_conn.exec_driver_sql(stmt.sql, stmt.params).fetchall())
    return ContentComparison(ckc.compare_chunks(chunks, source, target), columns, skipped)


# --- the checks -----------------------------------------------------------------------------------------


def _targets(config: PipelineConfig) -> dict[dg.AssetKey, TableConfig]:
    database = config.sqlserver.database
    return {sqlserver_key(config=config, table=t, database=database): t for t in config.tables}


def _run(
    context: dg.AssetCheckExecutionContext, config: PipelineConfig, sqlserver: SqlServerResource,
    kafka: KafkaResource, ticdc: TiCDCResource, settings: CheckSettings,
    measure: Callable[[sa.Connection, _Target], tuple[bool, dict[str, Any]]], what: str,
) -> Iterator[dg.AssetCheckResult]:
    """Measure each selected table (offsets first), then read Kafka/TiCDC once and give the verdicts."""
    if sqlserver.database != config.sqlserver.database:
        raise ValueError(f"the SQL Server checks are for database {config.sqlserver.database!r} but the sqlserver "
                         f"resource connects to {sqlserver.database!r}; make them agree")
    tables = _targets(config)
    builtin = config.sqlserver.mode == "builtin"
    selected = sorted(context.selected_asset_check_keys, key=lambda k: k.asset_key.to_user_string())
    measured: dict[dg.AssetCheckKey, tuple[_Target, bool, dict[str, Any]]] = {}
    watermarks: dict[str, dict[int, Watermark] | None] = {}
    engine = sqlserver.get_engine()
    try:
        dialect = sql.check_dialect(engine.dialect.name)
        topics = [config.topic(tables[k.asset_key]) for k in selected]
        if not builtin:
            try:
                committed = group_offsets(kafka, sink_group(config), topics)
            except Exception as exc:  # noqa: BLE001 - no such group, or no right to describe it: backlog unknown
                context.log.warning(f"committed offsets of {sink_group(config)} unreadable: {exc}")
                committed = {}
        for check_key in selected:
            table = tables[check_key.asset_key]
            target = _Target(table, config.topic(table), sql.TargetTable(config.topic(table), sqlserver.db_schema))
            try:
                with engine.connect() as conn:
                    if builtin:
                        watermarks[target.topic] = applier_offsets(conn, dialect, target)
                    else:
                        watermarks[target.topic] = committed.get(target.topic)
                    equal, metadata = measure(conn, target)
            except Exception as exc:  # noqa: BLE001 - one table's failure must not hide the others' results
                context.log.error(f"{check_key.to_user_string()}: {type(exc).__name__}: {exc}")
                yield error_result(check_key, exc)
                continue
            measured[check_key] = (target, equal, metadata)
    finally:
        engine.dispose()
    if not measured:
        return
    lags = read_target_lags(config=config, watermarks={t.topic: watermarks[t.topic] for t, _, _ in measured.values()},
                     kafka=kafka, ticdc=ticdc,
                     unknown_note=f"consumer group {sink_group(config)} has no committed offsets for the topic")
    for check_key, (target, equal, metadata) in measured.items():
        result = lag_aware_result(equal=equal, lag=lags[target.topic], settings=settings, what=what, metadata={
            "target_table": f"{config.sqlserver.database}.{target.ref.label}", "written_by": config.sqlserver.mode,
            **metadata,
        })
        yield dg.AssetCheckResult(asset_key=check_key.asset_key, check_name=check_key.name, passed=result.passed,
                                  severity=result.severity, metadata=result.metadata)


def build_sqlserver_checks(
    *, config: PipelineConfig, settings: CheckSettings = CheckSettings()
) -> list[dg.AssetChecksDefinition]:
    """`row_count_matches_source` and `content_matches_source` on every SQL Server table; [] when disabled."""
    if not (config.sqlserver.enabled and config.tables):
        return []
    tables = _targets(config)
    pipeline = config

    def check(name: str, check_name: str, describe: Callable[[TableConfig], str], what: str,
              measure: Callable[[TiDBResource, sa.Connection, _Target], tuple[bool, dict[str, Any]]],
              ) -> dg.AssetChecksDefinition:
        """One check kind over every table: `measure` one table with the `tidb` resource, `_run` the rest."""

        @dg.multi_asset_check(
            name=name, can_subset=True,
            specs=[dg.AssetCheckSpec(check_name, asset=k, blocking=False, description=describe(t))
                   for k, t in tables.items()],
        )
        def _check(context: dg.AssetCheckExecutionContext, tidb: TiDBResource, sqlserver: SqlServerResource,
                   kafka: KafkaResource, ticdc: TiCDCResource) -> Iterator[dg.AssetCheckResult]:
            yield from _run(context, pipeline, sqlserver, kafka, ticdc, settings, functools.partial(measure, tidb), what)

        return _check

    def row_counts(tidb: TiDBResource, conn: sa.Connection, target: _Target) -> tuple[bool, dict[str, Any]]:
        exists = target_exists(conn, target.ref)
        dialect = sql.check_dialect(conn.dialect.name)
        rows = int(conn.exec_driver_sql(
            f"SELECT COUNT(*) FROM {ck.target_table(dialect, target.ref.name, target.ref.schema)}"
        ).scalar_one()) if exists else 0
        source_rows = tidb.count_rows(target.table.db, target.table.table)
        metadata: dict[str, Any] = {"source_rows": source_rows, "target_rows": rows, "difference": rows - source_rows}
        if not exists:
            metadata["note"] = f"{target.ref.label} does not exist yet"
        return source_rows == rows, metadata

    def contents(tidb: TiDBResource, conn: sa.Connection, target: _Target) -> tuple[bool, dict[str, Any]]:
        t = target.table
        key = key_of(tidb, t)
        source_columns = tidb.columns(t.db, t.table)
        with tidb.get_connection() as source_conn:
            with source_conn.cursor() as cur:
                cur.execute(f"SELECT COUNT(*) FROM {ck.mysql_table(t.db, t.table)}")
                source_rows = int(cur.fetchone()[0])
            comparison = compare_target_content(
                tidb_conn=source_conn, target_conn=conn, table=t, ref=target.ref, key=key,
                source_columns=source_columns, source_rows=source_rows, settings=settings,
            )
        differing = comparison.differing
        return not differing, {
            "chunks_checked": len(comparison.results),
            "chunks_differing": len(differing),
            "differing_ranges": [r.describe() for r in differing[:50]],
            "columns_compared": len(comparison.columns),
            "columns_not_in_target": list(comparison.skipped),
        }

    return [
        check("sqlserver_row_count_matches_source", ROW_COUNT_CHECK,
              lambda t: f"Target row count equals `SELECT COUNT(*)` of TiDB `{t.db}.{t.table}` (lag-aware).",
              "row counts", row_counts),
        check("sqlserver_content_matches_source", CONTENT_CHECK,
              lambda t: f"Chunked checksums over key ranges equal on TiDB `{t.db}.{t.table}` and the target table "
              "(lag-aware).", "chunk checksums", contents),
    ]
