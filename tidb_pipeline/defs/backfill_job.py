"""The `backfill` job: snapshot the selected tables at one TSO, load their replicas, start the changefeed there.

The work is `engine.backfill.backfill` (its docstring explains the steps and why the changefeed comes last).
It is not part of `build_defs`; add it to the `jobs` there to offer it in the UI.
"""

# No `from __future__ import annotations`: Dagster reads the op function's annotations at runtime.
from collections.abc import Callable, Sequence

import dagster as dg
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.engine.backfill import DEFAULT_CHUNK_ROWS, BackfillError, SnapshotSource, TiDBSnapshotSource, backfill
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import TiCDCResource
from tidb_pipeline.resources.tidb import TiDBResource
from tidb_pipeline.resources.warehouse import warehouse_session


class BackfillConfig(dg.Config):
    """Which configured tables to backfill, as `db.table`; empty means every table in the config."""

    tables: list[str] = []
    chunk_rows: int = DEFAULT_CHUNK_ROWS


def select_tables(config: PipelineConfig, names: Sequence[str]) -> tuple[TableConfig, ...]:
    if not names:
        return tuple(config.tables)
    by_name = {f"{t.db}.{t.table}": t for t in config.tables}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise BackfillError(f"tables {unknown} are not in the config (known: {', '.join(sorted(by_name))})")
    return tuple(by_name[n] for n in names)


def build_backfill_job(
    *,
    config: PipelineConfig,
    snapshot_source: Callable[[TiDBResource], SnapshotSource] = TiDBSnapshotSource,
) -> dg.JobDefinition:
    """The `backfill` job; `snapshot_source` builds the snapshot reader from the `tidb` resource (the lab
    passes its MariaDB one)."""
    pipeline = config

    @dg.op(name="backfill_tables", description="Snapshot tables at one TSO, load their replicas, start the changefeed there.")
    def _backfill(
        context: dg.OpExecutionContext,
        config: BackfillConfig,
        tidb: TiDBResource,
        snowflake: SnowflakeResource,
        ticdc: TiCDCResource,
        kafka: KafkaResource,
        schema_registry: SchemaRegistryResource,
    ) -> dg.Output[int]:
        tables = select_tables(pipeline, config.tables)
        with warehouse_session(snowflake, pipeline.snowflake.session) as wh, ticdc.get_client() as client:
            result = backfill(
                tidb=tidb, snowflake_connection=wh, ticdc_client=client, kafka=kafka, registry=schema_registry,
                config=pipeline, tables=tables, snapshot=snapshot_source(tidb), chunk_rows=config.chunk_rows,
                log=context.log,
            )
        return dg.Output(result.tso, metadata={
            "snapshot_tso": result.tso,
            "rows_loaded": result.rows,
            "tables": {t.source: {"replica": t.replica.label, "rows": t.rows, "seconds": round(t.seconds, 3)}
                       for t in result.tables},
            **{f"changefeed_{k}": v for k, v in result.changefeed.metadata().items()},
        })

    @dg.job(name="backfill", description="Load tables that already hold data at one consistent point and start "
            "the changefeed there.")
    def _job() -> None:
        _backfill()

    return _job
