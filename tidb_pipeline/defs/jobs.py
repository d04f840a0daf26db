"""Scheduled work: a merge job per table group, landing cleanup and reconciliation, on cron schedules.

Each schedule is a safety net behind the offsets sensor, and each first asks whether it has anything to do
without touching the warehouse (`defs/idle.py`), skipping with the reason when not:
- `merge_<group>_schedule`: requests a run of exactly the group's tables with merge work left (records not
  landed, landed rows not merged, or what the Snowflake Sink committed beyond what was merged), and nothing
  while a run of the group is queued or running;
- `landing_cleanup_schedule`: runs only when a merged record not cleaned yet is older than the retention
  cutoff, by the record times each merge and cleanup record (`defs/cleanup_due.py`), or when that cannot be
  known; otherwise skips naming when the earliest such record becomes deletable;
- `reconcile_schedule`: checks the replicas a merge changed since the last reconciliation (and checks that
  never ran or raised); checks that read no warehouse (the changefeed's, the SQL Server copies') always run.
"""


import datetime as dt
import time
from collections.abc import Iterable, Sequence

import dagster as dg
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import PipelineConfig, ScheduleConfig, TableConfig
from tidb_pipeline.defs.checks import RECONCILE_JOB
from tidb_pipeline.defs.cleanup_due import cleaned_observation, cleanup_due, wrote_rows
from tidb_pipeline.defs.idle import ACTIVE_STATUSES, active_runs, read_offsets, table_states
from tidb_pipeline.defs.tables import table_keys, table_names
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.replication.cleanup import cleanup_sql
from tidb_pipeline.replication.ddl import create_watermark_sql
from tidb_pipeline.resources.warehouse import is_missing_object, warehouse_session


# Every land-and-merge run carries its table group in this tag; the instance's run queue allows one run per
# value at a time (`tag_concurrency_limits` in dagster.yaml), since a second one would only wait on the
# landing lock and then find nothing new.
GROUP_TAG = "tidb_pipeline/group"


CLEANUP_JOB = "landing_cleanup"
TRIGGER_TAG = "tidb_pipeline/trigger"


def merge_job_name(group: str) -> str:
    return f"merge_{group}"


def merge_targets(config: PipelineConfig, tables: Iterable[TableConfig]) -> list[dg.AssetKey]:
    """The assets a merge run of `tables` materialises: the landing table when Dagster loads it, the replica."""
    keys: list[dg.AssetKey] = []
    for t in tables:
        k = table_keys(config, t)
        if config.landing_mode_of(t) == "builtin":
            keys.append(k.landing)
        keys.append(k.replica)
    return keys


def _merge_selection(config: PipelineConfig, tables: tuple[TableConfig, ...]) -> dg.AssetSelection:
    # Checks run in the reconcile job; a merge every minute should not rescan the tables.
    return dg.AssetSelection.assets(*merge_targets(config, tables)).without_checks()


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


def merge_safety_net(instance: dg.DagsterInstance, config: PipelineConfig, group: str,
                     kafka: KafkaResource) -> dg.RunRequest | dg.SkipReason:
    """A run of the group's tables that have merge work left, or why there is none (no warehouse statement)."""
    tables = config.groups[group]
    if active := active_runs(instance, GROUP_TAG, group):
        return dg.SkipReason(f"group {group}: run {active[0][:8]} is queued or running and takes whatever moved")
    states = table_states(instance, config, tables, read_offsets(config, tables, kafka))
    pending = [s for s in states.values() if s.pending]
    if not pending:
        return dg.SkipReason(
            f"nothing moved in the {len(tables)} table(s) of group {group}: Kafka's offsets equal what was landed "
            "and merged, so no warehouse statement was issued")
    reasons = "; ".join(f"{s.table.db}.{s.table.table}: {s.pending}" for s in pending)
    return dg.RunRequest(
        asset_selection=merge_targets(config, [s.table for s in pending]),
        # Without this Dagster adds every check of the selected replicas to the run.
        asset_check_keys=[],
        tags={GROUP_TAG: group, TRIGGER_TAG: "schedule", "tidb_pipeline/pending": reasons[:1000]},
    )


def _status(schedule: ScheduleConfig) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if schedule.enabled else dg.DefaultScheduleStatus.STOPPED


def build_merge_schedules(*, config: PipelineConfig) -> list[dg.ScheduleDefinition]:
    """Per table group, the safety-net merge on the group's cron (see the module docstring)."""

    def build(group: str) -> dg.ScheduleDefinition:
        @dg.schedule(
            name=f"{merge_job_name(group)}_schedule", job_name=merge_job_name(group),
            cron_schedule=config.merge_schedules[group].cron, default_status=_status(config.merge_schedules[group]),
            description=f"Safety net behind the offsets sensor: merges the `{group}` tables with work left, "
                        "skipping without a warehouse statement when nothing moved.",
        )
        def _schedule(context: dg.ScheduleEvaluationContext, kafka: KafkaResource) -> dg.RunRequest | dg.SkipReason:
            return merge_safety_net(context.instance, config, group, kafka)

        return _schedule

    return [build(group) for group in config.groups]


def build_cleanup_job(*, config: PipelineConfig) -> dg.JobDefinition:
    """Deletes landing rows already merged and older than the retention window; never TRUNCATE."""

    @dg.op(name="cleanup_landing_tables", description="Delete merged landing rows older than the retention window.")
    def _cleanup(context: dg.OpExecutionContext, snowflake: SnowflakeResource) -> int:
        now = dt.datetime.now(dt.timezone.utc)  # taken before any DELETE: merges recorded before it are covered
        retention = dt.timedelta(hours=config.retention_hours)
        total = 0
        with warehouse_session(snowflake, config.snowflake.session) as wh:
            for t in config.tables:
                names = table_names(config, t)
                wh.execute(create_watermark_sql(names.watermarks))
                deleted = 0
                try:
                    wh.execute(cleanup_sql(names.landing, names.watermarks, names.replica, now, retention,
                                           names.landed_offsets, names.topic))
                    deleted = int(wh.rowcount or 0)
                except Exception as exc:  # noqa: BLE001 - a table not landed yet has nothing to clean
                    if not is_missing_object(exc):
                        raise
                total += deleted
                context.log_event(cleaned_observation(config, t, deleted, now))
        context.log.info(f"landing cleanup deleted {total} merged rows older than {retention}")
        return total

    @dg.job(name="landing_cleanup", description="Delete landing rows at or below the merged watermark and past retention.")
    def _job() -> None:
        _cleanup()

    return _job


def _active_job(instance: dg.DagsterInstance, job: str) -> list[str]:
    records = instance.get_run_records(dg.RunsFilter(job_name=job, statuses=ACTIVE_STATUSES), limit=1)
    return [r.dagster_run.run_id for r in records]


def _last_run_start(instance: dg.DagsterInstance, job: str, statuses: Sequence[dg.DagsterRunStatus]) -> float | None:
    records = instance.get_run_records(dg.RunsFilter(job_name=job, statuses=list(statuses)), limit=1)
    return records[0].start_time if records else None


def merged_rows_since(instance: dg.DagsterInstance, replica: dg.AssetKey, since: float | None) -> bool:
    """Whether any merge of `replica` wrote rows after `since` (epoch s; None: ever). Dagster reads only."""
    cursor = None
    while True:
        page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=replica, after_timestamp=since),
                                               limit=200, cursor=cursor)
        if any(wrote_rows(r.asset_materialization.metadata) for r in page.records if r.asset_materialization):
            return True
        if not page.has_more:
            return False
        cursor = page.cursor


def cleanup_gate(instance: dg.DagsterInstance, config: PipelineConfig,
                 now: float | None = None) -> dg.RunRequest | dg.SkipReason:
    """Cleanup only when a merged record not cleaned yet is past retention, or that cannot be known
    (`defs/cleanup_due.py`); the skip reason names when the earliest one becomes deletable."""
    if active := _active_job(instance, CLEANUP_JOB):
        return dg.SkipReason(f"cleanup run {active[0][:8]} is queued or running")
    due, why = cleanup_due(instance, config, GROUP_TAG, now=time.time() if now is None else now)
    if due:
        return dg.RunRequest(tags={TRIGGER_TAG: "schedule", "tidb_pipeline/cleanup_due": why[:1000]})
    return dg.SkipReason(why)


def build_cleanup_schedule(*, config: PipelineConfig) -> dg.ScheduleDefinition:
    @dg.schedule(name="landing_cleanup_schedule", job_name=CLEANUP_JOB, cron_schedule=config.cleanup_schedule.cron,
                 default_status=_status(config.cleanup_schedule),
                 description="Deletes merged landing rows past retention; skips, without a warehouse statement, "
                             "until a merged record not cleaned yet is past retention.")
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        return cleanup_gate(context.instance, config)

    return _schedule



def _worth_rerunning(record: object | None) -> bool:
    """Never evaluated, or the check raised (a service down, say). A verdict on unchanged data would repeat."""
    evaluation = getattr(record, "evaluation", None)
    return evaluation is None or (not evaluation.passed and "error" in evaluation.metadata)


def reconcile_gate(instance: dg.DagsterInstance, config: PipelineConfig,
                   check_keys: Sequence[dg.AssetCheckKey]) -> dg.RunRequest | dg.SkipReason:
    """The checks worth running: on replicas a merge changed since the last reconciliation, or whose check never
    ran or raised last time, plus every check that reads no warehouse (changefeed, SQL Server copies).

    A failing verdict on a replica that did not change since would only repeat (its alert stays open).
    """
    if active := _active_job(instance, RECONCILE_JOB):
        return dg.SkipReason(f"reconcile run {active[0][:8]} is queued or running")
    last = _last_run_start(instance, RECONCILE_JOB, [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE])
    replicas = {table_keys(config, t).replica for t in config.tables}
    free = [k for k in check_keys if k.asset_key not in replicas]
    on_replicas = [k for k in check_keys if k.asset_key in replicas]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(on_replicas)
    chosen: list[dg.AssetCheckKey] = []
    for replica in sorted(replicas, key=lambda k: k.to_user_string()):
        mine = [k for k in on_replicas if k.asset_key == replica]
        if last is None or any(_worth_rerunning(latest.get(k)) for k in mine) or merged_rows_since(instance, replica, last):
            chosen += mine
    if not chosen and not free:
        return dg.SkipReason("no replica changed since the last reconciliation")
    tables = len({k.asset_key for k in chosen})
    return dg.RunRequest(asset_check_keys=[*free, *chosen],
                         tags={TRIGGER_TAG: "schedule", "tidb_pipeline/replicas_checked": str(tables)})


def build_reconcile_schedule(*, config: PipelineConfig) -> dg.ScheduleDefinition:
    @dg.schedule(name=f"{RECONCILE_JOB}_schedule", job_name=RECONCILE_JOB, cron_schedule=config.reconcile_schedule.cron,
                 default_status=_status(config.reconcile_schedule),
                 description="Runs the checks of replicas a merge changed since the last reconciliation (or that did "
                             "not pass), and the checks that read no warehouse; replicas that did not move are skipped.")
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        keys = sorted(context.repository_def.asset_graph.asset_check_keys, key=lambda k: k.to_user_string())
        return reconcile_gate(context.instance, config, keys)

    return _schedule
