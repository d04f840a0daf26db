"""The built-in SQL applier on the lab: TPC-C through the TiCDC stand-in and Kafka into PostgreSQL (SQL Server's
stand-in), through the `sqlserver/...` assets `build_defs` wires from the config's `sqlserver` section.

Acceptance of issue 6: after TPC-C workload rounds (the `defs` package's shared `e2e_source`, read from the
builtin pipeline's topics) every eligible TPC-C table's replica equals its source in
full (every row, every column), and a rerun with nothing new applies nothing. The SQL Server tables' asset
checks, run through Dagster, pass on every table; after one target row is changed and another deleted in
PostgreSQL, the content check fails naming the changed key range and the row count check fails on the deletion.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pymysql
import pytest
import sqlalchemy as sa

from tidb_pipeline.defs.check_results import CheckSettings
from tidb_pipeline.defs.sqlserver_assets import sqlserver_key
from tidb_pipeline.defs.sqlserver_checks import CONTENT_CHECK, ROW_COUNT_CHECK, build_sqlserver_checks
from tidb_pipeline.lab.compare import compare_sql_table
from tidb_pipeline.lab.postgres import LAB_DATABASE
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER, LabSettings
from tidb_pipeline.replication.sqlserver import TargetTable
from tidb_pipeline.resources.sqlserver import SqlServerResource
from tidb_pipeline_tests.defs.lab_pipeline import materialize, pipeline_defs, run_workload, tpcc_tables
from tidb_pipeline_tests.changefeed import wait_for_checkpoint

pytestmark = pytest.mark.integration

TRANSACTIONS = 150  # per workload round


@pytest.fixture(scope="module")
def pipeline(lab_settings: LabSettings, e2e_source: dict[str, Any], postgres: Service) -> Iterator[dict[str, Any]]:
    schema = f"sq_{uuid.uuid4().hex[:6]}"
    # The builtin pipeline's changefeed and topics (its `source` section), TPC-C tables only. This config never
    # materialises the changefeed: its table list would drop the type-coverage table from the shared feed.
    builtin = e2e_source["configs"]["builtin"]
    config = {"source": builtin["source"], "sqlserver": {"enabled": True, "database": LAB_DATABASE, "schema": schema},
              "tables": tpcc_tables(e2e_source["tpcc_db"])}

    # The wired resource's password is an EnvVar, resolved only inside runs; the test connects on its own.
    engine = SqlServerResource(drivername="postgresql+pg8000", host=lab_settings.host,
                               port=lab_settings.port("postgres"), username=LAB_DB_USER, password=LAB_DB_PASSWORD,
                               database=LAB_DATABASE).get_engine()
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        # SQLSERVER_SCHEMA unset: the config's schema applies.
        with pipeline_defs(lab_settings, config, unset_env=("SQLSERVER_SCHEMA",)) as (cfg, defs):
            wired = defs.resources["sqlserver"]
            assert (wired.drivername, wired.database, wired.db_schema) == ("postgresql+pg8000", LAB_DATABASE, schema)
            yield {**e2e_source, "config": cfg, "defs": defs, "engine": engine, "schema": schema}
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def test_tpcc_sqlserver_replicas_equal_source_after_workload(pipeline: dict[str, Any]) -> None:
    config, defs, conn_kwargs = pipeline["config"], pipeline["defs"], pipeline["conn_kwargs"]
    keys = {sqlserver_key(config=config, table=t, database=LAB_DATABASE) for t in config.tables}
    assert keys == {k for a in defs.assets if isinstance(a, dg.AssetsDefinition) for k in a.keys
                    if k.path[0] == "sqlserver"}

    run_workload(pipeline, transactions=TRANSACTIONS, seed=21)
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)
    materialize(defs, keys)  # mid-stream, so the last apply starts from stored offsets

    run_workload(pipeline, transactions=TRANSACTIONS, seed=22)
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)
    materialize(defs, keys)

    mismatches = []
    with pymysql.connect(**conn_kwargs) as src, pipeline["engine"].connect() as target:
        for t in config.tables:
            cmp = compare_sql_table(src, t.db, t.table, target, TargetTable(config.topic(t), pipeline["schema"]),
                                    t.key, dialect="postgresql")
            assert cmp.source_rows > 0, f"{cmp.source} is empty: the test would prove nothing"
            if not cmp.equal:
                mismatches.append(f"{cmp.source}: {cmp}")
    assert not mismatches, "\n".join(mismatches)

    rerun = materialize(defs, keys)
    for event in rerun.get_asset_materialization_events():
        md = event.materialization.metadata
        assert (md["records_read"].value, md["backlog_records"].value) == (0, 0), event.asset_key

    # --- the asset checks, through Dagster ---------------------------------------------------------------
    wired = [c for c in defs.asset_checks if {k.asset_key.path[0] for k in c.check_keys} == {"sqlserver"}]
    expected = {dg.AssetCheckKey(k, n) for k in keys for n in (ROW_COUNT_CHECK, CONTENT_CHECK)}
    assert {k for c in wired for k in c.check_keys} == expected
    assert {k for k in defs.resolve_job_def("reconcile").asset_layer.asset_graph.asset_check_keys} >= expected
    results = _run_checks(defs, wired)
    assert set(results) == expected
    assert {k: (r.passed, r.metadata.get("error")) for k, r in results.items()} == {k: (True, None) for k in expected}
    rows = {k.asset_key: r.metadata["target_rows"].value for k, r in results.items() if k.name == ROW_COUNT_CHECK}
    assert all(n > 0 for n in rows.values()) and results[next(iter(expected))].metadata["backlog_records"].value == 0

    # corrupt the target: one value changed in `item`, one row deleted from `district`
    item, district = (next(t for t in config.tables if t.table == name) for name in ("item", "district"))
    schema = pipeline["schema"]
    with pipeline["engine"].begin() as conn:
        conn.execute(sa.text(f'UPDATE "{schema}"."{config.topic(item)}" SET "i_price" = "i_price" + 1 WHERE "i_id" = 7'))
        conn.execute(sa.text(f'DELETE FROM "{schema}"."{config.topic(district)}" WHERE "d_w_id" = 1 AND "d_id" = 3'))
    small = build_sqlserver_checks(config=config, settings=CheckSettings(rows_per_chunk=50))  # several item chunks
    results = _run_checks(defs, small)
    failed = {k: r for k, r in results.items() if not r.passed}
    item_key, district_key = (sqlserver_key(config=config, table=t, database=LAB_DATABASE) for t in (item, district))
    assert set(failed) == {dg.AssetCheckKey(item_key, CONTENT_CHECK), dg.AssetCheckKey(district_key, CONTENT_CHECK),
                           dg.AssetCheckKey(district_key, ROW_COUNT_CHECK)}
    assert {r.severity for r in failed.values()} == {dg.AssetCheckSeverity.ERROR}  # caught up: the target is wrong
    content = failed[dg.AssetCheckKey(item_key, CONTENT_CHECK)].metadata
    (item_range,) = content["differing_ranges"].value
    assert content["chunks_checked"].value > 2 and content["chunks_differing"].value == 1
    lower, upper = _bounds(item_range, "i_id")
    assert (lower is None or lower <= 7) and (upper is None or 7 < upper) and (lower, upper) != (None, None)
    rows_in_range = item_range.split("source ")[1].split(" rows")[0]
    assert item_range.endswith(f"source {rows_in_range} rows, replica {rows_in_range} rows")  # a value, not a row
    count = failed[dg.AssetCheckKey(district_key, ROW_COUNT_CHECK)].metadata
    assert (count["difference"].value, count["source_rows"].value - count["target_rows"].value) == (-1, 1)
    (district_range,) = failed[dg.AssetCheckKey(district_key, CONTENT_CHECK)].metadata["differing_ranges"].value
    assert district_range.endswith(f"source {count['source_rows'].value} rows, replica {count['target_rows'].value} rows")


def _run_checks(defs: dg.Definitions, checks: list[dg.AssetChecksDefinition]) -> dict[dg.AssetCheckKey, Any]:
    """Run `checks` as a Dagster job in process; their evaluations by check key."""
    job = dg.define_asset_job("sqlserver_checks", selection=dg.AssetSelection.checks(*checks))
    run_defs = dg.Definitions(assets=defs.assets, asset_checks=checks, jobs=[job], resources=defs.resources)
    result = run_defs.resolve_job_def("sqlserver_checks").execute_in_process()
    assert result.success
    return {e.asset_check_key: e for e in result.get_asset_check_evaluations()}


def _bounds(label: str, column: str) -> tuple[int | None, int | None]:
    """(lower, upper) of a range chunk label such as `i_id >= 40 AND i_id < 80: ...`."""
    head = label.split(":")[0]
    lower = upper = None
    for part in head.split(" AND "):
        name, op, value = part.split()
        assert name == column, label
        if op == ">=":
            lower = int(value)
        else:
            upper = int(value)
    return lower, upper
