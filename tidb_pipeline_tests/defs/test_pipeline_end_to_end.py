"""The whole pipeline on the lab: TPC-C through the TiCDC stand-in, Kafka, builtin landing and MERGE.

Acceptance of the core pipeline: after TPC-C prepare and two workload rounds of a fixed number of
transactions (landed and merged after each), every replicated table equals its source row for row (full
contents, types included), and re-running landing and merge with nothing new changes nothing. The TPC-C
database and changefeed are the `defs` package's shared `e2e_source`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import snowflake.connector

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.tables import table_keys, table_names
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline_tests.defs.lab_pipeline import (
    assert_replicas_equal_sources,
    materialize,
    pipeline_defs,
    run_workload,
)
from tidb_pipeline_tests.changefeed import wait_for_checkpoint

pytestmark = pytest.mark.integration

# Transactions per workload round: every kind of the mix (deliveries 4 %) shows up, whatever the machine's speed.
TRANSACTIONS = 200


@pytest.fixture(scope="module")
def pipeline(lab_settings: LabSettings, e2e_source: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The builtin-landing pipeline over the shared source (its changefeed exists already)."""
    with pipeline_defs(lab_settings, e2e_source["configs"]["builtin"]) as (cfg, defs):
        yield {**e2e_source, "config": cfg, "defs": defs}


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


def test_tpcc_replicas_equal_source_after_workload_rounds(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    config, defs, conn_kwargs = pipeline["config"], pipeline["defs"], pipeline["conn_kwargs"]
    # Land and merge once mid-stream, so the final merge starts from a non-empty watermark.
    run_workload(pipeline, transactions=TRANSACTIONS, seed=7)
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)
    materialize(defs, _pipeline_keys(config))

    run_workload(pipeline, transactions=TRANSACTIONS, seed=8)
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)
    materialize(defs, _pipeline_keys(config))

    assert_replicas_equal_sources(config, conn_kwargs, lab_settings)

    before = _snapshot(config, lab_settings)
    result = materialize(defs, _pipeline_keys(config))
    assert _snapshot(config, lab_settings) == before
    for event in result.get_asset_materialization_events():
        md = event.materialization.metadata
        if "rows_loaded" in md:
            assert md["rows_loaded"].value == 0
        if "rows_inserted" in md:
            assert (md["rows_inserted"].value, md["rows_updated"].value, md["rows_deleted"].value) == (0, 0, 0)
