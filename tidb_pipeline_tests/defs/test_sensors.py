"""The offsets sensor against the lab's real Kafka: skips, batched run requests, exact observations, cursor.

Every test creates its own topics (unique names) and a config naming tables whose topics they are, then
evaluates the sensor from `build_defs` with `build_sensor_context`, so run requests are validated against
the real merge jobs.
"""

from __future__ import annotations

import json
import random
import socket
import time
import uuid
from collections.abc import Mapping, Sequence

import dagster as dg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic, OffsetSpec

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.sensors import (
    SENSOR_NAME,
    KafkaUnavailableError,
    OffsetsCursor,
    TopicState,
    build_offsets_sensor,
    daemon_interval,
    deserialize_cursor,
    diff_offsets,
    serialize_cursor,
)
from tidb_pipeline.lab.service import Service
from tidb_pipeline.resources.kafka import KafkaResource, OffsetsRead, read_end_offsets

# --- helpers -------------------------------------------------------------------------------------------


def _wait_readable(bootstrap: str, partitions: Mapping[str, int], timeout: float = 60) -> None:
    """Until list_offsets answers for every partition (a new topic's leader takes a moment)."""
    deadline = time.monotonic() + timeout
    request = {TopicPartition(t, p): OffsetSpec.latest() for t, n in partitions.items() for p in range(n)}
    while True:
        # A fresh client each time: an old one's cached metadata does not know partitions added since.
        admin = AdminClient({"bootstrap.servers": bootstrap})
        try:
            for future in admin.list_offsets(request, request_timeout=10).values():
                future.result(timeout=15)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _create(admin: AdminClient, bootstrap: str, partitions: Mapping[str, int]) -> None:
    futures = admin.create_topics([NewTopic(t, num_partitions=n, replication_factor=1) for t, n in partitions.items()])
    for future in futures.values():
        future.result(timeout=30)
    _wait_readable(bootstrap, partitions)


def _produce(bootstrap: str, topic: str, per_partition: Mapping[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for partition, n in per_partition.items():
        for i in range(n):
            producer.produce(topic, key=f"k{i}".encode(), value=b"v", partition=partition)
    assert producer.flush(30) == 0


def _config(db: str, tables: Sequence[tuple[str, str]], **extra: object) -> PipelineConfig:
    """Tables (name, group) in database `db`; their topics are `tidb_<db>_<name>`."""
    groups = sorted({g for _, g in tables})
    return parse_config({
        "merge_schedules": {g: {"cron": "* * * * *"} for g in groups},
        "tables": [{"db": db, "table": name, "group": group} for name, group in tables],
        **extra,
    })


def _merge_keys(db: str, table: str) -> set[dg.AssetKey]:
    # Written out independently of the factories' naming helpers.
    return {dg.AssetKey(["snowflake", "LANDING", f"TIDB_{db}_{table}".upper()]),
            dg.AssetKey(["snowflake", "REPLICA", table.upper()])}


class _Lab:
    """Fresh topics for one test plus a way to run the sensor of `build_defs` against them."""

    def __init__(self, kafka: Service, tables: Sequence[tuple[str, str]], partitions: int = 3,
                 create: bool = True) -> None:
        self.bootstrap = kafka.address()
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
        self.db = f"s{uuid.uuid4().hex[:10]}"
        self.config = _config(self.db, tables)
        self.defs = build_defs(config=self.config)
        self.resource = KafkaResource(bootstrap_servers=self.bootstrap)
        self.instance = dg.DagsterInstance.ephemeral()
        if create:
            _create(self.admin, self.bootstrap, {self.topic(name): partitions for name, _ in tables})

    def topic(self, table: str) -> str:
        return f"tidb_{self.db}_{table}"

    def tick(self, cursor: str | None, sensor: dg.SensorDefinition | None = None) -> dg.SensorExecutionData:
        sensor = sensor or self.defs.get_repository_def().get_sensor_def(SENSOR_NAME)
        context = dg.build_sensor_context(cursor=cursor, resources={"kafka": self.resource}, definitions=self.defs,
                                          instance=self.instance)
        return sensor.evaluate_tick(context)


def _observations(data: dg.SensorExecutionData) -> dict[dg.AssetKey, dict[str, object]]:
    out: dict[dg.AssetKey, dict[str, object]] = {}
    for event in data.asset_events:
        assert isinstance(event, dg.AssetObservation)
        out[event.asset_key] = {k: v.value for k, v in event.metadata.items()}
    return out


def _cursor_offsets(cursor: str | None) -> dict[str, dict[int, int]]:
    return {t: dict(s.offsets) for t, s in deserialize_cursor(cursor).topics.items()}


# --- tests against the lab's Kafka ----------------------------------------------------------------------


def test_no_new_data_skips_naming_the_topics_checked(kafka: Service) -> None:
    lab = _Lab(kafka, [("a", "default"), ("b", "default"), ("c", "default")])
    first = lab.tick(None)
    assert first.run_requests == []
    assert first.asset_events == []
    assert first.skip_message == "no new messages in 3 topics checked"
    assert _cursor_offsets(first.cursor) == {lab.topic(t): {0: 0, 1: 0, 2: 0} for t in "abc"}

    second = lab.tick(first.cursor)
    assert second.run_requests == []
    assert second.skip_message == "no new messages in 3 topics checked"


def test_two_topics_moved_one_batched_request_with_exact_observations(kafka: Service) -> None:
    lab = _Lab(kafka, [("a", "default"), ("b", "default"), ("c", "default")])
    before = lab.tick(None)
    _produce(lab.bootstrap, lab.topic("a"), {0: 2, 2: 1})
    _produce(lab.bootstrap, lab.topic("c"), {1: 3})

    after = lab.tick(before.cursor)
    assert after.skip_message is None
    assert len(after.run_requests) == 1
    request = after.run_requests[0]
    assert request.job_name == "merge_default"
    assert set(request.asset_selection) == _merge_keys(lab.db, "a") | _merge_keys(lab.db, "c")
    assert len(request.asset_selection) == 4
    assert request.tags["tidb_pipeline/group"] == "default"

    ends = {lab.topic("a"): {0: 2, 1: 0, 2: 1}, lab.topic("b"): {0: 0, 1: 0, 2: 0}, lab.topic("c"): {0: 0, 1: 3, 2: 0}}
    assert _cursor_offsets(after.cursor) == ends
    at_before = deserialize_cursor(before.cursor).topics
    at_after = deserialize_cursor(after.cursor).topics
    observations = _observations(after)
    expected = {}
    for table, new in (("a", 3), ("c", 3)):
        topic = lab.topic(table)
        seconds = at_after[topic].at - at_before[topic].at
        expected[dg.AssetKey(["kafka", topic])] = {
            "end_offsets": {str(p): o for p, o in ends[topic].items()},
            "end_offset_total": 3,
            "partitions": 3,
            "new_messages": new,
            "seconds_since_last_check": round(seconds, 3),
            "messages_per_second": round(new / seconds, 3),
        }
    assert observations == expected


def test_same_offsets_twice_never_double_runs(kafka: Service) -> None:
    lab = _Lab(kafka, [("a", "default"), ("b", "default")])
    base = lab.tick(None)
    _produce(lab.bootstrap, lab.topic("b"), {0: 1})

    first = lab.tick(base.cursor)
    # The daemon dies before saving the cursor: the tick is evaluated again from the same cursor.
    again = lab.tick(base.cursor)
    assert [r.run_key for r in first.run_requests] == [r.run_key for r in again.run_requests]
    assert len(first.run_requests) == 1
    assert set(first.run_requests[0].asset_selection) == set(again.run_requests[0].asset_selection) \
        == _merge_keys(lab.db, "b")
    # The saved cursor already holds these offsets: the next tick has nothing to ask for.
    next_tick = lab.tick(first.cursor)
    assert next_tick.run_requests == []
    assert next_tick.skip_message == "no new messages in 2 topics checked"

    # New data gives a new run key.
    _produce(lab.bootstrap, lab.topic("b"), {0: 1})
    later = lab.tick(next_tick.cursor)
    assert len(later.run_requests) == 1
    assert later.run_requests[0].run_key != first.run_requests[0].run_key


def test_tables_in_two_groups_get_two_requests_on_their_jobs(kafka: Service) -> None:
    lab = _Lab(kafka, [("a", "fast"), ("b", "fast"), ("c", "slow"), ("d", "slow")], partitions=1)
    base = lab.tick(None)
    _produce(lab.bootstrap, lab.topic("a"), {0: 1})
    _produce(lab.bootstrap, lab.topic("c"), {0: 2})
    _produce(lab.bootstrap, lab.topic("d"), {0: 1})

    data = lab.tick(base.cursor)
    by_job = {r.job_name: set(r.asset_selection) for r in data.run_requests}
    assert by_job == {
        "merge_fast": _merge_keys(lab.db, "a"),
        "merge_slow": _merge_keys(lab.db, "c") | _merge_keys(lab.db, "d"),
    }
    assert len({r.run_key for r in data.run_requests}) == 2
    # Only the assets: without an explicit empty check list Dagster would add the replicas' six checks.
    assert [r.asset_check_keys for r in data.run_requests] == [[], []]
    assert set(_observations(data)) == {dg.AssetKey(["kafka", lab.topic(t)]) for t in "acd"}


def _add_run(lab: _Lab, group: str, selection: set[dg.AssetKey], status: dg.DagsterRunStatus) -> str:
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._core.utils import make_new_run_id

    run_id = make_new_run_id()
    lab.instance.add_run(DagsterRun(job_name=f"merge_{group}", run_id=run_id, status=status,
                                    tags={"tidb_pipeline/group": group}, asset_selection=frozenset(selection)))
    return run_id


def test_a_group_with_a_run_not_yet_started_gets_no_second_run(kafka: Service) -> None:
    lab = _Lab(kafka, [("a", "fast"), ("b", "fast"), ("c", "slow")], partitions=1)
    base = lab.tick(None)
    # NOT_STARTED and QUEUED are read alike (a QUEUED record needs a code location's origin to be stored here).
    queued = _add_run(lab, "fast", _merge_keys(lab.db, "a") | _merge_keys(lab.db, "b"), dg.DagsterRunStatus.NOT_STARTED)
    _produce(lab.bootstrap, lab.topic("a"), {0: 1})
    _produce(lab.bootstrap, lab.topic("c"), {0: 1})

    # The queued run of `fast` selects `a` and will land what Kafka holds when it starts; `slow` has none.
    data = lab.tick(base.cursor)
    assert {r.job_name: set(r.asset_selection) for r in data.run_requests} == {"merge_slow": _merge_keys(lab.db, "c")}

    # A run that started already read its offsets: new records need another run.
    lab.instance.delete_run(queued)
    _add_run(lab, "fast", _merge_keys(lab.db, "a"), dg.DagsterRunStatus.STARTED)
    _produce(lab.bootstrap, lab.topic("a"), {0: 1})
    again = lab.tick(data.cursor)
    assert [(r.job_name, set(r.asset_selection)) for r in again.run_requests] == [("merge_fast", _merge_keys(lab.db, "a"))]

    # A waiting run that does not select the moved table does not stand in for it.
    _add_run(lab, "fast", _merge_keys(lab.db, "a"), dg.DagsterRunStatus.NOT_STARTED)
    _produce(lab.bootstrap, lab.topic("b"), {0: 1})
    later = lab.tick(again.cursor)
    assert [(r.job_name, set(r.asset_selection)) for r in later.run_requests] == [("merge_fast", _merge_keys(lab.db, "b"))]

    # Only covered work: the tick skips and names the waiting run.
    _produce(lab.bootstrap, lab.topic("a"), {0: 1})
    last = lab.tick(later.cursor)
    assert last.run_requests == []
    assert "has not started yet" in (last.skip_message or "")


def _commit(bootstrap: str, group: str, topic: str, offsets: Mapping[int, int]) -> None:
    """Commit `offsets` (next offsets) for consumer `group`, as the Snowflake Sink does after writing."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def test_connector_mode_merges_what_the_sink_committed_not_what_the_topic_holds(kafka: Service) -> None:
    lab = _Lab(kafka, [("a", "default")], partitions=1)
    lab.config = _config(lab.db, [("a", "default")], landing_mode="connector")
    lab.defs = build_defs(config=lab.config)
    replica = dg.AssetKey(["snowflake", "REPLICA", "A"])
    base = lab.tick(None)
    _produce(lab.bootstrap, lab.topic("a"), {0: 3})
    moved = lab.tick(base.cursor)
    # The topic moved, but nothing is in the landing table until the sink commits: no merge yet.
    assert moved.run_requests == []
    assert set(_observations(moved)) == {dg.AssetKey(["kafka", lab.topic("a")])}

    _commit(lab.bootstrap, "connect-tidb-pipeline-snowflake-sink", lab.topic("a"), {0: 2})
    landed = lab.tick(moved.cursor)
    # The connector writes the landing table; Dagster can only materialise the replica.
    assert [set(r.asset_selection) for r in landed.run_requests] == [{replica}]
    again = lab.tick(landed.cursor)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in landed.run_requests]  # started once

    # The merge recorded its watermarks: offset 1 merged, so the two committed records are in.
    lab.instance.report_runless_asset_event(dg.AssetMaterialization(
        replica, metadata={"merged_through": dg.MetadataValue.json({"0": 1})}))
    assert lab.tick(again.cursor).run_requests == []
    _commit(lab.bootstrap, "connect-tidb-pipeline-snowflake-sink", lab.topic("a"), {0: 3})
    assert [set(r.asset_selection) for r in lab.tick(again.cursor).run_requests] == [{replica}]


def test_corrupt_cursor_starts_fresh_and_says_so(kafka: Service, capfd: pytest.CaptureFixture[str]) -> None:
    lab = _Lab(kafka, [("a", "default"), ("b", "default")], partitions=1)
    _produce(lab.bootstrap, lab.topic("a"), {0: 4})
    capfd.readouterr()
    data = lab.tick('{"v": 1, "topics": {"x": {"at": "not a time"}}}')
    # The sensor logs through context.log, which Dagster writes to stderr.
    assert f"WARNING - {SENSOR_NAME}: ignoring unreadable cursor (ValueError: " in capfd.readouterr().err
    # Fresh: the topic with data counts from 0 and is merged once; the empty one is not.
    assert [set(r.asset_selection) for r in data.run_requests] == [_merge_keys(lab.db, "a")]
    assert _observations(data)[dg.AssetKey(["kafka", lab.topic("a")])]["new_messages"] == 4
    assert "messages_per_second" not in _observations(data)[dg.AssetKey(["kafka", lab.topic("a")])]
    assert _cursor_offsets(data.cursor) == {lab.topic("a"): {0: 4}, lab.topic("b"): {0: 0}}


def test_new_partition_and_late_topic_are_picked_up(kafka: Service) -> None:
    lab = _Lab(kafka, [("a", "default"), ("late", "default")], partitions=1, create=False)
    _create(lab.admin, lab.bootstrap, {lab.topic("a"): 1})
    sensor = build_offsets_sensor(config=lab.config, metadata_max_age_s=0,
                                  jobs=lab.defs.get_repository_def().get_sensor_def(SENSOR_NAME).jobs)
    base = lab.tick(None, sensor)
    # The changefeed has not created the second topic yet: it has no partitions, nothing to run.
    assert _cursor_offsets(base.cursor) == {lab.topic("a"): {0: 0}, lab.topic("late"): {}}
    assert base.skip_message == "no new messages in 2 topics checked"

    lab.admin.create_partitions([NewPartitions(lab.topic("a"), 2)])[lab.topic("a")].result(timeout=30)
    _create(lab.admin, lab.bootstrap, {lab.topic("late"): 1})
    _wait_readable(lab.bootstrap, {lab.topic("a"): 2})
    _produce(lab.bootstrap, lab.topic("a"), {1: 2})
    _produce(lab.bootstrap, lab.topic("late"), {0: 1})

    data = lab.tick(base.cursor, sensor)
    assert _cursor_offsets(data.cursor) == {lab.topic("a"): {0: 0, 1: 2}, lab.topic("late"): {0: 1}}
    assert [set(r.asset_selection) for r in data.run_requests] == [
        _merge_keys(lab.db, "a") | _merge_keys(lab.db, "late")
    ]
    assert {k: v["new_messages"] for k, v in _observations(data).items()} == {
        dg.AssetKey(["kafka", lab.topic("a")]): 2, dg.AssetKey(["kafka", lab.topic("late")]): 1
    }


def test_spent_budget_reads_nothing_and_keeps_the_cursor(kafka: Service) -> None:
    lab = _Lab(kafka, [("a", "default"), ("b", "default")], partitions=1)
    base = lab.tick(None)
    _produce(lab.bootstrap, lab.topic("a"), {0: 1})
    jobs = lab.defs.get_repository_def().get_sensor_def(SENSOR_NAME).jobs
    broke = build_offsets_sensor(config=lab.config, budget_s=0, jobs=jobs)

    data = lab.tick(base.cursor, broke)
    assert data.run_requests == []
    assert data.skip_message == (
        "no new messages in 0 topics checked; the 0 s budget ran out, 2 topics are read first next tick"
    )
    assert deserialize_cursor(data.cursor) == deserialize_cursor(base.cursor)
    # Nothing was lost: a tick with time reports the move.
    assert len(lab.tick(data.cursor).run_requests) == 1


def test_chunked_reads_equal_one_call(kafka: Service) -> None:
    lab = _Lab(kafka, [(f"t{i}", "default") for i in range(5)], partitions=2)
    for i in range(5):
        _produce(lab.bootstrap, lab.topic(f"t{i}"), {0: i, 1: 2 * i})
    topics = [lab.topic(f"t{i}") for i in range(5)]
    one = read_end_offsets(lab.admin, topics, {}, refresh_metadata=True, deadline=time.monotonic() + 30,
                           request_timeout_s=10)
    known = {t: [0, 1] for t in topics}
    chunked = read_end_offsets(lab.admin, topics, known, refresh_metadata=False, deadline=time.monotonic() + 30,
                               request_timeout_s=10, chunk_partitions=3)
    expected = {lab.topic(f"t{i}"): {0: i, 1: 2 * i} for i in range(5)}
    assert (one.offsets, one.calls, one.metadata_read) == (expected, 1, True)
    # 3 partitions per chunk: a 2-partition topic never splits, so one topic per call.
    assert (chunked.offsets, chunked.calls, chunked.metadata_read) == (expected, 5, False)


# --- pure --------------------------------------------------------------------------------------------------


def test_cursor_round_trips() -> None:
    cursor = OffsetsCursor(
        topics={"tidb_a_b": TopicState(at=1764072000.125, offsets={0: 5, 2: 7, 1: 0}),
                "tidb_a_c": TopicState(at=1764072001.5, offsets={})},
        metadata_at=1764071990.0,
    )
    text = serialize_cursor(cursor)
    assert deserialize_cursor(text) == cursor
    assert serialize_cursor(deserialize_cursor(text)) == text
    assert json.loads(text) == {
        "v": 1, "metadata_at": 1764071990.0,
        "topics": {"tidb_a_b": {"at": 1764072000.125, "end": {"0": 5, "1": 0, "2": 7}},
                   "tidb_a_c": {"at": 1764072001.5, "end": {}}},
    }


@pytest.mark.parametrize("text", ["{", "[]", '{"v": 0, "topics": {}}', '{"v": 1}', '{"v": 1, "topics": {"t": 3}}'])
def test_unreadable_cursor_is_fresh_with_a_log_line(text: str) -> None:
    lines: list[str] = []
    assert deserialize_cursor(text, lines.append) == OffsetsCursor()
    assert len(lines) == 1 and lines[0].startswith(f"{SENSOR_NAME}: ignoring unreadable cursor")


def test_sensor_is_in_the_definitions() -> None:
    config = _config("tpcc", [("item", "default"), ("stock", "bulk")])
    sensor = build_defs(config=config).get_repository_def().get_sensor_def(SENSOR_NAME)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == daemon_interval(15) == 14
    assert sorted(t.job_name for t in sensor.targets) == ["merge_bulk", "merge_default"]
    assert sensor.required_resource_keys == {"kafka"}


def test_only_new_messages_are_moves() -> None:
    previous = OffsetsCursor(topics={
        "grew": TopicState(at=100.0, offsets={0: 5, 1: 5}),
        "recreated": TopicState(at=100.0, offsets={0: 9}),
        "recreated_empty": TopicState(at=100.0, offsets={0: 9}),
        "deleted": TopicState(at=100.0, offsets={0: 3}),
        "new_partition_empty": TopicState(at=100.0, offsets={0: 1}),
    })
    read = OffsetsRead(
        offsets={"grew": {0: 7, 1: 5}, "recreated": {0: 2}, "recreated_empty": {0: 0}, "deleted": {},
                 "new_partition_empty": {0: 1, 1: 0}, "first_seen": {0: 4}},
        at=110.0, errors={}, unread=(), metadata_read=True, calls=1,
    )
    outcome = diff_offsets(previous, read, list(read.offsets), metadata_at=110.0)
    assert [(m.topic, m.new_messages, m.seconds, m.messages_per_second) for m in outcome.moves] == [
        ("grew", 2, 10.0, 0.2), ("recreated", 2, 10.0, 0.2), ("first_seen", 4, None, None),
    ]
    assert {t: dict(s.offsets) for t, s in outcome.cursor.topics.items()} == read.offsets
    assert outcome.cursor.metadata_at == 110.0


def test_unreachable_kafka_fails_the_tick_naming_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sensor = build_offsets_sensor(config=_config("db", [("a", "default")]))
    resource = KafkaResource(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_s=1)
    context = dg.build_sensor_context(cursor=None, resources={"kafka": resource})
    with pytest.raises(KafkaUnavailableError, match=f"from Kafka at 127.0.0.1:{port}: .*check that the brokers"):
        sensor(context)


def _tick_gaps(minimum_interval: int, loops: int = 400) -> set[float]:
    """The gaps between a sensor's ticks under Dagster's sensor daemon: it looks every MIN_INTERVAL_LOOP_TIME
    seconds and ticks when `is_under_min_interval` says the last tick's start is far enough back; each look and
    each tick start a few random milliseconds after the loop began (the daemon's own work)."""
    from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

    rng = random.Random(7)
    last: float | None = None
    ticks: list[float] = []
    for k in range(loops):
        now = k * MIN_INTERVAL_LOOP_TIME + rng.uniform(0.0, 0.05)
        if last is None or now - last >= minimum_interval:
            last = now
            ticks.append(k * MIN_INTERVAL_LOOP_TIME)
    return {b - a for a, b in zip(ticks, ticks[1:])}


@pytest.mark.parametrize("seconds", [5, 15, 60])
def test_the_daemon_ticks_the_sensor_at_its_configured_interval(seconds: int) -> None:
    assert _tick_gaps(daemon_interval(seconds)) == {float(seconds)}
    # The interval itself as the minimum: the daemon finds it a few ms short about half the time.
    assert max(_tick_gaps(seconds)) == seconds + 5
