"""When the landing cleanup has work: a merged record not cleaned yet is older than the retention cutoff.

Decided from the Dagster instance alone (no warehouse statement), with the same notion of age as the cleanup's
DELETE (`replication.cleanup.RECORD_TIME_SQL`: Kafka CreateTime, else LogAppendTime, else the connector's push
time, else 0):
- each merge records the oldest and newest record time of the landing rows it read (`OLDEST_RECORD`,
  `NEWEST_RECORD` on the replica materialization, computed in the merge's own statistics query);
- each cleanup records, per table, on an observation of the landing asset, its cutoff (`CLEANUP_CUTOFF`, epoch
  ms) and when it started (`CLEANUP_STARTED`): every row of a merge committed before that start and with a
  record time below the cutoff is gone (but the highest landed offset of a partition, which stays on purpose).

A merge's records not cleaned yet have times in [oldest, newest], or, when a cleanup started after the merge,
in [max(oldest, cutoff), newest] (nothing when newest is below the cutoff). The cleanup is due when such a
time is below now - retention. What cannot be known counts as "maybe old" (due at once), never as clean:
- a merge that read rows but recorded no record times (an older version): times in [0, its time + skew];
- a land-and-merge run of the table's group that failed or was canceled without recording the table's merge:
  it may have committed one (a crash after COMMIT), so the same, up to the run's end + skew;
- a table with no cleanup recorded: every merge it ever had counts.
Merges (and failed runs) are read from the last cleanup's cutoff minus `CLOCK_SKEW` on: one that committed
earlier holds records older than the cutoff (producers' clocks are trusted to that skew), which that cleanup
deleted. In connector mode the rows land without us, but a row is deletable only once merged, and every
merged row is read by the merge that passes its offset, so the same rule holds. A row re-delivered by the
connector below the watermark after that merge is deleted by the next cleanup that runs for any reason, and
so is a partition's highest landed row, which a cleanup keeps until a higher offset lands and is merged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.tables import NEWEST_RECORD, OLDEST_RECORD, table_keys
from tidb_pipeline.replication.cleanup import cutoff_ms

CLEANUP_CUTOFF = "cleanup_cutoff_ms"  # landing observation: rows merged before the start, older than this, are gone
CLEANUP_STARTED = "cleanup_started_at"  # landing observation: when the cleanup began (epoch s), before its DELETE
# Kafka timestamps come from the producers' clocks, Dagster's from ours: how far they are trusted to agree.
CLOCK_SKEW = dt.timedelta(hours=1)
_ROW_COUNTS = ("landing_rows_read", "rows_inserted", "rows_updated", "rows_deleted")
_FAILED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def wrote_rows(metadata: Mapping[str, Any]) -> bool:
    """Whether a replica materialization read or changed rows."""
    values = [metadata.get(k) for k in _ROW_COUNTS]
    return any(int(_plain(v) or 0) > 0 for v in values if v is not None)


@dataclass(frozen=True)
class Cleaned:
    """What the last cleanup of a table recorded: rows merged before `started` (epoch s) older than `cutoff_ms`
    are gone."""

    started: float
    cutoff_ms: int


@dataclass(frozen=True)
class Waiting:
    """Merged records of a table not cleaned yet: the earliest record time among them (epoch ms), and why."""

    table: TableConfig
    earliest_ms: int
    why: str


def cleaned_observation(config: PipelineConfig, table: TableConfig, deleted: int,
                        now: dt.datetime) -> dg.AssetObservation:
    """What a cleanup that started at `now` records on the table's landing asset after its DELETE."""
    retention = dt.timedelta(hours=config.retention_hours)
    return dg.AssetObservation(asset_key=table_keys(config, table).landing, metadata={
        "rows_deleted_by_cleanup": deleted, "retention_hours": config.retention_hours,
        CLEANUP_CUTOFF: cutoff_ms(now, retention), CLEANUP_STARTED: now.timestamp(),
        "cleaned_records_before": dg.MetadataValue.timestamp(now - retention),
    })


def last_cleaned(instance: dg.DagsterInstance, landing: dg.AssetKey) -> Cleaned | None:
    """The latest cleanup record of a landing table; None before any (or one written by an older version)."""
    page = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=landing), limit=1, ascending=False)
    for record in page.records:
        observation = record.asset_observation
        metadata = observation.metadata if observation is not None else {}
        cutoff, started = _plain(metadata.get(CLEANUP_CUTOFF)), _plain(metadata.get(CLEANUP_STARTED))
        if cutoff is not None and started is not None:
            return Cleaned(float(started), int(cutoff))
    return None


def _uncleaned(oldest: int, newest: int, committed: float, cleaned: Cleaned | None) -> int | None:
    """The earliest record time in [oldest, newest] the last cleanup did not cover; None: all covered."""
    if cleaned is not None and committed <= cleaned.started:
        oldest = max(oldest, cleaned.cutoff_ms)
    return oldest if oldest <= newest else None


def _ms(epoch_s: float) -> int:
    return int(epoch_s * 1000)


def failed_runs(instance: dg.DagsterInstance, group_tag: str, group: str) -> list[dg.RunRecord]:
    """The group's latest land-and-merge runs that failed or were canceled, newest first."""
    return list(instance.get_run_records(dg.RunsFilter(tags={group_tag: group}, statuses=_FAILED), limit=50))


def waiting_records(instance: dg.DagsterInstance, config: PipelineConfig, table: TableConfig,
                    failed: Sequence[dg.RunRecord]) -> Waiting | None:
    """The earliest merged record of `table` that may still be in its landing table; None when none can be."""
    keys = table_keys(config, table)
    cleaned = last_cleaned(instance, keys.landing)
    since = None if cleaned is None else cleaned.cutoff_ms / 1000 - CLOCK_SKEW.total_seconds()
    skew_ms = _ms(CLOCK_SKEW.total_seconds())
    best: Waiting | None = None

    def consider(earliest: int | None, why: str) -> None:
        nonlocal best
        if earliest is not None and (best is None or earliest < best.earliest_ms):
            best = Waiting(table, earliest, why)

    recorded_runs: set[str] = set()
    cursor = None
    while True:
        page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=keys.replica, after_timestamp=since),
                                               limit=200, cursor=cursor)
        for r in page.records:
            recorded_runs.add(r.run_id)
            metadata = r.asset_materialization.metadata if r.asset_materialization is not None else {}
            if not wrote_rows(metadata):
                continue
            oldest, newest = _plain(metadata.get(OLDEST_RECORD)), _plain(metadata.get(NEWEST_RECORD))
            when = dt.datetime.fromtimestamp(r.timestamp, dt.timezone.utc)
            if oldest is None or newest is None:
                consider(_uncleaned(0, _ms(r.timestamp) + skew_ms, r.timestamp, cleaned),
                         f"the merge at {when:%Y-%m-%d %H:%M} UTC recorded no record times")
            else:
                consider(_uncleaned(int(oldest), int(newest), r.timestamp, cleaned),
                         f"merged at {when:%Y-%m-%d %H:%M} UTC")
        if not page.has_more:
            break
        cursor = page.cursor
    # The latest failed run (of the table's group) that did not record this table's merge spans the most: it
    # alone needs checking.
    for run in failed:
        selection = run.dagster_run.asset_selection  # empty or None: the whole job
        if run.dagster_run.run_id in recorded_runs or (selection and keys.replica not in selection):
            continue
        end = run.end_time or run.update_timestamp.timestamp()
        if since is None or end > since:
            consider(_uncleaned(0, _ms(end) + skew_ms, end, cleaned),
                     f"run {run.dagster_run.run_id[:8]} failed without recording its merge (it may have committed one)")
        break
    return best


def cleanup_due(instance: dg.DagsterInstance, config: PipelineConfig, group_tag: str, *,
                now: float) -> tuple[bool, str]:
    """(due, why): due when a merged record not cleaned yet is older than `now` - retention."""
    retention = dt.timedelta(hours=config.retention_hours)
    cutoff = _ms(now - retention.total_seconds())
    failed = {group: failed_runs(instance, group_tag, group) for group in config.groups}
    waiting = [w for group, tables in config.groups.items() for t in tables
               if (w := waiting_records(instance, config, t, failed[group])) is not None]
    if not waiting:
        return False, ("every merged record was cleaned or none was merged: nothing can become deletable until a "
                       "merge reads new rows, no warehouse statement")
    first = min(waiting, key=lambda w: w.earliest_ms)
    name = f"{first.table.db}.{first.table.table}"
    if first.earliest_ms < cutoff:
        return True, f"{name}: a record {first.why} is older than the {config.retention_hours:g} h retention"
    eligible = dt.datetime.fromtimestamp((first.earliest_ms + 1) / 1000 + retention.total_seconds(), dt.timezone.utc)
    return False, (f"no merged record is older than the {config.retention_hours:g} h retention yet: the earliest not "
                   f"cleaned ({name}, {first.why}) becomes deletable at {eligible:%Y-%m-%d %H:%M:%S} UTC; "
                   "no warehouse statement")

