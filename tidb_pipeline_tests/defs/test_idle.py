"""Quiet when idle: the schedules and the offsets sensor decide from Kafka and the Dagster instance alone.

The rules are exercised against the lab's Kafka and a real Dagster instance holding real runs (a stand-in
step materialising the pipeline's asset keys with the metadata the real step writes); one test runs the real
merge job on the lab (Kafka, registry, fakesnow) and counts, at the lab's Snowflake server, the statements
issued while the gates and the sensor decide: none.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pytest
from dagster._core.test_utils import freeze_time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.checks import CHECK_KINDS
from tidb_pipeline.defs.cleanup_due import cleaned_observation, last_cleaned
from tidb_pipeline.defs.idle import MERGED_THROUGH, VERIFIED_CURRENT
from tidb_pipeline.defs.jobs import CLEANUP_JOB, GROUP_TAG, cleanup_gate, merge_safety_net, reconcile_gate
from tidb_pipeline.defs.sensors import build_offsets_sensor
from tidb_pipeline.defs.tables import NEWEST_RECORD, OLDEST_RECORD, table_keys
from tidb_pipeline.lab.service import Service, wait_until
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline_tests.lab_resources import lab_environment, source_databases

SINK_GROUP = "connect-tidb-pipeline-snowflake-sink"


def _config(db: str, *, landing_mode: str = "builtin", **extra: Any) -> PipelineConfig:
    return parse_config({"landing_mode": landing_mode, "tables": [{"db": db, "table": "t", "key": ["id"]}], **extra})


class Lab:
    """A fresh one-table config and topic, a real instance, and ways to put real runs in it."""

    def __init__(self, kafka: Service, *, landing_mode: str = "builtin", partitions: int = 2) -> None:
        self.bootstrap = kafka.address()
        self.db = f"idle{uuid.uuid4().hex[:8]}"
        self.config = _config(self.db, landing_mode=landing_mode)
        self.table = self.config.tables[0]
        self.keys = table_keys(self.config, self.table)
        self.topic = self.config.topic(self.table)
        self.kafka = KafkaResource(bootstrap_servers=self.bootstrap)
        self.instance = dg.DagsterInstance.ephemeral()
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(self.topic, partitions, 1)])[self.topic].result(timeout=60)
        # A new topic's partitions answer once each has a leader; until then reading them fails (not leader).
        wait_until(lambda: len(self.kafka.end_offsets([self.topic])[self.topic]) == partitions, timeout=300,
                   what=f"topic {self.topic}'s {partitions} partitions", interval=0.2)

    def produce(self, per_partition: Mapping[int, int]) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all"})
        for p, n in per_partition.items():
            for i in range(n):
                producer.produce(self.topic, key=f"k{i}".encode(), value=b"v", partition=p)
        assert producer.flush(30) == 0

    def commit(self, offsets: Mapping[int, int]) -> None:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": SINK_GROUP, "enable.auto.commit": False})
        try:
            consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()], asynchronous=False)
        finally:
            consumer.close()

    def run(self, *, landed: Mapping[int, int] | None = None, merged: Mapping[int, int] | None = None,
            merge_fails: bool = False, rows: int = 1,
            record_times: tuple[float, float] | None = None) -> dg.ExecuteInProcessResult:
        """A real run materialising the landing (`offsets_after` = landed) then the replica, as the step does;
        `record_times` (epoch s): the oldest and newest record time of the rows merged (none: an older version)."""
        times = {} if record_times is None else {OLDEST_RECORD: int(record_times[0] * 1000),
                                                 NEWEST_RECORD: int(record_times[1] * 1000)}
        keys = self.keys
        selected = [k for k, on in ((keys.landing, landed is not None), (keys.replica, True)) if on]

        @dg.multi_asset(specs=[dg.AssetSpec(keys.landing), dg.AssetSpec(keys.replica, deps=[keys.landing])],
                        can_subset=True, name="stand_in_land_and_merge")
        def step(context):  # noqa: ANN001, ANN202 - Dagster reads the annotation, a string here
            if keys.landing in context.selected_asset_keys and landed is not None:
                text = ", ".join(f"p{p}: {o}" for p, o in sorted(landed.items())) or "(none)"
                yield dg.MaterializeResult(asset_key=keys.landing, metadata={"offsets_after": text, "rows_loaded": rows})
            if merge_fails:
                raise ConnectionError("warehouse unavailable")
            yield dg.MaterializeResult(asset_key=keys.replica, metadata={
                "rows_inserted": rows, "landing_rows_read": rows, **times,
                MERGED_THROUGH: dg.MetadataValue.json({str(p): o for p, o in (merged or {}).items()})})

        return dg.materialize([step], selection=selected, instance=self.instance, raise_on_error=False,
                              tags={GROUP_TAG: "default"})

    def gate(self) -> dg.RunRequest | dg.SkipReason:
        return merge_safety_net(self.instance, self.config, "default", self.kafka)


def _reason(decision: dg.RunRequest | dg.SkipReason) -> str:
    assert isinstance(decision, dg.SkipReason), decision
    return decision.skip_message or ""


def test_builtin_gate_runs_only_while_records_are_unlanded_or_unmerged(kafka: Service) -> None:
    lab = Lab(kafka)
    assert _reason(lab.gate()).startswith("nothing moved in the 1 table(s) of group default")

    lab.produce({0: 3, 1: 2})
    request = lab.gate()
    assert isinstance(request, dg.RunRequest)
    assert set(request.asset_selection or []) == {lab.keys.landing, lab.keys.replica}
    assert request.tags["tidb_pipeline/pending"] == f"{lab.db}.t: 5 records in Kafka and nothing landed yet"

    lab.run(landed={0: 3, 1: 2}, merged={0: 2, 1: 1})
    assert _reason(lab.gate()).startswith("nothing moved")

    lab.produce({1: 4})
    request = lab.gate()
    assert isinstance(request, dg.RunRequest)
    assert request.tags["tidb_pipeline/pending"] == f"{lab.db}.t: 4 records not landed yet (p1: 4)"

    # Landed, then the merge failed: the landed rows are work although Kafka did not move since.
    assert not lab.run(landed={0: 3, 1: 6}, merge_fails=True).success
    request = lab.gate()
    assert isinstance(request, dg.RunRequest)
    assert "are not merged yet" in request.tags["tidb_pipeline/pending"]

    # A replica-only run that started after that landing merged what it landed.
    lab.run(merged={0: 2, 1: 5})
    assert _reason(lab.gate()).startswith("nothing moved")


def test_builtin_gate_waits_for_a_run_in_flight(kafka: Service) -> None:
    lab = Lab(kafka)
    lab.produce({0: 1})
    # Created, not launched: NOT_STARTED, as a queued run looks to the gate.
    run = lab.instance.create_run_for_job(_noop_job("merge_default"), tags={GROUP_TAG: "default"})
    assert _reason(lab.gate()) == f"group default: run {run.run_id[:8]} is queued or running and takes whatever moved"


def test_connector_gate_compares_the_sinks_committed_offsets_with_what_was_merged(kafka: Service) -> None:
    lab = Lab(kafka, landing_mode="connector")
    lab.produce({0: 3, 1: 1})
    # In Kafka but not landed by the sink: not merge work (the sink's own lag is the freshness check's).
    assert _reason(lab.gate()).startswith("nothing moved")

    lab.commit({0: 2})
    request = lab.gate()
    assert isinstance(request, dg.RunRequest)
    assert set(request.asset_selection or []) == {lab.keys.replica}
    assert request.tags["tidb_pipeline/pending"] == f"{lab.db}.t: 2 records landed by the sink are not merged (p0: 2)"

    lab.run(merged={0: 1})
    assert _reason(lab.gate()).startswith("nothing moved")
    lab.commit({0: 3, 1: 1})
    assert isinstance(lab.gate(), dg.RunRequest)
    lab.run(merged={0: 2, 1: 0})
    assert _reason(lab.gate()).startswith("nothing moved")


def test_idle_replicas_are_recorded_current_for_their_freshness_policy(kafka: Service) -> None:
    lab = Lab(kafka)
    lab.config = _config(lab.db, freshness={"warn_after_minutes": 8, "fail_after_minutes": 30})
    lab.produce({0: 2})
    lab.run(landed={0: 2}, merged={0: 1})
    later = [time.time()]
    sensor = build_offsets_sensor(config=lab.config, clock=lambda: later[0])
    defs = build_defs(config=lab.config)

    def tick(cursor: str | None) -> dg.SensorExecutionData:
        context = dg.build_sensor_context(cursor=cursor, resources={"kafka": lab.kafka}, instance=lab.instance,
                                          definitions=defs)
        return sensor.evaluate_tick(context)

    first = tick(None)
    # A new cursor counts every topic from 0, but the instance shows those records landed and merged.
    assert first.run_requests == []
    assert tick(first.cursor).asset_events == []  # just merged: not due (refresh = warn / 4 = 2 min)

    later[0] += 121
    due = tick(first.cursor)
    assert due.skip_message == "no new messages in 1 topics checked; 1 idle replica(s) recorded verified_current"
    (event,) = due.asset_events
    assert isinstance(event, dg.AssetMaterialization) and event.asset_key == lab.keys.replica
    assert event.metadata[VERIFIED_CURRENT].value is True
    assert event.metadata[MERGED_THROUGH].value == {"0": 1}

    # Recorded, it counts as a merge after the landing: the gate still finds nothing to do.
    lab.instance.report_runless_asset_event(event)
    assert _reason(lab.gate()).startswith("nothing moved")
    later[0] = time.time() + 60  # a minute after the record: not due again
    assert tick(due.cursor).asset_events == []
    # Something waits: not current, no record however old the last one is.
    lab.produce({0: 1})
    later[0] += 10_000
    assert [e for e in tick(due.cursor).asset_events if isinstance(e, dg.AssetMaterialization)] == []


def _noop_job(name: str) -> dg.JobDefinition:
    @dg.op
    def noop() -> None:
        pass

    @dg.job(name=name)
    def job() -> None:
        noop()

    return job


def _job_run(instance: dg.DagsterInstance, name: str) -> None:
    assert _noop_job(name).execute_in_process(instance=instance).success


HOUR = 3600.0


def _cleanup_run(lab: Lab, at: float) -> None:
    """A real run of the cleanup job's name recording, per table, what the cleanup op records after its DELETE."""

    @dg.op
    def cleanup(context):  # noqa: ANN001, ANN202 - Dagster reads the annotation, a string here
        for t in lab.config.tables:
            context.log_event(cleaned_observation(lab.config, t, 0, dt.datetime.fromtimestamp(at, dt.timezone.utc)))

    @dg.job(name=CLEANUP_JOB)
    def job() -> None:
        cleanup()

    with freeze_time(at):
        assert job.execute_in_process(instance=lab.instance).success


def _assert_covered_only_past_skew(lab: Lab, now: float) -> None:
    """With 2 h retention, cleanup stays due after a cleanup at `now` + 3 h and is done after one at `now` + 3.5 h
    (between the two, the cutoff passes `now` + the clock skew)."""
    _cleanup_run(lab, now + 3 * HOUR)
    assert isinstance(cleanup_gate(lab.instance, lab.config, now + 3 * HOUR + 60), dg.RunRequest)
    _cleanup_run(lab, now + 3.5 * HOUR)
    assert _reason(cleanup_gate(lab.instance, lab.config, now + 3.5 * HOUR + 60)).startswith(
        "every merged record was cleaned or none was merged")


def test_cleanup_waits_until_a_merged_record_not_cleaned_is_past_retention(kafka: Service) -> None:
    lab = Lab(kafka)
    lab.config = _config(lab.db, retention_hours=2)
    now = time.time()
    assert _reason(cleanup_gate(lab.instance, lab.config, now)).startswith("every merged record was cleaned or none")
    with freeze_time(now - 0.5 * HOUR):
        lab.run(landed={0: 3}, merged={0: 2}, rows=3, record_times=(now - 1.5 * HOUR, now - 0.75 * HOUR))
    # All merged records are younger than the 2 h cutoff: skip, naming when the oldest becomes deletable.
    reason = _reason(cleanup_gate(lab.instance, lab.config, now))
    eligible = dt.datetime.fromtimestamp(now + 0.5 * HOUR, dt.timezone.utc)
    assert reason.startswith("no merged record is older than the 2 h retention yet: the earliest not cleaned "
                             f"({lab.db}.t, merged at ")
    assert reason.endswith(f"becomes deletable at {eligible:%Y-%m-%d %H:%M:%S} UTC; no warehouse statement")
    # A merge that read no rows changes nothing; one whose oldest record is past the cutoff makes it due.
    lab.run(landed={0: 3}, merged={0: 2}, rows=0)
    assert isinstance(cleanup_gate(lab.instance, lab.config, now), dg.SkipReason)
    assert isinstance(cleanup_gate(lab.instance, lab.config, now + 0.5 * HOUR + 1), dg.RunRequest)
    lab.run(landed={0: 4}, merged={0: 3}, rows=1, record_times=(now - 3 * HOUR, now - 3 * HOUR))
    request = cleanup_gate(lab.instance, lab.config, now)
    assert isinstance(request, dg.RunRequest)
    assert request.tags["tidb_pipeline/cleanup_due"].endswith("is older than the 2 h retention")

    # That cleanup deletes every merged record older than its cutoff: the run after it is skipped until the
    # records it had to keep (younger than its cutoff) age out.
    _cleanup_run(lab, now + 600)  # after those merges were recorded (they ran in real time since `now`)
    reason = _reason(cleanup_gate(lab.instance, lab.config, now + 660))
    assert f"becomes deletable at {eligible:%Y-%m-%d %H:%M:%S} UTC" in reason
    assert isinstance(cleanup_gate(lab.instance, lab.config, now + 0.5 * HOUR + 1), dg.RunRequest)
    # A cleanup whose cutoff falls inside a merge's record times leaves the younger ones waiting.
    _cleanup_run(lab, now + 0.5 * HOUR + 1)
    assert isinstance(cleanup_gate(lab.instance, lab.config, now + 0.5 * HOUR + 60), dg.RunRequest)
    _cleanup_run(lab, now + 1.25 * HOUR + 1)
    assert _reason(cleanup_gate(lab.instance, lab.config, now + 100 * HOUR)).startswith(
        "every merged record was cleaned or none was merged")


def test_cleanup_runs_when_record_times_are_unknown(kafka: Service) -> None:
    lab = Lab(kafka)
    lab.config = _config(lab.db, retention_hours=2)
    now = time.time()
    # A merge recorded by an older version (no record times): its rows may be of any age.
    lab.run(landed={0: 1}, merged={0: 0}, rows=1)
    request = cleanup_gate(lab.instance, lab.config, now)
    assert isinstance(request, dg.RunRequest)
    assert "recorded no record times" in request.tags["tidb_pipeline/cleanup_due"]
    # A cleanup after it covers the records older than its cutoff only; it ran 3 h after that merge, so records
    # of the merge younger than the cutoff may remain until the cutoff passes the merge's time + clock skew.
    _assert_covered_only_past_skew(lab, now)


def test_cleanup_runs_after_a_merge_run_failed_without_recording_its_merge(kafka: Service) -> None:
    lab = Lab(kafka)
    lab.config = _config(lab.db, retention_hours=2)
    now = time.time()
    lab.run(landed={0: 1}, merged={0: 0}, rows=1, record_times=(now - 60, now - 60))
    assert isinstance(cleanup_gate(lab.instance, lab.config, now + 60), dg.SkipReason)
    # It may have committed a merge (a crash after COMMIT) whose rows are of any age: unknown.
    assert not lab.run(landed={0: 2}, merge_fails=True).success
    request = cleanup_gate(lab.instance, lab.config, now + 60)
    assert isinstance(request, dg.RunRequest)
    assert "failed without recording its merge" in request.tags["tidb_pipeline/cleanup_due"]
    # Covered once a cleanup's cutoff passes the run's end + clock skew.
    _assert_covered_only_past_skew(lab, now)


def test_cleanup_does_not_count_merges_after_it_started_as_cleaned(kafka: Service) -> None:
    lab = Lab(kafka)
    lab.config = _config(lab.db, retention_hours=2)
    now = time.time()
    _cleanup_run(lab, now - HOUR)
    # Committed after the cleanup's start: its old records were not above that cleanup's watermark.
    lab.run(landed={0: 1}, merged={0: 0}, rows=1, record_times=(now - 5 * HOUR, now - 4 * HOUR))
    assert isinstance(cleanup_gate(lab.instance, lab.config, now), dg.RunRequest)
    _cleanup_run(lab, now + 1)
    assert _reason(cleanup_gate(lab.instance, lab.config, now + 60)).startswith("every merged record was cleaned")


def test_reconcile_checks_only_replicas_that_moved_or_whose_check_raised(kafka: Service) -> None:
    lab = Lab(kafka)
    defs = build_defs(config=lab.config)
    keys = sorted(defs.resolve_asset_graph().asset_check_keys, key=lambda k: k.to_user_string())
    on_replica = [k for k in keys if k.asset_key == lab.keys.replica]
    free = [k for k in keys if k.asset_key != lab.keys.replica]
    assert len(on_replica) == len(CHECK_KINDS)
    assert [k.name for k in free] == ["changefeed_healthy", "changefeed_tables", "registry_compatibility"]

    first = reconcile_gate(lab.instance, lab.config, keys)
    assert isinstance(first, dg.RunRequest) and set(first.asset_check_keys or []) == set(keys)

    _job_run(lab.instance, "reconcile")
    for k in on_replica:
        lab.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=k.asset_key, check_name=k.name, passed=True))
    quiet = reconcile_gate(lab.instance, lab.config, keys)
    assert isinstance(quiet, dg.RunRequest) and list(quiet.asset_check_keys or []) == free
    assert quiet.tags["tidb_pipeline/replicas_checked"] == "0"

    # A failing verdict on an unchanged replica would only repeat; a check that raised is run again.
    lab.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=lab.keys.replica, check_name="row_count_matches_source", passed=False))
    assert list(reconcile_gate(lab.instance, lab.config, keys).asset_check_keys or []) == free
    lab.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=lab.keys.replica, check_name="row_count_matches_source", passed=False,
        metadata={"error": "OperationalError: could not connect"}))
    assert set(reconcile_gate(lab.instance, lab.config, keys).asset_check_keys or []) == set(keys)

    lab.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=lab.keys.replica, check_name="row_count_matches_source", passed=True))
    assert list(reconcile_gate(lab.instance, lab.config, keys).asset_check_keys or []) == free
    lab.run(landed={0: 1}, merged={0: 0})
    assert set(reconcile_gate(lab.instance, lab.config, keys).asset_check_keys or []) == set(keys)


# --- the real merge job on the lab -------------------------------------------------------------------------


@pytest.fixture
def lab_env(kafka: Service, registry: Service, snowflake: Service, mariadb: Service,
            lab_settings: LabSettings) -> Iterator[LabSettings]:
    with lab_environment(lab_settings):
        yield lab_settings


def _order_line_ddl(db: str) -> tuple[str, ...]:
    """The TiDB table the records describe: the merge names the replica's columns after it."""
    from tidb_pipeline.workload.schema import DDL, create_database_sql

    return create_database_sql(db), f"USE `{db}`", DDL["order_line"].replace("/*T![clustered_index] CLUSTERED */", "")


def test_real_merge_records_what_the_gates_need_and_deciding_costs_no_statement(
    lab_env: LabSettings, mariadb: Service,
) -> None:
    from tidb_pipeline.bench.landing import produce_order_lines

    settings = lab_env
    db = f"idle{uuid.uuid4().hex[:8]}"
    # Its own replica table too: replicas are named after the TiDB table, not the database.
    config = parse_config({"tables": [{"db": db, "table": "order_line", "replica_table": db.upper(),
                                       "key": ["ol_w_id", "ol_d_id", "ol_o_id", "ol_number"]}]})
    table = config.tables[0]
    produce_order_lines(settings, config.topic(table), 30, partitions=2)
    with source_databases(mariadb, db, statements=_order_line_ddl(db), create=False):
        _merge_and_decide(settings, config, db)


def _merge_and_decide(settings: LabSettings, config: PipelineConfig, db: str) -> None:
    from tidb_pipeline.lab.statement_log import log_path, read

    table = config.tables[0]
    keys = table_keys(config, table)
    defs = build_defs(config=config)
    kafka = defs.resources["kafka"]
    instance = dg.DagsterInstance.ephemeral()
    statements = log_path(settings)

    def gate() -> dg.RunRequest | dg.SkipReason:
        return merge_safety_net(instance, config, "default", kafka)

    def merge(request: dg.RunRequest) -> None:
        # As the daemon launches it: the asset subset and exactly the requested checks (none).
        assert request.asset_check_keys == []
        job = defs.resolve_job_def("merge_default").get_subset(
            asset_selection=set(request.asset_selection or []), asset_check_selection=set(request.asset_check_keys))
        result = job.execute_in_process(instance=instance, tags=request.tags)
        assert result.success
        assert {e.step_key for e in result.all_events if e.step_key} == {"land_and_merge_default"}

    request = gate()
    assert isinstance(request, dg.RunRequest)
    merging = time.time()
    merge(request)
    assert read(statements, merging, time.time() + 1), "the server's statement log counts nothing"
    replica = instance.get_latest_materialization_event(keys.replica)
    assert replica is not None and replica.asset_materialization is not None
    end = kafka.end_offsets([config.topic(table)])[config.topic(table)]
    assert sum(end.values()) >= 30
    assert replica.asset_materialization.metadata[MERGED_THROUGH].value == {str(p): o - 1 for p, o in end.items()}
    landing = instance.get_latest_materialization_event(keys.landing)
    assert landing.asset_materialization.metadata["offsets_after"].value == f"p0: {end[0]}, p1: {end[1]}"

    # Deciding, with nothing new: the gates and the sensor (which records the replica current) issue nothing.
    sensor = build_offsets_sensor(config=config, clock=lambda: time.time() + 3600)
    before = time.time()
    assert _reason(gate()).startswith("nothing moved")
    # The merge recorded its rows' record times (Kafka CreateTime, produced during this test): the cleanup is
    # due once the newest is past retention, not before.
    record_times = [replica.asset_materialization.metadata[k].value for k in (OLDEST_RECORD, NEWEST_RECORD)]
    assert merging - 600 < record_times[0] / 1000 <= record_times[1] / 1000 <= time.time()
    assert isinstance(cleanup_gate(instance, config), dg.SkipReason)
    later = record_times[1] / 1000 + config.retention_hours * 3600 + 1
    assert isinstance(cleanup_gate(instance, config, later), dg.RunRequest)
    check_keys = list(defs.resolve_asset_graph().asset_check_keys)
    assert isinstance(reconcile_gate(instance, config, check_keys), dg.RunRequest)
    first = sensor.evaluate_tick(dg.build_sensor_context(resources={"kafka": kafka}, instance=instance,
                                                         definitions=defs))
    tick = sensor.evaluate_tick(dg.build_sensor_context(cursor=first.cursor, resources={"kafka": kafka},
                                                        instance=instance, definitions=defs))
    assert [e.asset_key for e in tick.asset_events] == [keys.replica]
    assert read(statements, before, time.time() + 1) == [], "deciding issued warehouse statements"

    # One more record: work again, and a real run takes it.
    _more_topic_records(settings, config.topic(table))
    request = gate()
    assert isinstance(request, dg.RunRequest)
    assert request.tags["tidb_pipeline/pending"] == f"{db}.order_line: 1 records not landed yet (p0: 1)"
    merge(request)
    assert _reason(gate()).startswith("nothing moved")
    assert instance.get_latest_materialization_event(keys.replica).asset_materialization.metadata[
        MERGED_THROUGH].value == {"0": end[0], "1": end[1] - 1}

    # The real cleanup records what it cleaned through; the merged records are younger than its cutoff, so the
    # gate waits for them and names when they become deletable.
    started = time.time()
    assert defs.resolve_job_def(CLEANUP_JOB).execute_in_process(instance=instance).success
    cleaned = last_cleaned(instance, keys.landing)
    assert cleaned is not None and started <= cleaned.started <= time.time()
    assert abs(cleaned.cutoff_ms - (cleaned.started - config.retention_hours * 3600) * 1000) <= 1
    assert "becomes deletable at" in _reason(cleanup_gate(instance, config))


def _more_topic_records(settings: LabSettings, topic: str) -> None:
    """One more record on partition 0, a copy of the first one there (an update of the same key)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"copy-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    message = None
    deadline = time.monotonic() + 30
    while message is None or message.error() is not None:
        assert time.monotonic() < deadline
        message = consumer.poll(1.0)
    consumer.close()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    producer.produce(topic, key=message.key(), value=message.value(), partition=0)
    assert producer.flush(30) == 0
