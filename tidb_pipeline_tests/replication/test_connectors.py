"""Desired connector configs and the diff/plan over them (pure)."""

from __future__ import annotations

import pytest

from tidb_pipeline.config import parse_config
from tidb_pipeline.replication.connectors import (
    MASK,
    PINNED_SNOWFLAKE_SINK,
    ConfigDiff,
    KafkaCredentials,
    Plan,
    SnowflakeSinkSettings,
    SqlServerSinkSettings,
    diff,
    plan,
    private_key_body,
    snowflake_sink_config,
    sqlserver_sink_config,
)

CONFIG = parse_config({
    "landing_mode": "connector",
    "snowflake": {"database": "REPLICA_DB", "landing_schema": "LAND"},
    "tables": [
        {"db": "tpcc", "table": "item", "key": ["i_id"]},
        {"db": "tpcc", "table": "order-line", "key": ["ol_o_id"]},
        {"db": "tpcc", "table": "stock", "landing_mode": "builtin"},
    ],
})
KAFKA = KafkaCredentials("KAFKAKEY", "kafka/secret+@:%?")
PEM = ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n"
       "AbCdEfGh+/==\n-----END ENCRYPTED PRIVATE KEY-----\n")


def test_private_key_body_strips_pem_armour_and_line_breaks() -> None:
    expected = "MIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQIAbCdEfGh+/=="
    assert private_key_body(PEM) == expected
    assert private_key_body(PEM.replace("\n", "\r\n")) == expected
    # As often pasted into an env var: literal backslash-n.
    assert private_key_body(PEM.replace("\n", "\\n")) == expected
    assert private_key_body(expected) == expected


def test_snowflake_sink_config_whole() -> None:
    settings = SnowflakeSinkSettings(name="snowflake-sink", kafka=KAFKA, url="acct.snowflakecomputing.com:443",
                                     user="TIDB_PIPELINE", private_key=PEM, private_key_passphrase="pass phrase",
                                     role="LOADER")
    assert snowflake_sink_config(CONFIG, settings) == {
        "connector.class": "SnowflakeSink",
        "name": "snowflake-sink",
        "topics": "tidb_tpcc_item,tidb_tpcc_order-line",
        "input.data.format": "AVRO",
        "input.key.format": "AVRO",
        "kafka.auth.mode": "KAFKA_API_KEY",
        "kafka.api.key": "KAFKAKEY",
        "kafka.api.secret": "kafka/secret+@:%?",
        "snowflake.url.name": "acct.snowflakecomputing.com:443",
        "snowflake.user.name": "TIDB_PIPELINE",
        "snowflake.private.key": "MIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQIAbCdEfGh+/==",
        "snowflake.private.key.passphrase": "pass phrase",
        "snowflake.database.name": "REPLICA_DB",
        "snowflake.schema.name": "LAND",
        # The builtin-mode table is left out; the dashed topic maps to the connector's hashed name.
        "snowflake.topic2table.map": "tidb_tpcc_item:TIDB_TPCC_ITEM,"
                                     f"tidb_tpcc_order-line:{CONFIG.landing_table(CONFIG.tables[1])}",
        # Streaming by default (exactly-once, in order), with its role; the layout the merge reads, pinned.
        "snowflake.ingestion.method": "SNOWPIPE_STREAMING",
        "snowflake.role.name": "LOADER",
        "behavior.on.null.values": "DEFAULT",
        "snowflake.enable.schematization": "false",
        "snowflake.metadata.all": "true",
        "snowflake.metadata.topic": "true",
        "snowflake.metadata.offset.and.partition": "true",
        "snowflake.metadata.createtime": "true",
        "buffer.flush.time": "120",
        "buffer.count.records": "10000",
        "buffer.size.bytes": "20000000",
        "tasks.max": "1",
    }
    assert CONFIG.landing_table(CONFIG.tables[1]).startswith("TIDB_TPCC_ORDER_LINE_")


def test_snowflake_sink_streaming_needs_role_and_sets_it() -> None:
    base = dict(name="s", kafka=KAFKA, url="u", user="u", private_key="K")
    with pytest.raises(ValueError, match="SNOWPIPE_STREAMING needs a Snowflake role.*SNOWFLAKE_ROLE"):
        snowflake_sink_config(CONFIG, SnowflakeSinkSettings(**base))  # streaming is the default
    out = snowflake_sink_config(CONFIG, SnowflakeSinkSettings(**base, ingestion_method="SNOWPIPE_STREAMING",
                                                              role="LOADER", tasks_max=3))
    assert (out["snowflake.ingestion.method"], out["snowflake.role.name"], out["tasks.max"]) == (
        "SNOWPIPE_STREAMING", "LOADER", "3")
    assert "snowflake.private.key.passphrase" not in out


@pytest.mark.parametrize(("key", "value", "why"), [
    ("behavior.on.null.values", "DEFAULT", "IGNORE writes no row for a tombstone: deletes would be lost"),
    ("snowflake.enable.schematization", "false", "4.x defaults to true: no RECORD_CONTENT column"),
    ("snowflake.metadata.all", "true", "no RECORD_METADATA at all otherwise"),
    ("snowflake.metadata.topic", "true", "the continuity check names the topic"),
    ("snowflake.metadata.offset.and.partition", "true", "the merge's watermark and hole rule"),
    ("snowflake.metadata.createtime", "true", "cleanup's retention"),
])  # fmt: skip
@pytest.mark.parametrize("method", ["SNOWPIPE", "SNOWPIPE_STREAMING"])
def test_every_pinned_snowflake_sink_property_is_sent_with_either_ingestion(key: str, value: str, why: str,
                                                                             method: str) -> None:
    settings = SnowflakeSinkSettings(name="s", kafka=KAFKA, url="u", user="u", private_key="K",
                                     ingestion_method=method, role="LOADER")  # type: ignore[arg-type]
    out = snowflake_sink_config(CONFIG, settings)
    assert out[key] == value, why
    assert PINNED_SNOWFLAKE_SINK[key] == value
    assert out["snowflake.ingestion.method"] == method  # SNOWPIPE stays allowed: the hole rule keeps it right


def test_snowflake_sink_without_connector_tables_is_an_error() -> None:
    builtin = parse_config({"tables": [{"db": "a", "table": "b"}]})
    settings = SnowflakeSinkSettings(name="s", kafka=KAFKA, url="u", user="u", private_key="K", role="R")
    with pytest.raises(ValueError, match="no tables to sink"):
        snowflake_sink_config(builtin, settings)
    # Explicit tables override the landing-mode filter.
    assert snowflake_sink_config(builtin, settings, builtin.tables)["topics"] == "tidb_a_b"


def test_sqlserver_sink_config_whole() -> None:
    settings = SqlServerSinkSettings(name="mssql-sink", kafka=KAFKA, host="sql.example.net", port=1433, user="sa",
                                     password="p@ss/word", database="replica", table_name_format="dbo.${topic}")
    assert sqlserver_sink_config(CONFIG, settings, CONFIG.tables[:1]) == {
        "connector.class": "MicrosoftSqlServerSink",
        "name": "mssql-sink",
        "topics": "tidb_tpcc_item",
        "input.data.format": "AVRO",
        "input.key.format": "AVRO",
        "kafka.auth.mode": "KAFKA_API_KEY",
        "kafka.api.key": "KAFKAKEY",
        "kafka.api.secret": "kafka/secret+@:%?",
        "connection.host": "sql.example.net",
        "connection.port": "1433",
        "connection.user": "sa",
        "connection.password": "p@ss/word",
        "db.name": "replica",
        "insert.mode": "UPSERT",
        "pk.mode": "record_key",
        "delete.enabled": "true",
        "auto.create": "true",
        "auto.evolve": "true",
        "table.name.format": "dbo.${topic}",
        "tasks.max": "1",
    }
    # Default: every table, whatever its landing mode.
    assert sqlserver_sink_config(CONFIG, settings)["topics"] == "tidb_tpcc_item,tidb_tpcc_order-line,tidb_tpcc_stock"


def test_sqlserver_sink_rejects_jdbc_url_as_host() -> None:
    settings = SqlServerSinkSettings(name="m", kafka=KAFKA, host="jdbc:sqlserver://h:1433", port=1433, user="u",
                                     password="p", database="d")
    with pytest.raises(ValueError, match="connection.host must be a host name"):
        sqlserver_sink_config(CONFIG, settings)


DESIRED = {"connector.class": "SnowflakeSink", "topics": "t1", "kafka.api.secret": "real", "tasks.max": "1"}


def test_diff_on_confluent_cloud_ignores_masks_and_service_keys() -> None:
    actual = {**DESIRED, "kafka.api.secret": MASK, "cloud.provider": "aws"}
    assert diff(DESIRED, actual, flavor="confluent_cloud") == ConfigDiff()
    assert not diff(DESIRED, actual, flavor="confluent_cloud")
    changed = {**actual, "tasks.max": "2"}
    del changed["topics"]
    assert diff(DESIRED, changed, flavor="confluent_cloud") == ConfigDiff(changed=("tasks.max",), missing=("topics",))


def test_diff_on_self_managed_is_exact() -> None:
    assert diff(DESIRED, dict(DESIRED), flavor="self_managed") == ConfigDiff()
    actual = {**DESIRED, "kafka.api.secret": MASK, "extra.key": "x"}
    result = diff(DESIRED, actual, flavor="self_managed")
    assert result == ConfigDiff(changed=("kafka.api.secret",), extra=("extra.key",))
    assert result.keys == ("extra.key", "kafka.api.secret")


@pytest.mark.parametrize(
    ("actual", "state", "expected"),
    [
        (None, None, Plan(("create",))),
        (DESIRED, "RUNNING", Plan(())),
        (DESIRED, "PROVISIONING", Plan(())),
        (DESIRED, "FAILED", Plan(())),
        (DESIRED, "PAUSED", Plan(("resume",))),
        (DESIRED, "STOPPED", Plan(("resume",))),
        ({**DESIRED, "tasks.max": "4"}, "RUNNING", Plan(("update",), ConfigDiff(changed=("tasks.max",)))),
        ({**DESIRED, "tasks.max": "4"}, "PAUSED", Plan(("update", "resume"), ConfigDiff(changed=("tasks.max",)))),
    ],
)
def test_plan(actual: dict[str, str] | None, state: str | None, expected: Plan) -> None:
    assert plan(DESIRED, actual, state, flavor="self_managed") == expected


def test_plan_action_and_forced_update() -> None:
    assert plan(DESIRED, DESIRED, "RUNNING", flavor="self_managed").action == "noop"
    masked = {**DESIRED, "kafka.api.secret": MASK}
    # A rotated secret is invisible behind the mask; force_update pushes it anyway.
    assert plan(DESIRED, masked, "RUNNING", flavor="confluent_cloud").action == "noop"
    assert plan(DESIRED, masked, "RUNNING", flavor="confluent_cloud", force_update=True).steps == ("update",)
