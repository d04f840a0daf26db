"""Bad config and hostile names: mistakes fail naming the field or variable; names that need quoting
replicate end to end through the change feed, the landing load and the merge."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import dagster as dg
import pymysql
import pytest

from tidb_pipeline.config import ConfigError, parse_config
from tidb_pipeline.defs.resources import build_resources
from tidb_pipeline.defs.tables import build_table_assets, table_keys, table_names
from tidb_pipeline.lab.compare import canonical
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.replication.ddl import quote_ident
from tidb_pipeline.resources.tidb import quote_mysql
from tidb_pipeline_tests.reliability.support import (
    Feed,
    Target,
    assert_landed_exactly_once,
    kafka_of,
    land,
    merge,
    mysql_kwargs,
    private_services,
    table_feed,
    warehouse,
)

# --- bad config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "field", "says"), [
    ({"tables": [{"db": "d", "table": "t", "colour": "red"}]}, "tables.0.colour", "Extra inputs are not permitted"),
    ({"snowflake": {"databse": "X"}}, "snowflake.databse", "Extra inputs are not permitted"),
    ({"source": {"partitions": "three"}}, "source.partitions", "valid integer"),
    ({"retention_hours": "a day"}, "retention_hours", "valid number"),
    ({"landing_mode": "kafka-connect"}, "landing_mode", "'builtin' or 'connector'"),
    ({"tables": [{"db": "d", "table": "t", "key": "id"}]}, "tables.0.key", "valid tuple"),
    ({"merge_schedules": {"default": {"cron": "every minute"}}}, "merge_schedules.default.cron", "five-field cron"),
])
def test_bad_config_names_the_field(raw: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    line = next((ln for ln in str(err.value).splitlines() if ln.strip().startswith(field + ":")), None)
    assert line is not None, f"{field} not named in:\n{err.value}"
    assert says in line


def test_a_setting_of_the_wrong_type_names_the_variable() -> None:
    with pytest.raises(ValueError, match=r"TIDB_PORT='four thousand' is not an integer"):
        build_resources({"TIDB_PORT": "four thousand"})
    with pytest.raises(ValueError, match=r"SNOWFLAKE_PORT='http' is not an integer"):
        build_resources({"SNOWFLAKE_HOST": "127.0.0.1", "SNOWFLAKE_PORT": "http"})


def test_a_missing_secret_fails_the_run_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config({"tables": [{"db": "d", "table": "t", "key": ["id"]}]})
    env = {"SNOWFLAKE_ACCOUNT": "acct", "SNOWFLAKE_USER": "u"}  # SNOWFLAKE_PASSWORD deliberately unset
    for k in ("SNOWFLAKE_PASSWORD", "SNOWFLAKE_PRIVATE_KEY"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    resources = build_resources(env)
    keys = table_keys(config, config.tables[0])
    # Dagster resolves the EnvVar when the run starts: the run is refused before any step touches anything.
    with pytest.raises(dg.DagsterInvalidConfigError, match='environment variable "SNOWFLAKE_PASSWORD" which is not set'):
        dg.materialize(build_table_assets(config=config, table=config.tables[0]), selection=[keys.replica],
                       resources=resources)


# --- hostile names, end to end on the lab --------------------------------------------------------------

# A mixed-case reserved word: the replica is `"ORDER"`. (Names with `-`, `.`, spaces and unicode in databases
# and tables too: defs/test_awkward_names.py.)
HOSTILE_TABLE = "Order"
# Columns: mixed case, reserved words, a dash and a space; TiCDC turns `-` and spaces into `_` in Avro names,
# and the replica maps them back to TiDB's.
HOSTILE_DDL = (
    "CREATE TABLE {t} (`Order` INT NOT NULL, `key-part` VARCHAR(10) NOT NULL, `MixedCase` VARCHAR(20) NULL, "
    "`select` INT NULL, `two words` TEXT NULL, `group` DECIMAL(8,3) NULL, PRIMARY KEY (`Order`, `key-part`))"
)
COLUMNS = ("Order", "key-part", "MixedCase", "select", "two words", "group")
TYPES = ("int", "varchar", "varchar", "int", "text", "decimal")


@pytest.fixture(scope="module")
def hostile(lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Feed]:
    with private_services(lab_settings, tmp_path_factory.mktemp("names-lab"), ["ticdc"]) as own, \
            table_feed(own, "rel_Names", HOSTILE_DDL, table=HOSTILE_TABLE, key=("Order", "key-part")) as feed:
        yield feed


@pytest.mark.integration
def test_names_that_need_quoting_replicate_end_to_end(hostile: Feed, lab_settings: LabSettings) -> None:
    t = f"{quote_mysql(hostile.db)}.{quote_mysql(hostile.table)}"
    cols = ", ".join(quote_mysql(c) for c in COLUMNS)
    with hostile.connect() as conn, conn.cursor() as cur:
        for i in range(1, 21):
            cur.execute(f"INSERT INTO {t} ({cols}) VALUES (%s, %s, %s, %s, %s, %s)",
                        (i, f"k-{i % 3}", f"Mixed {i}", i * 2, f"it's \"{i}\"", f"{i}.125"))
        cur.execute(f"UPDATE {t} SET `select` = NULL, `two words` = 'changed' WHERE `Order` <= 5")
        cur.execute(f"DELETE FROM {t} WHERE `Order` IN (6, 7)")
        cur.execute(f"UPDATE {t} SET `Order` = 100 WHERE `Order` = 8")  # key change: delete + insert
    hostile.catch_up()
    config = hostile.config
    target = Target.of(table_names(config, config.tables[0]))
    assert target.topic == f"tidb_rel_Names_{hostile.db.rsplit('_', 1)[1]}_Order"
    assert target.replica.sql.endswith('"REPLICA"."ORDER"')
    with warehouse(lab_settings) as sf:
        land(lab_settings, sf, target)
        merge(lab_settings, sf, target, source=(hostile.db, hostile.table))
        end = kafka_of(lab_settings).end_offsets([target.topic])[target.topic]
        assert_landed_exactly_once(sf, target.landing, end)
        replica_cols = ", ".join(quote_ident(c) for c in COLUMNS)  # TiDB's names, not the Avro fields
        cur = sf.cursor()
        cur.execute(f"SELECT {replica_cols} FROM {target.replica.sql}")
        replica_rows = sorted(tuple(canonical(ty, v) for ty, v in zip(TYPES, r)) for r in cur.fetchall())
    with pymysql.connect(**mysql_kwargs(lab_settings)) as src, src.cursor() as cur:
        cur.execute(f"SELECT {cols} FROM {t}")
        source_rows = sorted(tuple(canonical(ty, v) for ty, v in zip(TYPES, r)) for r in cur.fetchall())
    assert len(source_rows) == 18
    assert replica_rows == source_rows
    assert (5, "k-2", "Mixed 5", None, "changed", Decimal("5.125")) in replica_rows
