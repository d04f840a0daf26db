"""Scheduled work: a merge job per table group, landing cleanup, both on cron schedules from the config."""


import datetime as dt

import dagster as dg
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.tables import table_keys, table_names
from tidb_pipeline.replication.cleanup import cleanup_sql
from tidb_pipeline.replication.ddl import create_watermark_sql
from tidb_pipeline.resources.warehouse import is_missing_object, warehouse_session


# Every land-and-merge run carries its table group in this tag; the instance's run queue allows one run per
# value at a time (`tag_concurrency_limits` in dagster.yaml), since a second one would only wait on the
# landing lock and then find nothing new.
GROUP_TAG = "tidb_pipeline/group"


def merge_job_name(group: str) -> str:
    return f"merge_{group}"


def _merge_selection(config: PipelineConfig, tables: tuple[TableConfig, ...]) -> dg.AssetSelection:
    keys: list[dg.AssetKey] = []
    for t in tables:
        k = table_keys(config, t)
        if config.landing_mode_of(t) == "builtin":
            keys.append(k.landing)
        keys.append(k.replica)
    # Checks run in the reconcile job; a merge every minute should not rescan the tables.
    return dg.AssetSelection.assets(*keys).without_checks()


def build_merge_jobs(*, config: PipelineConfig) -> list:
    # A group's landing and replica assets are one step that runs its tables in threads (defs/tables.py), so
    # the multiprocess executor would only add a child interpreter (imports + definitions load) per run.
    return [
        dg.define_asset_job(
            merge_job_name(group), selection=_merge_selection(config, tables),
            description=f"Land and merge the `{group}` table group into its Snowflake replicas.",
            tags={GROUP_TAG: group}, executor_def=dg.in_process_executor,
        )
        for group, tables in config.groups.items()
    ]


def build_merge_schedules(*, config: PipelineConfig) -> list[dg.ScheduleDefinition]:
    return [
        dg.ScheduleDefinition(
            name=f"{merge_job_name(group)}_schedule", job_name=merge_job_name(group),
            cron_schedule=config.merge_schedules[group].cron,
            default_status=dg.DefaultScheduleStatus.RUNNING if config.merge_schedules[group].enabled
            else dg.DefaultScheduleStatus.STOPPED,
        )
        for group in config.groups
    ]


def build_cleanup_job(*, config: PipelineConfig) -> dg.JobDefinition:
    """Deletes landing rows already merged and older than the retention window; never TRUNCATE."""

    @dg.op(name="cleanup_landing_tables", description="Delete merged landing rows older than the retention window.")
    def _cleanup(context: dg.OpExecutionContext, snowflake: SnowflakeResource) -> int:
        now = dt.datetime.now(dt.timezone.utc)
        retention = dt.timedelta(hours=config.retention_hours)
        total = 0
        with warehouse_session(snowflake, config.snowflake.session) as wh:
            for t in config.tables:
                names = table_names(config, t)
                wh.execute(create_watermark_sql(names.watermarks))
                try:
                    wh.execute(cleanup_sql(names.landing, names.watermarks, names.replica, now, retention))
                except Exception as exc:  # noqa: BLE001 - a table not landed yet has nothing to clean
                    if not is_missing_object(exc):
                        raise
                    continue
                deleted = int(wh.rowcount or 0)
                total += deleted
                context.log_event(dg.AssetObservation(
                    asset_key=table_keys(config, t).landing,
                    metadata={"rows_deleted_by_cleanup": deleted, "retention_hours": config.retention_hours},
                ))
        context.log.info(f"landing cleanup deleted {total} merged rows older than {retention}")
        return total

    @dg.job(name="landing_cleanup", description="Delete landing rows at or below the merged watermark and past retention.")
    def _job() -> None:
        _cleanup()

    return _job


def build_cleanup_schedule(*, config: PipelineConfig) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="landing_cleanup_schedule", job_name="landing_cleanup", cron_schedule=config.cleanup_schedule.cron,
        default_status=dg.DefaultScheduleStatus.RUNNING if config.cleanup_schedule.enabled
        else dg.DefaultScheduleStatus.STOPPED,
    )
