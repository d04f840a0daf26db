"""Per-table assets, built by keyword-only factories from the checked-in table list.

For each TiDB table `<db>.<table>` in `tidb_pipeline.yaml`:

    tidb/<db>/<table>  ─▶  kafka/<topic>  ─▶  snowflake/<landing_schema>/<TOPIC_UPPER>  ─▶  snowflake/<replica_schema>/<TABLE>
    (external)             (external,          (builtin: materialising it loads the        (materialising it MERGEs the
                            fed by ticdc/<cf>)   topic exactly once; connector: observed)    landing rows above its watermark)

The TiDB table and the topic are external: Dagster does not write them, the changefeed does. The landing
table has one layout whichever way it is filled (the Confluent Snowflake Sink's), so the replica's merge
is one code path. Building these objects reads only the config: no network call at load.

The builtin landing and replica assets of one table group are one `multi_asset` (one step, subsettable):
a merge run then works on up to `SNOWFLAKE_PARALLEL_TABLES` tables at once in threads (one warehouse session
each; `tidb_pipeline.resources.warehouse.parallel_tables`), each table landing and then merging, instead of one step per asset run one after another (the in-process executor) or one Python
process per step (the multiprocess executor, seconds of imports each). Almost all of a table's time is
spent waiting on the warehouse and Kafka, so threads overlap well. Each asset keeps its own key, group,
description, metadata and materialization; a table whose landing fails is not merged, the other tables
still materialize, and the step then fails naming every failed table.
"""


import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import ColumnsConfig, PipelineConfig, TableConfig
from tidb_pipeline.defs.freshness import replica_freshness_policy
from tidb_pipeline.engine.landing import DEAD_LETTER_TABLE, LANDED_OFFSETS_TABLE
from tidb_pipeline.engine.replica import DdlSource, merge_replica
from tidb_pipeline.defs.retries import land_and_merge_retry_policy, step_failure
from tidb_pipeline.replication.avro_types import ReplicaColumn
from tidb_pipeline.replication.columns import describe as describe_columns
from tidb_pipeline.replication.ddl import TableRef
from tidb_pipeline.replication.progress import merged_through_sql
from tidb_pipeline.replication.holes import ABSENT, OFFSET_GAPS_TABLE
from tidb_pipeline.replication.mode_columns import MODE_COLUMNS
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.tidb import TiDBResource
from tidb_pipeline.resources.env import hash_salt_reader
from tidb_pipeline.resources.warehouse import Warehouse, parallel_tables, warehouse_session

WATERMARK_TABLE = "MERGE_WATERMARKS"
# Opens one warehouse session (with the config's session pins) for one table's landing or merge.
Sessions = Callable[[], AbstractContextManager[Warehouse]]


@dataclass(frozen=True)
class TableKeys:
    """The asset keys of one replicated table (one concept per key)."""

    tidb: dg.AssetKey
    kafka: dg.AssetKey
    landing: dg.AssetKey
    replica: dg.AssetKey


@dataclass(frozen=True)
class TableNames:
    """Where one table's data lives outside Dagster."""

    topic: str
    landing: TableRef
    replica: TableRef
    watermarks: TableRef
    control: TableRef  # schema holding the stage, load table and dead-letter table
    builtin: bool = True  # landing mode: the built-in loader (True) or the Snowflake Sink connector

    @property
    def dead_letters(self) -> TableRef:
        return TableRef(self.control.schema, DEAD_LETTER_TABLE, self.control.database)

    @property
    def offset_gaps(self) -> TableRef:
        """Holes decided against Kafka (`replication.holes`)."""
        return TableRef(self.control.schema, OFFSET_GAPS_TABLE, self.control.database)

    @property
    def landed_offsets(self) -> TableRef | None:
        """The built-in loader's highest landed offset per partition; None in connector mode (the sink fills
        the landing table and keeps its offsets in Kafka)."""
        return TableRef(self.control.schema, LANDED_OFFSETS_TABLE, self.control.database) if self.builtin else None


def changefeed_key(config: PipelineConfig) -> dg.AssetKey:
    return dg.AssetKey(["ticdc", config.source.changefeed_id])


def table_keys(config: PipelineConfig, t: TableConfig) -> TableKeys:
    sf = config.snowflake
    return TableKeys(
        tidb=dg.AssetKey(["tidb", t.db, t.table]),
        kafka=dg.AssetKey(["kafka", config.topic(t)]),
        landing=dg.AssetKey(["snowflake", sf.landing_schema, config.landing_table(t)]),
        replica=dg.AssetKey(["snowflake", sf.replica_schema, config.replica_table(t)]),
    )


def table_names(config: PipelineConfig, t: TableConfig) -> TableNames:
    sf = config.snowflake
    return TableNames(
        topic=config.topic(t),
        landing=TableRef(sf.landing_schema, config.landing_table(t), sf.database),
        replica=TableRef(sf.replica_schema, config.replica_table(t), sf.database),
        watermarks=TableRef(sf.control_schema, WATERMARK_TABLE, sf.database),
        control=TableRef(sf.control_schema, "", sf.database),
        builtin=config.landing_mode_of(t) == "builtin",
    )


def group_name(t: TableConfig) -> str:
    return f"replication_{t.group}"  # the config allows only [A-Za-z0-9_] in a group


def _offsets_text(offsets: dict[int, int]) -> str:
    return ", ".join(f"p{p}: {o}" for p, o in sorted(offsets.items())) or "(none)"


def _landing_spec(*, config: PipelineConfig, table: TableConfig) -> dg.AssetSpec:
    keys, names = table_keys(config, table), table_names(config, table)
    description = f"Landing table of topic `{names.topic}` in the Confluent Snowflake Sink's layout."
    if config.landing_mode_of(table) == "connector":
        return dg.AssetSpec(
            keys.landing, deps=[keys.kafka], group_name=group_name(table), kinds={"snowflake"},
            description=description + " Written by the Snowflake Sink connector.",
            metadata={"dagster/table_name": names.landing.label, "landing_mode": "connector"},
        )
    return dg.AssetSpec(
        keys.landing, deps=[keys.kafka], group_name=group_name(table), kinds={"snowflake", "kafka"},
        description=description + " Loads new records exactly once.",
        metadata={"dagster/table_name": names.landing.label, "landing_mode": "builtin"},
    )


# What each mode keeps, for the replica asset's description and its `mode_columns` (README "Replica modes").
MODE_DESCRIPTIONS = {
    "replica": "Mode replica: the source's current rows.",
    "soft_delete": "Mode soft_delete: a deleted row stays with `_DELETED` = TRUE and `_DELETED_AT`; the rows "
                   "with `_DELETED` = FALSE equal the source.",
    "history": "Mode history: every version of each row, valid from `_VALID_FROM` to `_VALID_TO`, with `_OP` "
               "and `_COMMIT_TS`; the rows with `_IS_CURRENT` equal the source.",
}
MODE_COLUMN_DESCRIPTIONS = {
    "_DELETED": "TRUE once the row was deleted in TiDB (soft_delete)",
    "_DELETED_AT": "when the delete reached Kafka (its record timestamp), UTC",
    "_OP": "c insert, u update, d delete, s version made by a backfill or a mode switch",
    "_COMMIT_TS": "TiDB commit TSO of the version (of the version ended, for a delete)",
    "_VALID_FROM": "commit time of the version, UTC (a delete: its Kafka record timestamp)",
    "_VALID_TO": "_VALID_FROM of the next version; NULL while current",
    "_IS_CURRENT": "TRUE for the version that is the source's current row",
    "_KAFKA_PARTITION": "landing partition where the version first arrived",
    "_KAFKA_OFFSET": "landing offset where the version first arrived",
}


def mode_table_columns(mode: str) -> list[dg.TableColumn]:
    """The `dagster/column_schema` entries of the columns a mode adds."""
    return [dg.TableColumn(n, t, description=MODE_COLUMN_DESCRIPTIONS[n]) for n, t in MODE_COLUMNS[mode]]


def column_description(col: ReplicaColumn) -> str:
    """A replica column's description in `dagster/column_schema`: its TiDB type and the policy's treatment."""
    how = {"hash": " · HASHED: hex SHA-256 of salt || value text", "mask": " · MASKED: always NULL"}
    return f"TiDB {col.tidb_type}{how.get(col.policy, '')}"


def _policy_metadata(table: TableConfig) -> dict[str, Any]:
    """The column policy in the replica's metadata (names only; the salt's variable name, never its value)."""
    c = table.columns
    if c.is_default:
        return {"column_policy": describe_columns(None)}
    md: dict[str, Any] = {"column_policy": describe_columns(c)}
    for kind in ("include", "exclude", "hash", "mask"):
        if getattr(c, kind):
            md[f"columns_{kind}"] = ", ".join(getattr(c, kind))
    return md


def _replica_spec(*, config: PipelineConfig, table: TableConfig) -> dg.AssetSpec:
    keys, names = table_keys(config, table), table_names(config, table)
    policy = "" if table.columns.is_default else f" Columns: {describe_columns(table.columns)}."
    return dg.AssetSpec(
        keys.replica, deps=[keys.landing], group_name=group_name(table), kinds={"snowflake"},
        description=f"Typed replica of TiDB `{table.db}`.`{table.table}`, merged from its landing table.{policy} "
                    f"{MODE_DESCRIPTIONS[table.mode]}",
        metadata={"dagster/table_name": names.replica.label, "source": f"{table.db}.{table.table}",
                  **_policy_metadata(table), "mode": table.mode,
                  "mode_columns": ", ".join(n for n, _ in MODE_COLUMNS[table.mode]) or "(none)"},
        freshness_policy=replica_freshness_policy(config.freshness_of(table)),
    )


class _TableLog:
    """A logger for one table's worker thread; the step's thread replays the lines into `context.log`."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def _add(self, level: str, msg: object, *args: object) -> None:
        self.lines.append((level, str(msg) % args if args else str(msg)))

    def debug(self, msg: object, *args: object, **_: object) -> None:
        self._add("debug", msg, *args)

    def info(self, msg: object, *args: object, **_: object) -> None:
        self._add("info", msg, *args)

    def warning(self, msg: object, *args: object, **_: object) -> None:
        self._add("warning", msg, *args)

    def error(self, msg: object, *args: object, **_: object) -> None:
        self._add("error", msg, *args)


def _land(names: TableNames, kafka: KafkaResource, registry: Any, sessions: Sessions, log: Any) -> dict[str, Any]:
    from tidb_pipeline.engine.landing import load_topic

    with sessions() as wh:
        result = load_topic(
            kafka=kafka, registry=registry, connection=wh, topic=names.topic,
            landing=names.landing, control=names.control, log=log,
        )
    backlog = sum(max(0, result.end_offsets.get(p, 0) - o) for p, o in result.offsets_after.items())
    return {
        "rows_loaded": result.rows_loaded,
        "quarantined": result.quarantined,
        "offsets_before": _offsets_text(result.offsets_before),
        "offsets_after": _offsets_text(result.offsets_after),
        "end_offsets": _offsets_text(result.end_offsets),
        "backlog_records": backlog,
        "seconds": round(result.seconds, 3),
        "records_per_second": round(result.rows_loaded / result.seconds) if result.seconds > 0 else 0,
        "dagster/table_name": names.landing.label,
    }


def column_policy(table: TableConfig) -> ColumnsConfig | None:
    return table.column_policy


def hash_salt(table: TableConfig) -> Callable[[], str]:
    """Reads the table's salt when called (in the run that hashes), as a `dg.EnvVar` would; never logged."""
    return hash_salt_reader(table.hash_salt_env, f"{table.db}.{table.table}")


# Replica metadata: oldest / newest record time (epoch ms, `replication.cleanup.RECORD_TIME_SQL`) of the landing
# rows a merge read; the cleanup gate (`defs/cleanup_due.py`) runs the cleanup when one not cleaned yet ages out.
OLDEST_RECORD = "oldest_record_ms"
NEWEST_RECORD = "newest_record_ms"


def _merge(names: TableNames, kafka: KafkaResource, registry: Any, sessions: Sessions, log: Any,
           source_columns: Callable[[], Sequence[str]], table: TableConfig | None = None,
           ddl: DdlSource | None = None) -> dict[str, Any]:
    mode = "replica" if table is None else table.mode
    with sessions() as wh:
        outcome = merge_replica(
            connection=wh, registry=registry, topic=names.topic,
            landing=names.landing, replica=names.replica, watermarks=names.watermarks, log=log,
            source_columns=source_columns, dead_letters=names.dead_letters, offset_gaps=names.offset_gaps,
            kafka=kafka, ddl=ddl, landed_offsets=names.landed_offsets,
            policy=None if table is None else column_policy(table),
            hash_salt=None if table is None else hash_salt(table),
            source="" if table is None else f"{table.db}.{table.table}", mode=mode,
        )
        # Recorded so the idle gate (defs/idle.py) learns what is merged without a statement of its own.
        merged = None if outcome is None else {
            str(int(p)): int(o) for p, o in wh.execute(merged_through_sql(names.watermarks, names.replica))}
    if outcome is None:
        return {"rows_inserted": 0, "rows_updated": 0, "rows_deleted": 0,
                "note": f"no schema for topic {names.topic} yet"}
    c = outcome.counts
    return {
        "merged_through": dg.MetadataValue.json(merged),
        "rows_inserted": c.inserted,
        "rows_updated": c.updated,
        "rows_deleted": c.deleted,
        "landing_rows_read": c.landing_rows,
        # Record times (epoch ms, the cleanup's notion of age) of the rows read: the cleanup gate waits on them.
        **({OLDEST_RECORD: c.oldest_record_ms, NEWEST_RECORD: c.newest_record_ms}
           if c.oldest_record_ms is not None and c.newest_record_ms is not None else {}),
        "keys_in_batch": c.source_rows,
        # Values Snowflake cannot hold (e.g. TiDB zero dates) stored as NULL; check `no_unconverted_values` lists them.
        "unconverted_values": sum(n for _, n in c.unconverted),
        "unconverted_per_column": ", ".join(f"{name}: {n}" for name, n in c.unconverted) or "(none)",
        "merged_offsets": ", ".join(
            f"p{r.partition}: {r.after_offset}→{r.through_offset}" for r in outcome.ranges
        ) or "(nothing new)",
        # The merge never passes a hole: what waits above one, and the offsets Kafka never had that it skipped.
        "held_back": [str(h) for h in outcome.held] or "(none)",
        "offsets_not_in_kafka_skipped": [g.describe(names.topic) for g in outcome.gaps if g.status == ABSENT]
        or "(none)",
        "columns_added": ", ".join(outcome.added_columns) or "(none)",
        "schema_version": outcome.schema_version,
        # Schema changes this run applied (policy: config `schema_changes`); all of them: SCHEMA_CHANGES table.
        "schema_changes": [c.describe() for c in outcome.schema_changes] or "(none)",
        "schema_version_before": outcome.schema_version_before if outcome.schema_changes else outcome.schema_version,
        # history: rows_inserted / rows_updated / rows_deleted count new versions by kind; row_count all versions.
        "mode": mode,
        "dagster/row_count": outcome.row_count,
        "dagster/table_name": names.replica.label,
        "dagster/column_schema": dg.TableSchema(columns=[
            dg.TableColumn(col.name, col.sql_type, description=column_description(col),
                           constraints=dg.TableColumnConstraints(nullable=col.nullable, unique=False),
                           tags={"column_policy": col.policy} if col.policy else {})
            for col in outcome.columns
        ] + mode_table_columns(mode)),
    }


@dataclass
class _TableRun:
    """One table's part of a run: what it materialized, its log lines, and the error that stopped it."""

    table: TableConfig
    results: list[dg.MaterializeResult] = field(default_factory=list)
    log: _TableLog = field(default_factory=_TableLog)
    failed: str | None = None  # "landing" or "merge"
    error: BaseException | None = None


def _run_table(config: PipelineConfig, table: TableConfig, *, land: bool, merge: bool,
               land_fn: Callable[[TableNames, _TableLog], dict[str, Any]],
               merge_fn: Callable[[TableNames, _TableLog], dict[str, Any]]) -> _TableRun:
    keys, names = table_keys(config, table), table_names(config, table)
    out = _TableRun(table)
    for step, selected, fn, key in (("landing", land, land_fn, keys.landing), ("merge", merge, merge_fn, keys.replica)):
        if not selected:
            continue
        try:
            out.results.append(dg.MaterializeResult(asset_key=key, metadata=fn(names, out.log)))
        except Exception as exc:  # noqa: BLE001 - reported with the table's name once every table is done
            out.failed, out.error = step, exc
            break
    return out


def _build_group_asset(*, config: PipelineConfig, tables: Sequence[TableConfig], name: str) -> dg.AssetsDefinition:
    """The builtin landing and the replica assets of `tables` as one subsettable step (module docstring)."""
    specs: list[dg.AssetSpec] = []
    for t in tables:
        if config.landing_mode_of(t) == "builtin":
            specs.append(_landing_spec(config=config, table=t))
        specs.append(_replica_spec(config=config, table=t))

    parallel = parallel_tables()  # read at load: a bad value fails there, naming the variable

    @dg.multi_asset(
        name=name, specs=specs, can_subset=True,
        description=f"Land and merge {len(tables)} table(s), up to {parallel} at once.",
        retry_policy=land_and_merge_retry_policy(config.retries),
    )
    def _land_and_merge(
        context: dg.AssetExecutionContext,
        kafka: KafkaResource,
        schema_registry: SchemaRegistryResource,
        snowflake: SnowflakeResource,
        tidb: TiDBResource,
    ):  # noqa: ANN202 - a generator of MaterializeResults
        selected = context.selected_asset_keys
        work = [(t, table_keys(config, t)) for t in tables]
        work = [(t, k) for t, k in work if k.landing in selected or k.replica in selected]
        # One registry client per role, shared by the threads (it is thread-safe and caches schemas by id).
        # Separate clients because a client caches each subject's latest version for its lifetime: the
        # merge must read it after its table's landing, never a version cached before the landing began.
        landing_registry = schema_registry.get_client()
        replica_registry = schema_registry.get_client()
        runs: list[_TableRun] = []

        def sessions() -> AbstractContextManager[Warehouse]:
            return warehouse_session(snowflake, config.snowflake.session)

        def finish(run: _TableRun) -> Iterator[dg.MaterializeResult]:
            runs.append(run)
            for level, line in run.log.lines:
                getattr(context.log, level)(line)
            yield from run.results

        def table_run(t: TableConfig, k: TableKeys) -> _TableRun:
            return _run_table(
                config, t, land=k.landing in selected and config.landing_mode_of(t) == "builtin",
                merge=k.replica in selected,
                land_fn=lambda n, log: _land(n, kafka, landing_registry, sessions, log),
                # TiDB's column names, read only when the replica lacks a field (engine/replica.py).
                merge_fn=lambda n, log: _merge(n, kafka, replica_registry, sessions, log,
                                               lambda: [c.name for c in tidb.columns(t.db, t.table)], t,
                                               DdlSource(t.db, t.table, tidb.ddl_jobs, tidb.last_ddl_job_id,
                                                         config.schema_changes_of(t))),
            )

        if parallel <= 1 or len(work) <= 1:
            # In the step's own thread: nothing to overlap, and a profiler sees the work.
            for t, k in work:
                yield from finish(table_run(t, k))
        else:
            with ThreadPoolExecutor(max_workers=min(parallel, len(work)), thread_name_prefix=f"{name}-") as pool:
                futures: list[Future[_TableRun]] = [pool.submit(table_run, t, k) for t, k in work]
                for future in as_completed(futures):
                    yield from finish(future.result())
        failed = [r for r in runs if r.error is not None]
        if failed:
            detail = "; ".join(f"{r.table.db}.{r.table.table} ({r.failed}): {type(r.error).__name__}: {r.error}"
                               for r in failed)
            raise step_failure(f"{len(failed)} of {len(runs)} tables failed, the others materialized: {detail}",
                               [r.error for r in failed if r.error is not None]) from failed[0].error

    return _land_and_merge


def _asset_name(text: str) -> str:
    """A Dagster op name (ASCII letters, digits, `_`) for `text`; a short hash keeps apart names that differ
    only in other characters (`a-b` / `a.b`, unicode)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if name != text:
        name += "_" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return "land_and_merge_" + name


def _external_specs(*, config: PipelineConfig, table: TableConfig) -> list[dg.AssetSpec]:
    """The assets Dagster does not materialize: the TiDB table, the topic, a connector-filled landing table."""
    keys = table_keys(config, table)
    group = group_name(table)
    tidb = dg.AssetSpec(keys.tidb, group_name=group, kinds={"tidb"},
                        description=f"TiDB table `{table.db}`.`{table.table}` (the source).")
    topic = dg.AssetSpec(keys.kafka, deps=[keys.tidb, changefeed_key(config)], group_name=group, kinds={"kafka"},
                         description=f"Kafka topic `{config.topic(table)}`: TiCDC's Avro change records.")
    landing = [_landing_spec(config=config, table=table)] if config.landing_mode_of(table) == "connector" else []
    return [tidb, topic, *landing]


def build_table_assets(*, config: PipelineConfig, table: TableConfig) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """The four assets of one replicated table (landing and replica as one step, see the module docstring)."""
    return [*_external_specs(config=config, table=table),
            _build_group_asset(config=config, tables=[table], name=_asset_name(f"{table.db}_{table.table}"))]


def build_all_table_assets(*, config: PipelineConfig) -> Sequence[dg.AssetsDefinition | dg.AssetSpec]:
    """Per table the external specs; per table group one land-and-merge step for all its tables."""
    out: list[dg.AssetsDefinition | dg.AssetSpec] = [
        a for t in config.tables for a in _external_specs(config=config, table=t)
    ]
    out += [_build_group_asset(config=config, tables=tables, name=_asset_name(group))
            for group, tables in config.groups.items()]
    return out
