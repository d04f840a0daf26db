"""The `kafka_connect` client: lifecycle against the lab's real Connect worker, Confluent Cloud specifics
against the stand-in (tidb_pipeline.lab.confluent_cloud), retry paths with scripted transports."""

from __future__ import annotations

import json
import uuid
import base64
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from tidb_pipeline.lab.confluent_cloud import SERVICE_KEYS, ConfluentCloudConnect
from tidb_pipeline.lab.connect import FILE_SINK_CLASS
from tidb_pipeline.lab.service import Service
from tidb_pipeline.resources.kafka_connect import (
    MASK,
    ConnectorStatus,
    KafkaConnectClient,
    KafkaConnectError,
    KafkaConnectResource,
    TaskStatus,
    confluent_cloud_url,
    kafka_connect_resource,
    parse_error,
)


# --- against the real Apache Kafka Connect worker ---------------------------------------------------

@pytest.fixture
def worker(connect: Service) -> Iterator[KafkaConnectClient]:
    client = KafkaConnectResource(flavor="self_managed", url=connect.address(), timeout_s=30).get_client()
    before = set(client.list())
    with client:
        yield client
        for name in set(client.list()) - before:
            client.delete(name)


def _file_sink(tmp_path: Path, topic: str, file: str = "out.txt") -> dict[str, str]:
    return {"connector.class": FILE_SINK_CLASS, "tasks.max": "1", "topics": topic, "file": str(tmp_path / file)}


def test_lifecycle_on_real_worker(worker: KafkaConnectClient, tmp_path: Path) -> None:
    name = f"file-sink-{uuid.uuid4().hex[:8]}"
    config = _file_sink(tmp_path, f"t_{name}")
    assert worker.get_config(name) is None
    assert worker.get_status(name) is None

    worker.create(name, config)
    assert name in worker.list()
    # Self-managed returns the stored config unmasked, plus the name.
    assert worker.get_config(name) == {**config, "name": name}
    status = worker.wait_for_state(name, {"RUNNING"})
    assert (status.name, status.state, [(t.id, t.state) for t in status.tasks]) == (name, "RUNNING", [(0, "RUNNING")])
    assert status.running

    updated = {**config, "file": str(tmp_path / "other.txt")}
    assert worker.put_config(name, updated) is False  # 200: updated, not created
    assert worker.get_config(name) == {**updated, "name": name}

    worker.pause(name)
    assert worker.wait_for_state(name, {"PAUSED"}).tasks == (TaskStatus(0, "PAUSED"),)
    worker.resume(name)
    assert worker.wait_for_state(name, {"RUNNING"}).tasks == (TaskStatus(0, "RUNNING"),)

    assert worker.delete(name) is True
    assert name not in worker.list()
    assert worker.get_config(name) is None
    assert worker.delete(name) is False


def test_put_config_creates_on_real_worker(worker: KafkaConnectClient, tmp_path: Path) -> None:
    name = f"file-sink-{uuid.uuid4().hex[:8]}"
    assert worker.put_config(name, _file_sink(tmp_path, f"t_{name}")) is True  # 201: created
    assert worker.wait_for_state(name, {"RUNNING"}).running


def test_real_worker_errors_are_parsed_and_not_retried(worker: KafkaConnectClient, tmp_path: Path) -> None:
    sleeps: list[float] = []
    worker.sleep = sleeps.append
    name = f"file-sink-{uuid.uuid4().hex[:8]}"
    worker.create(name, _file_sink(tmp_path, f"t_{name}"))
    with pytest.raises(KafkaConnectError) as exists:
        worker.create(name, _file_sink(tmp_path, f"t_{name}"))
    assert (exists.value.status, exists.value.code) == (409, 409)
    assert "already exists" in exists.value.message
    with pytest.raises(KafkaConnectError) as missing:
        worker.pause(f"absent-{name}")
    assert (missing.value.status, missing.value.code) == (404, 404)
    assert f"absent-{name}" in missing.value.message
    assert sleeps == []


def test_real_worker_validation_error_does_not_echo_secrets(worker: KafkaConnectClient) -> None:
    secret = "s3cr3t-value-never-shown"
    config = {"connector.class": "com.example.NoSuchConnector", "topics": "t", "connection.password": secret}
    with pytest.raises(KafkaConnectError) as err:
        worker.put_config(f"bad-{uuid.uuid4().hex[:8]}", config)
    assert err.value.status == 400
    assert "NoSuchConnector" in str(err.value)
    assert secret not in str(err.value)


# --- retries with a scripted transport -------------------------------------------------------------

def _scripted(responses: list[httpx.Response], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.pop(0)
    return httpx.MockTransport(handle)


def _client(flavor: str, transport: httpx.BaseTransport, sleeps: list[float], **kw: object) -> KafkaConnectClient:
    resource = KafkaConnectResource(flavor=flavor, url="http://connect.test", **kw)  # type: ignore[arg-type]
    return resource.get_client(transport=transport, sleep=sleeps.append)


REBALANCE = {"error_code": 409,
             "message": "Cannot complete request because of a conflicting operation (e.g. worker rebalance)"}


def test_self_managed_retries_409_rebalance_with_backoff() -> None:
    seen: list[httpx.Request] = []
    sleeps: list[float] = []
    responses = [httpx.Response(409, json=REBALANCE), httpx.Response(409, json=REBALANCE),
                 httpx.Response(201, json={"name": "c", "config": {}, "tasks": []})]
    client = _client("self_managed", _scripted(responses, seen), sleeps)
    client.create("c", {"connector.class": "X"})
    assert [(r.method, r.url.path) for r in seen] == [("POST", "/connectors")] * 3
    assert all(json.loads(r.content) == {"name": "c", "config": {"connector.class": "X", "name": "c"}} for r in seen)
    assert sleeps == [0.25, 0.5]


def test_409_retries_are_bounded() -> None:
    seen: list[httpx.Request] = []
    sleeps: list[float] = []
    client = _client("self_managed", _scripted([httpx.Response(409, json=REBALANCE)] * 4, seen), sleeps,
                     max_retries=3)
    with pytest.raises(KafkaConnectError, match="HTTP 409: Cannot complete request") as err:
        client.resume("c")
    assert (err.value.status, len(seen), sleeps) == (409, 4, [0.25, 0.5, 1.0])


def test_409_exists_and_409_on_confluent_cloud_are_final() -> None:
    for flavor, body in [("self_managed", {"error_code": 409, "message": "Connector c already exists"}),
                         ("confluent_cloud", {"error": {"code": 409, "message": "conflict"}})]:
        seen: list[httpx.Request] = []
        sleeps: list[float] = []
        client = _client(flavor, _scripted([httpx.Response(409, json=body)], seen), sleeps)
        with pytest.raises(KafkaConnectError) as err:
            client.create("c", {"connector.class": "X"})
        assert (err.value.status, len(seen), sleeps) == (409, 1, [])


def test_error_shapes_and_non_json_bodies() -> None:
    assert parse_error(httpx.Response(404, json={"error": {"code": 404, "message": "Connector c not found"}})) == (
        404, "Connector c not found")
    flat = httpx.Response(400, json={"error_code": 40002, "message": "bad config"})
    assert parse_error(flat) == (40002, "bad config")
    assert parse_error(httpx.Response(502, text="<html>Bad Gateway</html>")) == (None, "<html>Bad Gateway</html>")
    err = KafkaConnectError(400, 40002, "bad config", what="put config of 'c'")
    assert str(err) == "Kafka Connect put config of 'c' failed with HTTP 400, code 40002: bad config"


def test_server_echo_of_a_secret_is_redacted() -> None:
    secret = "hunter2-very-secret"
    echo = httpx.Response(400, json={"error_code": 400, "message": f"Invalid value {secret} for connection.password"})
    client = _client("self_managed", _scripted([echo], []), [])
    with pytest.raises(KafkaConnectError) as err:
        client.put_config("c", {"connector.class": "X", "connection.password": secret})
    assert str(err.value) == ("Kafka Connect put config of 'c' failed with HTTP 400: "
                              "Invalid value [redacted] for connection.password")


# --- Confluent Cloud specifics against the stand-in ----------------------------------------------

@pytest.fixture
def cloud() -> ConfluentCloudConnect:
    return ConfluentCloudConnect()


def _cloud_client(cloud: ConfluentCloudConnect, sleeps: list[float] | None = None, **kw: object) -> KafkaConnectClient:
    resource = KafkaConnectResource(flavor="confluent_cloud", url=cloud.url, api_key=cloud.api_key,
                                    api_secret=cloud.api_secret, **kw)  # type: ignore[arg-type]
    return resource.get_client(transport=cloud.transport(), sleep=(sleeps if sleeps is not None else []).append)


SNOWFLAKE = {"connector.class": "SnowflakeSink", "topics": "tidb_tpcc_item", "input.data.format": "AVRO",
             "kafka.auth.mode": "KAFKA_API_KEY", "kafka.api.key": "KAFKAKEY", "kafka.api.secret": "kafka/sec+ret",
             "snowflake.private.key": "MIIBodyOnly", "snowflake.user.name": "U", "tasks.max": "2"}


def test_cloud_url_and_env_builder() -> None:
    assert confluent_cloud_url("env-abc12", "lkc-xyz9") == (
        "https://api.confluent.cloud/connect/v1/environments/env-abc12/clusters/lkc-xyz9")
    resource = kafka_connect_resource({"KAFKA_CONNECT_FLAVOR": "confluent_cloud", "CONFLUENT_ENVIRONMENT_ID": "env-1",
                                       "CONFLUENT_KAFKA_CLUSTER_ID": "lkc-2"})
    assert (resource.flavor, resource.url, resource.api_key) == (
        "confluent_cloud", "https://api.confluent.cloud/connect/v1/environments/env-1/clusters/lkc-2", None)
    assert kafka_connect_resource({}).url == "http://127.0.0.1:18083"
    with pytest.raises(ValueError, match="CONFLUENT_ENVIRONMENT_ID"):
        kafka_connect_resource({"KAFKA_CONNECT_FLAVOR": "confluent_cloud"})


def test_cloud_basic_auth(cloud: ConfluentCloudConnect) -> None:
    wrong = KafkaConnectResource(flavor="confluent_cloud", url=cloud.url, api_key=cloud.api_key,
                                 api_secret="wrong-secret-value").get_client(transport=cloud.transport())
    with pytest.raises(KafkaConnectError) as err:
        wrong.list()
    assert (err.value.status, err.value.code) == (401, 401)
    assert "Cloud API key" in str(err.value) and "wrong-secret-value" not in str(err.value)
    assert _cloud_client(cloud).list() == []
    assert [r.authorized for r in cloud.requests] == [False, True]


def test_cloud_masked_config_is_never_round_tripped(cloud: ConfluentCloudConnect) -> None:
    client = _cloud_client(cloud)
    client.create("sf", SNOWFLAKE)
    read_back = client.get_config("sf")
    assert read_back == {**SERVICE_KEYS, **SNOWFLAKE, "name": "sf",
                         "kafka.api.secret": MASK, "snowflake.private.key": MASK}
    sent_before = len(cloud.requests)
    with pytest.raises(ValueError, match="refusing to send masked values for kafka.api.secret, snowflake.private.key"):
        client.put_config("sf", read_back)
    assert len(cloud.requests) == sent_before  # nothing reached the service
    assert cloud.stored_config("sf") == {**SNOWFLAKE, "name": "sf"}


def test_cloud_provisioning_then_running_and_async_pause_resume(cloud: ConfluentCloudConnect) -> None:
    client = _cloud_client(cloud)
    client.create("sf", SNOWFLAKE)
    assert client.get_status("sf") == ConnectorStatus("sf", "PROVISIONING", ())
    assert client.wait_for_state("sf", {"RUNNING"}) == ConnectorStatus(
        "sf", "RUNNING", (TaskStatus(0, "RUNNING"), TaskStatus(1, "RUNNING")))
    client.pause("sf")  # 202: accepted, not done
    assert client.get_status("sf").state == "RUNNING"
    assert client.wait_for_state("sf", {"PAUSED"}).state == "PAUSED"
    client.resume("sf")
    assert client.get_status("sf").state == "PAUSED"
    assert client.wait_for_state("sf", {"RUNNING"}).running
    statuses = [(r.method, r.path.rsplit("/", 1)[-1]) for r in cloud.requests if r.method == "PUT"]
    assert statuses == [("PUT", "pause"), ("PUT", "resume")]


def test_cloud_delete_answers_200_error_null(cloud: ConfluentCloudConnect) -> None:
    client = _cloud_client(cloud)
    client.create("sf", SNOWFLAKE)
    response = cloud.handle(httpx.Request("GET", cloud.url + "/connectors", headers=_auth(cloud)))
    assert response.json() == ["sf"]
    assert client.delete("sf") is True
    assert cloud.connectors == {}
    assert client.delete("sf") is False
    raw = cloud.handle(httpx.Request("DELETE", cloud.url + "/connectors/x", headers=_auth(cloud)))
    assert (raw.status_code, raw.json()) == (404, {"error": {"code": 404, "message": "Connector x not found"}})


def _auth(cloud: ConfluentCloudConnect) -> dict[str, str]:
    token = base64.b64encode(f"{cloud.api_key}:{cloud.api_secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_cloud_both_error_shapes(cloud: ConfluentCloudConnect) -> None:
    client = _cloud_client(cloud)
    with pytest.raises(KafkaConnectError) as nested:
        client.pause("missing")
    assert (nested.value.status, nested.value.code, nested.value.message) == (404, 404, "Connector missing not found")
    with pytest.raises(KafkaConnectError) as flat:
        client.put_config("bad", {**SNOWFLAKE, "connector.class": "NoSuchSink"})
    assert (flat.value.status, flat.value.code) == (400, 400)
    assert flat.value.message == ("Invalid connector.class 'NoSuchSink'; "
                                  "available plugins: SnowflakeSink, MicrosoftSqlServerSink")


@pytest.mark.parametrize("retry_after, expected", [("3", 3.0), ("0", 0.0), ("7.5", 7.5)])
def test_cloud_429_honours_retry_after(cloud: ConfluentCloudConnect, retry_after: str, expected: float) -> None:
    sleeps: list[float] = []
    client = _cloud_client(cloud, sleeps)
    cloud.throttle(2, retry_after)
    assert client.list() == []
    assert sleeps == [expected, expected]
    assert len(cloud.requests) == 3


def test_cloud_429_http_date_capped_and_bounded(cloud: ConfluentCloudConnect) -> None:
    sleeps: list[float] = []
    client = _cloud_client(cloud, sleeps, max_retries=2, max_retry_wait_s=10.0)
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=40), usegmt=True)
    cloud.throttle(1, later)
    cloud.throttle(5, "1")
    with pytest.raises(KafkaConnectError) as err:
        client.list()
    assert (err.value.status, err.value.code) == (429, 429)
    # The HTTP-date wait (~40 s) is capped at max_retry_wait_s; then two more tries at most.
    assert sleeps == [10.0, 1.0]
    assert len(cloud.requests) == 3


def test_cloud_status_matches_spec_shape(cloud: ConfluentCloudConnect) -> None:
    _cloud_client(cloud).create("sf", {**SNOWFLAKE, "tasks.max": "1"})
    seen: list[dict[str, object]] = []
    for _ in range(2):
        request = httpx.Request("GET", cloud.url + "/connectors/sf/status", headers=_auth(cloud))
        seen.append(cloud.handle(request).json())
    assert seen[-1]["connector"] == {"state": "RUNNING", "worker_id": "sf", "trace": ""}
    assert seen[-1]["tasks"] == [{"id": 0, "state": "RUNNING", "worker_id": "sf", "msg": ""}]

