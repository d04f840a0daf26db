from __future__ import annotations

from pathlib import Path

import pytest

from tidb_pipeline.config import ConfigError, connector_table_name, dump_tables, load_config, parse_config


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"tables": [{"db": "a", "table": "b", "colour": 1}]}, "tables.0.colour"),
        ({"retention_hours": "soon"}, "retention_hours"),
        ({"tables": [{"db": "a"}]}, "tables.0.table"),
        ({"source": {"changefeed_id": "bad id"}}, "source.changefeed_id"),
        ({"source": {"topic_pattern": "tidb_{table}"}}, "source.topic_pattern"),
        ({"merge_schedules": {"default": {"cron": "every minute"}}}, "merge_schedules.default.cron"),
        ({"landing_mode": "magic"}, "landing_mode"),
        ({"tables": [{"db": "a", "table": "b", "group": "fast"}]}, "tables.0.group"),
        ({"tables": [{"db": "a", "table": "b"}, {"db": "a", "table": "b"}]}, "tables.1"),
    ],
)
def test_invalid_config_names_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert field in str(err.value)


def test_unreadable_config_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="discover"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_derived_names() -> None:
    config = parse_config({"tables": [{"db": "tpcc", "table": "order_line"}, {"db": "shop", "table": "line-item"}]})
    plain, odd = config.tables
    assert (config.topic(plain), config.landing_table(plain), config.replica_table(plain)) == (
        "tidb_tpcc_order_line", "TIDB_TPCC_ORDER_LINE", "ORDER_LINE")
    # Not a valid identifier: the connector replaces illegal characters and appends Java's hashCode.
    assert config.topic(odd) == "tidb_shop_line-item"
    assert config.landing_table(odd) == connector_table_name("tidb_shop_line-item")
    assert connector_table_name("tidb_shop_line-item").startswith("TIDB_SHOP_LINE_ITEM_")


def test_java_hash_matches_java() -> None:
    # "hello".hashCode() == 99162322 in Java; "polygenelubricants".hashCode() == Integer.MIN_VALUE.
    from tidb_pipeline.config import _java_hash

    assert _java_hash("hello") == 99162322
    assert _java_hash("polygenelubricants") == 2**31


def test_discover_output_round_trips(tmp_path: Path) -> None:
    config = parse_config({"retention_hours": 6})
    tables = parse_config({"tables": [{"db": "tpcc", "table": "item", "key": ["i_id"]}]}).tables
    path = tmp_path / "c.yaml"
    path.write_text(dump_tables(config, tables))
    loaded = load_config(path)
    assert loaded.retention_hours == 6 and loaded.tables == tables


def test_sensor_interval_is_configurable_with_a_floor() -> None:
    from tidb_pipeline.defs.sensors import build_offsets_sensor

    assert parse_config({}).sensor_interval_seconds == 15
    config = parse_config({"sensor_interval_seconds": 5})
    assert build_offsets_sensor(config=config).minimum_interval_seconds == 5
    # Dagster's sensor daemon does not evaluate a sensor more often than every 5 s.
    with pytest.raises(ConfigError, match="sensor_interval_seconds"):
        parse_config({"sensor_interval_seconds": 1})


CONNECTOR_TABLES = [{"db": "shop", "table": "orders"}, {"db": "shop", "table": "items", "landing_mode": "builtin"}]


@pytest.mark.parametrize(
    ("name", "problem"),
    [("lower_case", "not a valid unquoted upper-case"), ("MIXED_Case", "not a valid unquoted upper-case"),
     ("WITH-DASH", "not a valid unquoted"), ("1STARTS_WITH_DIGIT", "not a valid unquoted"),
     ("HAS SPACE", "not a valid unquoted"), ("TABLE", "reserved keyword"), ("SELECT", "reserved keyword")],
)  # fmt: skip
def test_landing_table_override_must_be_a_name_the_connector_creates_unquoted(name: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"landing_mode": "connector", "tables": [{"db": "a", "table": "b", "landing_table": name}]})
    text = str(err.value)
    assert "tables.0.landing_table" in text and problem in text and "e.g. '" in text
    ok = parse_config({"tables": [{"db": "a", "table": "b", "landing_table": "ORDERS_LANDING$1"}]})
    assert ok.landing_table(ok.tables[0]) == "ORDERS_LANDING$1"


def test_hole_grace_must_outlast_the_connector_flush() -> None:
    assert parse_config({"tables": CONNECTOR_TABLES}).hole_grace_seconds == 300  # a few minutes by default
    with pytest.raises(ConfigError, match=r"hole_grace_seconds: 100 must exceed connectors.buffer_flush_time_s \(120\)"):
        parse_config({"landing_mode": "connector", "hole_grace_seconds": 100, "tables": CONNECTOR_TABLES})
    tuned = parse_config({"landing_mode": "connector", "hole_grace_seconds": 100,
                          "connectors": {"buffer_flush_time_s": 30}, "tables": CONNECTOR_TABLES})
    assert tuned.hole_grace_seconds == 100
    # Builtin mode loads in order: no connector flush to wait for, any grace goes.
    assert parse_config({"hole_grace_seconds": 0, "tables": CONNECTOR_TABLES[1:]}).hole_grace_seconds == 0
    with pytest.raises(ConfigError, match="hole_grace_seconds"):
        parse_config({"hole_grace_seconds": -1})


def test_connector_mode_sends_string_decimals_and_refuses_precise() -> None:
    """DECIMAL(65,30) is exact in both modes: builtin lands precise decimals exactly; the Snowflake Sink would
    turn them into doubles, so connector mode sends TiCDC's string decimals."""
    assert parse_config({"tables": CONNECTOR_TABLES}).decimal_handling == "precise"
    assert parse_config({"landing_mode": "connector", "tables": CONNECTOR_TABLES}).decimal_handling == "string"
    one = parse_config({"tables": [{**CONNECTOR_TABLES[0], "landing_mode": "connector"}]})
    assert one.decimal_handling == "string"
    explicit = parse_config({"source": {"decimal_handling": "string"}, "tables": CONNECTOR_TABLES})
    assert explicit.decimal_handling == "string"
    with pytest.raises(ConfigError) as err:
        parse_config({"source": {"decimal_handling": "precise"}, "landing_mode": "connector",
                      "tables": CONNECTOR_TABLES})
    text = str(err.value)
    assert "source.decimal_handling: 'precise' is not exact" in text and "(shop.orders)" in text
    assert "DECIMAL(65,30)" in text and "shop.items" not in text  # the builtin table is fine


def test_snowflake_sink_streams_by_default() -> None:
    assert parse_config({}).connectors.snowflake_ingestion_method == "SNOWPIPE_STREAMING"
    snowpipe = parse_config({"connectors": {"snowflake_ingestion_method": "SNOWPIPE"}})
    assert snowpipe.connectors.snowflake_ingestion_method == "SNOWPIPE"
