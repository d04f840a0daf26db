"""Dagster objects built from the config by factories: assets, checks, jobs, schedules, sensors."""

from __future__ import annotations

import dagster as dg

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.changefeed_assets import build_changefeed_asset
from tidb_pipeline.defs.checks import build_all_checks, build_reconcile_job, build_reconcile_schedule
from tidb_pipeline.defs.connector_assets import build_all_connector_assets
from tidb_pipeline.defs.jobs import build_cleanup_job, build_cleanup_schedule, build_merge_jobs, build_merge_schedules
from tidb_pipeline.defs.ksqldb import build_all_ksqldb_assets
from tidb_pipeline.defs.resources import build_resources
from tidb_pipeline.defs.sensors import build_offsets_sensor
from tidb_pipeline.defs.sqlserver import build_sqlserver_assets
from tidb_pipeline.defs.tables import build_all_table_assets


def build_fanout_assets(*, config: PipelineConfig) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """SQL Server tables, ksqlDB streams and Confluent connectors, as far as the config enables them."""
    out: list[dg.AssetsDefinition | dg.AssetSpec] = []
    if config.sqlserver.enabled and config.sqlserver.mode == "builtin":
        out += [a for t in config.tables
                for a in build_sqlserver_assets(config=config, table=t, database=config.sqlserver.database)]
    if config.ksqldb.enabled:
        out += build_all_ksqldb_assets(config=config)
    return [*out, *build_all_connector_assets(config=config)]


def build_defs(*, config: PipelineConfig) -> dg.Definitions:
    """Every definition for `config`; reads no network."""
    merge_jobs = build_merge_jobs(config=config)
    checks = build_all_checks(config=config)
    return dg.Definitions(
        assets=[build_changefeed_asset(config=config), *build_all_table_assets(config=config),
                *build_fanout_assets(config=config)],
        asset_checks=checks,
        jobs=[*merge_jobs, build_cleanup_job(config=config), build_reconcile_job(checks=checks)],
        schedules=[*build_merge_schedules(config=config), build_cleanup_schedule(config=config),
                   build_reconcile_schedule(config=config)],
        sensors=[build_offsets_sensor(config=config, jobs=merge_jobs)],
        resources=build_resources(config=config),
    )
