"""The whole pipeline on the lab: TPC-C through the TiCDC stand-in, Kafka, builtin landing and MERGE.

Acceptance of the core pipeline: after TPC-C prepare and a 60 s run, every replicated table equals its
source row for row (full contents, types included), and re-running landing and merge with nothing new
changes nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pymysql
import pytest
import snowflake.connector

from tidb_pipeline.cli import _lab_env
from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.tables import changefeed_key, table_keys, table_names
from tidb_pipeline.lab.compare import compare_table
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.lab.ticdc.codec import tso_from_ms
from tidb_pipeline.workload import tpcc, types_table
from tidb_pipeline.workload.schema import INELIGIBLE_FOR_CDC, TABLES

pytestmark = pytest.mark.integration

TPCC_KEYS = {
    "customer": ["c_w_id", "c_d_id", "c_id"], "district": ["d_w_id", "d_id"], "item": ["i_id"],
    "new_order": ["no_w_id", "no_d_id", "no_o_id"], "order_line": ["ol_w_id", "ol_d_id", "ol_o_id", "ol_number"],
    "orders": ["o_w_id", "o_d_id", "o_id"], "stock": ["s_w_id", "s_i_id"], "warehouse": ["w_id"],
}


@pytest.fixture(scope="module")
def pipeline(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service, ticdc: Service,
) -> Iterator[dict[str, Any]]:
    suffix = uuid.uuid4().hex[:6]
    tpcc_db, types_db = f"e2e_tpcc_{suffix}", f"e2e_types_{suffix}"
    assert set(TPCC_KEYS) == set(TABLES) - set(INELIGIBLE_FOR_CDC)
    config = parse_config({
        "source": {"changefeed_id": f"e2e-{suffix}"},
        "snowflake": {"database": f"E2E_{suffix.upper()}"},
        "tables": [{"db": tpcc_db, "table": t, "key": k} for t, k in TPCC_KEYS.items()]
        + [{"db": types_db, "table": types_table.TABLE, "key": ["id"]}],
    })
    env = _lab_env(lab_settings)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    conn_kwargs = mariadb.connect_kwargs()  # type: ignore[attr-defined]
    defs = build_defs(config=config)
    try:
        yield {"config": config, "defs": defs, "conn_kwargs": conn_kwargs, "tpcc_db": tpcc_db, "types_db": types_db}
    finally:
        with defs.resources["ticdc"].get_client() as client:
            client.delete(config.source.changefeed_id)
        with pymysql.connect(autocommit=True, **conn_kwargs) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{tpcc_db}`")
            cur.execute(f"DROP DATABASE IF EXISTS `{types_db}`")
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _assets(defs: dg.Definitions, keys: set[dg.AssetKey]) -> list[dg.AssetsDefinition]:
    return [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and set(a.keys) & keys]


def _materialize(defs: dg.Definitions, keys: set[dg.AssetKey]) -> dg.ExecuteInProcessResult:
    specs = [a for a in defs.assets if isinstance(a, dg.AssetSpec)]
    result = dg.materialize([*_assets(defs, keys), *specs], selection=list(keys), resources=defs.resources)
    assert result.success
    return result


def _pipeline_keys(config: PipelineConfig) -> set[dg.AssetKey]:
    return {k for t in config.tables for k in (table_keys(config, t).landing, table_keys(config, t).replica)}


def _snapshot(config: PipelineConfig, settings: LabSettings) -> dict[str, tuple[int, list[tuple]]]:
    """Replica row counts plus the watermark table, to prove a no-op rerun changes nothing."""
    out: dict[str, tuple[int, list[tuple]]] = {}
    with snowflake.connector.connect(**connection_args(settings)) as sf:
        cur = sf.cursor()
        for t in config.tables:
            names = table_names(config, t)
            cur.execute(f"SELECT COUNT(*) FROM {names.replica.sql}")
            (replica_rows,) = cur.fetchone()
            cur.execute(f"SELECT COUNT(*) FROM {names.landing.sql}")
            (landing_rows,) = cur.fetchone()
            cur.execute(f'SELECT "PARTITION", "MERGED_OFFSET" FROM {names.watermarks.sql} '
                        f'WHERE "REPLICA_TABLE" = %s ORDER BY 1', (names.replica.label,))
            out[t.table] = (replica_rows, [(landing_rows,), *[tuple(r) for r in cur.fetchall()]])
    return out


def test_tpcc_replicas_equal_source_after_60s_run(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    config, defs, conn_kwargs = pipeline["config"], pipeline["defs"], pipeline["conn_kwargs"]
    _materialize(defs, {changefeed_key(config)})

    tpcc.prepare(conn_kwargs, database=pipeline["tpcc_db"], warehouses=1, scale=0.02)
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
        types_table.create_types_table(conn, pipeline["types_db"])
        types_table.insert_types_rows(conn, database=pipeline["types_db"])
    # Land and merge once mid-stream, so the final merge starts from a non-empty watermark.
    summary = tpcc.run(conn_kwargs, database=pipeline["tpcc_db"], duration_s=20, threads=2, seed=7)
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
        types_table.update_types_rows(conn, database=pipeline["types_db"])
    target = tso_from_ms(int(time.time() * 1000))
    _wait_for_checkpoint(defs, config, target)
    _materialize(defs, _pipeline_keys(config))

    summary2 = tpcc.run(conn_kwargs, database=pipeline["tpcc_db"], duration_s=40, threads=2, seed=8)
    assert summary.completed + summary2.completed > 0
    target = tso_from_ms(int(time.time() * 1000))
    _wait_for_checkpoint(defs, config, target)
    _materialize(defs, _pipeline_keys(config))

    mismatches = []
    with pymysql.connect(**conn_kwargs) as src, snowflake.connector.connect(**connection_args(lab_settings)) as sf:
        for t in config.tables:
            cmp = compare_table(src, t.db, t.table, sf, table_names(config, t).replica, t.key)
            assert cmp.source_rows > 0, f"{cmp.source} is empty: the test would prove nothing"
            if not cmp.equal:
                mismatches.append(f"{cmp.source}: {cmp}")
    assert not mismatches, "\n".join(mismatches)

    before = _snapshot(config, lab_settings)
    result = _materialize(defs, _pipeline_keys(config))
    assert _snapshot(config, lab_settings) == before
    for event in result.get_asset_materialization_events():
        md = event.materialization.metadata
        if "rows_loaded" in md:
            assert md["rows_loaded"].value == 0
        if "rows_inserted" in md:
            assert (md["rows_inserted"].value, md["rows_updated"].value, md["rows_deleted"].value) == (0, 0, 0)


def _wait_for_checkpoint(defs: dg.Definitions, config: PipelineConfig, target: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    with defs.resources["ticdc"].get_client() as client:
        while client.get_status(config.source.changefeed_id).checkpoint_ts < target:
            status = client.get_status(config.source.changefeed_id)
            assert status.state == "normal", f"changefeed {status.state}: {status.last_error}"
            assert time.monotonic() < deadline, "changefeed did not catch up"
            time.sleep(0.5)
