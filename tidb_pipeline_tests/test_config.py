from __future__ import annotations

from pathlib import Path

import pytest

from tidb_pipeline.config import ConfigError, dump_tables, load_config, parse_config
from tidb_pipeline.config_names import connector_table_name


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
        ({"snowflake": {"session": {"lock_timeout_s": -1}}}, "snowflake.session.lock_timeout_s"),
        ({"snowflake": {"session": {"statement_timeout_s": 0}}}, "snowflake.session.statement_timeout_s"),
        ({"snowflake": {"session": {"statement_timeout_s": 604_801}}}, "snowflake.session.statement_timeout_s"),
        ({"snowflake": {"session": {"timezone": "Mars/Olympus"}}}, "snowflake.session.timezone"),
        ({"snowflake": {"session": {"timezone": "UTC'; DROP"}}}, "snowflake.session.timezone"),
        ({"snowflake": {"session": {"date_output_format": "YYYY'-MM"}}}, "snowflake.session.date_output_format"),
        ({"snowflake": {"session": {"paranoid": True}}}, "snowflake.session.paranoid"),
        ({"tables": [{"db": "a", "table": "b", "mode": "journal"}]}, "tables.0.mode"),
        ({"source": {"enable_tidb_extension": False}, "tables": [{"db": "a", "table": "b", "mode": "history"}]},
         "tables.0.mode"),
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
    # Values printed by Java 17 (`s.hashCode()`, `Math.abs(s.hashCode())`).
    from tidb_pipeline.config_names import _java_abs, _java_hash

    assert _java_hash("hello") == 99162322
    assert [(_java_hash(s), _java_abs(_java_hash(s))) for s in ("bc*def", "\U0001F600x", "polygenelubricants")] == [
        (-1396531364, 1396531364), (54959989, 54959989), (-(2**31), -(2**31))]  # MIN_VALUE stays negative


def test_connector_table_names_follow_the_snowflake_sinks_rule() -> None:
    # The connector's own test cases (UtilsTest.testTableName: "bc*def", "12345", "bird.*"), then the first
    # character rule (a `_` in front, the character itself still replaced) and UTF-16 units (an emoji is two).
    assert [connector_table_name(t) for t in ("bc*def", "12345", "bird.*", "-ab", "\U0001F600x")] == [
        "BC_DEF_1396531364", "_12345_46792755", "BIRD_1388847051", "__AB_46350", "___X_54959989"]
    assert connector_table_name("tidb_Hostile_DB_Order") == "TIDB_HOSTILE_DB_ORDER"


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
    assert build_offsets_sensor(config=config).minimum_interval_seconds == 4  # ticks every 5 s: daemon_interval
    # Dagster's sensor daemon does not evaluate a sensor more often than every 5 s.
    with pytest.raises(ConfigError, match="sensor_interval_seconds"):
        parse_config({"sensor_interval_seconds": 1})


def test_a_group_must_be_a_dagster_name() -> None:
    # A group names the job `merge_<group>`: a bad one fails at load naming the field, not inside Dagster.
    with pytest.raises(ConfigError, match=r"tables\.0\.group: .*'my-group' may hold only letters.*'my_group'"):
        parse_config({"tables": [{"db": "d", "table": "t", "group": "my-group"}],
                      "merge_schedules": {"my-group": {"cron": "* * * * *"}}})
    with pytest.raises(ConfigError, match=r"merge_schedules: .*'数据'"):
        parse_config({"merge_schedules": {"数据": {"cron": "* * * * *"}}})


def test_tables_that_would_share_a_topic_or_replica_fail_at_load() -> None:
    with pytest.raises(ConfigError, match=r"tables\.1: 资料\.t and tables\.0 \(数据\.t\) both map to topic 'tidb____t'"):
        parse_config({"tables": [{"db": "数据", "table": "t"}, {"db": "资料", "table": "t"}]})
    with pytest.raises(ConfigError, match=r"tables\.1: b\.orders .* replica table 'ORDERS'; set replica_table"):
        parse_config({"tables": [{"db": "a", "table": "orders"}, {"db": "b", "table": "orders"}]})
    config = parse_config({"tables": [{"db": "a", "table": "orders"},
                                      {"db": "b", "table": "orders", "replica_table": "B_ORDERS"}]})
    assert [config.replica_table(t) for t in config.tables] == ["ORDERS", "B_ORDERS"]


def test_replica_names_are_plain_identifiers_and_overrides_are_checked() -> None:
    config = parse_config({"tables": [{"db": "d", "table": t} for t in ("order_line", "select", "Order Items",
                                                                        "表 名.v2", "1st", "MixedCase")]})
    # A plain name is upper-cased; any other gets the Snowflake Sink's treatment (`_` + Java hashCode), since
    # the name is also the replica asset key's last part, which Dagster allows only [A-Za-z0-9_] in.
    assert [config.replica_table(t) for t in config.tables] == [
        "ORDER_LINE", "SELECT", "ORDER_ITEMS_1798703150", "____V2_326813515", "_1ST_50770", "MIXEDCASE"]
    with pytest.raises(ConfigError, match=r"tables\.0\.replica_table: .*'Order Items' may hold only .*'ORDER_ITEMS'"):
        parse_config({"tables": [{"db": "d", "table": "t", "replica_table": "Order Items"}]})
    # An override is an unquoted Snowflake identifier, so Snowflake resolves it upper-cased.
    config = parse_config({"tables": [{"db": "d", "table": "Order Items", "replica_table": "OrderItems"}]})
    assert config.replica_table(config.tables[0]) == "ORDERITEMS"


@pytest.mark.parametrize(
    ("raw", "field", "value"),
    [
        ({"tables": [{"db": "a", "table": "b", "landing_table": "my-landing"}]}, "tables.0.landing_table", "my-landing"),
        ({"tables": [{"db": "a", "table": "b", "replica_table": "Order Lines"}]}, "tables.0.replica_table",
         "Order Lines"),
        ({"tables": [{"db": "a", "table": "b", "replica_table": "1st"}]}, "tables.0.replica_table", "1st"),
        # `$` is a legal unquoted Snowflake character, but the name is also a Dagster asset key's last part.
        ({"tables": [{"db": "a", "table": "b", "replica_table": "b$v2"}]}, "tables.0.replica_table", "b$v2"),
        ({"tables": [{"db": "a", "table": "b", "landing_table": "raw$b"}]}, "tables.0.landing_table", "raw$b"),
        ({"snowflake": {"database": "tidb.replica"}}, "snowflake.database", "tidb.replica"),
        ({"snowflake": {"landing_schema": 'RAW"'}}, "snowflake.landing_schema", 'RAW"'),
        ({"snowflake": {"control_schema": ""}}, "snowflake.control_schema", ""),
    ],
)
def test_a_snowflake_name_the_connector_cannot_create_fails_with_field_and_value(raw: dict, field: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    message = str(err.value)
    assert field in message and repr(value) in message and "unquoted Snowflake identifier" in message


def test_overridden_snowflake_names_resolve_upper_case_as_unquoted_identifiers_do() -> None:
    config = parse_config({"snowflake": {"database": "analytics", "replica_schema": "Replica_1"},
                           "tables": [{"db": "a", "table": "b", "landing_table": "raw_b", "replica_table": "b_v2"}]})
    t = config.tables[0]
    assert (config.snowflake.database, config.snowflake.replica_schema) == ("ANALYTICS", "REPLICA_1")
    assert (config.landing_table(t), config.replica_table(t)) == ("RAW_B", "B_V2")


def test_session_pins_have_safe_defaults_and_come_from_config() -> None:
    assert parse_config({}).snowflake.session.parameters() == {
        "LOCK_TIMEOUT": 600, "STATEMENT_TIMEOUT_IN_SECONDS": 3600, "TIMEZONE": "UTC",
        "TIMESTAMP_NTZ_OUTPUT_FORMAT": "YYYY-MM-DD HH24:MI:SS.FF6", "DATE_OUTPUT_FORMAT": "YYYY-MM-DD",
        "TIME_OUTPUT_FORMAT": "HH24:MI:SS.FF6",
    }
    session = parse_config({"snowflake": {"session": {"lock_timeout_s": 30, "timezone": "Europe/Berlin"}}}).snowflake.session
    assert (session.parameters()["LOCK_TIMEOUT"], session.parameters()["TIMEZONE"]) == (30, "Europe/Berlin")


CONNECTOR_TABLES = [{"db": "shop", "table": "orders"}, {"db": "shop", "table": "items", "landing_mode": "builtin"}]


@pytest.mark.parametrize("name", ["TABLE", "select", "Order"])
def test_a_reserved_keyword_is_no_landing_or_replica_name(name: str) -> None:
    for field in ("landing_table", "replica_table"):
        with pytest.raises(ConfigError) as err:
            parse_config({"landing_mode": "connector", "tables": [{"db": "a", "table": "b", field: name}]})
        assert f"tables.0.{field}" in str(err.value) and "reserved keyword" in str(err.value)


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


def test_table_mode_defaults_to_replica() -> None:
    cfg = parse_config({"tables": [{"db": "a", "table": "b"}, {"db": "a", "table": "c", "mode": "history"},
                                   {"db": "a", "table": "d", "mode": "soft_delete"}]})
    assert [t.mode for t in cfg.tables] == ["replica", "history", "soft_delete"]
