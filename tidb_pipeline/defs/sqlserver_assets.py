"""`sqlserver/<database>/<topic>` assets: a TiDB table's SQL Server copy, applied by the built-in applier.

Materialising one runs `engine.sqlserver.apply_topic` (exactly once; see there) and reports what it did as
metadata. Building these objects reads only the config; no network at load.
"""

# No `from __future__ import annotations`: Dagster reads the asset function's annotations at runtime.
from collections.abc import Mapping
from typing import Any

import dagster as dg

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.tables import group_name, hash_salt
from tidb_pipeline.engine.sqlserver import DEFAULT_DATABASE, ApplyError, apply_topic
from tidb_pipeline.replication.columns import by_field, treatment
from tidb_pipeline.replication.columns import describe as describe_columns
from tidb_pipeline.replication.sqlserver import TargetTable
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.sqlserver import SqlServerResource


def sqlserver_key(*, config: PipelineConfig, table: TableConfig, database: str = DEFAULT_DATABASE,
                  table_name: str | None = None) -> dg.AssetKey:
    return dg.AssetKey(["sqlserver", database, table_name or config.topic(table)])


def build_sqlserver_assets(
    *, config: PipelineConfig, table: TableConfig, database: str = DEFAULT_DATABASE, table_name: str | None = None,
) -> list[dg.AssetsDefinition]:
    """The SQL Server table of one TiDB table, applied from its topic by the built-in applier.

    The target table is named after the topic unless `table_name` says otherwise: that is the
    connector's `table.name.format=${topic}` default, so the connector and the applier write the same table.
    """
    topic = config.topic(table)
    target = table_name or topic
    key = sqlserver_key(config=config, table=table, database=database, table_name=table_name)

    @dg.asset(
        key=key, deps=[dg.AssetKey(["kafka", topic])], group_name=group_name(table), kinds={"sqlserver", "kafka"},
        description=(f"SQL Server table `{target}` with TiDB `{table.db}`.`{table.table}`'s rows, upserted "
                     f"from topic `{topic}` exactly once (the SQL Server sink's semantics, built in)."
                     + (f" Columns: {describe_columns(table.column_policy)}." if table.column_policy else "")),
        metadata={"source": f"{table.db}.{table.table}", "topic": topic,
                  "column_policy": describe_columns(table.column_policy)},
    )
    def _sqlserver(
        context: dg.AssetExecutionContext, kafka: KafkaResource, schema_registry: SchemaRegistryResource,
        sqlserver: SqlServerResource,
    ) -> dg.MaterializeResult:
        if sqlserver.database != database:
            raise ApplyError(f"asset {key.to_user_string()} is for database {database!r} but the sqlserver "
                             f"resource connects to {sqlserver.database!r}; make them agree")
        engine = sqlserver.get_engine()
        try:
            result = apply_topic(kafka=kafka, registry=schema_registry.get_client(), engine=engine, topic=topic,
                                 table=TargetTable(target, sqlserver.db_schema), log=context.log,
                                 policy=table.column_policy, hash_salt=hash_salt(table),
                                 source=f"{table.db}.{table.table}")
        finally:
            engine.dispose()
        metadata: dict[str, Any] = {
            "records_read": result.records_read,
            "keys_upserted": result.keys_upserted,
            "rows_deleted": result.keys_deleted,
            "batches": result.batches,
            "offsets_before": _offsets_text(result.offsets_before),
            "offsets_after": _offsets_text(result.offsets_after),
            "end_offsets": _offsets_text(result.end_offsets),
            "backlog_records": result.backlog,
            "table_created": result.created,
            "columns_added": ", ".join(result.columns_added) or "(none)",
            "seconds": round(result.seconds, 3),
            "dagster/table_name": f"{database}.{result.table.label}",
        }
        if result.row_count is not None:
            metadata["dagster/row_count"] = result.row_count
        if result.columns:
            fields = by_field(table.column_policy) if table.column_policy else None
            how = {"hash": "HASHED: hex SHA-256 of salt || value text", "mask": "MASKED: always NULL"}
            metadata["dagster/column_schema"] = dg.TableSchema(columns=[
                dg.TableColumn(c.name, c.sql_type,
                               constraints=dg.TableColumnConstraints(nullable=not c.is_key, unique=False),
                               description=how.get(treatment(fields, c.name)) if fields else None,
                               tags={"column_policy": treatment(fields, c.name)}
                               if fields and treatment(fields, c.name) else {})
                for c in result.columns
            ])
        return dg.MaterializeResult(metadata=metadata)

    return [_sqlserver]


def _offsets_text(offsets: Mapping[int, int]) -> str:
    return ", ".join(f"p{p}: {o}" for p, o in sorted(offsets.items())) or "(none)"
