"""`tidb-pipeline demo`: the production path on the lab with go-tpc, printing what it did.

Tables that already hold data come in the way production brings them in:

1. Resets the lab's data (the demo owns `tpcc` and `lab_types`; a fresh lab makes reruns deterministic).
2. `go-tpc tpcc prepare` loads one warehouse (~600k rows) into MariaDB (TiDB's stand-in), plus the
   type-coverage table.
3. The `backfill` job snapshots every configured table at one consistent point, loads the replicas and
   creates the changefeed from that point (`tidb_pipeline.defs.backfill_job`, the lab's MariaDB snapshot source).
4. `go-tpc tpcc run` for `duration_s` seconds (and an update of every type-coverage row).
5. Waits until the changefeed's checkpoint passes the end of the workload.
6. Runs every table group's merge job (landing + replica) in the Dagster instance at $DAGSTER_HOME, so
   `dagster dev` shows the runs afterwards.
7. Compares every replica with its source table in full and prints source rows vs replica rows.
8. Runs the reconcile job (every asset check) and prints each check's result.

Each phase draws its own progress bar; Dagster's event stream goes to the instance (the UI), not the screen.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from tidb_pipeline.lab.progress import Phase
from tidb_pipeline.lab.settings import LabSettings

# Rows of one go-tpc warehouse in the nine tables (TPC-C 4.3.3.1; order lines average 10 per order).
ROWS_PER_WAREHOUSE = 1 + 10 + 30_000 + 30_000 + 30_000 + 300_000 + 9_000 + 100_000
ITEM_ROWS = 100_000
_DAGSTER_LOGGER = "tidb_pipeline.demo.dagster"
# The lab parts the demo's path uses (and what they depend on); Connect and PostgreSQL serve other targets.
DEMO_PARTS = ("mariadb", "kafka", "registry", "snowflake", "ticdc")


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def reset_lab(settings: LabSettings) -> None:
    """Stop the lab and delete its data (keeping the Maven jars), then start it again."""
    from tidb_pipeline.lab import stack
    from tidb_pipeline.lab.service import down, up

    down(stack.services(settings), log=lambda _m: None)
    for child in settings.root.iterdir() if settings.root.exists() else []:
        if child.name != "jars":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    services = stack.services(settings, list(DEMO_PARTS))
    with Phase("lab up (fresh data)", total=len(services), unit="services") as bar:
        up(services, log=lambda m: bar.advance(detail=m) if ": ready" in m or "already running" in m else bar.note(m))


def _wait(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(interval)


def _quiet_logger(bar: Callable[[], Phase | None], seen: Callable[[str], None] = lambda _m: None):
    """A Dagster logger that feeds the current phase's bar (and `seen`) instead of printing the event stream."""
    import dagster as dg

    class _ToBar(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            seen(message)
            phase = bar()
            if phase is not None:
                phase.note(message.rsplit(" - ", 1)[-1][:90])

    @dg.logger
    def demo_logger(_context: Any) -> logging.Logger:
        log = logging.getLogger(_DAGSTER_LOGGER)
        log.handlers = [_ToBar()]
        log.setLevel(logging.INFO)
        log.propagate = False
        return log

    return demo_logger


class _Poller:
    """Calls `fn` every `interval` seconds on a thread until closed (feeds a bar from a counter)."""

    def __init__(self, fn: Callable[[], None], interval: float = 1.0) -> None:
        self._stop = threading.Event()
        self._fn, self._interval = fn, interval
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._fn()
            except Exception:  # noqa: BLE001 - a progress read must never fail the demo
                pass

    def __enter__(self) -> _Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _failure(run: Any) -> str:
    """The first failed step's error, for the demo's own message."""
    for event in run.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            return f"{error.cls_name}: {error.message.strip()[:500]}"
    return "see the run in `make dev`"


def _table_rows(conn_kwargs: dict[str, Any], database: str) -> int:
    """InnoDB's row estimate of every table in `database` (cheap; good enough for a progress bar)."""
    import pymysql

    with pymysql.connect(autocommit=True, **conn_kwargs) as conn, conn.cursor() as cur:
        cur.execute("SELECT COALESCE(SUM(TABLE_ROWS), 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
                    (database,))
        return int(cur.fetchone()[0])


def run_demo(settings: LabSettings, *, duration_s: float = 30.0, threads: int = 4, fresh: bool = True,
             warehouses: int = 1) -> int:
    import dagster as dg
    import pymysql

    from tidb_pipeline.config import load_config
    from tidb_pipeline.defs import build_defs
    from tidb_pipeline.defs.backfill_job import build_backfill_job
    from tidb_pipeline.defs.jobs import merge_job_name
    from tidb_pipeline.defs.tables import table_names
    from tidb_pipeline.lab.compare import compare_table
    from tidb_pipeline.lab.env import pipeline_env
    from tidb_pipeline.lab.snapshot import MariaDBSnapshotSource
    from tidb_pipeline.lab.ticdc.codec import ms_from_tso, tso_from_ms
    from tidb_pipeline.workload import gotpc, types_table

    gotpc.binary()  # before anything starts: a missing go-tpc names the command that installs it
    os.environ.update(pipeline_env(settings))
    if fresh:
        reset_lab(settings)
    config = load_config()
    defs = build_defs(config=config)
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    resources = defs.resources or {}
    current: list[Phase | None] = [None]
    loggers = {"demo": _quiet_logger(lambda: current[0])}
    quiet = {"loggers": {"demo": {}}}

    def execute(job: dg.JobDefinition, phase: Phase, run_config: dict[str, Any] | None = None, **kw: Any):
        current[0] = phase
        try:
            return job.with_logger_defs(loggers).execute_in_process(
                instance=instance, resources=resources, run_config={**quiet, **(run_config or {})}, **kw)
        finally:
            current[0] = None

    conn_kwargs = {"host": os.environ["TIDB_HOST"], "port": int(os.environ["TIDB_PORT"]),
                   "user": os.environ["TIDB_USER"], "password": os.environ["TIDB_PASSWORD"]}
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'tpcc'")
        loaded = int(cur.fetchone()[0]) > 0
    with resources["ticdc"].get_client() as client:
        try:
            client.get_status(config.source.changefeed_id)
            has_changefeed = True
        except Exception:  # noqa: BLE001 - TiCDC answers "changefeed not exists" with an error
            has_changefeed = False

    if loaded and has_changefeed:
        _say("tpcc already loaded and replicated (--keep-data): skipping prepare and backfill")
    elif loaded:
        _say("the tpcc database exists but no changefeed does; run without --keep-data to start fresh")
        return 1
    else:
        expected = ROWS_PER_WAREHOUSE * warehouses + ITEM_ROWS
        with Phase(f"go-tpc prepare ({warehouses} wh)", total=expected, unit="rows") as bar, \
                _Poller(lambda: bar.update(_table_rows(conn_kwargs, "tpcc"))):
            gotpc.prepare(conn_kwargs, database="tpcc", warehouses=warehouses, threads=threads,
                          on_line=lambda line: bar.note(line.strip()[:70]))
            bar.update(_table_rows(conn_kwargs, "tpcc"))
        with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
            types_table.create_types_table(conn)
            types_table.insert_types_rows(conn)
        backfill = build_backfill_job(config=config, snapshot_source=MariaDBSnapshotSource.from_tidb)
        with Phase("backfill job", total=len(config.tables), unit="tables") as bar:
            loaded_tables: set[str] = set()

            def loaded_one(message: str) -> None:
                # "<db>.<table>: N rows loaded into <replica>" (a message may reach the logger more than once)
                if "rows loaded into" in message:
                    loaded_tables.add(message.split(": ")[-2].rsplit(" - ", 1)[-1])
                    bar.update(len(loaded_tables))

            current[0] = bar
            try:
                run = backfill.with_logger_defs({"demo": _quiet_logger(lambda: bar, loaded_one)}).execute_in_process(
                    instance=instance, resources=resources, run_config=quiet, raise_on_error=False)
            finally:
                current[0] = None
            if not run.success:
                raise RuntimeError(f"the backfill job failed (run {run.run_id}): {_failure(run)}")
        _say(f"backfill: snapshot at TSO {run.output_for_node('backfill_tables')}; changefeed "
             f"{config.source.changefeed_id} replicates from there")

    with Phase(f"go-tpc run ({threads} threads)", total=round(duration_s), unit="s") as bar:
        started = time.monotonic()
        with _Poller(lambda: bar.update(min(duration_s, time.monotonic() - started)), interval=0.5):
            with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
                types_table.update_types_rows(conn)
            result = gotpc.run(conn_kwargs, database="tpcc", warehouses=warehouses, threads=threads,
                               duration_s=duration_s, on_line=lambda line: bar.note(line.strip()[:70]))
    _say(f"go-tpc: tpmC {result.tpmc:,.0f} (tpmTotal {result.tpm_total:,.0f}) over {duration_s:.0f}s")

    end_ms = int(time.time() * 1000)
    target = tso_from_ms(end_ms)
    with resources["ticdc"].get_client() as client:
        first = client.get_status(config.source.changefeed_id).checkpoint_ts
        behind_s = max(1, round((end_ms - ms_from_tso(first)) / 1000))
        with Phase("change feed catch-up", total=behind_s, unit="s behind") as bar:
            def caught_up() -> bool:
                checkpoint = client.get_status(config.source.changefeed_id).checkpoint_ts
                bar.update(behind_s - max(0.0, (end_ms - ms_from_tso(checkpoint)) / 1000))
                return checkpoint >= target

            _wait(caught_up, timeout=1800, what="the changefeed catching up with the workload")

    repo = defs.get_repository_def()
    with Phase("merge jobs", total=len(config.groups), unit="jobs") as bar:
        for group in config.groups:
            run = execute(repo.get_job(merge_job_name(group)), bar)
            bar.advance(detail=f"{merge_job_name(group)}: {'success' if run.success else 'FAILED'}")
            if not run.success:
                _say(f"{merge_job_name(group)} failed (run {run.run_id}): {_failure(run)}")
                return 1

    from tidb_pipeline.lab.snowflake import connection_args

    import snowflake.connector

    ok = True
    results = []
    with Phase("full-content comparison", total=len(config.tables), unit="tables") as bar, \
            pymysql.connect(**conn_kwargs) as src, snowflake.connector.connect(**connection_args(settings)) as sf:
        for t in config.tables:
            bar.note(f"{t.db}.{t.table}")
            results.append(compare_table(src, t.db, t.table, sf, table_names(config, t).replica, t.key))
            bar.advance()

    from tidb_pipeline.defs.checks import RECONCILE_JOB

    with Phase("asset checks", unit="") as bar:
        checks = execute(repo.get_job(RECONCILE_JOB), bar, raise_on_error=False)

    print(f"\ngo-tpc: {result.tpmc:,.0f} tpmC, {threads} threads, {duration_s:.0f}s, {warehouses} warehouse(s)")
    print(f"\n{'source table':<28} {'source rows':>12} {'replica rows':>13}  contents")
    for cmp in results:
        ok &= cmp.equal
        print(f"{cmp.source:<28} {cmp.source_rows:>12,} {cmp.replica_rows:>13,}  "
              f"{'match' if cmp.equal else 'DIFFER: ' + '; '.join(cmp.examples)}")
    print(f"\nasset checks ({RECONCILE_JOB} job):")
    evaluations = sorted(checks.get_asset_check_evaluations(), key=lambda e: (e.asset_key.to_user_string(), e.check_name))
    for evaluation in evaluations:
        verdict = "PASS" if evaluation.passed else f"FAIL ({evaluation.severity.value})"
        ok &= evaluation.passed
        print(f"  {verdict:<14} {evaluation.asset_key.to_user_string():<34} {evaluation.check_name}")
    if not evaluations:
        ok = False
        print("  no check ran")
    print(f"\ndemo: {'every replica equals its source and every check passed' if ok else 'MISMATCH'}; "
          "`make dev` shows the assets, runs, metadata and checks in the Dagster UI")
    return 0 if ok else 1
