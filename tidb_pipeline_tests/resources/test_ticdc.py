"""The `ticdc` client: envelope parsing, retries (MockTransport), secret scrubbing, and the lab's OpenAPI v2."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from urllib.parse import quote, quote_plus

import dagster as dg
import httpx
import pytest

from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.ticdc.api import created_config
from tidb_pipeline.resources.ticdc import (
    ChangefeedInfo,
    RunningError,
    TiCDCClient,
    TiCDCError,
    TiCDCResource,
    ticdc_resource,
)
from tidb_pipeline_tests.lab_resources import changefeed_client, source_databases, unique_suffix

SECRET = "p/a+s@s:w%o?rd&x=1"
SINK = f"kafka://b:9092/t?protocol=avro&sasl-user=key&sasl-password={quote(SECRET, safe='')}"
REGISTRY = f"https://key:{quote(SECRET, safe='')}@r.example"
INFO = {"id": "cf", "state": "normal", "checkpoint_ts": 5 << 18, "checkpoint_time": "2026-01-01 00:00:00.000",
        "sink_uri": "kafka://b:9092/t?protocol=avro&sasl-password=xxxxx", "config": {"filter": {"rules": ["a.b"]}},
        "resolved_ts": 6 << 18, "start_ts": 1}  # fmt: skip


def _envelope(status: int, code: str, msg: str) -> httpx.Response:
    return httpx.Response(status, json={"error_msg": f"[{code}]{msg}", "error_code": code})


def _client(handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float] | None = None) -> TiCDCClient:
    return TiCDCClient("http://ticdc.test", transport=httpx.MockTransport(handler), max_retries=2, backoff_s=0.5,
                       sleep=(sleeps.append if sleeps is not None else lambda _s: None))  # fmt: skip


def _secret_forms() -> list[str]:
    return [SECRET, quote(SECRET, safe=""), quote(SECRET), quote_plus(SECRET)]


# --- pure client behaviour (MockTransport) ------------------------------------------------------------------


def test_get_parses_info_and_sends_namespace() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={**INFO, "error": {"addr": "a:1", "code": "CDC:ErrX", "message": "boom"}})

    with _client(handler) as client:
        info = client.get("cf")
    assert info == ChangefeedInfo(
        id="cf", state="normal", checkpoint_ts=5 << 18, checkpoint_time="2026-01-01 00:00:00.000",
        error=RunningError(code="CDC:ErrX", message="boom", addr="a:1"), sink_uri_masked=INFO["sink_uri"],
        config=INFO["config"], resolved_ts=6 << 18, start_ts=1,
    )  # fmt: skip
    assert [(r.method, r.url.path, dict(r.url.params)) for r in seen] == [
        ("GET", "/api/v2/changefeeds/cf", {"namespace": "default"})]


def test_error_envelope_becomes_ticdc_error() -> None:
    with _client(lambda r: _envelope(400, "CDC:ErrChangeFeedNotExists", "changefeed not exists, default/x")) as client:
        with pytest.raises(TiCDCError) as err:
            client.get("x")
    assert (err.value.code, err.value.status, err.value.message) == (
        "CDC:ErrChangeFeedNotExists", 400, "GET /api/v2/changefeeds/x: changefeed not exists, default/x")


def test_non_json_error_keeps_the_text() -> None:
    with _client(lambda r: httpx.Response(404, text="404 page not found")) as client:
        with pytest.raises(TiCDCError) as err:
            client.health()
    assert (err.value.code, err.value.status, err.value.message) == ("", 404, "GET /api/v2/health: 404 page not found")


def test_idempotent_calls_retry_5xx_with_backoff() -> None:
    answers = [_envelope(503, "CDC:ErrServerIsNotReady", "not ready"), _envelope(500, "CDC:ErrEtcd", "etcd"),
               httpx.Response(200, json={})]  # fmt: skip
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path} {request.content.decode()}")
        return answers[len(calls) - 1]

    sleeps: list[float] = []
    with _client(handler, sleeps) as client:
        client.resume("cf")
    assert calls == ["POST /api/v2/changefeeds/cf/resume {}"] * 3
    assert sleeps == [0.5, 1.0]


def test_retries_are_bounded() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _envelope(503, "CDC:ErrServerIsNotReady", "not ready")

    sleeps: list[float] = []
    with _client(handler, sleeps) as client, pytest.raises(TiCDCError) as err:
        client.list_changefeeds()
    assert (len(calls), sleeps, err.value.status, err.value.code) == (3, [0.5, 1.0], 503, "CDC:ErrServerIsNotReady")


def test_create_is_not_retried_on_5xx_or_a_lost_answer() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _envelope(500, "CDC:ErrChangeFeedAlreadyExists", "changefeed already exists, cf")

    with _client(handler) as client, pytest.raises(TiCDCError, match="already exists"):
        client.create("cf", SINK, {})
    assert len(calls) == 1

    def read_timeout(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("timed out", request=request)

    calls.clear()
    with _client(read_timeout) as client, pytest.raises(TiCDCError, match="ReadTimeout"):
        client.update("cf", SINK, {})
    assert len(calls) == 1


def test_create_is_retried_when_the_connection_never_opened() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=INFO)

    with _client(handler) as client:
        assert client.create("cf", SINK, {"sink": {"schema_registry": REGISTRY}}, start_ts=7).id == "cf"
    assert calls == [{"changefeed_id": "cf", "namespace": "default", "sink_uri": SINK,
                      "replica_config": {"sink": {"schema_registry": REGISTRY}}, "start_ts": 7}] * 2  # fmt: skip


def test_echoed_secrets_are_scrubbed_from_errors_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        # As Go's url.Parse error would quote it: the raw URI, plus the registry URL, plus a decoded copy.
        registry = body["replica_config"]["sink"]["schema_registry"]
        echo = f'parse "{body["sink_uri"]}": bad; registry {registry}; {SECRET}'
        status = 500 if request.method == "PUT" else 400
        return _envelope(status, "CDC:ErrSinkURIInvalid", echo)

    caplog.set_level(logging.DEBUG)
    errors = []
    with _client(handler) as client:
        for call in (client.create, client.update):
            with pytest.raises(TiCDCError) as err:
                call("cf", SINK, {"sink": {"schema_registry": REGISTRY}})
            errors.append(err.value)
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [caplog.text]
    assert all(form not in text for form in _secret_forms() for text in texts)
    assert "sasl-password=xxxxx" in str(errors[0]) and "key:xxxxx@r.example" in str(errors[0])


def test_unreachable_server_names_the_url() -> None:
    with TiCDCClient("http://127.0.0.1:9", max_retries=1, backoff_s=0.0, connect_timeout_s=1) as client:
        with pytest.raises(TiCDCError, match=r"cannot connect to http://127.0.0.1:9 .*TICDC_URL") as err:
            client.health()
    assert (err.value.status, err.value.code) == (0, "")


def test_resource_builder_reads_env_and_keeps_the_password_an_env_var() -> None:
    assert ticdc_resource(env={}) == TiCDCResource()
    res = ticdc_resource(env={"TICDC_URL": "https://cdc:8300", "TICDC_USER": "ops", "TICDC_PASSWORD": SECRET})
    assert (res.url, res.user, res.password) == ("https://cdc:8300", "ops", dg.EnvVar("TICDC_PASSWORD"))
    assert SECRET not in repr(res)


def test_resource_client_sends_basic_auth() -> None:
    with TiCDCResource(url="http://cdc:8300/", user="ops", password=SECRET).get_client() as client:
        request = client.http.build_request("GET", "/api/v2/health")
        authed = next(client.http.auth.sync_auth_flow(request))
        assert client.base_url == "http://cdc:8300"
    assert authed.headers["Authorization"] == httpx.BasicAuth("ops", SECRET)._auth_header


# --- against the lab's TiCDC stand-in -----------------------------------------------------------------------


@pytest.fixture()
def lab_changefeed(
    ticdc: Service, mariadb: Service, lab_settings: LabSettings
) -> Iterator[tuple[TiCDCClient, str, str]]:
    db, cf_id = f"cdcres_{unique_suffix()}", f"test-{unique_suffix(12)}"
    table = f"CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v VARCHAR(10))"
    with source_databases(mariadb, db, statements=(table,)), changefeed_client(lab_settings, cf_id) as client:
        yield client, cf_id, db


@pytest.mark.integration
def test_lab_endpoints_round_trip(lab_changefeed: tuple[TiCDCClient, str, str], lab_settings: LabSettings) -> None:
    client, cf_id, db = lab_changefeed
    client.health()
    assert client.status().is_owner is True
    sink = f"kafka://{lab_settings.kafka_bootstrap}/{cf_id}?protocol=avro&partition-num=1"
    dispatcher = {"matcher": [f"{db}.t"], "topic": "tidb_{schema}_{table}", "partition": "index-value"}
    config = {"filter": {"rules": [f"{db}.t"]},
              "sink": {"schema_registry": lab_settings.registry_url, "dispatchers": [dispatcher]}}  # fmt: skip
    created = client.create(cf_id, sink, config)
    # The stand-in fills in TiCDC's defaults around what was sent, as TiCDC's create does.
    assert (created.id, created.state, created.sink_uri_masked, created.config) == (
        cf_id, "normal", sink, created_config(config))
    assert cf_id in [s.id for s in client.list_changefeeds()]
    client.pause(cf_id)
    assert client.get_status(cf_id).state == "stopped"
    updated = client.update(cf_id, sink.replace("partition-num=1", "partition-num=2"), config)
    assert updated.sink_uri_masked.endswith("partition-num=2")
    client.resume(cf_id)
    status = client.get_status(cf_id)
    assert (status.state, status.last_error) == ("normal", None) and status.checkpoint_ts >= created.checkpoint_ts
    client.delete(cf_id)
    client.delete(cf_id)  # idempotent
    with pytest.raises(TiCDCError) as err:
        client.get(cf_id)
    assert (err.value.code, err.value.status, err.value.message) == (
        "CDC:ErrChangeFeedNotExists", 400, f"GET /api/v2/changefeeds/{cf_id}: changefeed not exists, default/{cf_id}")


@pytest.mark.integration
def test_lab_refusal_keeps_the_registry_secret_out(
    lab_changefeed: tuple[TiCDCClient, str, str], lab_settings: LabSettings, caplog: pytest.LogCaptureFixture
) -> None:
    client, cf_id, db = lab_changefeed
    caplog.set_level(logging.DEBUG)
    unreachable = f"http://key:{quote(SECRET, safe='')}@127.0.0.1:9"
    config = {"filter": {"rules": [f"{db}.t"]},
              "sink": {"schema_registry": unreachable,
                       "dispatchers": [{"matcher": [f"{db}.t"], "topic": "tidb_{schema}_{table}"}]}}  # fmt: skip
    with pytest.raises(TiCDCError) as err:
        client.create(cf_id, f"kafka://{lab_settings.kafka_bootstrap}/{cf_id}?protocol=avro", config)
    assert err.value.code == "CDC:ErrAvroSchemaAPIError"
    assert "key:xxxxx@127.0.0.1:9" in err.value.message
    assert all(form not in text for form in _secret_forms() for text in (str(err.value), caplog.text))
