"""Awkward TiDB names end to end on the lab: databases, tables and columns with spaces, `-`, `.`, unicode,
reserved words and mixed case, through the changefeed asset, the TiCDC stand-in, Kafka, landing and MERGE.

Acceptance of issue 12's findings 2 and 3: the changefeed is created with production's filter rules
(`Hostile\\-DB\\.x.Order\\ Items`), every replica carries TiDB's column names (not TiCDC's sanitised Avro
field names), equals its source row for row, and `row_count_matches_source`, `content_matches_source` and
`schema_drift` pass on it, also after a column with an awkward name is added by `ALTER TABLE`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pymysql
import pytest
import snowflake.connector

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.config_names import connector_table_name, replica_table_name
from tidb_pipeline.defs.tables import changefeed_key, table_keys, table_names
from tidb_pipeline.lab.compare import compare_table
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.replication.changefeed import table_rule
from tidb_pipeline.replication.ddl import quote_ident
from tidb_pipeline.resources.tidb import quote_mysql
from tidb_pipeline_tests.defs.lab_pipeline import lab_pipeline, materialize
from tidb_pipeline_tests.changefeed import wait_for_checkpoint

# Databases: `-` and `.`; unicode and a space; mixed case. `{suffix}` keeps each run's objects apart.
DB_HOSTILE = "Hostile-DB.{suffix}"
DB_UNICODE = "数据 库 {suffix}"
DB_MIXED = "MixedCase_{suffix}"

# (database, table, DDL body, key). Column names sanitise to distinct Avro names (TiCDC cannot encode a table
# whose names collide), and temporal values are never NULL here (that is finding 1's test, not this one).
TABLES: list[tuple[str, str, str, tuple[str, ...]]] = [
    (DB_HOSTILE, "Order Items", """(
        `Order Id` INT NOT NULL, `key-part` VARCHAR(20) NOT NULL, `Mixed Case` VARCHAR(40) NULL,
        `select` INT NULL, `order` DECIMAL(12,3) NULL, `1st` DATE NOT NULL, `数量` BIGINT NULL, `a.b` TEXT NULL,
        `from` DATETIME(6) NOT NULL, `Group` VARCHAR(10) NOT NULL DEFAULT 'g',
        PRIMARY KEY (`Order Id`, `key-part`))""", ("Order Id", "key-part")),
    (DB_HOSTILE, "select", """(
        `MixedCase` INT NOT NULL PRIMARY KEY, `order` VARCHAR(10) NULL, `Key` INT NULL)""", ("MixedCase",)),
    (DB_UNICODE, "表 名.v2", """(
        `编号` INT NOT NULL PRIMARY KEY, `名字值` VARCHAR(20) NULL, `Ünïcode text` TEXT NULL)""", ("编号",)),
    (DB_MIXED, "CamelTable", """(
        `Id` BIGINT NOT NULL PRIMARY KEY, `ValueCol` VARCHAR(20) NULL, `camelCase` INT NULL)""", ("Id",)),
]
ADDED_COLUMN = "New Col!"  # added by ALTER TABLE to `Order Items` once the replica exists


def test_definitions_load_for_awkward_names() -> None:
    """Dagster op, input and output names derive from asset keys: every key an op touches must be valid."""
    from tidb_pipeline.defs import build_defs

    config = parse_config({"tables": [{"db": db.format(suffix="s"), "table": table, "key": list(key)}
                                      for db, table, _, key in TABLES]})
    defs = build_defs(config=config)
    defs.get_repository_def().get_all_jobs()  # resolves every job, asset and check definition
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"tidb/Hostile-DB.s/Order Items", "tidb/数据 库 s/表 名.v2", "snowflake/REPLICA/SELECT",
            f"snowflake/REPLICA/{replica_table_name('Order Items')}", "kafka/tidb_Hostile-DB.s_Order_Items"} <= keys


@pytest.fixture(scope="module")
def pipeline(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service, ticdc: Service,
) -> Iterator[dict[str, Any]]:
    def config(suffix: str, _tpcc_db: str) -> dict[str, Any]:
        return {
            "source": {"changefeed_id": f"names-{suffix}"},
            "snowflake": {"database": f"NAMES_{suffix.upper()}"},
            "tables": [{"db": db.format(suffix=suffix), "table": table, "key": list(key)}
                       for db, table, _, key in TABLES],
        }

    with lab_pipeline(lab_settings, mariadb, prefix="names", config=config,
                      more_databases=(DB_HOSTILE, DB_UNICODE, DB_MIXED)) as p:
        with pymysql.connect(autocommit=True, **p["conn_kwargs"]) as conn, conn.cursor() as cur:
            for db in p["databases"]:
                cur.execute(f"CREATE DATABASE {quote_mysql(db)} CHARACTER SET utf8mb4")
            for t, (_, _, body, _) in zip(p["config"].tables, TABLES, strict=True):
                cur.execute(f"CREATE TABLE {quote_mysql(t.db)}.{quote_mysql(t.table)} {body}")
        yield p


def _write(conn_kwargs: dict[str, Any], config: PipelineConfig, round_: int) -> None:
    """Inserts, updates, deletes, a key change and NULLs in every table; round 2 also fills the added column."""
    order_items, select_t, unicode_t, camel = (f"{quote_mysql(t.db)}.{quote_mysql(t.table)}" for t in config.tables)
    base = 100 * round_
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn, conn.cursor() as cur:
        for i in range(base, base + 25):
            cur.execute(
                f"INSERT INTO {order_items} (`Order Id`, `key-part`, `Mixed Case`, `select`, `order`, `1st`, `数量`, "
                "`a.b`, `from`) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (i, f"k-{i % 3}", f"Mixed {i} ünï", i * 2 if i % 4 else None, f"{i}.125", f"2026-12-{1 + i % 28:02d}",
                 i * 10**12, f"it's \"{i}\"" if i % 5 else None, f"2026-12-07 10:{i % 60:02d}:00.123456"))
            cur.execute(f"INSERT INTO {select_t} VALUES (%s, %s, %s)", (i, f"o{i}", None if i % 2 else i))
            cur.execute(f"INSERT INTO {unicode_t} VALUES (%s, %s, %s)", (i, f"名字{i}", "Ünï" * (i % 4) or None))
            cur.execute(f"INSERT INTO {camel} VALUES (%s, %s, %s)", (i, f"V{i}", -i))
        cur.execute(f"UPDATE {order_items} SET `Mixed Case` = NULL, `select` = -1, `Group` = 'h' "
                    "WHERE `Order Id` < %s", (base + 5,))
        cur.execute(f"DELETE FROM {order_items} WHERE `Order Id` IN (%s, %s)", (base + 6, base + 7))
        cur.execute(f"UPDATE {order_items} SET `Order Id` = %s WHERE `Order Id` = %s", (base + 90, base + 8))
        cur.execute(f"UPDATE {select_t} SET `order` = 'changed', `Key` = NULL WHERE `MixedCase` % 3 = 0")
        cur.execute(f"DELETE FROM {select_t} WHERE `MixedCase` = %s", (base + 1,))
        cur.execute(f"UPDATE {unicode_t} SET `编号` = %s WHERE `编号` = %s", (base + 99, base + 2))
        cur.execute(f"UPDATE {unicode_t} SET `名字值` = NULL WHERE `编号` = %s", (base + 3,))
        cur.execute(f"DELETE FROM {camel} WHERE `Id` % 4 = 0")
        if round_ == 2:
            cur.execute(f"UPDATE {order_items} SET {quote_mysql(ADDED_COLUMN)} = CONCAT('new ', `Order Id`) "
                        "WHERE `Order Id` % 2 = 0")


def _land_and_merge(p: dict[str, Any]) -> None:
    config, defs = p["config"], p["defs"]
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)
    materialize(defs, {k for t in config.tables for k in (table_keys(config, t).landing, table_keys(config, t).replica)})


def _assert_replicas_equal_sources(p: dict[str, Any], lab_settings: LabSettings) -> None:
    config = p["config"]
    with pymysql.connect(**p["conn_kwargs"]) as src, snowflake.connector.connect(**connection_args(lab_settings)) as sf:
        for t in config.tables:
            replica = table_names(config, t).replica
            with src.cursor() as cur:
                cur.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                            "AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (t.db, t.table))
                tidb_columns = [r[0] for r in cur.fetchall()]
            cur = sf.cursor()
            cur.execute(f"SELECT column_name FROM {quote_ident(replica.database)}.information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                        (replica.schema, replica.name))
            assert [r[0] for r in cur.fetchall()] == tidb_columns, f"{t.db}.{t.table}: replica column names"
            cmp = compare_table(src, t.db, t.table, sf, replica, t.key)
            assert cmp.source_rows > 0, f"{cmp.source} is empty: the test would prove nothing"
            assert cmp.equal, f"{cmp.source}: {cmp}"


def _assert_checks_pass(p: dict[str, Any]) -> None:
    result = p["defs"].resolve_job_def("reconcile").execute_in_process(raise_on_error=False)
    evaluations = {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}
    config = p["config"]
    for t in config.tables:
        replica = table_keys(config, t).replica
        for check in ("row_count_matches_source", "content_matches_source", "schema_drift",
                      "landing_continuity", "no_quarantined_records"):
            e = evaluations[(replica, check)]
            md = {k: v.value for k, v in e.metadata.items()}
            assert e.passed, f"{t.db}.{t.table} {check}: {md}"
        md = {k: v.value for k, v in evaluations[(replica, "content_matches_source")].metadata.items()}
        assert md["columns_not_in_replica"] == [] and md["columns_compared"] >= 3, md
    # The changefeed's filter matches the hostile names back to exactly the configured tables, and each table's
    # next schema is the registered one.
    for check in ("changefeed_tables", "registry_compatibility"):
        e = evaluations[(changefeed_key(config), check)]
        assert e.passed, f"{check}: {e.description} {({k: v.value for k, v in e.metadata.items()})}"


@pytest.mark.integration
def test_awkward_names_replicate_with_tidb_names_and_checks_pass(
    pipeline: dict[str, Any], lab_settings: LabSettings,
) -> None:
    config, defs = pipeline["config"], pipeline["defs"]
    hostile, unicode_db = pipeline["databases"][0], pipeline["databases"][1]
    order_items = config.tables[0]

    # Names as TiCDC and the Snowflake Sink make them, and the asset keys that carry TiDB's.
    assert table_rule(order_items) == f"Hostile\\-DB\\.{pipeline['suffix']}.Order\\ Items"
    assert config.topic(order_items) == f"tidb_{hostile}_Order_Items"  # `-` and `.` are legal in a topic
    assert config.landing_table(order_items) == connector_table_name(config.topic(order_items))
    assert config.landing_table(order_items).startswith(f"TIDB_HOSTILE_DB_{pipeline['suffix'].upper()}_ORDER_ITEMS_")
    # One `_` per character TiCDC replaces: `数据 库 ` -> 5, `表 名` -> 3.
    assert config.topic(config.tables[2]) == f"tidb______{pipeline['suffix']}____.v2"
    assert unicode_db == f"数据 库 {pipeline['suffix']}"
    assert table_keys(config, order_items).tidb == dg.AssetKey(["tidb", hostile, "Order Items"])
    assert table_keys(config, config.tables[2]).replica.path[-1] == replica_table_name("表 名.v2")

    materialize(defs, {changefeed_key(config)})  # production's rules: escaped `-`, `.` and space
    _write(pipeline["conn_kwargs"], config, 1)
    _land_and_merge(pipeline)
    _assert_replicas_equal_sources(pipeline, lab_settings)
    _assert_checks_pass(pipeline)

    # A column added later gets TiDB's name too (the merge asks TiDB, as the replica lacks the field).
    with pymysql.connect(autocommit=True, **pipeline["conn_kwargs"]) as conn, conn.cursor() as cur:
        cur.execute(f"ALTER TABLE {quote_mysql(order_items.db)}.{quote_mysql(order_items.table)} "
                    f"ADD COLUMN {quote_mysql(ADDED_COLUMN)} VARCHAR(30) NULL")
    _write(pipeline["conn_kwargs"], config, 2)
    _land_and_merge(pipeline)
    _assert_replicas_equal_sources(pipeline, lab_settings)
    _assert_checks_pass(pipeline)
