"""The declared changefeed: URI building and percent-encoding, masking-aware diff, and the plan decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote_plus, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidb_pipeline.config import PipelineConfig, SourceConfig, TableConfig
from tidb_pipeline.lab.ticdc.api import changefeed_info, created_config
from tidb_pipeline.lab.ticdc.store import Changefeed
from tidb_pipeline.replication.changefeed import (
    REPLICA_SETTINGS,
    DesiredChangefeed,
    KafkaSink,
    Plan,
    Registry,
    build_changefeed,
    diff,
    filter_name,
    mask_uri,
    plan,
    registry_url,
    replica_config,
    sink_uri,
)
from tidb_pipeline.resources.ticdc import ChangefeedInfo, parse_changefeed_info

NASTY = "s/e+c@r:e%t?x&y=z #1"
NASTY_KEY = "K+/@:%?EY"

CONFIG = PipelineConfig(
    source=SourceConfig(changefeed_id="cf-1", partitions=6),
    tables=(TableConfig(db="tpcc", table="orders"), TableConfig(db="tpcc", table="order_line")),
)
LAB_KAFKA = KafkaSink(bootstrap_servers="127.0.0.1:19092")
LAB_REGISTRY = Registry(url="http://127.0.0.1:18081")
CLOUD_KAFKA = KafkaSink(
    bootstrap_servers="pkc-1.us-east-1.aws.confluent.cloud:9092",
    tls=True,
    sasl_user=NASTY_KEY,
    sasl_password=NASTY,
    replication_factor=3,
)
CLOUD_REGISTRY = Registry(url="https://psrc-1.us-east-1.aws.confluent.cloud/", api_key=NASTY_KEY, api_secret=NASTY)


def test_lab_sink_uri_is_exactly_this() -> None:
    assert sink_uri(CONFIG, LAB_KAFKA) == (
        "kafka://127.0.0.1:19092/cf-1-default?protocol=avro&partition-num=6&replication-factor=1"
        "&enable-tidb-extension=true&avro-decimal-handling-mode=precise&avro-bigint-unsigned-handling-mode=long"
    )


def test_confluent_cloud_sink_uri_decodes_back_to_the_exact_credentials() -> None:
    uri = sink_uri(CONFIG, CLOUD_KAFKA)
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "kafka", "pkc-1.us-east-1.aws.confluent.cloud:9092", "/cf-1-default")
    # Parsing as Go's url.ParseQuery does (`+` would be a space): every value comes back exactly.
    assert parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True) == [
        ("protocol", "avro"), ("partition-num", "6"), ("replication-factor", "3"), ("enable-tidb-extension", "true"),
        ("avro-decimal-handling-mode", "precise"), ("avro-bigint-unsigned-handling-mode", "long"),
        ("enable-tls", "true"), ("sasl-mechanism", "plain"), ("sasl-user", NASTY_KEY), ("sasl-password", NASTY),
    ]  # fmt: skip
    assert NASTY not in uri and "@" not in uri and "+" not in uri


def test_registry_url_carries_percent_encoded_userinfo() -> None:
    url = registry_url(CLOUD_REGISTRY)
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.path) == ("https", "psrc-1.us-east-1.aws.confluent.cloud", "")
    assert (unquote(parts.username or ""), unquote(parts.password or "")) == (NASTY_KEY, NASTY)
    assert url.count("@") == 1
    assert registry_url(LAB_REGISTRY) == "http://127.0.0.1:18081"


@given(key=st.text(min_size=1), secret=st.text())
def test_any_credentials_round_trip(key: str, secret: str) -> None:
    kafka = KafkaSink(bootstrap_servers="b:9092", tls=True, sasl_user=key, sasl_password=secret)
    query = dict(parse_qsl(urlsplit(sink_uri(CONFIG, kafka)).query, keep_blank_values=True))
    assert (query["sasl-user"], query["sasl-password"]) == (key, secret)
    parts = urlsplit(registry_url(Registry(url="https://r.example", api_key=key, api_secret=secret)))
    assert (parts.hostname, unquote(parts.username or ""), unquote(parts.password or "")) == ("r.example", key, secret)


def test_replica_config_is_exactly_this() -> None:
    # Every changefeed-level setting is stated: a PUT resets whatever the body leaves out to its zero value.
    assert REPLICA_SETTINGS == {
        "memory_quota": 1 << 30, "case_sensitive": False, "force_replicate": False, "ignore_ineligible_table": False,
        "check_gc_safe_point": True, "enable_sync_point": False, "enable_table_monitor": False, "bdr_mode": False,
    }  # fmt: skip
    assert replica_config(CONFIG, CLOUD_REGISTRY) == {
        **REPLICA_SETTINGS,
        "filter": {"rules": ["tpcc.orders", "tpcc.order_line"]},
        "sink": {
            "protocol": "avro",
            "schema_registry": registry_url(CLOUD_REGISTRY),
            "dispatchers": [
                {"matcher": ["tpcc.orders", "tpcc.order_line"], "topic": "tidb_{schema}_{table}",
                 "partition": "index-value"}
            ],
            "kafka_config": {
                "codec_config": {
                    "enable_tidb_extension": True,
                    "avro_decimal_handling_mode": "precise",
                    "avro_bigint_unsigned_handling_mode": "long",
                }
            },
        },
    }


def test_avro_modes_reach_uri_and_codec_config() -> None:
    source = SourceConfig(decimal_handling="string", bigint_unsigned_handling="string", enable_tidb_extension=False)
    config = CONFIG.model_copy(update={"source": source})
    query = dict(parse_qsl(urlsplit(sink_uri(config, LAB_KAFKA)).query))
    keys = ("avro-decimal-handling-mode", "avro-bigint-unsigned-handling-mode", "enable-tidb-extension")
    assert [query[k] for k in keys] == ["string", "string", "false"]
    assert replica_config(config, LAB_REGISTRY)["sink"]["kafka_config"]["codec_config"] == {
        "enable_tidb_extension": False,
        "avro_decimal_handling_mode": "string",
        "avro_bigint_unsigned_handling_mode": "string",
    }


@pytest.mark.parametrize(
    ("name", "escaped"),
    [("orders", "orders"), ("Order$_1", "Order$_1"), ("with.dot", "with\\.dot"), ("a*b?[c]", "a\\*b\\?\\[c\\]"),
     ("t-1 x", "t\\-1\\ x"), ("!neg", "\\!neg"), ("dé", "dé"), ('q"`\\', 'q\\"\\`\\\\')],
)  # fmt: skip
def test_filter_names_escape_every_reserved_ascii_char(name: str, escaped: str) -> None:
    assert filter_name(name) == escaped


def test_build_refuses_an_empty_table_list() -> None:
    with pytest.raises(ValueError, match="lists no tables"):
        build_changefeed(PipelineConfig(), LAB_KAFKA, LAB_REGISTRY)


def test_repr_of_desired_changefeed_shows_no_secret() -> None:
    desired = build_changefeed(CONFIG, CLOUD_KAFKA, CLOUD_REGISTRY)
    texts = (repr(desired), str(desired), desired.sink_uri_masked, str(desired.replica_config_masked),
             repr(CLOUD_KAFKA), repr(CLOUD_REGISTRY))  # fmt: skip
    for text in texts:
        assert NASTY not in text and "s%2Fe%2Bc" not in text
    assert "sasl-password=xxxxx" in desired.sink_uri_masked


def test_mask_uri_masks_password_query_and_userinfo() -> None:
    assert mask_uri("kafka://h:1/t?sasl-user=k&sasl-password=p%2F&protocol=avro") == (
        "kafka://h:1/t?sasl-user=k&sasl-password=xxxxx&protocol=avro")
    assert mask_uri("https://k%2B:s%40@r.example/x") == "https://k%2B:xxxxx@r.example/x"


# --- diff ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    state: str
    sink_uri_masked: str
    config: Mapping[str, Any] = field(default_factory=dict)


def _as_lab_reports(desired: DesiredChangefeed, state: str = "normal") -> ChangefeedInfo:
    """What the `ticdc` client makes of the lab stand-in's GET for this definition (created, so with TiCDC's
    defaults filled in; sink URI masked by the server, the registry URL in the config by the client)."""
    cf = Changefeed(id=desired.changefeed_id, sink_uri=desired.sink_uri,
                    replica_config=created_config(desired.replica_config), start_ts=1, state=state, checkpoint_ts=1,
                    binlog_file=None, binlog_pos=None, error=None, created_at=0.0)  # fmt: skip
    return parse_changefeed_info(changefeed_info(cf))


def test_equal_to_what_ticdc_reports_with_its_masking() -> None:
    desired = build_changefeed(CONFIG, CLOUD_KAFKA, CLOUD_REGISTRY)
    cf = Changefeed(id="x", sink_uri=desired.sink_uri, replica_config=dict(desired.replica_config), start_ts=1,
                    state="normal", checkpoint_ts=1, binlog_file=None, binlog_pos=None, error=None, created_at=0.0)
    # TiCDC's GET (and the lab's) answers with the registry credentials in clear text ...
    assert "s%2Fe%2Bc" in changefeed_info(cf)["config"]["sink"]["schema_registry"]
    reported = _as_lab_reports(desired)
    # ... the client masks them as it reads the answer, so nothing downstream ever holds them.
    assert NASTY not in repr(reported) and "s%2Fe%2Bc" not in repr(reported)
    assert "xxxxx" in reported.config["sink"]["schema_registry"]
    assert diff(desired, reported) == []


def test_equal_despite_sorted_query_and_defaults_ticdc_fills_in() -> None:
    desired = build_changefeed(CONFIG, CLOUD_KAFKA, CLOUD_REGISTRY)
    # Go's url.Values.Encode: keys sorted, values query-escaped (space as `+`).
    query = sorted(parse_qsl(urlsplit(desired.sink_uri).query))
    go_style = "kafka://pkc-1.us-east-1.aws.confluent.cloud:9092/cf-1-default?" + "&".join(
        f"{k}={'xxxxx' if k == 'sasl-password' else quote_plus(v)}" for k, v in query
    )
    config = dict(desired.replica_config_masked)
    config["memory_quota"] = 1073741824
    config["sink"] = {**config["sink"], "encoder_concurrency": 32,
                      "dispatchers": [{**config["sink"]["dispatchers"][0], "columns": None, "index": ""}]}  # fmt: skip
    assert diff(desired, Observed("normal", go_style, config)) == []


def test_diff_names_changed_partitions_filter_and_registry_without_secrets() -> None:
    running = _as_lab_reports(build_changefeed(CONFIG, CLOUD_KAFKA, CLOUD_REGISTRY))
    changed = CONFIG.model_copy(
        update={"source": SourceConfig(changefeed_id="cf-1", partitions=12),
                "tables": (*CONFIG.tables, TableConfig(db="tpcc", table="item"))}
    )  # fmt: skip
    other_registry = Registry(url="https://psrc-2.example", api_key=NASTY_KEY, api_secret=NASTY)
    differences = diff(build_changefeed(changed, CLOUD_KAFKA, other_registry), running)
    assert differences == [
        "sink_uri partition-num: running '6', declared '12'",
        "replica_config.filter.rules: running ['tpcc.orders', 'tpcc.order_line'], "
        "declared ['tpcc.orders', 'tpcc.order_line', 'tpcc.item']",
        "replica_config.sink.schema_registry: running "
        "'https://K%2B%2F%40%3A%25%3FEY:xxxxx@psrc-1.us-east-1.aws.confluent.cloud', "
        "declared 'https://K%2B%2F%40%3A%25%3FEY:xxxxx@psrc-2.example'",
        "replica_config.sink.dispatchers[0].matcher: running ['tpcc.orders', 'tpcc.order_line'], "
        "declared ['tpcc.orders', 'tpcc.order_line', 'tpcc.item']",
    ]
    assert all(NASTY not in d for d in differences)


def test_a_rotated_secret_alone_is_invisible_to_diff() -> None:
    running = _as_lab_reports(build_changefeed(CONFIG, CLOUD_KAFKA, CLOUD_REGISTRY))
    rotated = KafkaSink(**{**CLOUD_KAFKA.__dict__, "sasl_password": "new-secret"})
    assert diff(build_changefeed(CONFIG, rotated, CLOUD_REGISTRY), running) == []


# --- plan ---------------------------------------------------------------------------------------------------

DESIRED = build_changefeed(CONFIG, LAB_KAFKA, LAB_REGISTRY)
OTHER = build_changefeed(CONFIG.model_copy(update={"source": SourceConfig(changefeed_id="cf-1", partitions=1)}),
                         LAB_KAFKA, LAB_REGISTRY)  # fmt: skip


@pytest.mark.parametrize(
    ("running", "state", "force", "action", "steps"),
    [
        (None, None, False, "create", ("create",)),
        (DESIRED, "normal", False, "noop", ()),
        (DESIRED, "warning", False, "noop", ()),
        (DESIRED, "stopped", False, "resume", ("resume",)),
        (DESIRED, "failed", False, "resume", ("resume",)),
        (OTHER, "normal", False, "update", ("pause", "update", "resume")),
        (OTHER, "pending", False, "update", ("pause", "update", "resume")),
        (OTHER, "stopped", False, "update", ("update", "resume")),
        (OTHER, "failed", False, "update", ("update", "resume")),
        (DESIRED, "normal", True, "update", ("pause", "update", "resume")),
        (DESIRED, "finished", False, "blocked", ()),
        (DESIRED, "removed", False, "blocked", ()),
    ],
)
def test_plan(running: DesiredChangefeed | None, state: str | None, force: bool, action: str, steps: tuple) -> None:
    actual = None if running is None else _as_lab_reports(running, state or "normal")
    decided = plan(DESIRED, actual, force_update=force)
    assert (decided.action, decided.steps) == (action, steps)
    assert bool(decided.differences) == (running is OTHER)


def test_plan_differences_and_reason() -> None:
    assert plan(DESIRED, _as_lab_reports(OTHER, "normal")) == Plan(
        "update", ("pause", "update", "resume"), ("sink_uri partition-num: running '1', declared '6'",),
        "config differs"
    )
    assert "delete it" in plan(DESIRED, _as_lab_reports(DESIRED, "finished")).reason


def test_connector_mode_changefeed_sends_string_decimals() -> None:
    """The Snowflake Sink writes Avro decimals as JSON numbers (doubles in Snowflake): connector mode asks
    TiCDC for string decimals, so DECIMAL(65,30) stays exact; builtin mode keeps typed precise decimals."""
    connector = CONFIG.model_copy(update={"landing_mode": "connector"})
    for config, mode in ((CONFIG, "precise"), (connector, "string")):
        query = dict(parse_qsl(urlsplit(sink_uri(config, LAB_KAFKA)).query))
        assert query["avro-decimal-handling-mode"] == mode
        codec = replica_config(config, LAB_REGISTRY)["sink"]["kafka_config"]["codec_config"]
        assert codec["avro_decimal_handling_mode"] == mode
