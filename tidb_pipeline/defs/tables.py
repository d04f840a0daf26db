"""Per-table assets, built by keyword-only factories from the checked-in table list.

For each TiDB table `<db>.<table>` in `tidb_pipeline.yaml`:

    tidb/<db>/<table>  ─▶  kafka/<topic>  ─▶  snowflake/<landing_schema>/<TOPIC_UPPER>  ─▶  snowflake/<replica_schema>/<TABLE>
    (external)             (external,          (builtin: materialising it loads the        (materialising it MERGEs the
                            fed by ticdc/<cf>)   topic exactly once; connector: observed)    landing rows above its watermark)

The TiDB table and the topic are external: Dagster does not write them, the changefeed does. The landing
table has one layout whichever way it is filled (the Confluent Snowflake Sink's), so the replica's merge
is one code path. Building these objects reads only the config: no network call at load.
"""


import re
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.replica import merge_replica
from tidb_pipeline.replication.ddl import TableRef
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource

WATERMARK_TABLE = "MERGE_WATERMARKS"


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
    )


def group_name(t: TableConfig) -> str:
    return re.sub(r"\W", "_", f"replication_{t.group}")


def _offsets_text(offsets: dict[int, int]) -> str:
    return ", ".join(f"p{p}: {o}" for p, o in sorted(offsets.items())) or "(none)"


def _build_landing_asset(*, config: PipelineConfig, table: TableConfig) -> dg.AssetsDefinition | dg.AssetSpec:
    keys, names = table_keys(config, table), table_names(config, table)
    description = f"Landing table of topic `{names.topic}` in the Confluent Snowflake Sink's layout."
    if config.landing_mode_of(table) == "connector":
        return dg.AssetSpec(
            keys.landing, deps=[keys.kafka], group_name=group_name(table), kinds={"snowflake"},
            description=description + " Written by the Snowflake Sink connector.",
            metadata={"dagster/table_name": names.landing.label, "landing_mode": "connector"},
        )

    @dg.asset(
        key=keys.landing, deps=[keys.kafka], group_name=group_name(table), kinds={"snowflake", "kafka"},
        description=description + " Loads new records exactly once.",
        metadata={"dagster/table_name": names.landing.label, "landing_mode": "builtin"},
    )
    def _landing(
        context: dg.AssetExecutionContext,
        kafka: KafkaResource,
        schema_registry: SchemaRegistryResource,
        snowflake: SnowflakeResource,
    ) -> dg.MaterializeResult:
        from tidb_pipeline.defs.landing import load_topic

        with snowflake.get_connection() as conn:
            result = load_topic(
                kafka=kafka, registry=schema_registry.get_client(), connection=conn, topic=names.topic,
                landing=names.landing, control=names.control, log=context.log,
            )
        backlog = sum(max(0, result.end_offsets.get(p, 0) - o) for p, o in result.offsets_after.items())
        return dg.MaterializeResult(metadata={
            "rows_loaded": result.rows_loaded,
            "quarantined": result.quarantined,
            "offsets_before": _offsets_text(result.offsets_before),
            "offsets_after": _offsets_text(result.offsets_after),
            "end_offsets": _offsets_text(result.end_offsets),
            "backlog_records": backlog,
            "seconds": round(result.seconds, 3),
            "records_per_second": round(result.rows_loaded / result.seconds) if result.seconds > 0 else 0,
            "dagster/table_name": names.landing.label,
        })

    return _landing


def _build_replica_asset(*, config: PipelineConfig, table: TableConfig) -> dg.AssetsDefinition:
    keys, names = table_keys(config, table), table_names(config, table)

    @dg.asset(
        key=keys.replica, deps=[keys.landing], group_name=group_name(table), kinds={"snowflake"},
        description=f"Typed replica of TiDB `{table.db}`.`{table.table}`, merged from its landing table.",
        metadata={"dagster/table_name": names.replica.label, "source": f"{table.db}.{table.table}"},
    )
    def _replica(
        context: dg.AssetExecutionContext, schema_registry: SchemaRegistryResource, snowflake: SnowflakeResource
    ) -> dg.MaterializeResult:
        with snowflake.get_connection() as conn:
            outcome = merge_replica(
                connection=conn, registry=schema_registry.get_client(), topic=names.topic,
                landing=names.landing, replica=names.replica, watermarks=names.watermarks, log=context.log,
            )
        if outcome is None:
            return dg.MaterializeResult(metadata={"rows_inserted": 0, "rows_updated": 0, "rows_deleted": 0,
                                                  "note": f"no schema for topic {names.topic} yet"})
        c = outcome.counts
        return dg.MaterializeResult(metadata={
            "rows_inserted": c.inserted,
            "rows_updated": c.updated,
            "rows_deleted": c.deleted,
            "landing_rows_read": c.landing_rows,
            "keys_in_batch": c.source_rows,
            "merged_offsets": ", ".join(
                f"p{r.partition}: {r.after_offset}→{r.through_offset}" for r in outcome.ranges
            ) or "(nothing new)",
            "columns_added": ", ".join(outcome.added_columns) or "(none)",
            "schema_version": outcome.schema_version,
            "dagster/row_count": outcome.row_count,
            "dagster/table_name": names.replica.label,
            "dagster/column_schema": dg.TableSchema(columns=[
                dg.TableColumn(col.name, col.sql_type, description=f"TiDB {col.tidb_type}",
                               constraints=dg.TableColumnConstraints(nullable=col.nullable, unique=False))
                for col in outcome.columns
            ]),
        })

    return _replica


def build_table_assets(*, config: PipelineConfig, table: TableConfig) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """The four assets of one replicated table."""
    keys = table_keys(config, table)
    group = group_name(table)
    tidb = dg.AssetSpec(keys.tidb, group_name=group, kinds={"tidb"},
                        description=f"TiDB table `{table.db}`.`{table.table}` (the source).")
    topic = dg.AssetSpec(keys.kafka, deps=[keys.tidb, changefeed_key(config)], group_name=group, kinds={"kafka"},
                         description=f"Kafka topic `{config.topic(table)}`: TiCDC's Avro change records.")
    return [tidb, topic, _build_landing_asset(config=config, table=table),
            _build_replica_asset(config=config, table=table)]


def build_all_table_assets(*, config: PipelineConfig) -> Sequence[dg.AssetsDefinition | dg.AssetSpec]:
    return [a for t in config.tables for a in build_table_assets(config=config, table=t)]
