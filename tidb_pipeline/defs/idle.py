"""Quiet when idle: decide whether a table has merge work without asking the warehouse.

On Snowflake every statement resumes a warehouse (billed at least 60 s), so the scheduled safety nets (merge,
cleanup, reconciliation) and the offsets sensor first compare offsets they can read for free with what the
Dagster instance recorded about the last landing and merge, and skip, saying why, when nothing moved.

What was merged comes from Dagster, never from a landing-table scan:
- `builtin` tables: the latest landing materialization's `offsets_after` (next offsets it landed through,
  poison records included) and whether the latest replica materialization came after it. A merge that
  starts after a landing committed merges every row that landing wrote (the merge reads every landed row
  above its watermark, uncapped), so "Kafka's end offsets == offsets_after, and the replica was merged
  after" means nothing is left; anything else is work.
- `connector` tables: the Snowflake Sink's committed consumer-group offsets (what it has landed; it commits
  after writing) against the `merged_through` map the merge step records on each replica materialization
  (the watermark per partition after the merge). A replica materialization without that map (written by an
  older version) counts as unknown, so the next merge runs and records it.

A replica that holds everything in Kafka is "current". While idle, the offsets sensor records that on the
replica as a runless materialization with `verified_current` metadata (at most every `refresh_s`), because
Dagster's freshness policy measures the time since the last materialization: without it an idle, perfectly
up-to-date replica would turn stale in the UI. Such a record carries `merged_through` forward unchanged.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from confluent_kafka import ConsumerGroupTopicPartitions

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.tables import table_keys
from tidb_pipeline.replication.progress import offsets_text, parse_partition_offsets, unlanded, unmerged
from tidb_pipeline.resources.kafka import KafkaResource

MERGED_THROUGH = "merged_through"  # replica metadata: {"<partition>": last merged offset}
VERIFIED_CURRENT = "verified_current"  # replica metadata on the sensor's runless "nothing to merge" records
LANDED_THROUGH = "offsets_after"  # landing metadata: next offset per partition after the load
ACTIVE_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
           dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, dg.MetadataValue) else value


@dataclass(frozen=True)
class Latest:
    """The latest materialization of one asset, as the instance stored it."""

    storage_id: int
    timestamp: float
    run_id: str
    metadata: Mapping[str, Any]

    def get(self, name: str) -> Any:
        return _plain(self.metadata.get(name))


def latest_materializations(instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey]) -> dict[dg.AssetKey, Latest]:
    """One instance query for all `keys`; keys never materialized are absent."""
    out: dict[dg.AssetKey, Latest] = {}
    for record in instance.get_asset_records(list(keys)):
        last = record.asset_entry.last_materialization_record
        if last is None or last.asset_materialization is None:
            continue
        out[record.asset_entry.asset_key] = Latest(last.storage_id, last.timestamp, last.run_id,
                                                   dict(last.asset_materialization.metadata))
    return out


@dataclass(frozen=True)
class TableState:
    """One table's position: the merge work left (None: none) and whether the replica holds all of Kafka."""

    table: TableConfig
    pending: str | None
    current: bool
    replica: Latest | None

    @property
    def merged_through(self) -> dict[int, int] | None:
        return merged_through(self.replica)


def merged_through(replica: Latest | None) -> dict[int, int] | None:
    """The watermarks a replica materialization recorded ({} before any merge); None when it recorded none."""
    if replica is None:
        return {}
    value = replica.get(MERGED_THROUGH)
    return None if value is None else parse_partition_offsets(value)


class _RunStarts:
    """Run start times, read once per run id."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cache: dict[str, float | None] = {}

    def __call__(self, run_id: str) -> float | None:
        if run_id not in self.cache:
            record = self.instance.get_run_record_by_id(run_id) if run_id else None
            self.cache[run_id] = record.start_time if record is not None else None
        return self.cache[run_id]


def _merged_after(landing: Latest, replica: Latest | None, run_start: _RunStarts) -> bool:
    """Whether the replica's latest merge began after the landing committed (so it merged what was landed)."""
    if replica is None or replica.storage_id < landing.storage_id:
        return False
    if replica.run_id == landing.run_id or replica.get(VERIFIED_CURRENT):
        return True  # one run lands, then merges; a verified record was written only when this held
    started = run_start(replica.run_id)
    return started is not None and started >= landing.timestamp


def builtin_state(table: TableConfig, end: Mapping[int, int], landing: Latest | None, replica: Latest | None,
                  run_start: _RunStarts) -> TableState:
    if landing is None:
        waiting = sum(end.values())
        return TableState(table, f"{waiting} records in Kafka and nothing landed yet" if waiting else None,
                          current=not waiting and replica is not None, replica=replica)
    landed = parse_partition_offsets(landing.get(LANDED_THROUGH) or "")
    if landed is None:
        return TableState(table, "the last landing recorded no readable offsets_after", False, replica)
    missing = unlanded(end, landed)
    if missing:
        return TableState(table, f"{sum(missing.values())} records not landed yet ({offsets_text(missing)})",
                          False, replica)
    if not _merged_after(landing, replica, run_start):
        return TableState(table, f"rows landed by run {landing.run_id[:8]} are not merged yet", False, replica)
    return TableState(table, None, True, replica)


def connector_state(table: TableConfig, end: Mapping[int, int], committed: Mapping[int, int] | None,
                    replica: Latest | None) -> TableState:
    merged = merged_through(replica)
    if committed is None:
        return TableState(table, "the Snowflake Sink's committed offsets could not be read", False, replica)
    if merged is None:
        waiting = sum(committed.values())
        return TableState(table, "the last merge recorded no merged_through offsets" if waiting else None,
                          False, replica)
    landed_unmerged = unmerged(committed, merged)
    behind = unmerged(end, merged)
    pending = (f"{sum(landed_unmerged.values())} records landed by the sink are not merged "
               f"({offsets_text(landed_unmerged)})") if landed_unmerged else None
    return TableState(table, pending, current=not behind and replica is not None, replica=replica)


def sink_committed(kafka: KafkaResource, group: str, topics: Sequence[str]) -> dict[str, dict[int, int]]:
    """Next offsets the consumer `group` committed, per topic and partition (topics it never committed: {})."""
    out: dict[str, dict[int, int]] = {t: {} for t in topics}
    if not topics:
        return out
    admin = kafka.admin()  # kept referenced until the future resolves
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                               request_timeout=kafka.request_timeout_s)[group]
    for tp in future.result(timeout=kafka.request_timeout_s + 5).topic_partitions or []:
        if tp.topic in out and tp.offset >= 0:
            out[tp.topic][tp.partition] = tp.offset
    return out


@dataclass(frozen=True)
class Offsets:
    """What Kafka says, read without the warehouse: end offsets of every topic, the sink's committed offsets."""

    end: Mapping[str, Mapping[int, int]]
    committed: Mapping[str, Mapping[int, int]] | None  # None: the sink's group could not be read


def read_offsets(config: PipelineConfig, tables: Iterable[TableConfig], kafka: KafkaResource,
                 end: Mapping[str, Mapping[int, int]] | None = None) -> Offsets:
    """Kafka's offsets for `tables` (`end` when the caller already read them): one or two admin calls."""
    tables = list(tables)
    topics = [config.topic(t) for t in tables]
    end = end if end is not None else kafka.end_offsets(topics)
    sink_topics = [config.topic(t) for t in tables if config.landing_mode_of(t) == "connector"]
    committed: Mapping[str, Mapping[int, int]] | None = {}
    if sink_topics:
        try:
            committed = sink_committed(kafka, config.connectors.snowflake_sink_group, sink_topics)
        except Exception:  # noqa: BLE001 - no such group or no right to read it: unknown, never "nothing to do"
            committed = None
    return Offsets(end, committed)


def table_states(instance: dg.DagsterInstance, config: PipelineConfig, tables: Iterable[TableConfig],
                 offsets: Offsets) -> dict[TableConfig, TableState]:
    """Each table's merge work and currency, from `offsets` and one instance query (no warehouse)."""
    tables = list(tables)
    keys = [k for t in tables for k in (table_keys(config, t).landing, table_keys(config, t).replica)]
    latest = latest_materializations(instance, keys)
    run_start = _RunStarts(instance)
    out: dict[TableConfig, TableState] = {}
    for t in tables:
        k, topic = table_keys(config, t), config.topic(t)
        end = offsets.end.get(topic, {})
        if config.landing_mode_of(t) == "connector":
            committed = None if offsets.committed is None else offsets.committed.get(topic, {})
            out[t] = connector_state(t, end, committed, latest.get(k.replica))
        else:
            out[t] = builtin_state(t, end, latest.get(k.landing), latest.get(k.replica), run_start)
    return out


def active_runs(instance: dg.DagsterInstance, tag: str, value: str) -> list[str]:
    """Ids of runs tagged `tag=value` that are queued or running."""
    records = instance.get_run_records(dg.RunsFilter(tags={tag: value}, statuses=ACTIVE_STATUSES), limit=5)
    return [r.dagster_run.run_id for r in records]


def verified_current(config: PipelineConfig, state: TableState, *, refresh_s: float,
                     now: float | None = None) -> dg.AssetMaterialization | None:
    """The runless record saying "nothing to merge, the replica holds all of Kafka", when one is due."""
    if not state.current or state.replica is None:
        return None
    now = time.time() if now is None else now
    if now - state.replica.timestamp < refresh_s:
        return None
    metadata: dict[str, Any] = {
        VERIFIED_CURRENT: True,
        "note": "no new records since the last merge: nothing to merge, no warehouse statement issued",
        "verified_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="seconds"),
    }
    through = state.merged_through
    if through is not None:
        metadata[MERGED_THROUGH] = dg.MetadataValue.json({str(p): o for p, o in sorted(through.items())})
    return dg.AssetMaterialization(asset_key=table_keys(config, state.table).replica, metadata=metadata)


def refresh_seconds(config: PipelineConfig, table: TableConfig) -> float:
    """How often an idle replica is re-verified: well inside its freshness warn window."""
    return max(60.0, config.freshness_of(table).warn_after_minutes * 60 / 4)
