"""Reconciling the changefeed: in-process against the lab's API (secrets inspectable) and against the lab server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import dagster as dg
import httpx
import pytest

from tidb_pipeline.config import PipelineConfig, SourceConfig, TableConfig
from tidb_pipeline.engine.changefeed import (
    ChangefeedReconcileError,
    lag_seconds,
    reconcile_changefeed,
    sink_settings,
)
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.ticdc.api import TiCDCApi, UpstreamTable, created_config, updated_config
from tidb_pipeline.lab.ticdc.store import ChangefeedStore
from tidb_pipeline.replication.changefeed import REPLICA_SETTINGS, KafkaSink, Registry, build_changefeed
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import TiCDCClient, TiCDCError
from tidb_pipeline_tests.lab_resources import changefeed_client, source_databases, unique_suffix

SECRET = "s/e+c@r:e%t?x&y=z"
SECRET_FORMS = (SECRET, quote(SECRET, safe=""), quote(SECRET))


class Recording:
    """Wraps a TiCDCClient and records which endpoints were called, in order."""

    def __init__(self, client: TiCDCClient) -> None:
        self.client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


def test_lag_is_now_minus_the_physical_part_of_the_checkpoint() -> None:
    assert lag_seconds((1_000_000 << 18) | 123, now_ms=1_002_500) == 2.5
    assert lag_seconds(2_000 << 18, now_ms=1_000) == 0.0


def test_sink_settings_from_confluent_cloud_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_API_SECRET", SECRET)
    kafka = KafkaResource(bootstrap_servers="pkc:9092", security_protocol="SASL_SSL", sasl_username="key",
                          sasl_password=dg.EnvVar("KAFKA_API_SECRET"))  # fmt: skip
    registry = SchemaRegistryResource(url="https://psrc", api_key="rkey", api_secret="rsecret")
    assert sink_settings(kafka, registry) == (
        KafkaSink(bootstrap_servers="pkc:9092", tls=True, sasl_user="key", sasl_password=SECRET, replication_factor=3),
        Registry(url="https://psrc", api_key="rkey", api_secret="rsecret"),
    )
    assert sink_settings(KafkaResource(), SchemaRegistryResource()) == (
        KafkaSink(bootstrap_servers="127.0.0.1:19092"), Registry(url="http://127.0.0.1:18081"))


# --- in process: the lab's API behind an httpx MockTransport ------------------------------------------------


@pytest.fixture()
def inproc(tmp_path: Path) -> Iterator[tuple[TiCDCClient, ChangefeedStore]]:
    store = ChangefeedStore(tmp_path / "cf.sqlite")
    tables = [UpstreamTable("shop", "orders", True), UpstreamTable("shop", "items", True),
              UpstreamTable("shop", "nokey", False)]  # fmt: skip
    api = TiCDCApi(store, list_tables=lambda: tables, probe_registry=lambda url: "{}")

    def handler(request: httpx.Request) -> httpx.Response:
        r = api.handle(request.method, request.url.path, dict(request.url.params), request.content)
        if isinstance(r.body, str):
            return httpx.Response(r.status, text=r.body)
        return httpx.Response(r.status, json=r.body)

    client = TiCDCClient("http://ticdc.test", transport=httpx.MockTransport(handler), sleep=lambda _s: None)
    yield client, store
    client.close()
    store.close()


def _config(*tables: str, partitions: int = 3, cf_id: str = "orders-feed") -> PipelineConfig:
    return PipelineConfig(
        source=SourceConfig(changefeed_id=cf_id, partitions=partitions),
        tables=tuple(TableConfig(db=t.split(".")[0], table=t.split(".")[1]) for t in tables),
    )


CLOUD_KAFKA = KafkaSink(
    bootstrap_servers="pkc:9092", tls=True, sasl_user="key", sasl_password=SECRET, replication_factor=3
)
CLOUD_REGISTRY = Registry(url="https://psrc.example", api_key="rkey", api_secret=SECRET)
LAB_LIKE_KAFKA = KafkaSink(bootstrap_servers="pkc:9092")  # no Kafka secret: the registry's is the only one


def test_update_sends_the_real_secrets_never_the_masked_ones(
    inproc: tuple[TiCDCClient, ChangefeedStore], caplog: pytest.LogCaptureFixture
) -> None:
    client, store = inproc
    caplog.set_level(logging.DEBUG)
    first = build_changefeed(_config("shop.orders"), CLOUD_KAFKA, CLOUD_REGISTRY)
    assert reconcile_changefeed(client, first).action == "create"
    second = build_changefeed(_config("shop.orders", "shop.items", partitions=6), CLOUD_KAFKA, CLOUD_REGISTRY)
    recording = Recording(client)
    result = reconcile_changefeed(recording, second)  # type: ignore[arg-type]
    assert (result.action, recording.calls) == ("update", ["get", "pause", "update", "resume", "get"])
    stored = store.get("orders-feed")
    assert stored is not None
    # What TiCDC holds is exactly the declared definition, secrets and all (no `xxxxx` sent back); the PUT
    # replaced the whole config, so it is the declared one on top of nothing but TiCDC's zero values.
    assert (stored.sink_uri, stored.replica_config, stored.state) == (
        second.sink_uri, updated_config(second.replica_config), "normal")
    texts = [caplog.text, repr(result), str(result.metadata())]
    assert all(form not in text for form in SECRET_FORMS for text in texts)
    assert "partition-num: running '3', declared '6'" in caplog.text
    # Nothing the create had set was lost by the update: the next run finds nothing to do.
    assert reconcile_changefeed(client, second).action == "noop"


def test_the_update_sends_the_complete_config_and_restores_what_a_partial_put_reset(
    inproc: tuple[TiCDCClient, ChangefeedStore],
) -> None:
    client, store = inproc
    desired = build_changefeed(_config("shop.orders"), CLOUD_KAFKA, CLOUD_REGISTRY)
    assert reconcile_changefeed(client, desired).action == "create"
    created = store.get("orders-feed")
    assert created is not None and created.replica_config["check_gc_safe_point"] is True
    # Every changefeed-level setting is stated, so a PUT of it resets nothing TiCDC would otherwise default.
    assert {k: desired.replica_config[k] for k in REPLICA_SETTINGS} == {
        k: created.replica_config[k] for k in REPLICA_SETTINGS}  # fmt: skip
    # Someone updates it with a partial config (only the filter and sink): TiCDC resets the rest to zero values.
    client.pause("orders-feed")
    partial = {k: desired.replica_config[k] for k in ("filter", "sink")}
    client.update("orders-feed", desired.sink_uri, partial)
    client.resume("orders-feed")
    assert store.get("orders-feed").replica_config["check_gc_safe_point"] is False  # type: ignore[union-attr]
    # The asset compares the whole declared config, sees the reset and puts the complete one back.
    result = reconcile_changefeed(client, desired)
    assert result.action == "update"
    assert "replica_config.check_gc_safe_point: running False, declared True" in result.differences
    restored = store.get("orders-feed")
    assert restored is not None and restored.replica_config == updated_config(desired.replica_config)
    assert {k: restored.replica_config[k] for k in REPLICA_SETTINGS} == REPLICA_SETTINGS


def test_failed_update_resumes_the_old_config_and_raises(inproc: tuple[TiCDCClient, ChangefeedStore]) -> None:
    client, store = inproc
    good = build_changefeed(_config("shop.orders"), CLOUD_KAFKA, CLOUD_REGISTRY)
    reconcile_changefeed(client, good)
    bad = build_changefeed(_config("shop.orders", "shop.nokey"), CLOUD_KAFKA, CLOUD_REGISTRY)
    with pytest.raises(TiCDCError) as err:
        reconcile_changefeed(client, bad)
    assert err.value.code == "CDC:ErrTableIneligible" and "shop.nokey" in err.value.message
    stored = store.get("orders-feed")
    assert stored is not None and (stored.state, stored.replica_config) == ("normal", created_config(good.replica_config))


def test_the_registry_secret_ticdc_returns_unmasked_is_never_kept_logged_or_shown(
    inproc: tuple[TiCDCClient, ChangefeedStore], caplog: pytest.LogCaptureFixture
) -> None:
    client, store = inproc
    caplog.set_level(logging.DEBUG)
    only_registry = Registry(url="https://psrc.example", api_key="rkey", api_secret=SECRET)
    desired = build_changefeed(_config("shop.orders"), LAB_LIKE_KAFKA, only_registry)
    reconcile_changefeed(client, desired)
    # The server answers with the registry URL exactly as stored (as TiCDC does) ...
    raw = client.http.get("/api/v2/changefeeds/orders-feed").text
    assert quote(SECRET, safe="") in raw
    # ... what the client returns holds it masked, in every field and in its repr.
    info = client.get("orders-feed")
    assert info.config["sink"]["schema_registry"] == "https://rkey:xxxxx@psrc.example"
    shown = [repr(info), str(info.config)]
    # A changed registry key shows up as a difference (masked) and is pushed; a failing update's error too.
    rekeyed = build_changefeed(_config("shop.orders"), LAB_LIKE_KAFKA,
                               Registry(url="https://psrc.example", api_key="rkey2", api_secret=SECRET))  # fmt: skip
    result = reconcile_changefeed(client, rekeyed)
    assert result.action == "update"
    assert any("schema_registry" in d and "xxxxx" in d for d in result.differences), result.differences
    failing = build_changefeed(_config("shop.orders", "shop.nokey"), LAB_LIKE_KAFKA, only_registry)
    with pytest.raises(TiCDCError) as err:
        reconcile_changefeed(client, failing)
    shown += [repr(result), str(result.metadata()), str(err.value), caplog.text]
    assert all(form not in text for form in SECRET_FORMS for text in shown)
    assert store.get("orders-feed").replica_config["sink"]["schema_registry"].endswith(  # type: ignore[union-attr]
        "@psrc.example")  # the real one was sent, not `xxxxx`
    assert "xxxxx" not in store.get("orders-feed").replica_config["sink"]["schema_registry"]  # type: ignore[union-attr]


def test_a_finished_changefeed_is_left_to_a_human(inproc: tuple[TiCDCClient, ChangefeedStore]) -> None:
    client, store = inproc
    desired = build_changefeed(_config("shop.orders"), CLOUD_KAFKA, CLOUD_REGISTRY)
    reconcile_changefeed(client, desired)
    store.set_state("orders-feed", "finished")
    with pytest.raises(ChangefeedReconcileError, match="orders-feed is finished .* delete it"):
        reconcile_changefeed(client, desired)


# --- against the lab server ---------------------------------------------------------------------------------


@pytest.fixture()
def lab(
    ticdc: Service, kafka: Service, registry: Service, mariadb: Service, lab_settings: LabSettings
) -> Iterator[dict]:
    db, cf_id = f"cdcrec_{unique_suffix()}", f"test-{unique_suffix(12)}"
    tables = [f"CREATE TABLE `{db}`.{t} (id INT PRIMARY KEY, v VARCHAR(10))" for t in ("a", "b")]
    with source_databases(mariadb, db, statements=tuple(tables)), changefeed_client(lab_settings, cf_id) as client:
        # The lab registry ignores credentials, so these exercise encoding and masking end to end.
        reg = Registry(url=lab_settings.registry_url, api_key="lab", api_secret=SECRET)
        kafka_sink = KafkaSink(bootstrap_servers=lab_settings.kafka_bootstrap)
        yield {"client": client, "db": db, "cf_id": cf_id, "kafka": kafka_sink, "registry": reg}


@pytest.mark.integration
def test_reconcile_against_the_lab(lab: dict, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, db, cf_id = lab["client"], lab["db"], lab["cf_id"]

    def desired(*tables: str, partitions: int = 3):
        return build_changefeed(_config(*(f"{db}.{t}" for t in tables), partitions=partitions, cf_id=cf_id),
                                lab["kafka"], lab["registry"])  # fmt: skip

    def run(d) -> tuple[str, list[str], str]:
        recording = Recording(client)
        result = reconcile_changefeed(recording, d)  # type: ignore[arg-type]
        assert result.lag_s < 60 and result.checkpoint_time and result.error is None
        return result.action, recording.calls, result.state

    assert run(desired("a")) == ("create", ["get", "create", "get"], "normal")
    assert run(desired("a")) == ("noop", ["get", "get"], "normal")
    assert run(desired("a", partitions=5)) == ("update", ["get", "pause", "update", "resume", "get"], "normal")
    info = client.get(cf_id)
    assert "partition-num=5" in urlsplit(info.sink_uri_masked).query.split("&")
    assert run(desired("a", "b", partitions=5)) == ("update", ["get", "pause", "update", "resume", "get"], "normal")
    assert client.get(cf_id).config["filter"]["rules"] == [f"{db}.a", f"{db}.b"]
    client.pause(cf_id)
    assert run(desired("a", "b", partitions=5)) == ("resume", ["get", "resume", "get"], "normal")
    assert run(desired("a", "b", partitions=5)) == ("noop", ["get", "get"], "normal")
    assert "lab:xxxxx@" in client.get(cf_id).config["sink"]["schema_registry"]
    assert all(form not in caplog.text for form in SECRET_FORMS)
