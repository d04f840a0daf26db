"""What an idle pipeline costs: Snowflake statements issued while nothing is written to the source.

Starts `dagster dev` (webserver + daemon: the offsets sensor, the merge / cleanup / reconcile schedules, the
alerts sensor when configured) on the lab with the instance at $DAGSTER_HOME, waits until the pipeline has
caught up (no run queued or running for `--settle` seconds), then counts, for `--minutes`, the statements
the lab's Snowflake server ran (`lab/statement_log.py`: counted at the server, as Snowflake would bill them)
and the daemon's ticks. Statements are attributed to the runs whose span they fall in; anything outside a
run would be a sensor or schedule querying the warehouse.

    tidb-pipeline lab up && tidb-pipeline demo      # a populated pipeline (TPC-C + types table, merged)
    python -m tidb_pipeline.bench.idle --minutes 15
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from tidb_pipeline.lab.env import pipeline_env
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.statement_log import Statement, by_kind, log_path, read
from tidb_pipeline.lab.ports import free_port

_ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
           dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]




@dataclass(frozen=True)
class RunSpan:
    job: str
    trigger: str
    status: str
    start: float
    end: float


def _runs(instance: dg.DagsterInstance, since: float) -> list[RunSpan]:
    out = []
    for r in instance.get_run_records(dg.RunsFilter(created_after=_dt(since)), limit=1000):
        run = r.dagster_run
        out.append(RunSpan(run.job_name, run.tags.get("tidb_pipeline/trigger", run.tags.get("dagster/schedule_name", "")),
                           run.status.value, r.start_time or r.create_timestamp.timestamp(),
                           r.end_time or time.time()))
    return sorted(out, key=lambda s: s.start)


def _dt(ts: float):  # noqa: ANN202 - a datetime
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def _ticks(instance: dg.DagsterInstance, since: float) -> dict[str, Counter[str]]:
    """Per sensor / schedule: tick outcomes since `since` (skip reasons folded to their first words)."""
    out: dict[str, Counter[str]] = {}
    for state in instance.all_instigator_state():
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=since, limit=10_000)
        counter: Counter[str] = Counter()
        for t in ticks:
            reason = (t.skip_reason or "").split(":")[0][:70]
            counter[f"{t.status.value}{': ' + reason if reason else ''}"] += 1
        if counter:
            out[state.instigator_name] = counter
    return out


def _settled(instance: dg.DagsterInstance, settle_s: float) -> bool:
    if instance.get_run_records(dg.RunsFilter(statuses=_ACTIVE), limit=1):
        return False
    last = instance.get_run_records(limit=1)
    return not last or (last[0].end_time or 0) < time.time() - settle_s


def measure(minutes: float, settle_s: float, warmup_timeout_s: float) -> str:
    settings = LabSettings()
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise SystemExit("set DAGSTER_HOME (the instance `tidb-pipeline demo` wrote to) before measuring")
    env = {**os.environ, **pipeline_env(settings)}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-m", "tidb_pipeline.definitions", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(Path(home) / "idle_bench_dagster_dev.log", "w"),
        start_new_session=True,
    )
    instance = dg.DagsterInstance.get()
    statements_log = log_path(settings)
    started = time.time()
    try:
        print(f"dagster dev (pid {proc.pid}) on port {port}; waiting for the pipeline to settle", flush=True)
        time.sleep(settle_s)
        while not _settled(instance, settle_s):
            if time.time() - started > warmup_timeout_s:
                raise SystemExit(f"the pipeline did not settle within {warmup_timeout_s:.0f} s")
            if proc.poll() is not None:
                raise SystemExit(f"dagster dev exited with {proc.returncode}; see {home}/idle_bench_dagster_dev.log")
            time.sleep(5)
        warmup = _runs(instance, started)
        t0 = time.time()
        print(f"settled after {t0 - started:.0f} s ({len(warmup)} warm-up runs); measuring {minutes:g} min", flush=True)
        time.sleep(minutes * 60)
        t1 = time.time()
        if proc.poll() is not None:
            raise SystemExit(f"dagster dev exited during the window with {proc.returncode}")
        statements = read(statements_log, t0, t1)
        runs = [r for r in _runs(instance, t0 - 3600) if r.end >= t0 and r.start < t1]
        ticks = _ticks(instance, t0)
        warm_statements = read(statements_log, started, t0)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return report(minutes, t1 - t0, statements, runs, ticks, warmup, len(warm_statements))


def report(minutes: float, seconds: float, statements: list[Statement], runs: list[RunSpan],
           ticks: dict[str, Counter[str]], warmup: list[RunSpan], warm_statements: int) -> str:
    # A statement inside the spans of several runs (say the hourly reconcile and the 2-hourly cleanup, both
    # due at the top of an even hour) is counted once, against those runs together.
    by_runs: Counter[tuple[int, ...]] = Counter()
    outside: list[Statement] = []
    for s in statements:
        hit = tuple(i for i, r in enumerate(runs) if r.start - 1 <= s.at <= r.end + 1)
        if hit:
            by_runs[hit] += 1
        else:
            outside.append(s)
    per_hour = len(statements) * 3600 / seconds if seconds else 0
    lines = [
        f"- window: {seconds / 60:.1f} min after settling (warm-up: {len(warmup)} run(s), {warm_statements} statements)",
        f"- Snowflake statements in the window: **{len(statements)}** ({per_hour:.1f} per hour); "
        f"outside any run (sensors, schedules): **{len(outside)}**",
    ]
    if statements:
        lines.append(f"- by kind: {', '.join(f'{k} {n}' for k, n in by_kind(statements).most_common())}")
    for i, r in enumerate(runs):
        lines.append(f"- run `{r.job}` ({r.trigger or 'manual'}, {r.status}, {r.end - r.start:.0f} s)")
    for hit, n in by_runs.most_common():
        lines.append(f"- statements while {' and '.join(f'`{runs[i].job}`' for i in hit)} ran: {n}")
    if not runs:
        lines.append("- runs in the window: none")
    for name, counter in sorted(ticks.items()):
        lines.append(f"- `{name}` ticks: " + "; ".join(f"{n}x {k}" for k, n in counter.most_common()))
    if outside:
        lines.append("- first statements outside runs: " + "; ".join(s.sql[:80] for s in outside[:5]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Count Snowflake statements of an idle pipeline under dagster dev.")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--settle", type=float, default=90.0, help="seconds without runs before measuring")
    parser.add_argument("--warmup-timeout", type=float, default=1200.0)
    args = parser.parse_args(argv)
    print(measure(args.minutes, args.settle, args.warmup_timeout))


if __name__ == "__main__":
    main()
