"""The `switch_mode` job: rebuild replicas in the mode the config now gives them (README "Replica modes").

Change `mode:` of a table in `tidb_pipeline.yaml`, turn its merge schedule off (or stop the sensor), run this
job for the table, turn merging back on. Until the job has run, the table's merges fail with an error that
names this job (the replica's shape and the config disagree). The work is `engine.switch_mode`.
"""

# No `from __future__ import annotations`: Dagster reads the op function's annotations at runtime.
import dagster as dg
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.backfill_job import select_tables
from tidb_pipeline.defs.tables import table_names
from tidb_pipeline.engine.switch_mode import switch_replica_mode
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.tidb import TiDBResource
from tidb_pipeline.resources.warehouse import warehouse_session


class SwitchModeConfig(dg.Config):
    """Which configured tables to switch, as `db.table`; empty means every table whose replica's shape differs."""

    tables: list[str] = []


def build_switch_mode_job(*, config: PipelineConfig) -> dg.JobDefinition:
    pipeline = config

    @dg.op(name="switch_replica_modes", description="Rebuild replicas in the mode the config gives them.")
    def _switch(
        context: dg.OpExecutionContext,
        config: SwitchModeConfig,
        snowflake: SnowflakeResource,
        schema_registry: SchemaRegistryResource,
        tidb: TiDBResource,
    ) -> dg.Output[int]:
        registry = schema_registry.get_client()
        out: dict[str, str] = {}
        switched = 0
        with warehouse_session(snowflake, pipeline.snowflake.session) as wh:
            for t in select_tables(pipeline, config.tables):
                names = table_names(pipeline, t)

                def tidb_names(t: TableConfig = t) -> list[str]:
                    return [c.name for c in tidb.columns(t.db, t.table)]

                result = switch_replica_mode(
                    connection=wh, registry=registry, topic=names.topic, replica=names.replica, mode=t.mode,
                    source_columns=tidb_names, log=context.log, policy=t.column_policy, source=f"{t.db}.{t.table}")
                if result is None:
                    out[f"{t.db}.{t.table}"] = f"no replica yet (created in mode {t.mode} by its first merge)"
                elif result.switched:
                    switched += 1
                    out[f"{t.db}.{t.table}"] = (f"{result.old} -> {result.new}: {result.rows_before} rows -> "
                                                f"{result.rows_after}")
                else:
                    out[f"{t.db}.{t.table}"] = f"already {t.mode}"
        return dg.Output(switched, metadata={"tables": out, "switched": switched})

    @dg.job(name="switch_mode", description="Rebuild replicas in the mode (replica, soft_delete, history) the config "
            "gives them; pause their merges first.")
    def _job() -> None:
        _switch()

    return _job
