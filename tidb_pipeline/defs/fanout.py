"""The fan-out beyond Snowflake: SQL Server tables, ksqlDB streams and Confluent connectors, when enabled."""

from __future__ import annotations

import dagster as dg

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.connector_assets import build_all_connector_assets
from tidb_pipeline.defs.ksqldb import build_all_ksqldb_assets
from tidb_pipeline.defs.sqlserver_assets import build_sqlserver_assets
from tidb_pipeline.defs.sqlserver_checks import build_sqlserver_checks


def build_fanout_assets(*, config: PipelineConfig) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """SQL Server tables, ksqlDB streams and Confluent connectors, as far as the config enables them."""
    out: list[dg.AssetsDefinition | dg.AssetSpec] = []
    if config.sqlserver.enabled and config.sqlserver.mode == "builtin":
        out += [a for t in config.tables
                for a in build_sqlserver_assets(config=config, table=t, database=config.sqlserver.database)]
    if config.ksqldb.enabled:
        out += build_all_ksqldb_assets(config=config)
    return [*out, *build_all_connector_assets(config=config)]


def build_fanout_checks(*, config: PipelineConfig) -> list[dg.AssetChecksDefinition]:
    """Checks on the fan-out's tables: row count and content of every SQL Server table (either writer)."""
    return build_sqlserver_checks(config=config)
