"""reconcile_connector against the lab's real Connect worker and the Confluent Cloud stand-in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidb_pipeline.config import parse_config
from tidb_pipeline.engine.connectors import reconcile_connector
from tidb_pipeline.lab.confluent_cloud import ConfluentCloudConnect
from tidb_pipeline.lab.connect import FILE_SINK_CLASS
from tidb_pipeline.lab.service import Service
from tidb_pipeline.replication.connectors import (
    ConfigDiff,
    KafkaCredentials,
    SnowflakeSinkSettings,
    snowflake_sink_config,
)
from tidb_pipeline.resources.kafka_connect import KafkaConnectClient, KafkaConnectResource


@pytest.fixture
def worker(connect: Service) -> Iterator[KafkaConnectClient]:
    client = KafkaConnectResource(flavor="self_managed", url=connect.address()).get_client()
    before = set(client.list())
    yield client
    for name in set(client.list()) - before:
        client.delete(name)


def test_reconcile_lifecycle_on_real_worker(worker: KafkaConnectClient, tmp_path: Path) -> None:
    name = f"file-sink-{uuid.uuid4().hex[:8]}"
    desired = {"connector.class": FILE_SINK_CLASS, "tasks.max": "1", "topics": f"t_{name}",
               "file": str(tmp_path / "a.txt")}

    created = reconcile_connector(worker, name, desired, wait_running_s=60)
    assert created.plan.steps == ("create",)
    assert created.metadata() == {"connector": name, "steps": "create", "changed_keys": "", "state": "RUNNING",
                                  "tasks": "0:RUNNING"}
    assert worker.get_config(name) == {**desired, "name": name}

    again = reconcile_connector(worker, name, desired)
    state = again.status.state if again.status else None
    assert (again.action, again.plan.diff, state) == ("noop", ConfigDiff(), "RUNNING")

    changed = {**desired, "file": str(tmp_path / "b.txt")}
    updated = reconcile_connector(worker, name, changed, wait_running_s=60)
    assert (updated.plan.steps, updated.plan.diff) == (("update",), ConfigDiff(changed=("file",)))
    assert worker.get_config(name) == {**changed, "name": name}

    # Removing a key is drift on self-managed (its config comes back exactly as stored).
    fewer = {k: v for k, v in changed.items() if k != "tasks.max"}
    trimmed = reconcile_connector(worker, name, fewer, wait_running_s=60)
    assert trimmed.plan.diff == ConfigDiff(extra=("tasks.max",))
    assert worker.get_config(name) == {**fewer, "name": name}

    worker.pause(name)
    worker.wait_for_state(name, {"PAUSED"})
    resumed = reconcile_connector(worker, name, fewer, wait_running_s=60)
    assert (resumed.plan.steps, resumed.status.running if resumed.status else None) == (("resume",), True)

    # Paused and outdated: update keeps it paused, so both steps are needed.
    worker.pause(name)
    worker.wait_for_state(name, {"PAUSED"})
    both = reconcile_connector(worker, name, desired, wait_running_s=60)
    assert both.plan.steps == ("update", "resume")
    assert both.status is not None and both.status.running
    assert worker.get_config(name) == {**desired, "name": name}

    assert worker.delete(name)
    assert reconcile_connector(worker, name, desired, wait_running_s=60).plan.steps == ("create",)


CONFIG = parse_config({"landing_mode": "connector", "tables": [{"db": "tpcc", "table": "item"}]})
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"


def _sink(**overrides: object) -> dict[str, str]:
    settings = SnowflakeSinkSettings(name="snowflake-sink", kafka=KafkaCredentials("KAFKAKEY", "kafka/sec+ret@1"),
                                     url="acct.snowflakecomputing.com", user="TIDB_PIPELINE", private_key=PEM,
                                     role="TIDB_PIPELINE_ROLE", **overrides)  # type: ignore[arg-type]
    return snowflake_sink_config(CONFIG, settings)


def test_reconcile_on_confluent_cloud_stand_in() -> None:
    cloud = ConfluentCloudConnect()
    client = KafkaConnectResource(flavor="confluent_cloud", url=cloud.url, api_key=cloud.api_key,
                                  api_secret=cloud.api_secret).get_client(transport=cloud.transport(),
                                                                          sleep=lambda _s: None)
    desired = _sink()
    created = reconcile_connector(client, "snowflake-sink", desired, wait_running_s=5)
    assert (created.plan.steps, created.status.state if created.status else None) == (("create",), "RUNNING")
    assert cloud.stored_config("snowflake-sink") == desired

    # Secrets read back masked and service-added keys do not count as drift.
    assert reconcile_connector(client, "snowflake-sink", desired).action == "noop"

    # An update PUTs the full desired config with the real secrets, never the masked read-back.
    cloud.requests.clear()
    changed = _sink(buffer_count_records=500)
    updated = reconcile_connector(client, "snowflake-sink", changed, wait_running_s=5)
    assert updated.plan.diff == ConfigDiff(changed=("buffer.count.records",))
    puts = [r.body for r in cloud.requests if r.method == "PUT"]
    assert puts == [changed]
    assert cloud.stored_config("snowflake-sink") == changed
    assert changed["kafka.api.secret"] == "kafka/sec+ret@1"
    assert changed["snowflake.private.key"] == "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"

    # A rotated secret is invisible behind the mask unless forced.
    rotated = {**changed, "kafka.api.secret": "rotated-secret"}
    assert reconcile_connector(client, "snowflake-sink", rotated).action == "noop"
    assert reconcile_connector(client, "snowflake-sink", rotated, force_update=True).action == "update"
    assert cloud.stored_config("snowflake-sink")["kafka.api.secret"] == "rotated-secret"

    client.pause("snowflake-sink")
    client.wait_for_state("snowflake-sink", {"PAUSED"})
    resumed = reconcile_connector(client, "snowflake-sink", rotated, wait_running_s=5)
    assert resumed.plan.steps == ("resume",) and resumed.status is not None and resumed.status.running
