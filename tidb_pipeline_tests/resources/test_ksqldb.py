"""The ksqldb client through the ksqlDB stand-in: request shapes, Basic auth, error envelopes, retries.

Tests that create streams need the lab schema registry (columns are inferred from it); the rest run on the
in-process stand-in alone.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from tidb_pipeline.lab.ksqldb import KsqlDbStandIn
from tidb_pipeline.lab.service import Service
from tidb_pipeline.resources.ksqldb import (
    Column,
    Health,
    KsqlDbClient,
    KsqlDbError,
    KsqlDbResource,
    ServerInfo,
    ksqldb_resource,
)

API_KEY = "KSQLKEYSTANDIN01"
API_SECRET = "ksql/secret+with@odd:chars%?"


def _client(stand_in: KsqlDbStandIn, *, secret: str = API_SECRET, sleeps: list[float] | None = None,
            transport: httpx.BaseTransport | None = None) -> KsqlDbClient:
    resource = KsqlDbResource(url=stand_in.url, api_key=API_KEY, api_secret=secret)
    sleep: Callable[[float], None] = (sleeps.append if sleeps is not None else lambda _s: None)
    return resource.get_client(transport=transport or stand_in.transport(), sleep=sleep)


@pytest.fixture
def stand_in() -> KsqlDbStandIn:
    # No registry needed until a CREATE runs; an unroutable address makes any unexpected lookup fail loudly.
    return KsqlDbStandIn(registry_url="http://127.0.0.1:9", api_key=API_KEY, api_secret=API_SECRET)


def test_info_healthcheck_and_basic_auth(stand_in: KsqlDbStandIn) -> None:
    with _client(stand_in) as client:
        assert client.info() == ServerInfo("stand-in-0.29", "lkc-standin", "pksqlc-standin", "RUNNING")
        assert client.healthcheck() == Health(True, {"metastore": True, "kafka": True, "commandRunner": True})
    expected = "Basic " + base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
    assert [(r.method, r.path, r.authorization) for r in stand_in.requests] == [
        ("GET", "/info", expected), ("GET", "/healthcheck", expected)]


def test_unhealthy_is_an_answer_not_an_error() -> None:
    body = {"isHealthy": False, "details": {"metastore": {"isHealthy": True}, "kafka": {"isHealthy": False}}}
    transport = httpx.MockTransport(lambda _r: httpx.Response(503, json=body))
    client = KsqlDbResource(url="http://ksqldb.test").get_client(transport=transport, sleep=lambda _s: None)
    assert client.healthcheck() == Health(False, {"metastore": True, "kafka": False})


def test_ksql_posts_the_documented_body(stand_in: KsqlDbStandIn) -> None:
    with _client(stand_in) as client:
        assert client.ksql(["LIST STREAMS", "SHOW STREAMS;"]) == [
            {"@type": "streams", "statementText": "LIST STREAMS;", "warnings": [], "streams": []},
            {"@type": "streams", "statementText": "SHOW STREAMS;", "warnings": [], "streams": []},
        ]
        client.ksql("LIST STREAMS;", {"auto.offset.reset": "earliest"})
    assert [r.body for r in stand_in.requests] == [
        {"ksql": "LIST STREAMS;\nSHOW STREAMS;", "streamsProperties": {}},
        {"ksql": "LIST STREAMS;", "streamsProperties": {"auto.offset.reset": "earliest"}},
    ]


def test_statement_error_envelope(stand_in: KsqlDbStandIn) -> None:
    with _client(stand_in) as client:
        assert client.describe_stream("NOPE") is None
        with pytest.raises(KsqlDbError) as caught:
            client.ksql("DESCRIBE `NOPE`;")
    err = caught.value
    assert (err.status, err.error_code, err.message, err.statement) == (
        400, 40001, "Could not find STREAM/TABLE 'NOPE' in the Metastore", "DESCRIBE `NOPE`;")
    assert str(err) == ("ksqlDB statement 'DESCRIBE `NOPE`;' failed (HTTP 400, error 40001): "
                        "Could not find STREAM/TABLE 'NOPE' in the Metastore")


def test_generic_error_and_non_json_bodies() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(400, json={"@type": "generic_error", "error_code": 40000, "message": "bad request"})
        return httpx.Response(404, text="<html>not here</html>")

    client = KsqlDbResource(url="http://ksqldb.test").get_client(transport=httpx.MockTransport(answer))
    with pytest.raises(KsqlDbError) as first:
        client.info()
    assert (first.value.status, first.value.error_code, first.value.message) == (400, 40000, "bad request")
    with pytest.raises(KsqlDbError) as second:
        client.ksql("LIST STREAMS;")
    assert (second.value.status, second.value.error_code, second.value.message) == (
        404, None, "<html>not here</html>")


def test_wrong_secret_names_the_env_vars_and_never_the_secret(stand_in: KsqlDbStandIn) -> None:
    wrong = "wrong/secret+value@1"
    with _client(stand_in, secret=wrong) as client, pytest.raises(KsqlDbError) as caught:
        client.info()
    err = caught.value
    assert (err.status, err.error_code) == (401, 40100)
    assert "KSQLDB_API_KEY/KSQLDB_API_SECRET" in str(err)
    for text in (str(err), repr(err), err.message):
        assert wrong not in text and API_SECRET not in text and API_KEY not in text


def test_5xx_retried_with_backoff_then_given_up(stand_in: KsqlDbStandIn) -> None:
    sleeps: list[float] = []
    stand_in.fail_next(2)
    with _client(stand_in, sleeps=sleeps) as client:
        assert client.info().server_status == "RUNNING"
        assert sleeps == [0.5, 1.0]
        stand_in.fail_next(10)
        with pytest.raises(KsqlDbError) as caught:
            client.info()
    assert (caught.value.status, caught.value.error_code) == (503, 50300)
    assert len(stand_in.requests) == 3 + 4  # two failures and a success, then 1 + max_retries


def test_4xx_not_retried(stand_in: KsqlDbStandIn) -> None:
    with _client(stand_in) as client, pytest.raises(KsqlDbError):
        client.ksql("SELECT * FROM nowhere;")
    assert len(stand_in.requests) == 1


def test_connection_errors_retried_then_reported() -> None:
    calls: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"KsqlServerInfo": {"serverStatus": "RUNNING"}})

    client = KsqlDbResource(url="http://ksqldb.test").get_client(transport=httpx.MockTransport(refuse),
                                                                  sleep=lambda _s: None)
    assert client.info().server_status == "RUNNING"
    calls.clear()

    def always(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    dead = KsqlDbResource(url="http://ksqldb.test").get_client(transport=httpx.MockTransport(always),
                                                                sleep=lambda _s: None)
    with pytest.raises(KsqlDbError, match=r"cannot reach http://ksqldb.test \(ConnectError\) after 4 attempts"):
        dead.info()


def test_execute_raises_on_command_status_error() -> None:
    entity = {"@type": "currentStatus", "commandStatus": {"status": "ERROR", "message": "boom"},
              "commandSequenceNumber": 3}
    transport = httpx.MockTransport(lambda _r: httpx.Response(200, json=[entity]))
    client = KsqlDbResource(url="http://ksqldb.test").get_client(transport=transport)
    with pytest.raises(KsqlDbError, match="boom"):
        client.execute("DROP STREAM `S`;")


def test_resource_from_env() -> None:
    import dagster as dg

    resource = ksqldb_resource({"KSQLDB_URL": "https://pksqlc-x.aws.confluent.cloud:443",
                                "KSQLDB_API_KEY": "k", "KSQLDB_API_SECRET": "s"})
    assert resource.url == "https://pksqlc-x.aws.confluent.cloud:443"
    assert (resource.api_key, resource.api_secret) == (dg.EnvVar("KSQLDB_API_KEY"), dg.EnvVar("KSQLDB_API_SECRET"))
    local = ksqldb_resource({})
    assert (local.url, local.api_key, local.api_secret) == ("http://127.0.0.1:8088", None, None)


# --- through the lab schema registry ---------------------------------------------------------------

def _register(registry: Service, topic: str, value_fields: list[dict[str, object]]) -> None:
    client = SchemaRegistryClient({"url": registry.address()})
    key = {"type": "record", "name": "Key", "namespace": "t", "fields": [{"name": "id", "type": "long"}]}
    value = {"type": "record", "name": "Value", "namespace": "t", "fields": value_fields}
    client.register_schema(f"{topic}-key", Schema(json.dumps(key), "AVRO"))
    client.register_schema(f"{topic}-value", Schema(json.dumps(value), "AVRO"))


@pytest.mark.integration
def test_streams_describe_and_drop_guard(registry: Service) -> None:
    topic = f"tidb_t_{uuid.uuid4().hex[:8]}"
    _register(registry, topic, [
        {"name": "id", "type": "long"},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ])
    stand_in = KsqlDbStandIn(registry_url=registry.address(), api_key=API_KEY, api_secret=API_SECRET)
    with _client(stand_in) as client:
        created = client.execute(f"CREATE STREAM s1 WITH (KAFKA_TOPIC='{topic}', VALUE_FORMAT='AVRO', "
                                 "KEY_FORMAT='AVRO');")
        assert (created["commandStatus"], created["commandSequenceNumber"]) == (
            {"status": "SUCCESS", "message": "Stream created", "queryId": None}, 1)
        info = client.describe_stream("S1")  # unquoted names are upper-cased, as in ksqlDB
        assert info is not None
        assert (info.name, info.topic, info.key_format, info.value_format) == ("S1", topic, "AVRO", "AVRO")
        assert info.columns == (Column("ROWKEY", "STRUCT<ID BIGINT>", key=True), Column("ID", "BIGINT"),
                                Column("PRICE", "DECIMAL(10, 2)"), Column("NOTE", "STRING"))
        assert client.list_streams() == ["S1"]

        stand_in.add_query("CSAS_OUT_1", reads="S1")
        with pytest.raises(KsqlDbError, match="queries read from this source: \\[CSAS_OUT_1\\]") as caught:
            client.ksql("DROP STREAM S1;")
        assert caught.value.error_code == 40001
        assert client.describe_stream("S1") is not None
        assert client.describe_stream("S1").read_queries == ("CSAS_OUT_1",)  # type: ignore[union-attr]
        entities = client.ksql("TERMINATE CSAS_OUT_1; DROP STREAM S1;")
        assert [e["commandStatus"]["message"] for e in entities] == [
            "Query terminated.", f"Source `S1` (topic: {topic}) was dropped."]
        assert client.describe_stream("S1") is None


@pytest.mark.integration
def test_failed_statement_reports_the_ones_before_it(registry: Service) -> None:
    topic = f"tidb_t_{uuid.uuid4().hex[:8]}"
    stand_in = KsqlDbStandIn(registry_url=registry.address())
    client = KsqlDbResource(url=stand_in.url).get_client(transport=stand_in.transport())
    with pytest.raises(KsqlDbError) as caught:
        client.ksql(f"LIST STREAMS; CREATE STREAM s WITH (KAFKA_TOPIC='{topic}', VALUE_FORMAT='AVRO', "
                    "KEY_FORMAT='AVRO');")
    assert caught.value.message == (f"Schema for message values on topic '{topic}' does not exist in the Schema "
                                    f"Registry.Subject: {topic}-value")
    response = stand_in.handle(httpx.Request("POST", stand_in.url + "/ksql", json={
        "ksql": "LIST STREAMS; DESCRIBE x;", "streamsProperties": {}}))
    body = response.json()
    assert (response.status_code, body["@type"], body["statementText"], len(body["entities"])) == (
        400, "statement_error", "DESCRIBE x;", 1)
