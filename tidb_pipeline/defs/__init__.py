"""Dagster objects built from the config by factories: assets, checks, jobs, schedules, sensors."""

from __future__ import annotations

import dagster as dg

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.alerts import build_alerts_sensor
from tidb_pipeline.defs.backfill_job import build_backfill_job
from tidb_pipeline.defs.changefeed_assets import build_changefeed_asset
from tidb_pipeline.defs.changefeed_checks import build_changefeed_table_checks
from tidb_pipeline.defs.checks import build_all_checks, build_reconcile_job
from tidb_pipeline.defs.fanout import build_fanout_assets, build_fanout_checks
from tidb_pipeline.defs.jobs import (
    build_cleanup_job,
    build_cleanup_schedule,
    build_merge_jobs,
    build_merge_schedules,
    build_reconcile_schedule,
)
from tidb_pipeline.defs.resources import build_resources
from tidb_pipeline.defs.sensors import build_offsets_sensor
from tidb_pipeline.defs.switch_mode_job import build_switch_mode_job
from tidb_pipeline.defs.tables import build_all_table_assets


def build_defs(*, config: PipelineConfig) -> dg.Definitions:
    """Every definition for `config`; reads no network."""
    merge_jobs = build_merge_jobs(config=config)
    resources = build_resources(config=config)
    alerts = build_alerts_sensor(config=config, resource_keys=resources)
    checks = [*build_all_checks(config=config), *build_fanout_checks(config=config),
              *build_changefeed_table_checks(config=config)]
    return dg.Definitions(
        assets=[build_changefeed_asset(config=config), *build_all_table_assets(config=config),
                *build_fanout_assets(config=config)],
        asset_checks=checks,
        jobs=[*merge_jobs, build_cleanup_job(config=config), build_reconcile_job(checks=checks),
              build_backfill_job(config=config), build_switch_mode_job(config=config)],
        schedules=[*build_merge_schedules(config=config), build_cleanup_schedule(config=config),
                   build_reconcile_schedule(config=config)],
        sensors=[build_offsets_sensor(config=config, jobs=merge_jobs), *([alerts] if alerts else [])],
        resources=resources,
    )
