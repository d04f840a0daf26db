"""`tidb-pipeline demo`: the main job, end to end on the lab, printing what it did.

1. Resets the lab's data (the demo owns `tpcc` and `lab_types`; a fresh lab makes reruns deterministic).
2. Creates the changefeed by materialising `ticdc/<changefeed>` (through the `ticdc` resource).
3. Loads TPC-C (`workload prepare`) and the type-coverage table, then runs the TPC-C mix.
4. Waits until the changefeed's checkpoint passes the end of the workload.
5. Runs every table group's merge job (landing + replica) in the Dagster instance at $DAGSTER_HOME, so
   `dagster dev` shows the runs afterwards.
6. Compares every replica with its source table in full and prints source rows vs replica rows.
7. Runs the reconcile job (every asset check) and prints each check's result.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable

from tidb_pipeline.lab.settings import LabSettings

# Smaller than a standard warehouse so the demo finishes in a few minutes on two cores.
DEMO_SCALE = 0.1


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def reset_lab(settings: LabSettings) -> None:
    """Stop the lab and delete its data (keeping the Maven jars), then start it again."""
    from tidb_pipeline.lab import stack
    from tidb_pipeline.lab.service import down, up

    parts = stack.services(settings)
    down(parts, log=lambda _m: None)
    for child in settings.root.iterdir() if settings.root.exists() else []:
        if child.name != "jars":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    started = time.monotonic()
    up(stack.services(settings), log=lambda m: _say(m))
    _say(f"lab ready in {time.monotonic() - started:.1f}s")


def _wait(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(interval)


def run_demo(settings: LabSettings, *, duration_s: float = 30.0, threads: int = 2, fresh: bool = True) -> int:
    import dagster as dg

    from tidb_pipeline.config import load_config
    from tidb_pipeline.defs import build_defs
    from tidb_pipeline.defs.jobs import merge_job_name
    from tidb_pipeline.defs.tables import changefeed_key, table_names
    from tidb_pipeline.lab.compare import compare_table
    from tidb_pipeline.lab.env import pipeline_env
    from tidb_pipeline.lab.ticdc.codec import tso_from_ms
    from tidb_pipeline.workload import tpcc, types_table

    os.environ.update(pipeline_env(settings))
    if fresh:
        reset_lab(settings)
    config = load_config()
    defs = build_defs(config=config)
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    resources = defs.resources or {}

    _say(f"materialising {changefeed_key(config).to_user_string()} (creates the changefeed through the ticdc resource)")
    result = dg.materialize(
        [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and changefeed_key(config) in a.keys],
        instance=instance, resources=resources,
    )
    if not result.success:
        _say("changefeed materialisation failed")
        return 1

    conn_kwargs = {"host": os.environ["TIDB_HOST"], "port": int(os.environ["TIDB_PORT"]),
                   "user": os.environ["TIDB_USER"], "password": os.environ["TIDB_PASSWORD"]}
    _say(f"workload prepare: TPC-C, 1 warehouse at scale {DEMO_SCALE}")
    prep = tpcc.prepare(conn_kwargs, database="tpcc", warehouses=1, scale=DEMO_SCALE, progress=sys.stderr)
    _say(f"loaded {prep.total_rows:,} rows in {prep.seconds:.1f}s")
    import pymysql

    with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
        types_table.create_types_table(conn)
        types_table.insert_types_rows(conn)
        types_table.update_types_rows(conn)
    _say(f"workload run: {duration_s:.0f}s, {threads} threads")
    summary = tpcc.run(conn_kwargs, database="tpcc", duration_s=duration_s, threads=threads, progress=sys.stderr)
    _say(f"tpmC {summary.tpmc:,.0f}")

    target = tso_from_ms(int(time.time() * 1000))
    resource = resources["ticdc"]
    with resource.get_client() as client:
        _wait(lambda: client.get_status(config.source.changefeed_id).checkpoint_ts >= target,
              timeout=600, what="the changefeed catching up with the workload")
    _say("changefeed checkpoint passed the end of the workload")

    repo = defs.get_repository_def()
    for group in config.groups:
        started = time.monotonic()
        job = repo.get_job(merge_job_name(group))
        run = job.execute_in_process(instance=instance, resources=resources)
        _say(f"{merge_job_name(group)}: {'success' if run.success else 'FAILED'} in {time.monotonic() - started:.1f}s "
             f"(run {run.run_id[:8]})")
        if not run.success:
            return 1

    from tidb_pipeline.lab.snowflake import connection_args

    import snowflake.connector

    ok = True
    print(f"\n{'source table':<28} {'source rows':>12} {'replica rows':>13}  contents")
    with pymysql.connect(**conn_kwargs) as src, snowflake.connector.connect(**connection_args(settings)) as sf:
        for t in config.tables:
            cmp = compare_table(src, t.db, t.table, sf, table_names(config, t).replica, t.key)
            ok &= cmp.equal
            print(f"{cmp.source:<28} {cmp.source_rows:>12,} {cmp.replica_rows:>13,}  "
                  f"{'match' if cmp.equal else 'DIFFER: ' + '; '.join(cmp.examples)}")

    from tidb_pipeline.defs.checks import RECONCILE_JOB

    started = time.monotonic()
    checks = repo.get_job(RECONCILE_JOB).execute_in_process(instance=instance, resources=resources, raise_on_error=False)
    print(f"\nasset checks ({RECONCILE_JOB} job, {time.monotonic() - started:.1f}s):")
    for evaluation in sorted(checks.get_asset_check_evaluations(),
                             key=lambda e: (e.asset_key.to_user_string(), e.check_name)):
        verdict = "PASS" if evaluation.passed else f"FAIL ({evaluation.severity.value})"
        ok &= evaluation.passed
        print(f"  {verdict:<14} {evaluation.asset_key.to_user_string():<34} {evaluation.check_name}")
    print(f"\ndemo: {'every replica equals its source and every check passed' if ok else 'MISMATCH'}; "
          "`make dev` shows the assets, runs, metadata and checks in the Dagster UI")
    return 0 if ok else 1
