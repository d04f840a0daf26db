"""`python -m tidb_pipeline.lab.load_test`: go-tpc's TPC-C at the lab's maximum for N minutes with the
pipeline's automation running, then proof that every replica converges to its source.

What runs, all in this process against a private lab (own MariaDB, Kafka, registry, Snowflake and change
feed on free ports under `--root`, so other users of the shared lab neither disturb the figures nor are
disturbed):
- PingCAP's go-tpc (`workload.gotpc`, the workload `tiup bench tpcc` runs): `go-tpc tpcc prepare` of one
  warehouse (~600k rows), then the production path for tables that already hold data: the `backfill` job
  snapshots them at one consistent point, loads the replicas and creates the changefeed from that point;
  then `go-tpc tpcc run`, unthrottled, `--threads` connections, for `--minutes`;
- the offsets sensor evaluated every 15 s (its `minimum_interval_seconds`); each run request runs the
  group's merge job (landing load + MERGE) in process, as the daemon would launch it;
- the merge schedule's tick every 60 s and the landing cleanup job every 5 minutes (retention 3 minutes,
  so cleanup really deletes during the run), in the same loop: one job at a time, like one run worker.
Every 10 s it samples the change records on Kafka and the backlog (records on Kafka not yet merged, the
checks' `backlog_per_partition`). When the workload stops it waits for the change feed, runs the merge jobs
until the backlog is 0, and compares every table in full (`compare.compare_table`).

Output in `--out` (default `<root>/results`): `samples.csv`, `backlog.png` (if matplotlib is installed),
`summary.json`; the summary is printed too. Exit status 0 only if every replica equals its source.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.ports import free_port

SENSOR_EVERY_S = 15.0
MERGE_EVERY_S = 60.0
CLEANUP_EVERY_S = 300.0
SAMPLE_EVERY_S = 10.0
RETENTION_HOURS = 0.05  # 3 minutes: cleanup deletes merged rows while the load runs


def _say(msg: str) -> None:
    print(f"[load] {time.strftime('%H:%M:%S')} {msg}", flush=True)


@dataclass(frozen=True)
class Sample:
    t_s: float
    kafka_records: int  # change records on Kafka, all topics
    merged_records: int  # of those, at or below the merged watermarks
    backlog: int  # kafka_records - merged_records
    changefeed_lag_s: float  # how far the change feed's checkpoint is behind now: changes not yet on Kafka
    jobs_run: int




def private_lab(root: Path) -> tuple[LabSettings, list[Any]]:
    """Every part the pipeline needs, private, on free ports; Kafka's jars shared with the default lab."""
    from tidb_pipeline.lab import stack
    from tidb_pipeline.lab.kafka import ensure_jars

    shared = LabSettings()
    ports = {name: free_port() for name in ("kafka", "kafka_controller", "mariadb", "registry", "snowflake", "ticdc")}
    settings = LabSettings(root=root, ports={**shared.ports, **ports})
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "jars").exists():
        (root / "jars").symlink_to(ensure_jars(shared), target_is_directory=True)
    return settings, stack.services(settings, ["mariadb", "kafka", "registry", "snowflake", "ticdc"])


def run_load_test(settings: LabSettings, *, minutes: float, threads: int, out: Path) -> int:
    import dagster as dg
    import pymysql
    import snowflake.connector

    from tidb_pipeline.config import parse_config
    from tidb_pipeline.defs import build_defs
    from tidb_pipeline.defs.backfill_job import build_backfill_job
    from tidb_pipeline.defs.check_results import backlog_per_partition, checkpoint_lag_s, read_watermarks
    from tidb_pipeline.defs.jobs import merge_job_name
    from tidb_pipeline.defs.sensors import SENSOR_NAME
    from tidb_pipeline.defs.tables import table_names
    from tidb_pipeline.lab.compare import compare_table
    from tidb_pipeline.lab.env import pipeline_env
    from tidb_pipeline.lab.snapshot import MariaDBSnapshotSource
    from tidb_pipeline.lab.snowflake import connection_args
    from tidb_pipeline.lab.ticdc.codec import tso_from_ms
    from tidb_pipeline.workload import gotpc
    from tidb_pipeline.workload.schema import CDC_KEYS

    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(pipeline_env(settings))
    db = "load_tpcc"
    # TPC-C tables the change feed can replicate (history has no key), in groups of their own so the
    # sensor requests one run per group that moved.
    config = parse_config({
        "source": {"changefeed_id": "load-test"},
        "snowflake": {"database": "LOAD_TEST"},
        "retention_hours": RETENTION_HOURS,
        "merge_schedules": {"hot": {"cron": "* * * * *"}, "cold": {"cron": "* * * * *"}},
        "tables": [{"db": db, "table": t, "key": list(k), "group": "hot" if t in ("order_line", "orders", "new_order",
                    "stock") else "cold"} for t, k in CDC_KEYS.items()],
    })
    defs = build_defs(config=config)
    resources = defs.resources or {}
    repo = defs.get_repository_def()
    instance = dg.DagsterInstance.ephemeral()
    kafka = resources["kafka"]
    conn_kwargs = {"host": os.environ["TIDB_HOST"], "port": int(os.environ["TIDB_PORT"]),
                   "user": os.environ["TIDB_USER"], "password": os.environ["TIDB_PASSWORD"]}

    gotpc.binary()  # before anything starts: a missing go-tpc names the command that installs it
    _say("go-tpc tpcc prepare: 1 warehouse")
    prep = gotpc.prepare(conn_kwargs, database=db, warehouses=1, threads=threads)
    _say(f"prepared in {prep.seconds:.0f}s; the backfill job snapshots, loads the replicas, starts the changefeed")
    backfill = build_backfill_job(config=config, snapshot_source=MariaDBSnapshotSource.from_tidb)
    run = backfill.execute_in_process(instance=instance, resources=resources, raise_on_error=False)
    if not run.success:
        _say(f"the backfill job failed (run {run.run_id})")
        return 1

    def catch_up(tick: Callable[[], None] = lambda: time.sleep(5)) -> None:
        """Until the change feed's checkpoint passes now; `tick` runs meanwhile (the automation keeps going)."""
        target = tso_from_ms(int(time.time() * 1000))
        with resources["ticdc"].get_client() as client:
            while (checkpoint := client.get_status(config.source.changefeed_id).checkpoint_ts) < target:
                _say(f"change feed checkpoint {((target - checkpoint) >> 18) / 1000:.0f}s behind the workload's stop")
                tick()


    summary_box: dict[str, Any] = {}

    def workload() -> None:
        summary_box["tpcc"] = gotpc.run(conn_kwargs, database=db, warehouses=1, threads=threads,
                                        duration_s=minutes * 60)

    sensor_def = repo.get_sensor_def(SENSOR_NAME)
    cursor: str | None = None
    jobs_run = 0
    failures: list[str] = []
    samples: list[Sample] = []
    topics = [config.topic(t) for t in config.tables]
    names = [table_names(config, t) for t in config.tables]

    def sample(t0: float) -> Sample:
        end = kafka.end_offsets(topics)
        total = merged = 0
        with snowflake.connector.connect(**connection_args(settings)) as sf:
            for n in names:
                e = end.get(n.topic, {})
                backlog = backlog_per_partition(e, read_watermarks(sf, n))
                total += sum(e.values())
                merged += sum(e.values()) - sum(backlog.values())
        with resources["ticdc"].get_client() as client:
            checkpoint = client.get_status(config.source.changefeed_id).checkpoint_ts
        lag = checkpoint_lag_s(checkpoint, int(time.time() * 1000))
        s = Sample(round(time.monotonic() - t0, 1), total, merged, total - merged, round(lag, 1), jobs_run)
        samples.append(s)
        return s

    def run_job(name: str, tags: dict[str, str] | None = None) -> None:
        nonlocal jobs_run
        result = repo.get_job(name).execute_in_process(instance=instance, resources=resources, tags=tags,
                                                       raise_on_error=False)
        jobs_run += 1
        if not result.success:
            failures.append(f"{name} at {time.strftime('%H:%M:%S')}")
            _say(f"job {name} FAILED (the next tick retries it)")

    def sensor_tick() -> None:
        nonlocal cursor
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs)
        result = sensor_def(context)
        if isinstance(result, dg.SensorResult):
            cursor = result.cursor if result.cursor is not None else cursor
            for request in result.run_requests or []:
                run_job(request.job_name or "", request.tags)

    thread = threading.Thread(target=workload, name="tpcc", daemon=True)
    sampling_done = threading.Event()

    def sampler() -> None:
        # Its own thread: a merge job can run for minutes, and the backlog must be seen meanwhile.
        while not sampling_done.wait(SAMPLE_EVERY_S):
            try:
                sample(t0)
            except Exception as exc:  # noqa: BLE001 - a missed sample is a gap in the chart, not a failure
                _say(f"sample failed: {exc}")

    t0 = time.monotonic()
    sample(t0)
    thread.start()
    threading.Thread(target=sampler, name="sampler", daemon=True).start()
    _say(f"TPC-C running for {minutes:g} min with {threads} threads; sensor every {SENSOR_EVERY_S:.0f}s, "
         f"merge schedule every {MERGE_EVERY_S:.0f}s, cleanup every {CLEANUP_EVERY_S:.0f}s")
    due = {"sensor": t0 + SENSOR_EVERY_S, "merge": t0 + MERGE_EVERY_S, "cleanup": t0 + CLEANUP_EVERY_S}
    actions: dict[str, tuple[float, Callable[[], Any]]] = {
        "sensor": (SENSOR_EVERY_S, sensor_tick),
        "merge": (MERGE_EVERY_S, lambda: [run_job(merge_job_name(g)) for g in config.groups]),
        "cleanup": (CLEANUP_EVERY_S, lambda: run_job("landing_cleanup")),
    }
    last_print = t0
    while thread.is_alive():
        now = time.monotonic()
        for name, at in sorted(due.items(), key=lambda kv: kv[1]):
            if now >= at:
                every, action = actions[name]
                action()
                due[name] = max(at + every, time.monotonic())  # a late tick is not made up, as in Dagster
        if samples and now - last_print >= 60:
            s = samples[-1]
            _say(f"t={s.t_s:.0f}s kafka={s.kafka_records:,} merged={s.merged_records:,} backlog={s.backlog:,} "
                 f"changefeed lag={s.changefeed_lag_s:.0f}s jobs={jobs_run} failures={len(failures)}")
            last_print = now
        time.sleep(0.2)
    load_stopped = time.monotonic()
    tpcc_summary = summary_box.get("tpcc")
    _say("workload stopped: " + (f"go-tpc {tpcc_summary.tpmc:,.0f} tpmC (tpmTotal {tpcc_summary.tpm_total:,.0f})"
                                 if tpcc_summary else "no summary (go-tpc failed; see above)"))

    # Convergence: the change feed catches up (the sensor keeps running merges meanwhile), then merge
    # runs until nothing is left.
    catch_up(lambda: (sensor_tick(), time.sleep(SENSOR_EVERY_S)))
    for _ in range(10):
        for g in config.groups:
            run_job(merge_job_name(g))
        if sample(t0).backlog == 0:
            break
    converge_s = time.monotonic() - load_stopped
    sampling_done.set()
    final = samples[-1]

    compared = []
    with pymysql.connect(**conn_kwargs) as src, snowflake.connector.connect(**connection_args(settings)) as sf:
        for t in config.tables:
            cmp = compare_table(src, t.db, t.table, sf, table_names(config, t).replica, t.key)
            compared.append(cmp)
    ok = all(c.equal for c in compared) and final.backlog == 0

    rates = _per_minute_rates(samples)
    summary = {
        "minutes": minutes, "threads": threads, "workload": f"go-tpc {gotpc.GO_TPC_VERSION}, 1 warehouse",
        "tpcc": None if tpcc_summary is None else {
            "tpmC": round(tpcc_summary.tpmc), "tpmTotal": round(tpcc_summary.tpm_total),
            "seconds": round(tpcc_summary.seconds, 1)},
        "change_records_on_kafka": final.kafka_records,
        "change_records_per_s_by_minute": rates,
        "max_backlog": max(s.backlog for s in samples),
        "max_changefeed_lag_s": max(s.changefeed_lag_s for s in samples),
        "backlog_at_load_stop": next((s.backlog for s in reversed(samples) if s.t_s <= load_stopped - t0), None),
        "seconds_to_converge_after_stop": round(converge_s, 1),
        "jobs_run": jobs_run, "job_failures": failures,
        "tables": [{"table": c.source, "source_rows": c.source_rows, "replica_rows": c.replica_rows,
                    "missing": c.missing, "extra": c.extra, "different": c.different} for c in compared],
        "rows_compared": sum(c.source_rows for c in compared),
        "rows_lost": sum(c.missing for c in compared),
        "all_equal": ok,
        "load_average_1_5_15": os.getloadavg(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _write(out, samples, summary)
    print(json.dumps(summary, indent=2, default=str))
    _say(f"{'every replica equals its source' if ok else 'MISMATCH'}; results in {out}")
    return 0 if ok else 1


def _per_minute_rates(samples: list[Sample]) -> list[float]:
    """Change records/s written to Kafka in each whole minute of the run."""
    rates = []
    minute = 1
    prev = samples[0] if samples else None
    for s in samples:
        if prev is not None and s.t_s >= minute * 60:
            rates.append(round((s.kafka_records - prev.kafka_records) / max(1e-9, s.t_s - prev.t_s), 1))
            prev = s
            minute += 1
    return rates


def _write(out: Path, samples: list[Sample], summary: dict[str, Any]) -> None:
    with open(out / "samples.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(samples[0])))
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # samples.csv holds the same series
    t = [s.t_s / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(t, [s.kafka_records for s in samples], label="change records on Kafka")
    top.plot(t, [s.merged_records for s in samples], label="merged into replicas")
    top.set_ylabel("records")
    top.legend()
    bottom.plot(t, [s.backlog for s in samples], color="tab:red", label="Kafka backlog (records)")
    bottom.set_ylabel("backlog (records)")
    lag_axis = bottom.twinx()
    lag_axis.plot(t, [s.changefeed_lag_s for s in samples], color="tab:gray", linestyle="--", label="change feed lag (s)")
    lag_axis.set_ylabel("change feed lag (s)")
    bottom.set_xlabel("minutes")
    fig.suptitle("TPC-C load: throughput and backlog")
    fig.tight_layout()
    fig.savefig(out / "backlog.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TPC-C at the lab's maximum with the pipeline running, then a convergence proof")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=4, help="TPC-C connections (the lab's maximum on 2 cores)")
    parser.add_argument("--root", type=Path, default=None, help="folder of the private lab (default: a tmp folder)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default <root>/results)")
    parser.add_argument("--keep", action="store_true", help="leave the private lab running afterwards")
    args = parser.parse_args(argv)
    from tidb_pipeline.lab.service import down, up

    root = args.root or Path(tempfile.mkdtemp(prefix="tidb-pipeline-load-"))
    settings, services = private_lab(root)
    _say(f"private lab under {root}")
    up(services, log=_say)
    try:
        return run_load_test(settings, minutes=args.minutes, threads=args.threads, out=args.out or root / "results")
    finally:
        if not args.keep:
            down(list(reversed(services)), log=_say)


if __name__ == "__main__":
    sys.exit(main())
