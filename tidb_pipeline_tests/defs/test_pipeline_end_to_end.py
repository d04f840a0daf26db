"""The whole pipeline on the lab: TPC-C through the TiCDC stand-in, Kafka, builtin landing and MERGE.

Acceptance of the core pipeline: after TPC-C prepare and a 60 s run, every replicated table equals its
source row for row (full contents, types included), and re-running landing and merge with nothing new
changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pymysql
import pytest
import snowflake.connector

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.tables import changefeed_key, table_keys, table_names
from tidb_pipeline.lab.compare import compare_table
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.lab.ticdc.codec import tso_from_ms
from tidb_pipeline.workload import tpcc, types_table
from tidb_pipeline_tests.defs.lab_pipeline import lab_pipeline, materialize, tpcc_tables
from tidb_pipeline_tests.changefeed import wait_for_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service, ticdc: Service,
) -> Iterator[dict[str, Any]]:
    def config(suffix: str, tpcc_db: str) -> dict[str, Any]:
        return {
            "source": {"changefeed_id": f"e2e-{suffix}"},
            "snowflake": {"database": f"E2E_{suffix.upper()}"},
            "tables": [*tpcc_tables(tpcc_db), {"db": f"e2e_types_{suffix}", "table": types_table.TABLE, "key": ["id"]}],
        }

    with lab_pipeline(lab_settings, mariadb, prefix="e2e", config=config, more_databases=("e2e_types_{suffix}",)) as p:
        yield {**p, "types_db": p["databases"][0]}


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
    materialize(defs, {changefeed_key(config)})

    tpcc.prepare(conn_kwargs, database=pipeline["tpcc_db"], warehouses=1, scale=0.02)
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
        types_table.create_types_table(conn, pipeline["types_db"])
        types_table.insert_types_rows(conn, database=pipeline["types_db"])
    # Land and merge once mid-stream, so the final merge starts from a non-empty watermark.
    summary = tpcc.run(conn_kwargs, database=pipeline["tpcc_db"], duration_s=20, threads=2, seed=7)
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
        types_table.update_types_rows(conn, database=pipeline["types_db"])
    target = tso_from_ms(int(time.time() * 1000))
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id, target=target)
    materialize(defs, _pipeline_keys(config))

    summary2 = tpcc.run(conn_kwargs, database=pipeline["tpcc_db"], duration_s=40, threads=2, seed=8)
    assert summary.completed + summary2.completed > 0
    target = tso_from_ms(int(time.time() * 1000))
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id, target=target)
    materialize(defs, _pipeline_keys(config))

    mismatches = []
    with pymysql.connect(**conn_kwargs) as src, snowflake.connector.connect(**connection_args(lab_settings)) as sf:
        for t in config.tables:
            cmp = compare_table(src, t.db, t.table, sf, table_names(config, t).replica, t.key)
            assert cmp.source_rows > 0, f"{cmp.source} is empty: the test would prove nothing"
            if not cmp.equal:
                mismatches.append(f"{cmp.source}: {cmp}")
    assert not mismatches, "\n".join(mismatches)

    before = _snapshot(config, lab_settings)
    result = materialize(defs, _pipeline_keys(config))
    assert _snapshot(config, lab_settings) == before
    for event in result.get_asset_materialization_events():
        md = event.materialization.metadata
        if "rows_loaded" in md:
            assert md["rows_loaded"].value == 0
        if "rows_inserted" in md:
            assert (md["rows_inserted"].value, md["rows_updated"].value, md["rows_deleted"].value) == (0, 0, 0)
