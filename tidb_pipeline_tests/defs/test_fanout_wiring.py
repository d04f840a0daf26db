"""The fan-out in `build_defs`: SQL Server, ksqlDB and Confluent connector assets exactly when the config enables
them, their resources, and the `confluent/<connector>` assets reconciling against the Confluent Cloud stand-in."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import dagster as dg
import httpx
import pytest
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import ConfigError, PipelineConfig, parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.connector_assets import (
    ConnectorSettingsError,
    build_all_connector_assets,
    confluent_key,
)
from tidb_pipeline.engine.connectors import ConnectorFailedError
from tidb_pipeline.defs.resources import build_resources, sqlserver_for
from tidb_pipeline.lab.confluent_cloud import MASK, ConfluentCloudConnect
from tidb_pipeline.replication.connectors import private_key_body
from tidb_pipeline.replication.ksqldb import stream_name
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.kafka_connect import KafkaConnectResource
from tidb_pipeline.resources.sqlserver import SqlServerResource

TABLES = [{"db": "shop", "table": "orders", "key": ["id"]}, {"db": "shop", "table": "items", "key": ["id"]},
          {"db": "crm", "table": "people", "key": ["id"], "landing_mode": "connector"}]
KAFKA_SECRET = "kafka/secret+with@odd:chars%?"
PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
       "VJTUt9Us8cKjMzEfYyjiWA4R4\n-----END PRIVATE KEY-----\n")
SQL_PASSWORD = "sql/pa+ss@wo:rd%?"
NO_ENV: dict[str, str] = {}


def _keys(defs: dg.Definitions) -> set[str]:
    out: set[str] = set()
    for a in defs.assets or []:
        out.update(k.to_user_string() for k in (a.keys if isinstance(a, dg.AssetsDefinition) else [a.key]))
    return out


def _fanout(keys: set[str]) -> set[str]:
    return {k for k in keys if k.split("/")[0] in ("sqlserver", "ksqldb", "confluent")}


# --- config -----------------------------------------------------------------------------------------------
def test_sections_default_off_and_validate() -> None:
    config = parse_config({"tables": TABLES[:2]})
    assert (config.sqlserver.enabled, config.ksqldb.enabled) == (False, False)
    assert (config.sqlserver.mode, config.sqlserver.database, config.sqlserver.db_schema) == ("builtin", "tidb_replica",
                                                                                              None)
    assert parse_config({"sqlserver": {"enabled": True, "schema": "dbo"}}).sqlserver.db_schema == "dbo"
    for raw, field in [
        ({"sqlserver": {"mode": "jdbc"}}, "sqlserver.mode"),
        ({"sqlserver": {"mode": "connector", "schema": "dbo"}}, "sqlserver"),
        ({"sqlserver": {"colour": 1}}, "sqlserver.colour"),
        ({"ksqldb": {"enabled": "sometimes"}}, "ksqldb.enabled"),
        ({"connectors": {"snowflake_sink_name": "has space"}}, "connectors.snowflake_sink_name"),
        ({"connectors": {"sqlserver_sink_name": "tidb-pipeline-snowflake-sink"}}, "connectors"),
        ({"connectors": {"tasks_max": 0}}, "connectors.tasks_max"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(raw)
        assert f"  {field}:" in str(err.value), (raw, str(err.value))


# --- build_defs -------------------------------------------------------------------------------------------
def test_disabled_config_has_no_fanout_assets_or_resources() -> None:
    defs = build_defs(config=parse_config({"tables": TABLES[:2]}))
    assert _fanout(_keys(defs)) == set()
    assert set(defs.resources) == {"tidb", "kafka", "schema_registry", "snowflake", "ticdc"}


def test_enabled_sections_give_exactly_the_expected_keys() -> None:
    config = parse_config({"sqlserver": {"enabled": True, "database": "replica"}, "ksqldb": {"enabled": True},
                           "connectors": {"snowflake_sink_name": "sf-sink"}, "tables": TABLES})
    defs = build_defs(config=config)
    topics = [f"tidb_{t['db']}_{t['table']}" for t in TABLES]
    expected = ({f"sqlserver/replica/{t}" for t in topics} | {f"ksqldb/{t.upper()}" for t in topics}
                | {"confluent/sf-sink"})  # one table in connector landing mode: the Snowflake Sink
    assert _fanout(_keys(defs)) == expected
    assert {"sqlserver", "ksqldb", "kafka_connect"} <= set(defs.resources)
    defs.get_repository_def().load_all_definitions()  # every asset's resources are provided
    assert stream_name("tidb_shop_orders") == "TIDB_SHOP_ORDERS"

    sink = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and confluent_key("sf-sink") in a.keys)
    assert sink.asset_deps[confluent_key("sf-sink")] == {dg.AssetKey(["kafka", "tidb_crm_people"])}


def test_sqlserver_connector_mode_gives_sink_and_external_tables() -> None:
    config = parse_config({"sqlserver": {"enabled": True, "mode": "connector"}, "tables": TABLES[:2]})
    defs = build_defs(config=config)
    assert _fanout(_keys(defs)) == {"confluent/tidb-pipeline-sqlserver-sink",
                                    "sqlserver/tidb_replica/tidb_shop_orders", "sqlserver/tidb_replica/tidb_shop_items"}
    specs = {s.key.to_user_string(): s for s in defs.assets if isinstance(s, dg.AssetSpec)}
    orders = specs["sqlserver/tidb_replica/tidb_shop_orders"]
    assert {d.asset_key for d in orders.deps} == {dg.AssetKey(["kafka", "tidb_shop_orders"]),
                                                 confluent_key("tidb-pipeline-sqlserver-sink")}
    assert {"sqlserver", "kafka_connect"} <= set(defs.resources) and "ksqldb" not in defs.resources
    defs.get_repository_def().load_all_definitions()


def test_sqlserver_resource_takes_the_config_database_and_schema() -> None:
    config = parse_config({"sqlserver": {"enabled": True, "database": "rep", "schema": "cdc"}})
    resource = sqlserver_for(config, {"SQLSERVER_HOST": "db.example"})
    assert (resource.database, resource.db_schema, resource.host) == ("rep", "cdc", "db.example")
    assert sqlserver_for(config, {"SQLSERVER_DATABASE": "rep"}).database == "rep"
    with pytest.raises(ValueError, match="SQLSERVER_DATABASE='other'.*'rep'"):
        sqlserver_for(config, {"SQLSERVER_DATABASE": "other"})
    with pytest.raises(ValueError, match="SQLSERVER_SCHEMA='dbo'.*'cdc'"):
        build_resources(NO_ENV | {"SQLSERVER_SCHEMA": "dbo"}, config=config)


# --- the connector assets against the Confluent Cloud stand-in --------------------------------------------
class _CloudConnect(KafkaConnectResource):
    """Dagster cannot pass a transport through resource config; this finds the stand-in by URL."""

    def get_client(self, **_kwargs: Any) -> Any:
        return super().get_client(transport=_TRANSPORTS[self.url], sleep=lambda _s: None)


_TRANSPORTS: dict[str, httpx.BaseTransport] = {}


@pytest.fixture
def cloud() -> Iterator[ConfluentCloudConnect]:
    stand_in = ConfluentCloudConnect(settle_polls=0)
    _TRANSPORTS[stand_in.url] = stand_in.transport()
    yield stand_in
    _TRANSPORTS.pop(stand_in.url, None)


def _resources(cloud: ConfluentCloudConnect, **overrides: Any) -> dict[str, Any]:
    return {
        "kafka_connect": _CloudConnect(flavor="confluent_cloud", url=cloud.url, api_key=cloud.api_key,
                                       api_secret=cloud.api_secret),
        "kafka": KafkaResource(bootstrap_servers="pkc-x.confluent.cloud:9092", security_protocol="SASL_SSL",
                               sasl_username="KAFKAKEY01", sasl_password=KAFKA_SECRET),
        "snowflake": SnowflakeResource(account="xy12345.us-east-1", user="PIPELINE", private_key=PEM, role="LOADER"),
        "sqlserver": SqlServerResource(host="sql.example", port=1433, username="sink", password=SQL_PASSWORD,
                                       database="tidb_replica"),
        **overrides,
    }


def _run(config: PipelineConfig, key: dg.AssetKey, resources: dict[str, Any], *,
         run_config: dict[str, Any] | None = None, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    assets = [a for a in build_all_connector_assets(config=config)
              if isinstance(a, dg.AssetsDefinition) and key in a.keys]
    return dg.materialize(assets, resources=resources, raise_on_error=raise_on_error,
                          run_config={"ops": {assets[0].op.name: {"config": run_config}}} if run_config else None)


def _user_error(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    """(class name, message) of the one step failure's own exception."""
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    cause = error.cause or error
    return cause.cls_name, cause.message


def _meta(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_snowflake_sink_asset_creates_noops_updates_and_resumes(cloud: ConfluentCloudConnect) -> None:
    config = parse_config({"connectors": {"snowflake_sink_name": "sf-sink"}, "tables": TABLES})
    key = confluent_key("sf-sink")
    meta = _meta(_run(config, key, _resources(cloud)))
    assert {k: meta[k] for k in ("action", "steps", "state", "task_states", "flavor", "topics")} == {
        "action": "create", "steps": "create", "state": "RUNNING", "task_states": "0: RUNNING",
        "flavor": "confluent_cloud", "topics": 1}
    assert not any(s in json.dumps(meta, default=str) for s in (KAFKA_SECRET, "MIIEvQ", cloud.api_secret))

    stored = cloud.stored_config("sf-sink")
    body = private_key_body(PEM)
    assert stored == {
        "connector.class": "SnowflakeSink", "name": "sf-sink", "topics": "tidb_crm_people",
        "input.data.format": "AVRO", "input.key.format": "AVRO", "kafka.auth.mode": "KAFKA_API_KEY",
        "kafka.api.key": "KAFKAKEY01", "kafka.api.secret": KAFKA_SECRET,
        "snowflake.url.name": "xy12345.us-east-1.snowflakecomputing.com:443", "snowflake.user.name": "PIPELINE",
        "snowflake.private.key": body, "snowflake.database.name": "TIDB_REPLICA", "snowflake.schema.name": "LANDING",
        "snowflake.topic2table.map": "tidb_crm_people:TIDB_CRM_PEOPLE",
        "snowflake.ingestion.method": "SNOWPIPE_STREAMING", "snowflake.role.name": "LOADER",
        "behavior.on.null.values": "DEFAULT", "snowflake.enable.schematization": "false",
        "snowflake.metadata.all": "true", "snowflake.metadata.topic": "true",
        "snowflake.metadata.offset.and.partition": "true", "snowflake.metadata.createtime": "true",
        "buffer.flush.time": "120", "buffer.count.records": "10000", "buffer.size.bytes": "20000000",
        "tasks.max": "1",
    }
    assert "\n" not in body and "BEGIN" not in body

    puts = sum(r.method == "PUT" for r in cloud.requests)
    assert _meta(_run(config, key, _resources(cloud)))["action"] == "noop"
    assert sum(r.method == "PUT" for r in cloud.requests) == puts  # nothing sent, secrets masked on read
    assert not any(MASK in json.dumps(r.body) for r in cloud.requests if r.body)

    # A base64-encoded PEM (accepted by dagster-snowflake) gives the same key body; a changed setting updates.
    tuned = parse_config({"connectors": {"snowflake_sink_name": "sf-sink", "tasks_max": 2}, "tables": TABLES})
    b64 = SnowflakeResource(account="xy12345.us-east-1", user="PIPELINE", role="LOADER",
                            private_key=base64.b64encode(PEM.encode()).decode())
    meta = _meta(_run(tuned, key, _resources(cloud, snowflake=b64)))
    assert (meta["action"], meta["changed_keys"]) == ("update", "tasks.max")
    assert cloud.stored_config("sf-sink")["snowflake.private.key"] == body

    with _CloudConnect(flavor="confluent_cloud", url=cloud.url, api_key=cloud.api_key,
                       api_secret=cloud.api_secret).get_client() as client:
        client.pause("sf-sink")
        assert client.wait_for_state("sf-sink", {"PAUSED"}).state == "PAUSED"
    meta = _meta(_run(tuned, key, _resources(cloud), run_config={"wait_running_s": 10}))
    assert (meta["steps"], meta["state"], meta["task_states"]) == ("resume", "RUNNING", "0: RUNNING, 1: RUNNING")


def test_force_update_pushes_a_rotated_secret(cloud: ConfluentCloudConnect) -> None:
    config = parse_config({"connectors": {"snowflake_sink_name": "sf-sink"}, "tables": TABLES})
    key = confluent_key("sf-sink")
    _run(config, key, _resources(cloud))
    rotated = KafkaResource(bootstrap_servers="x:9092", sasl_username="KAFKAKEY01", sasl_password="rotated-secret-1")
    assert _meta(_run(config, key, _resources(cloud, kafka=rotated)))["action"] == "noop"  # masked: looks equal
    assert cloud.stored_config("sf-sink")["kafka.api.secret"] == KAFKA_SECRET
    meta = _meta(_run(config, key, _resources(cloud, kafka=rotated), run_config={"force_update": True}))
    assert meta["action"] == "update"
    assert cloud.stored_config("sf-sink")["kafka.api.secret"] == "rotated-secret-1"


def test_sqlserver_sink_asset_reconciles_the_declared_config(cloud: ConfluentCloudConnect) -> None:
    config = parse_config({"sqlserver": {"enabled": True, "mode": "connector"}, "tables": TABLES[:2]})
    key = confluent_key("tidb-pipeline-sqlserver-sink")
    meta = _meta(_run(config, key, _resources(cloud)))
    assert (meta["action"], meta["state"], meta["topics"]) == ("create", "RUNNING", 2)
    assert SQL_PASSWORD not in json.dumps(meta, default=str)
    stored = cloud.stored_config("tidb-pipeline-sqlserver-sink")
    assert {k: stored[k] for k in ("connector.class", "topics", "connection.host", "connection.port",
                                   "connection.user", "connection.password", "db.name", "insert.mode", "pk.mode",
                                   "delete.enabled", "auto.create", "auto.evolve", "table.name.format")} == {
        "connector.class": "MicrosoftSqlServerSink", "topics": "tidb_shop_orders,tidb_shop_items",
        "connection.host": "sql.example", "connection.port": "1433", "connection.user": "sink",
        "connection.password": SQL_PASSWORD, "db.name": "tidb_replica", "insert.mode": "UPSERT",
        "pk.mode": "record_key", "delete.enabled": "true", "auto.create": "true", "auto.evolve": "true",
        "table.name.format": "${topic}",
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"snowflake": SnowflakeResource(account="a", user="u", password="pw")}, "SNOWFLAKE_PRIVATE_KEY"),
        ({"kafka": KafkaResource(bootstrap_servers="x:9092")}, "KAFKA_API_KEY and KAFKA_API_SECRET"),
        ({"snowflake": SnowflakeResource(account="a", user="u", private_key=PEM)}, "set SNOWFLAKE_ROLE"),
    ],
)
def test_snowflake_sink_without_credentials_names_what_to_set(
    cloud: ConfluentCloudConnect, overrides: dict[str, Any], message: str
) -> None:
    config = parse_config({"tables": TABLES})
    result = _run(config, confluent_key("tidb-pipeline-snowflake-sink"), _resources(cloud, **overrides),
                  raise_on_error=False)
    assert not result.success
    cls_name, text = _user_error(result)
    assert cls_name == ConnectorSettingsError.__name__ and message in text
    assert cloud.requests == []  # nothing reached the API


@pytest.mark.parametrize(
    ("sqlserver", "message"),
    [
        (SqlServerResource(drivername="postgresql+pg8000", password="x", database="tidb_replica"), "mssql+pytds"),
        (SqlServerResource(password="x", database="elsewhere"), "'tidb_replica' but the sqlserver resource"),
    ],
)
def test_sqlserver_sink_refuses_a_resource_it_cannot_use(
    cloud: ConfluentCloudConnect, sqlserver: SqlServerResource, message: str
) -> None:
    config = parse_config({"sqlserver": {"enabled": True, "mode": "connector"}, "tables": TABLES[:1]})
    result = _run(config, confluent_key("tidb-pipeline-sqlserver-sink"), _resources(cloud, sqlserver=sqlserver),
                  raise_on_error=False)
    cls_name, text = _user_error(result)
    assert cls_name == ConnectorSettingsError.__name__ and message in text and cloud.requests == []


def test_failed_task_fails_the_asset_without_leaking_secrets(cloud: ConfluentCloudConnect) -> None:
    config = parse_config({"connectors": {"snowflake_sink_name": "sf-sink"}, "tables": TABLES})
    key = confluent_key("sf-sink")
    _run(config, key, _resources(cloud))
    cloud.connectors["sf-sink"].state = cloud.connectors["sf-sink"].target = "FAILED"

    def echoing(request: httpx.Request) -> httpx.Response:
        # Connect may echo a config value in a task's message; the asset's error must not repeat it.
        response = cloud.handle(request)
        if request.url.path.endswith("/status"):
            body = response.json()
            for task in body["tasks"]:
                task["msg"] = f"Kafka auth failed for key KAFKAKEY01 with secret {KAFKA_SECRET}"
            return httpx.Response(200, json=body)
        return response

    _TRANSPORTS[cloud.url] = httpx.MockTransport(echoing)
    result = _run(config, key, _resources(cloud), raise_on_error=False)
    cls_name, text = _user_error(result)
    assert cls_name == ConnectorFailedError.__name__
    assert "is FAILED" in text and "[redacted]" in text and KAFKA_SECRET not in text
