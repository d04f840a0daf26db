"""Test-only Dagster code location: one asset that writes a row through the project's Snowflake resource.

`test_snowflake.py` materializes it with the `dagster` CLI in a separate process, with SNOWFLAKE_* pointing at
a lab fakesnow server and SNOWFLAKE_DATABASE set, and then looks for the row from the test process.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation as a real type.
import json
import time

import dagster as dg
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.resources.snowflake import snowflake_resource

SCHEMA = "SMOKE"
TABLE = "RUNS"


@dg.asset(key=["snowflake", SCHEMA, TABLE])
def smoke_runs(context: dg.AssetExecutionContext, snowflake: SnowflakeResource) -> dg.MaterializeResult:
    """Append this run's id (and a VARIANT payload) to SMOKE.RUNS; metadata carries the connection timings."""
    started = time.perf_counter()
    with snowflake.get_connection() as conn:
        connected = time.perf_counter()
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        first_query = time.perf_counter()
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{TABLE} (RUN_ID VARCHAR, PAYLOAD VARIANT)")
        cur.execute(
            f"INSERT INTO {SCHEMA}.{TABLE} (RUN_ID, PAYLOAD) SELECT %s, PARSE_JSON(%s)",
            (context.run_id, json.dumps({"asset": context.asset_key.to_user_string()})),
        )
        cur.execute(f"SELECT COUNT(*) FROM {SCHEMA}.{TABLE} WHERE RUN_ID = %s", (context.run_id,))
        (rows,) = cur.fetchone()
    return dg.MaterializeResult(
        metadata={
            "rows_for_run": rows,
            "connect_seconds": connected - started,
            "first_query_seconds": first_query - connected,
        }
    )


defs = dg.Definitions(assets=[smoke_runs], resources={"snowflake": snowflake_resource()})
