"""The Kafka offsets sensor: watch every topic's end offsets and trigger merges for tables that moved.

Each tick reads the end offset of every partition of every configured topic with one admin `list_offsets`
call (split into chunks only past `chunk_partitions`), compares them with the offsets in the cursor, and

- logs an `AssetObservation` on `kafka/<topic>` for each topic that moved (end offsets per partition, new
  messages and messages/s since that topic was last checked);
- requests ONE run per table group whose topics moved, on the group's `merge_<group>` job, selecting the
  landing and replica assets of exactly the moved `builtin` tables. The `run_key` is a hash of the group and
  the moved topics' end offsets, so a tick evaluated twice from the same cursor (a daemon restart before the
  cursor was saved) asks for the same run and Dagster starts it once;
- for `connector` tables (the Snowflake Sink lands them, on its own schedule) a moved topic is not yet work:
  the trigger is the sink's committed consumer-group offsets getting ahead of what the replica merged
  (`defs/idle.py`), with a `run_key` from those offsets;
- records, on each replica that holds everything in Kafka and has not been materialized for a while, a
  runless materialization marked `verified_current` (Dagster's freshness policy counts materializations);
- otherwise skips, naming how many topics it checked. An idle tick issues no warehouse statement: it reads
  Kafka (one `list_offsets` call, one consumer-group call in connector mode) and the Dagster instance.

It never consumes messages. Partition lists come from broker metadata only when a topic is new to the
cursor, a read failed, or the lists are older than `metadata_max_age_s` (partitions can be added to a topic);
otherwise the cursor's own partition lists feed `list_offsets` directly. The tick has a time budget well
under Dagster's 60 s sensor timeout: topics are read oldest-checked first and, when the budget runs out,
the rest keep their cursor entries and are read first next tick, so nothing is lost or reported twice.

A topic the cursor has never seen counts from offset 0: whatever it holds may not be landed yet, and a
merge with nothing to do changes nothing. A corrupt or older cursor is logged and replaced by a fresh one.

`python -m tidb_pipeline.bench.sensor --bench-topics 500` times a tick against the lab's Kafka.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.idle import read_offsets, refresh_seconds, table_states, verified_current
from tidb_pipeline.defs.jobs import GROUP_TAG, TRIGGER_TAG, build_merge_jobs, merge_job_name, merge_targets
from tidb_pipeline.defs.tables import table_keys
from tidb_pipeline.resources.kafka import KafkaResource, OffsetsRead, read_end_offsets

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

_log = logging.getLogger("tidb_pipeline.sensors")

SENSOR_NAME = "kafka_offsets_sensor"
CURSOR_VERSION = 1
# Dagster kills a sensor tick after 60 s; leave room for the daemon's own work around the evaluation.
DEFAULT_BUDGET_S = 40.0


class KafkaUnavailableError(RuntimeError):
    """The brokers did not answer the metadata request."""


# --- the cursor ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicState:
    """End offsets of one topic's partitions, read at `at` (epoch seconds)."""

    at: float
    offsets: Mapping[int, int]


@dataclass(frozen=True)
class OffsetsCursor:
    """What the sensor has seen: per topic, per partition end offsets; when metadata was last read."""

    topics: Mapping[str, TopicState] = field(default_factory=dict)
    # 0 forces a metadata read on the next tick.
    metadata_at: float = 0.0


def serialize_cursor(cursor: OffsetsCursor) -> str:
    return json.dumps({
        "v": CURSOR_VERSION,
        "metadata_at": round(cursor.metadata_at, 3),
        "topics": {
            topic: {"at": round(s.at, 3), "end": {str(p): o for p, o in sorted(s.offsets.items())}}
            for topic, s in sorted(cursor.topics.items())
        },
    }, separators=(",", ":"))


def deserialize_cursor(text: str | None, log: Callable[[str], None] = _log.warning) -> OffsetsCursor:
    """The cursor in `text`; a fresh one (and a log line) when it is missing, corrupt or of another version."""
    if not text:
        return OffsetsCursor()
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION:
            raise ValueError(f"version {data.get('v') if isinstance(data, dict) else None!r}, "
                             f"expected {CURSOR_VERSION}")
        topics = {
            str(topic): TopicState(at=float(s["at"]), offsets={int(p): int(o) for p, o in s["end"].items()})
            for topic, s in data["topics"].items()
        }
        return OffsetsCursor(topics=topics, metadata_at=float(data.get("metadata_at", 0.0)))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log(f"{SENSOR_NAME}: ignoring unreadable cursor ({type(exc).__name__}: {exc}); starting fresh, "
            "so every topic with data is treated as new once")
        return OffsetsCursor()


# --- deciding what to emit (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class TopicMove:
    """One topic whose end offsets changed since the cursor last saw it."""

    topic: str
    offsets: Mapping[int, int]
    new_messages: int
    seconds: float | None  # since the topic's previous read; None when first seen
    messages_per_second: float | None


@dataclass(frozen=True)
class TickOutcome:
    cursor: OffsetsCursor
    moves: tuple[TopicMove, ...]
    checked: int
    unread: tuple[str, ...]
    errors: Mapping[str, str]
    read: frozenset[str] = frozenset()  # topics whose end offsets this tick read


def new_messages(before: Mapping[int, int], after: Mapping[int, int]) -> int:
    """Messages added between two reads; a partition whose end went back (topic re-created) counts from 0."""
    total = 0
    for p, end in after.items():
        prev = before.get(p, 0)
        total += end - prev if end >= prev else end
    return total


def diff_offsets(
    previous: OffsetsCursor, read: OffsetsRead, topics: Iterable[str], *, metadata_at: float
) -> TickOutcome:
    """The next cursor and the topics that moved; topics not read keep their previous entries."""
    topics = list(topics)
    states: dict[str, TopicState] = {t: previous.topics[t] for t in topics if t in previous.topics}
    moves: list[TopicMove] = []
    for topic in topics:
        if topic not in read.offsets:
            continue
        now = read.offsets[topic]
        before = previous.topics.get(topic)
        states[topic] = TopicState(at=read.at, offsets=dict(now))
        count = new_messages(before.offsets if before else {}, now)
        # Only new messages are worth a merge: a new empty topic or partition, a deleted topic or one
        # re-created empty just updates the cursor.
        if count == 0:
            continue
        seconds = read.at - before.at if before else None
        rate = count / seconds if seconds and seconds > 0 else None
        moves.append(TopicMove(topic, dict(now), count, seconds, rate))
    return TickOutcome(
        cursor=OffsetsCursor(topics=states, metadata_at=0.0 if read.errors else metadata_at),
        moves=tuple(moves),
        checked=len(read.offsets),
        unread=read.unread,
        errors=read.errors,
        read=frozenset(read.offsets),
    )


def run_key(group: str, moves: Iterable[TopicMove]) -> str:
    """Stable across processes: the group plus the moved topics' end offsets, order-independent."""
    payload = json.dumps(
        [group, sorted([m.topic, sorted(m.offsets.items())] for m in moves)], separators=(",", ":")
    )
    return f"{SENSOR_NAME}:{group}:{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def run_requests(config: PipelineConfig, moves: Sequence[TopicMove],
                 pending: Callable[[TableConfig], bool] = lambda _t: True) -> list[dg.RunRequest]:
    """One run per table group whose topics moved, selecting exactly the moved `builtin` tables' assets.

    `pending` drops a moved table whose records the instance shows landed and merged already (a fresh cursor
    counts every topic from 0).
    """
    moved = {m.topic: m for m in moves}
    requests: list[dg.RunRequest] = []
    for group, tables in config.groups.items():
        hit = [t for t in tables
               if config.topic(t) in moved and config.landing_mode_of(t) == "builtin" and pending(t)]
        if not hit:
            continue
        group_moves = [moved[config.topic(t)] for t in hit]
        requests.append(dg.RunRequest(
            run_key=run_key(group, group_moves),
            job_name=merge_job_name(group),
            asset_selection=merge_targets(config, hit),
            # Without this Dagster adds every check of the selected replicas to the run (they belong to the
            # reconcile job, not to every merge).
            asset_check_keys=[],
            tags={GROUP_TAG: group, TRIGGER_TAG: SENSOR_NAME,
                  "tidb_pipeline/moved_tables": str(len(hit))},
        ))
    return requests


# A run in these states has not read Kafka's end offsets yet: it will land everything there when it starts.
WAITING_STATUSES = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING]


def waiting_run(instance: dg.DagsterInstance, request: dg.RunRequest) -> str | None:
    """The id of a run of `request`'s table group that has not started and selects every asset `request` does.

    A second run behind it would find nothing left to land: without this check a busy topic queues one run per
    sensor tick while the first one waits for its turn.
    """
    records = instance.get_run_records(
        dg.RunsFilter(tags={GROUP_TAG: request.tags[GROUP_TAG]}, statuses=WAITING_STATUSES), limit=20)
    wanted = set(request.asset_selection or ())
    for record in records:
        selected = record.dagster_run.asset_selection
        if selected is None or wanted <= set(selected):
            return record.dagster_run.run_id
    return None


def sink_run_key(group: str, committed: Mapping[str, Mapping[int, int]]) -> str:
    payload = json.dumps([group, sorted([t, sorted(o.items())] for t, o in committed.items())], separators=(",", ":"))
    return f"{SENSOR_NAME}:{group}:sink:{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


@dataclass(frozen=True)
class IdleWork:
    requests: list[dg.RunRequest]  # merges the Snowflake Sink made necessary
    verified: list[dg.AssetMaterialization]  # `verified_current` records due
    pending: frozenset[str]  # topics of tables with merge work left


def idle_work(instance: dg.DagsterInstance, config: PipelineConfig, kafka: KafkaResource, outcome: TickOutcome,
              *, now: float | None = None) -> IdleWork:
    """Merges the Snowflake Sink made necessary, `verified_current` records due on idle replicas, and which
    topics' tables have merge work left.

    Only tables whose topic this tick read take part (a topic the budget skipped is not known to be idle).
    Reads Kafka's consumer-group offsets (connector tables only) and the Dagster instance, never the warehouse.
    """
    tables = [t for t in config.tables if config.topic(t) in outcome.read]
    if not tables:
        return IdleWork([], [], frozenset())
    end = {config.topic(t): outcome.cursor.topics[config.topic(t)].offsets for t in tables}
    offsets = read_offsets(config, tables, kafka, end=end)
    states = table_states(instance, config, tables, offsets)
    requests: list[dg.RunRequest] = []
    for group, members in config.groups.items():
        pending = [t for t in members if t in states and states[t].pending and config.landing_mode_of(t) == "connector"]
        if not pending or offsets.committed is None:
            continue  # an unreadable sink group is the safety-net schedule's to handle
        committed = {config.topic(t): offsets.committed.get(config.topic(t), {}) for t in pending}
        requests.append(dg.RunRequest(
            run_key=sink_run_key(group, committed), job_name=merge_job_name(group),
            asset_selection=merge_targets(config, pending), asset_check_keys=[],
            tags={GROUP_TAG: group, TRIGGER_TAG: SENSOR_NAME, "tidb_pipeline/moved_tables": str(len(pending))},
        ))
    events = [e for t, s in states.items()
              if (e := verified_current(config, s, refresh_s=refresh_seconds(config, t), now=now)) is not None]
    return IdleWork(requests, events, frozenset(config.topic(t) for t, s in states.items() if s.pending))


def observation(config_topic_key: dg.AssetKey, move: TopicMove) -> dg.AssetObservation:
    metadata: dict[str, Any] = {
        "end_offsets": dg.MetadataValue.json({str(p): o for p, o in sorted(move.offsets.items())}),
        "end_offset_total": sum(move.offsets.values()),
        "partitions": len(move.offsets),
        "new_messages": move.new_messages,
    }
    if move.seconds is not None:
        metadata["seconds_since_last_check"] = round(move.seconds, 3)
    if move.messages_per_second is not None:
        metadata["messages_per_second"] = round(move.messages_per_second, 3)
    return dg.AssetObservation(asset_key=config_topic_key, metadata=metadata)


# --- the sensor ---------------------------------------------------------------------------------------


def _topics(config: PipelineConfig) -> dict[str, dg.AssetKey]:
    return {config.topic(t): table_keys(config, t).kafka for t in config.tables}


def evaluate(
    config: PipelineConfig,
    admin: AdminClient,
    cursor_text: str | None,
    *,
    budget_s: float,
    request_timeout_s: float,
    metadata_max_age_s: float,
    chunk_partitions: int,
    log: Callable[[str], None] = _log.warning,
) -> tuple[dg.SensorResult, TickOutcome]:
    """One tick, minus the Dagster context: what the sensor returns, and the outcome behind it."""
    deadline = time.monotonic() + budget_s
    topic_keys = _topics(config)
    previous = deserialize_cursor(cursor_text, log)
    # Oldest-checked first, so a tick cut short by the budget starts where the last one stopped.
    order = sorted(topic_keys, key=lambda t: (previous.topics[t].at if t in previous.topics else -math.inf, t))
    known = {t: sorted(s.offsets) for t, s in previous.topics.items() if s.offsets}
    refresh = time.time() - previous.metadata_at > metadata_max_age_s
    read = read_end_offsets(admin, order, known, refresh_metadata=refresh, deadline=deadline,
                            request_timeout_s=request_timeout_s, chunk_partitions=chunk_partitions)
    outcome = diff_offsets(previous, read, order,
                           metadata_at=read.at if read.metadata_read else previous.metadata_at)
    cursor = serialize_cursor(outcome.cursor)
    partial = ""
    if outcome.unread:
        partial = f"; the {budget_s:g} s budget ran out, {len(outcome.unread)} topics are read first next tick"
        log(f"{SENSOR_NAME}: checked {outcome.checked} of {len(order)} topics{partial}")
    if outcome.errors:
        topic, error = next(iter(sorted(outcome.errors.items())))
        partial += f"; {len(outcome.errors)} topics could not be read, they are retried next tick"
        log(f"{SENSOR_NAME}: end offsets of {len(outcome.errors)} topics unavailable, e.g. {topic} {error}; "
            "their cursor entries are kept and metadata is re-read next tick")
    if not outcome.moves:
        return dg.SensorResult(
            skip_reason=f"no new messages in {outcome.checked} topics checked{partial}", cursor=cursor
        ), outcome
    return dg.SensorResult(
        run_requests=run_requests(config, outcome.moves),
        asset_events=[observation(topic_keys[m.topic], m) for m in outcome.moves],
        cursor=cursor,
    ), outcome


def daemon_interval(seconds: int) -> int:
    """The `minimum_interval_seconds` that gets a sensor evaluated every `seconds` by Dagster's sensor daemon.

    The daemon looks at its sensors every 5 s and evaluates one whose last tick *started* at least its minimum
    interval ago; that tick started a few milliseconds after its own loop began, so with an interval equal to a
    multiple of the loop about half the looks find it just short and wait a whole loop more (measured: ticks 5
    and 10 s apart for a 5 s interval, a sensor's run requests 7.5 s apart on average instead of 5).
    """
    return max(1, seconds - 1)


def build_offsets_sensor(
    *,
    config: PipelineConfig,
    minimum_interval_seconds: int | None = None,
    budget_s: float = DEFAULT_BUDGET_S,
    metadata_max_age_s: float = 300.0,
    chunk_partitions: int = 10_000,
    jobs: Sequence[dg.JobDefinition | UnresolvedAssetJobDefinition] | None = None,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """The `kafka_offsets_sensor` for `config`'s topics, targeting the merge job of each table group.

    `minimum_interval_seconds` defaults to the config's `sensor_interval_seconds` (see `daemon_interval`). Pass `jobs`, the merge
    jobs the `Definitions` already hold: Dagster adds a sensor's target jobs to its `Definitions` and
    rejects a second, equal job object of the same name. `clock` dates the `verified_current` records' due time.
    """

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=list(jobs) if jobs is not None else build_merge_jobs(config=config),
        minimum_interval_seconds=minimum_interval_seconds or daemon_interval(config.sensor_interval_seconds),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Reads the end offsets of {len(config.tables)} topics in one list_offsets call per tick; "
            "observes topics that moved and requests one merge run per table group for their tables."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource) -> dg.SensorResult:
        if not config.tables:
            return dg.SensorResult(skip_reason="no tables configured")
        try:
            result, outcome = evaluate(
                config, kafka.admin(), context.cursor, budget_s=budget_s,
                request_timeout_s=kafka.request_timeout_s, metadata_max_age_s=metadata_max_age_s,
                chunk_partitions=chunk_partitions, log=context.log.warning,
            )
        except KafkaException as exc:
            # The tick fails and keeps its cursor; the next tick starts from the same offsets.
            raise KafkaUnavailableError(
                f"{SENSOR_NAME}: cannot read topic metadata from Kafka at {kafka.bootstrap_servers}: {exc}; "
                "check that the brokers are up and KAFKA_BOOTSTRAP_SERVERS / the API key are right"
            ) from exc
        if outcome.moves:
            context.log.info(f"{len(outcome.moves)} of {outcome.checked} topics moved: "
                             f"{sum(m.new_messages for m in outcome.moves)} new messages")
        idle = idle_work(context.instance, config, kafka, outcome, now=clock())
        # Unread topics (budget, errors) keep the plain rule: moved means work.
        merges = run_requests(config, outcome.moves,
                              lambda t: config.topic(t) in idle.pending or config.topic(t) not in outcome.read)
        waiting = {r.tags[GROUP_TAG]: run for r in merges if (run := waiting_run(context.instance, r))}
        merges = [r for r in merges if r.tags[GROUP_TAG] not in waiting]
        events = [*(result.asset_events or []), *idle.verified]
        if merges or idle.requests:
            return dg.SensorResult(run_requests=[*merges, *idle.requests], asset_events=events, cursor=result.cursor)
        reason = result.skip_reason.skip_message if result.skip_reason else \
            f"{len(outcome.moves)} topic(s) moved, their records already landed and merged"
        if idle.verified:
            reason += f"; {len(idle.verified)} idle replica(s) recorded verified_current"
        if waiting:
            reason = "; ".join(f"group {g}: run {run[:8]} has not started yet and will land what moved"
                               for g, run in sorted(waiting.items()))
        return dg.SensorResult(skip_reason=reason, asset_events=events, cursor=result.cursor)

    return _sensor
