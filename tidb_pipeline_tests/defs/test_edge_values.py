"""Values that used to break replicas, on the lab, compared in full: NULLs, TiDB zero dates, a 65-digit decimal.

- Every nullable column of the type-coverage table NULL in one row: the replica holds NULL (the landing row
  holds JSON `null`, which must never become an epoch or the text 'null').
- TiDB zero dates (`0000-00-00`, `0000-00-00 00:00:00`), written with a permissive `sql_mode`: the merge does
  not fail; the documented mapping holds (NULL in the replica, counted in the merge's metadata, each one named
  with its column and key by the `no_unconverted_values` check, which passes again once the rows change; the
  chunked checksums compare by the same mapping).
- The same table backfilled from a snapshot: DECIMAL(65,30) values of 65 digits (a VARCHAR of the exact digits
  in Snowflake, whose NUMBER stops at 38), NULLs and zero dates by the same mapping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pymysql
import pytest
import snowflake.connector

from tidb_pipeline.engine.backfill import backfill
from tidb_pipeline.defs.tables import changefeed_key, table_keys, table_names
from tidb_pipeline.lab.compare import compare_table
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snapshot import MariaDBSnapshotSource
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.workload import types_table
from tidb_pipeline_tests.defs.lab_pipeline import lab_pipeline, materialize
from tidb_pipeline_tests.changefeed import wait_for_checkpoint

pytestmark = pytest.mark.integration

NULL_ID, ZERO_ID = 5, 6
# Every nullable column NULL, including the one whose default is not NULL.
NULL_ROW = {"id": NULL_ID, **{name: None for name, sql, _ in types_table.COLUMNS if "NOT NULL" not in sql}}
ZERO_DATES = {"c_date": "0000-00-00", "c_datetime": "0000-00-00 00:00:00", "c_timestamp": "0000-00-00 00:00:00"}
CHECK = "no_unconverted_values"


def _insert_zero_dates(conn: pymysql.Connection, db: str) -> None:
    """Row ZERO_ID with zero dates; TiDB and MariaDB accept them once NO_ZERO_DATE and strict mode are off."""
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(f"INSERT INTO `{db}`.`{types_table.TABLE}` (id, c_date, c_datetime, c_timestamp, c_varchar) "
                    "VALUES (%s, %s, %s, %s, 'zero dates')", (ZERO_ID, *ZERO_DATES.values()))
    conn.commit()


def _fill(conn_kwargs: dict[str, Any], db: str) -> None:
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
        types_table.create_types_table(conn, db)
        types_table.insert_types_rows(conn, database=db, rows=(*types_table.ROWS, NULL_ROW))
        _insert_zero_dates(conn, db)
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{db}`.`{types_table.TABLE}` WHERE c_date = '0000-00-00'")
            assert cur.fetchone() == (1,), "the zero date was not stored as such: the test would prove nothing"


def _run_check(defs: dg.Definitions, key: dg.AssetCheckKey) -> dg.AssetCheckEvaluation:
    job = dg.define_asset_job("edge_check", selection=dg.AssetSelection.checks(key))
    only = dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=[job], resources=defs.resources)
    result = only.resolve_job_def("edge_check").execute_in_process()
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def _md(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {k: v.value for k, v in evaluation.metadata.items()}


def _compare(conn_kwargs: dict[str, Any], settings: LabSettings, db: str, replica: Any) -> Any:
    with pymysql.connect(**conn_kwargs) as src, snowflake.connector.connect(**connection_args(settings)) as sf:
        return compare_table(src, db, types_table.TABLE, sf, replica, ["id"])


@pytest.fixture()
def pipeline(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service, ticdc: Service,
) -> Iterator[dict[str, Any]]:
    def config(suffix: str, _tpcc_db: str) -> dict[str, Any]:
        return {
            "source": {"changefeed_id": f"edge-{suffix}"},
            "snowflake": {"database": f"EDGE_{suffix.upper()}"},
            "tables": [{"db": f"edge_types_{suffix}", "table": types_table.TABLE, "key": ["id"]}],
        }

    with lab_pipeline(lab_settings, mariadb, prefix="edge", config=config, more_databases=("edge_types_{suffix}",)) as p:
        yield {**p, "db": p["databases"][0]}
        with contextlib.suppress(Exception), snowflake.connector.connect(**connection_args(lab_settings)) as sf:
            sf.cursor().execute(f'DROP DATABASE IF EXISTS "{p["config"].snowflake.database}"')


def test_nulls_and_zero_dates_through_the_changefeed(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    config, defs, conn_kwargs, db = pipeline["config"], pipeline["defs"], pipeline["conn_kwargs"], pipeline["db"]
    (table,) = config.tables
    keys, names = table_keys(config, table), table_names(config, table)
    materialize(defs, {changefeed_key(config)})
    _fill(conn_kwargs, db)
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)
    result = materialize(defs, {keys.landing, keys.replica})

    cmp = _compare(conn_kwargs, lab_settings, db, names.replica)
    assert cmp.source_rows == len(types_table.ROWS) + 2
    assert cmp.equal, cmp
    (merged,) = [e.materialization.metadata for e in result.get_asset_materialization_events()
                 if e.asset_key == keys.replica]
    assert merged["unconverted_values"].value == 3
    assert merged["unconverted_per_column"].value == "c_date: 1, c_datetime: 1, c_timestamp: 1"
    with snowflake.connector.connect(**connection_args(lab_settings)) as sf:
        cur = sf.cursor()
        cur.execute(f'SELECT "c_date" IS NULL, "c_datetime" IS NULL, "c_timestamp" IS NULL, "c_varchar" '
                    f'FROM {names.replica.sql} WHERE "id" = %s', (ZERO_ID,))
        assert cur.fetchall() == [(True, True, True, "zero dates")]

    # The chunked checksums follow the same mapping (a zero date is NULL on the TiDB side too).
    content = _run_check(defs, dg.AssetCheckKey(keys.replica, "content_matches_source"))
    assert content.passed, _md(content)
    check = _run_check(defs, dg.AssetCheckKey(keys.replica, CHECK))
    assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.ERROR)
    values = _md(check)["values"]
    assert [v.split(" (p")[0] for v in values] == [
        f"column {c} key {{\"id\":{ZERO_ID}}}: {v!r}" for c, v in (
            ("c_date", "0000-00-00"), ("c_datetime", "0000-00-00 00:00:00.000000"),
            ("c_timestamp", "0000-00-00 00:00:00.000"))
    ], values  # DATETIME(6), TIMESTAMP(3): TiCDC writes the column's fraction digits

    # Fixing the row in TiDB replaces its records; the replica then holds the values and the check passes.
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(f"UPDATE `{db}`.`{types_table.TABLE}` SET c_date = '2024-02-29', "
                    "c_datetime = '2024-02-29 01:02:03.000004', c_timestamp = '2024-02-29 01:02:03.5' WHERE id = %s",
                    (ZERO_ID,))
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)
    materialize(defs, {keys.landing, keys.replica})
    cmp = _compare(conn_kwargs, lab_settings, db, names.replica)
    assert cmp.equal, cmp
    check = _run_check(defs, dg.AssetCheckKey(keys.replica, CHECK))
    assert check.passed, _md(check)


def test_backfill_of_the_type_coverage_table(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    """A snapshot of the whole type-coverage table: DECIMAL(65,30) with 65 digits, NULLs, zero dates."""
    config, defs, conn_kwargs, db = pipeline["config"], pipeline["defs"], pipeline["conn_kwargs"], pipeline["db"]
    (table,) = config.tables
    keys, names = table_keys(config, table), table_names(config, table)
    _fill(conn_kwargs, db)
    with defs.resources["ticdc"].get_client() as client, \
            snowflake.connector.connect(**connection_args(lab_settings)) as sf:
        result = backfill(
            tidb=None, snowflake_connection=sf, ticdc_client=client,
            kafka=KafkaResource(bootstrap_servers=lab_settings.kafka_bootstrap),
            registry=SchemaRegistryResource(url=lab_settings.registry_url), config=config, tables=config.tables,
            snapshot=MariaDBSnapshotSource(conn_kwargs), chunk_rows=2,
        )
        assert result.rows == len(types_table.ROWS) + 2
        cur = sf.cursor()
        cur.execute(f'SELECT "c_decimal_wide" FROM {names.replica.sql} WHERE "id" IN (1, 2) ORDER BY "id"')
        # 65 digits kept exactly: Snowflake's NUMBER stops at 38, so DECIMAL(65,30) is a VARCHAR of the digits.
        assert [r[0] for r in cur.fetchall()] == ["-" + "9" * 35 + "." + "9" * 30, "9" * 35 + "." + "9" * 30]

    cmp = _compare(conn_kwargs, lab_settings, db, names.replica)
    assert cmp.source_rows == len(types_table.ROWS) + 2
    assert cmp.equal, cmp
    check = _run_check(defs, dg.AssetCheckKey(keys.replica, CHECK))
    assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert [v.split(":")[0] for v in _md(check)["values"]] == [
        f"column {c} key {{\"id\"" for c in ("c_date", "c_datetime", "c_timestamp")]
    assert all(v.endswith("(backfill)") for v in _md(check)["values"])
