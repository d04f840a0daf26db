"""The lab change feed's OpenAPI v2, through raw HTTP against the running service.

The service runs as a real lab part on a free port with its changefeed store under a tmp folder; it reads
the session's MariaDB, probes the session's registry and (through its captures) writes to the session's
Kafka. Expected shapes, codes and messages are TiCDC's (tiflow `cdc/api/v2`), written out here by hand.
Capture moves `checkpoint_ts` on its own, so progress fields are checked for consistency, everything else
for equality.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import pymysql
import pytest

from tidb_pipeline.lab.mariadb import MariaDBService
from tidb_pipeline.lab.service import Service, down, up
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.ticdc.api import DEFAULT_REPLICA_CONFIG, created_config, mask_sink_uri, updated_config
from tidb_pipeline.lab.ticdc.server import STORE_FILE, TiCDCService
from tidb_pipeline.lab.ticdc.store import ChangefeedStore, running_error
from tidb_pipeline_tests import ticdc_golden as golden_vectors
from tidb_pipeline.lab.ports import free_port

pytestmark = pytest.mark.integration

PROGRESS = ("checkpoint_ts", "checkpoint_time", "resolved_ts", "checkpoint_tso")




def _tso_now() -> int:
    return (time.time_ns() // 1_000_000) << 18


def _time_of(ts: int) -> str:
    ms = ts >> 18
    return datetime.fromtimestamp(ms // 1000).strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}"


@pytest.fixture(scope="module")
def db(mariadb: MariaDBService) -> Iterator[str]:
    """A fresh upstream database: two tables with handle keys, two without."""
    name = f"ticdc_api_{uuid.uuid4().hex[:8]}"
    conn = pymysql.connect(autocommit=True, **mariadb.connect_kwargs())  # type: ignore[arg-type]
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
            cur.execute(f"CREATE TABLE `{name}`.orders (id BIGINT PRIMARY KEY, note VARCHAR(20))")
            cur.execute(f"CREATE TABLE `{name}`.coded (code VARCHAR(8) NOT NULL, v INT, UNIQUE KEY (code))")
            cur.execute(f"CREATE TABLE `{name}`.nokey (a INT, b INT)")
            cur.execute(f"CREATE TABLE `{name}`.nullable_unique (a INT NULL, UNIQUE KEY (a))")
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@pytest.fixture(scope="module")
def ticdc(
    lab_settings: LabSettings,
    kafka: Service,
    mariadb: Service,
    registry: Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TiCDCService]:
    settings = LabSettings(
        root=tmp_path_factory.mktemp("lab"), ports={**lab_settings.ports, "ticdc": free_port()}
    )
    service = TiCDCService(settings)
    up([service], log=lambda _msg: None)
    yield service
    down([service], log=lambda _msg: None)


@pytest.fixture(scope="module")
def http(ticdc: TiCDCService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ticdc.address(), timeout=30.0) as client:
        yield client


def _sink_uri(settings: LabSettings, topic: str = "fallback", **extra: str) -> str:
    params = {"protocol": "avro", "replication-factor": "1", **extra}
    return f"kafka://{settings.kafka_bootstrap}/{topic}?" + "&".join(f"{k}={v}" for k, v in params.items())


def _replica_config(settings: LabSettings, rules: list[str], registry: str | None = None) -> dict[str, Any]:
    return {
        "filter": {"rules": rules},
        "sink": {
            "protocol": "avro",
            "schema_registry": registry or settings.registry_url,
            "dispatchers": [{"matcher": ["*.*"], "topic": "tidb_{schema}_{table}", "partition": "index-value"}],
            "kafka_config": {"codec_config": {"enable_tidb_extension": True}},
        },
    }


def _create(
    http: httpx.Client, settings: LabSettings, db: str, cf_id: str | None = None, **body: Any
) -> httpx.Response:
    payload = {
        "changefeed_id": cf_id or f"cf-{uuid.uuid4().hex[:10]}",
        "sink_uri": _sink_uri(settings),
        "replica_config": _replica_config(settings, [f"{db}.orders", f"{db}.coded"]),
        **body,
    }
    return http.post("/api/v2/changefeeds", json=payload)


def _error(response: httpx.Response) -> tuple[int, dict[str, Any]]:
    return response.status_code, response.json()


def _without_progress(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in PROGRESS}


def _assert_progress(doc: dict[str, Any], start_ts: int) -> None:
    ts = doc.get("checkpoint_ts", doc.get("checkpoint_tso"))
    assert ts >= start_ts
    assert doc["checkpoint_time"] == _time_of(ts)
    if "resolved_ts" in doc:
        assert doc["resolved_ts"] >= ts


def test_health_is_an_empty_object(http: httpx.Client) -> None:
    response = http.get("/api/v2/health")
    assert (response.status_code, response.json()) == (200, {})


def test_status_describes_this_capture(http: httpx.Client, ticdc: TiCDCService) -> None:
    status = http.get("/api/v2/status").json()
    assert set(status) == {"version", "git_hash", "id", "cluster_id", "pid", "is_owner", "liveness"}
    assert (status["pid"], status["is_owner"], status["liveness"]) == (ticdc.pid(), True, 0)
    assert status["version"].startswith("v8.")
    uuid.UUID(status["id"])


def test_create_then_list_get_and_status_agree(
    http: httpx.Client, lab_settings: LabSettings, db: str
) -> None:
    start_ts = _tso_now() - (1000 << 18)
    config = _replica_config(lab_settings, [f"{db}.orders", f"{db}.coded"])
    created = _create(http, lab_settings, db, "create-get", start_ts=start_ts, replica_config=config)
    assert created.status_code == 200, created.text
    info = created.json()
    expected = {
        "namespace": "default",
        "id": "create-get",
        "sink_uri": _sink_uri(lab_settings),
        "create_time": info["create_time"],
        "start_ts": start_ts,
        "config": created_config(config),
        "state": "normal",
        "creator_version": info["creator_version"],
    }
    assert _without_progress(info) == expected
    assert info["checkpoint_ts"] == start_ts and info["checkpoint_time"] == _time_of(start_ts)

    got = http.get("/api/v2/changefeeds/create-get").json()
    assert _without_progress(got) == expected
    _assert_progress(got, start_ts)

    items = {item["id"]: item for item in http.get("/api/v2/changefeeds").json()["items"]}
    item = items["create-get"]
    assert _without_progress(item) == {
        "upstream_id": 0, "namespace": "default", "id": "create-get", "state": "normal", "error": None
    }
    _assert_progress(item, start_ts)
    listed = http.get("/api/v2/changefeeds").json()
    assert listed["total"] == len(listed["items"])

    status = http.get("/api/v2/changefeeds/create-get/status").json()
    assert set(status) == {"state", "resolved_ts", "checkpoint_ts"}
    assert status["state"] == "normal" and status["checkpoint_ts"] >= start_ts


def test_start_ts_zero_means_now(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    before = _tso_now()
    info = _create(http, lab_settings, db, "start-now", start_ts=0).json()
    after = _tso_now() + (1 << 18)
    assert before <= info["start_ts"] <= after
    assert info["checkpoint_ts"] == info["start_ts"]


def test_start_ts_in_the_future_is_refused(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    future = _tso_now() + (3600_000 << 18)
    status, body = _error(_create(http, lab_settings, db, "start-future", start_ts=future))
    assert (status, body["error_code"]) == (400, "CDC:ErrAPIInvalidParam")
    assert body["error_msg"].startswith(f"[CDC:ErrAPIInvalidParam]invalid start-ts {future}, larger than current tso ")


def test_unknown_changefeed_is_400_not_exists(http: httpx.Client) -> None:
    expected = (
        400,
        {
            "error_msg": "[CDC:ErrChangeFeedNotExists]changefeed not exists, default/no-such-feed",
            "error_code": "CDC:ErrChangeFeedNotExists",
        },
    )
    assert _error(http.get("/api/v2/changefeeds/no-such-feed")) == expected
    assert _error(http.get("/api/v2/changefeeds/no-such-feed/status")) == expected
    assert _error(http.post("/api/v2/changefeeds/no-such-feed/pause")) == expected
    assert _error(http.post("/api/v2/changefeeds/no-such-feed/resume", json={})) == expected
    assert _error(http.put("/api/v2/changefeeds/no-such-feed", json={})) == expected


def test_invalid_id_is_400_invalid_param(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    expected = (
        400,
        {"error_msg": "[CDC:ErrAPIInvalidParam]invalid changefeed_id: bad_id", "error_code": "CDC:ErrAPIInvalidParam"},
    )
    assert _error(_create(http, lab_settings, db, "bad_id")) == expected
    assert _error(http.get("/api/v2/changefeeds/bad_id")) == expected
    assert _error(http.delete("/api/v2/changefeeds/bad_id")) == expected
    assert _error(http.get("/api/v2/changefeeds/-leading-dash"))[1]["error_code"] == "CDC:ErrAPIInvalidParam"


def test_duplicate_id_is_already_exists(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    assert _create(http, lab_settings, db, "dup").status_code == 200
    # Not one of TiCDC's bad-request codes, so TiCDC answers 500.
    assert _error(_create(http, lab_settings, db, "dup")) == (
        500,
        {
            "error_msg": "[CDC:ErrChangeFeedAlreadyExists]changefeed already exists, dup",
            "error_code": "CDC:ErrChangeFeedAlreadyExists",
        },
    )


def test_pause_then_resume(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    assert _create(http, lab_settings, db, "pause-resume").status_code == 200
    paused = http.post("/api/v2/changefeeds/pause-resume/pause")  # no body, as TiCDC's CLI sends it
    assert (paused.status_code, paused.json()) == (200, {})
    assert http.get("/api/v2/changefeeds/pause-resume/status").json()["state"] == "stopped"
    listed = {i["id"]: i["state"] for i in http.get("/api/v2/changefeeds").json()["items"]}
    assert listed["pause-resume"] == "stopped"

    resumed = http.post("/api/v2/changefeeds/pause-resume/resume", json={})
    assert (resumed.status_code, resumed.json()) == (200, {})
    assert http.get("/api/v2/changefeeds/pause-resume").json()["state"] == "normal"


def test_resume_needs_a_json_body(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    assert _create(http, lab_settings, db, "resume-nobody").status_code == 200
    assert http.post("/api/v2/changefeeds/resume-nobody/pause").status_code == 200
    assert _error(http.post("/api/v2/changefeeds/resume-nobody/resume")) == (
        400,
        {"error_msg": "[CDC:ErrAPIInvalidParam]invalid api parameter: EOF", "error_code": "CDC:ErrAPIInvalidParam"},
    )
    assert http.get("/api/v2/changefeeds/resume-nobody").json()["state"] == "stopped"


def test_update_is_refused_while_running(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    original = _create(http, lab_settings, db, "update-running").json()["config"]
    new_config = _replica_config(lab_settings, [f"{db}.orders"])
    assert _error(http.put("/api/v2/changefeeds/update-running", json={"replica_config": new_config})) == (
        400,
        {
            "error_msg": "[CDC:ErrChangefeedUpdateRefused]changefeed update error: can only update changefeed "
            "config when it is stopped or failed",
            "error_code": "CDC:ErrChangefeedUpdateRefused",
        },
    )
    assert http.get("/api/v2/changefeeds/update-running").json()["config"] == original


def test_create_fills_in_ticdcs_defaults(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    sent = _replica_config(lab_settings, [f"{db}.orders"])
    got = _create(http, lab_settings, db, "defaults", replica_config=sent).json()["config"]
    assert got == created_config(sent)
    assert (got["check_gc_safe_point"], got["memory_quota"], got["filter"], got["mounter"]) == (
        True, 1 << 30, sent["filter"], {"worker_num": 16})
    # Objects merge into the defaults (Go decodes into the default struct); lists are replaced.
    assert got["sink"]["encoder_concurrency"] == 32 and got["sink"]["dispatchers"] == sent["sink"]["dispatchers"]


def test_update_replaces_the_whole_replica_config(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    created = _create(http, lab_settings, db, "update-stopped").json()["config"]
    assert (created["check_gc_safe_point"], created["enable_sync_point"]) == (True, False)
    assert http.post("/api/v2/changefeeds/update-stopped/pause").status_code == 200
    # Fewer keys than the original: nothing of the old config may survive, and what the body leaves out is
    # reset to its zero value (tiflow updateChangefeed), not kept and not defaulted.
    new_config = {
        "filter": {"rules": [f"{db}.coded"]},
        "sink": {
            "schema_registry": lab_settings.registry_url,
            "dispatchers": [{"matcher": [f"{db}.*"], "topic": "lab_{schema}_{table}"}],
        },
    }
    updated = http.put("/api/v2/changefeeds/update-stopped", json={"replica_config": new_config})
    assert updated.status_code == 200, updated.text
    got = http.get("/api/v2/changefeeds/update-stopped").json()
    assert updated.json()["config"] == got["config"] == updated_config(new_config)
    config = got["config"]
    assert (config["filter"], config["sink"]) == (new_config["filter"], new_config["sink"])
    assert (config["check_gc_safe_point"], config["case_sensitive"], config["memory_quota"]) == (False, False, 1 << 30)
    assert "enable_sync_point" not in config and config["mounter"] == {"worker_num": 16}
    assert (got["state"], got["sink_uri"]) == ("stopped", _sink_uri(lab_settings))

    same = http.put("/api/v2/changefeeds/update-stopped", json={"replica_config": new_config})
    assert _error(same)[1]["error_code"] == "CDC:ErrChangefeedUpdateRefused"
    # The complete config, sent back as a whole, restores the settings the partial one reset.
    full = {**created, "filter": new_config["filter"]}
    assert http.put("/api/v2/changefeeds/update-stopped", json={"replica_config": full}).status_code == 200
    restored = http.get("/api/v2/changefeeds/update-stopped").json()["config"]
    assert restored == full and restored["check_gc_safe_point"] is True


def test_updated_config_follows_tiflow() -> None:
    # The unit behind the two tests above: golden fact `put_replica_config`.
    fact = next(c for c in golden_vectors.load("derived_from_code.json")["cases"] if c["id"] == "put_replica_config")
    assert "check_gc_safe_point false" in fact["fact"]
    got = updated_config({"filter": {"rules": ["a.*"]}})
    assert {k: got.get(k) for k in ("check_gc_safe_point", "case_sensitive", "force_replicate",
                                    "ignore_ineligible_table", "memory_quota")} == {
        "check_gc_safe_point": False, "case_sensitive": False, "force_replicate": False,
        "ignore_ineligible_table": False, "memory_quota": 1 << 30}  # fmt: skip
    assert not {"enable_sync_point", "enable_table_monitor", "bdr_mode"} & got.keys()
    assert got["sink"] == DEFAULT_REPLICA_CONFIG["sink"] and got["filter"] == {"rules": ["a.*"]}
    assert updated_config({"sink": {"protocol": "avro"}})["sink"] == {"protocol": "avro"}  # replaced whole
    explicit = updated_config({"check_gc_safe_point": True, "bdr_mode": False})
    assert (explicit["check_gc_safe_point"], explicit["bdr_mode"], "enable_sync_point" in explicit) == (True, False, False)


def test_failed_changefeed_shows_its_error_and_can_be_fixed(
    http: httpx.Client, ticdc: TiCDCService, lab_settings: LabSettings, db: str
) -> None:
    assert _create(http, lab_settings, db, "fails").status_code == 200
    # Fail it the way capture does: through the store, from another connection.
    error = running_error("CDC:ErrKafkaNewProducer", "new kafka producer: broker down", addr="127.0.0.1:1")
    store = ChangefeedStore(ticdc.data_dir / STORE_FILE)
    try:
        store.set_state("fails", "failed", error)
    finally:
        store.close()

    item = next(i for i in http.get("/api/v2/changefeeds").json()["items"] if i["id"] == "fails")
    assert (item["state"], item["error"]) == ("failed", error)
    info = http.get("/api/v2/changefeeds/fails").json()
    assert info["error"] == {k: error[k] for k in ("addr", "code", "message")}
    assert http.get("/api/v2/changefeeds/fails/status").json()["last_error"] == error

    new_config = _replica_config(lab_settings, [f"{db}.orders"])
    updated = http.put("/api/v2/changefeeds/fails", json={"replica_config": new_config})
    assert (updated.status_code, updated.json()["config"], updated.json()["state"]) == (
        200, updated_config(new_config), "failed")
    assert http.post("/api/v2/changefeeds/fails/resume", json={}).json() == {}
    resumed = http.get("/api/v2/changefeeds/fails/status").json()
    assert (resumed["state"], "last_error" in resumed) == ("normal", False)


def test_delete_is_idempotent(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    assert _create(http, lab_settings, db, "to-delete").status_code == 200
    for _ in range(2):
        response = http.delete("/api/v2/changefeeds/to-delete")
        assert (response.status_code, response.json()) == (200, {})
    assert http.get("/api/v2/changefeeds/to-delete").status_code == 400
    assert "to-delete" not in {i["id"] for i in http.get("/api/v2/changefeeds?state=all").json()["items"]}


def test_table_without_a_key_is_ineligible(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    config = _replica_config(lab_settings, [f"{db}.*"])
    assert _error(_create(http, lab_settings, db, "ineligible", replica_config=config)) == (
        400,
        {
            "error_msg": f"[CDC:ErrTableIneligible]some tables are not eligible to replicate([{db}.nokey "
            f"{db}.nullable_unique]), if you want to ignore these tables, please set ignore_ineligible_table to true",
            "error_code": "CDC:ErrTableIneligible",
        },
    )
    assert _error(http.get("/api/v2/changefeeds/ineligible"))[1]["error_code"] == "CDC:ErrChangeFeedNotExists"


def test_avro_topic_must_name_schema_and_table(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    config = _replica_config(lab_settings, [f"{db}.orders"])
    config["sink"]["dispatchers"] = [{"matcher": ["*.*"], "topic": "tidb_{schema}"}]
    status, body = _error(_create(http, lab_settings, db, "bad-topic", replica_config=config))
    assert (status, body["error_code"]) == (500, "CDC:ErrKafkaTopicExprInvalid")


def test_sink_must_be_kafka_avro_with_a_registry(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    mysql_sink = _create(http, lab_settings, db, "not-kafka", sink_uri="mysql://root@127.0.0.1:3306/")
    assert _error(mysql_sink)[1]["error_code"] == "CDC:ErrSinkURIInvalid"
    canal = _create(
        http, lab_settings, db, "not-avro", sink_uri=_sink_uri(lab_settings, protocol="canal-json"),
        replica_config={"filter": {"rules": [f"{db}.orders"]}},
    )
    assert _error(canal)[1]["error_code"] == "CDC:ErrSinkURIInvalid"
    no_registry = _create(
        http, lab_settings, db, "no-registry", replica_config={"filter": {"rules": [f"{db}.orders"]}}
    )
    assert _error(no_registry)[1]["error_code"] == "CDC:ErrCodecInvalidConfig"
    # Something answers, but not with the registry's exact `{}`: TiCDC refuses it.
    not_a_registry = _replica_config(lab_settings, [f"{db}.orders"], registry=f"{lab_settings.registry_url}/subjects")
    status, body = _error(_create(http, lab_settings, db, "bad-registry", replica_config=not_a_registry))
    assert (status, body["error_code"]) == (500, "CDC:ErrAvroSchemaAPIError")


def test_sink_uri_passwords_are_masked_but_the_registry_in_the_config_is_not(
    http: httpx.Client, lab_settings: LabSettings, db: str
) -> None:
    secret = "s3/cr+t@x:y%z?w"
    encoded = quote(secret, safe="")
    sink_uri = _sink_uri(lab_settings, **{"sasl-mechanism": "plain", "sasl-user": "key", "sasl-password": encoded})
    registry = f"http://key:{encoded}@{lab_settings.host}:{lab_settings.port('registry')}"
    config = _replica_config(lab_settings, [f"{db}.orders"], registry)
    created = _create(http, lab_settings, db, "masked", sink_uri=sink_uri, replica_config=config)
    assert created.status_code == 200, created.text

    info = http.get("/api/v2/changefeeds/masked").json()
    # Go's url.Values.Encode: keys sorted, values query-escaped.
    assert info["sink_uri"] == (
        f"kafka://{lab_settings.kafka_bootstrap}/fallback?protocol=avro&replication-factor=1"
        "&sasl-mechanism=plain&sasl-password=xxxxx&sasl-user=key"
    )
    # As TiCDC (golden mask_sink_uri.json `config_schema_registry`): the config is returned as stored, the
    # registry's credentials in clear text. Clients must mask it themselves (resources/ticdc.py does).
    fact = golden_vectors.load("mask_sink_uri.json")["config_schema_registry"]["fact"]
    assert "NOT masked" in fact
    assert info["config"]["sink"]["schema_registry"] == registry
    for text in (
        http.get("/api/v2/changefeeds?state=all").text,
        http.get("/api/v2/changefeeds/masked/status").text,
        info["sink_uri"],
    ):
        for form in (secret, encoded, quote(secret), "s3/cr", "s3%2Fcr"):
            assert form not in text


def test_static_and_default_topics_are_accepted(http: httpx.Client, lab_settings: LabSettings, db: str) -> None:
    config = _replica_config(lab_settings, [f"{db}.orders", f"{db}.coded"])
    # orders goes to one static topic; coded matches no dispatcher and goes to the sink URI's topic.
    config["sink"]["dispatchers"] = [{"matcher": [f"{db}.orders"], "topic": "one_static_topic", "partition": ""}]
    created = _create(http, lab_settings, db, "static-topic", replica_config=config)
    assert created.status_code == 200, created.text


def test_mask_sink_uri_matches_tiflow() -> None:
    # tiflow pkg/util/uri_test.go TestMaskSinkURI
    assert mask_sink_uri("mysql://root:123456@127.0.0.1:3306/?time-zone=Asia/Shanghai") == (
        "mysql://root:xxxxx@127.0.0.1:3306/?time-zone=Asia/Shanghai"
    )
    assert mask_sink_uri(
        "kafka://127.0.0.1:9093/cdc?sasl-mechanism=SCRAM-SHA-256&sasl-user=ticdc&sasl-password=verysecure"
    ) == "kafka://127.0.0.1:9093/cdc?sasl-mechanism=SCRAM-SHA-256&sasl-password=xxxxx&sasl-user=ticdc"


def test_changefeeds_survive_a_restart(
    http: httpx.Client, ticdc: TiCDCService, lab_settings: LabSettings, db: str
) -> None:
    assert _create(http, lab_settings, db, "durable-running").status_code == 200
    assert _create(http, lab_settings, db, "durable-paused").status_code == 200
    assert http.post("/api/v2/changefeeds/durable-paused/pause").status_code == 200
    before = {cf: http.get(f"/api/v2/changefeeds/{cf}").json() for cf in ("durable-running", "durable-paused")}
    old_pid = ticdc.pid()

    assert ticdc.stop()
    up([ticdc], log=lambda _msg: None)
    assert ticdc.pid() not in (None, old_pid)

    with httpx.Client(base_url=ticdc.address(), timeout=30.0) as fresh:
        for cf, old in before.items():
            new = fresh.get(f"/api/v2/changefeeds/{cf}").json()
            assert _without_progress({**new, "state": None}) == _without_progress({**old, "state": None})
            assert new["checkpoint_ts"] >= old["checkpoint_ts"]
        assert fresh.get("/api/v2/changefeeds/durable-paused").json()["state"] == "stopped"
