"""Figure 4: end-to-end freshness under TPC-C, with sensor-triggered landing + merge runs, on the lab.

Commit in MariaDB (the TiDB stand-in) -> lab change feed -> Kafka -> builtin landing -> MERGE -> visible in
the replica. The loop plays the Dagster daemon in-process: every `tick_s` seconds (the offsets sensor's
minimum interval) it evaluates the offsets sensor's logic (`defs.sensors.evaluate`, one `list_offsets`
call) and runs each run request's asset selection with `dg.materialize` (the merge job's landing and
replica assets, the code a real run executes). Runs are sequential with ticks; the daemon would overlap
them, so this is, if anything, pessimistic.

A row's latency is measured from `_tidb_commit_physical_time` (the source commit, carried in every landing
row) to the merge that applied it: after each run the watermark table is read, and a landing row belongs to
the first merge whose new watermark covers its offset. Two clocks for that merge: `MERGED_AT` (written by
the merge, taken as it starts) and the end of the run (after its commit, an upper bound on visibility).
Deletes carry no commit time (tombstones are `{}`) and are left out.

The latency is split at Kafka: the record's `CreateTime` (stamped by the change feed's producer) minus the
commit time is the feed's share (commit -> Kafka: the lab's Python change feed, not this pipeline); merged
minus `CreateTime` is the pipeline's (sensor tick + landing + merge). Commit times come from MariaDB's
binlog, in whole seconds, so every figure reads up to 1 s high.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidb_pipeline.lab.settings import LabSettings

BENCH_DATABASE = "TIDB_PIPELINE_BENCH"
# Runs log only warnings: a step's INFO lines would bury the benchmark's own output.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class MergeStep:
    """One merge of one replica partition: landing offsets (after, through], when it ran."""

    replica: str
    partition: int
    after: int
    through: int
    merged_at: float  # epoch seconds, the watermark's MERGED_AT
    run_end: float  # epoch seconds, when the run that merged it returned


@dataclass(frozen=True)
class FreshnessResult:
    rows: int  # landing rows (not deletes) committed during the workload and measured
    p50: float
    p95: float
    max: float
    p50_run_end: float
    p95_run_end: float
    max_run_end: float
    runs: int
    ticks: int
    run_seconds_median: float
    tpmc: float
    duration_s: float
    tick_s: float
    latencies: tuple[float, ...] = ()
    feed_p50: float = 0.0  # commit -> Kafka CreateTime
    feed_p95: float = 0.0
    feed_max: float = 0.0
    pipeline_p50: float = 0.0  # Kafka CreateTime -> merged
    pipeline_p95: float = 0.0
    pipeline_max: float = 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def steps_between(before: dict[tuple[str, int], int], after: dict[tuple[str, int], tuple[int, float]],
                  run_end: float) -> list[MergeStep]:
    """The merges a run made, from the watermark table before and after it (pure)."""
    return [MergeStep(label, p, before.get((label, p), -1), offset, merged_at, run_end)
            for (label, p), (offset, merged_at) in sorted(after.items()) if offset > before.get((label, p), -1)]


def assign(steps: list[MergeStep], replica: str, partition: int, offset: int) -> MergeStep | None:
    """The merge that applied landing row (partition, offset) of `replica` (pure)."""
    for s in steps:
        if s.replica == replica and s.partition == partition and s.after < offset <= s.through:
            return s
    return None


def run_freshness(
    settings: LabSettings, *, duration_s: float, scale: float, threads: int = 2, tick_s: float = 15.0,
    log: Callable[[str], None] = print, profile: Path | None = None, rate_tps: float | None = None,
) -> FreshnessResult:
    """Figure 4 (see the module docstring); `profile` writes a pyinstrument text profile of the first measured run."""
    import dagster as dg
    import pymysql
    import snowflake.connector

    from tidb_pipeline.config import parse_config
    from tidb_pipeline.defs import build_defs
    from tidb_pipeline.defs.sensors import evaluate
    from tidb_pipeline.defs.tables import changefeed_key, table_names
    from tidb_pipeline.lab import stack
    from tidb_pipeline.lab.env import applied, pipeline_env
    from tidb_pipeline.lab.service import down, up
    from tidb_pipeline.lab.snowflake import connection_args
    from tidb_pipeline.replication.ticdc_schema import tso_from_ms
    from tidb_pipeline.resources.kafka import KafkaResource
    from tidb_pipeline.workload import tpcc
    from tidb_pipeline.workload.schema import CDC_KEYS

    needed = stack.services(settings, ["mariadb", "kafka", "registry", "snowflake", "ticdc"])
    fresh = [s for s in needed if s.pid() is None]
    up(needed, log=log)
    suffix = uuid.uuid4().hex[:6]
    db, tag = f"bench_fresh_{suffix}", suffix.upper()
    config = parse_config({
        "source": {"changefeed_id": f"bench-fresh-{suffix}"},
        "snowflake": {"database": BENCH_DATABASE, "landing_schema": f"LANDING_{tag}",
                      "replica_schema": f"REPLICA_{tag}", "control_schema": f"PIPELINE_{tag}"},
        "tables": [{"db": db, "table": t, "key": list(k)} for t, k in CDC_KEYS.items()],
    })
    environment = contextlib.ExitStack()
    environment.enter_context(applied(pipeline_env(settings)))
    mariadb = next(s for s in needed if s.name == "mariadb")
    conn_kwargs = mariadb.connect_kwargs()  # type: ignore[attr-defined]
    defs = build_defs(config=config)
    resources = defs.resources or {}
    instance = dg.DagsterInstance.ephemeral()
    assets = [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.AssetSpec))]
    admin = KafkaResource(bootstrap_servers=settings.kafka_bootstrap).admin()
    watermarks = table_names(config, config.tables[0]).watermarks
    sf = snowflake.connector.connect(**connection_args(settings))
    sf.cursor().execute(f'CREATE DATABASE IF NOT EXISTS "{BENCH_DATABASE}"')

    def materialize(keys: list[dg.AssetKey]) -> None:
        result = dg.materialize(assets, selection=keys, resources=resources, instance=instance,
                                raise_on_error=True, run_config=_QUIET)
        if not result.success:
            raise RuntimeError(f"merge run for {len(keys)} assets failed")

    def read_watermarks() -> dict[tuple[str, int], tuple[int, float]]:
        cur = sf.cursor()
        try:
            cur.execute(f'SELECT "REPLICA_TABLE", "PARTITION", "MERGED_OFFSET", "MERGED_AT" FROM {watermarks.sql}')
        except Exception:  # noqa: BLE001 - the table appears with the first merge
            return {}
        return {(r[0], int(r[1])): (int(r[2]), r[3].replace(tzinfo=dt.timezone.utc).timestamp())
                for r in cur.fetchall()}

    cursor_text: str | None = None
    measuring = False
    profiled = profile is None
    steps: list[MergeStep] = []
    run_seconds: list[float] = []
    ticks = 0

    def tick() -> int:
        nonlocal cursor_text, ticks, profiled
        result, _ = evaluate(config, admin, cursor_text, budget_s=40, request_timeout_s=30,
                             metadata_max_age_s=300, chunk_partitions=10_000, log=log)
        ticks += 1
        cursor_text = result.cursor
        for request in result.run_requests or []:
            before = {k: v[0] for k, v in read_watermarks().items()}
            t0 = time.time()
            if measuring and not profiled and profile is not None:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.002)
                with profiler:
                    materialize(list(request.asset_selection or []))
                profile.parent.mkdir(parents=True, exist_ok=True)
                profile.write_text(profiler.output_text(unicode=False, color=False))
                profiled = True
            else:
                materialize(list(request.asset_selection or []))
            run_seconds.append(time.time() - t0)
            if measuring:
                log(f"freshness: run of {len(request.asset_selection or [])} assets took {run_seconds[-1]:.1f}s")
            steps.extend(steps_between(before, read_watermarks(), time.time()))
        return len(result.run_requests or [])

    def wait_checkpoint(target_ms: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        with resources["ticdc"].get_client() as client:
            while client.get_status(config.source.changefeed_id).checkpoint_ts < tso_from_ms(target_ms):
                if time.monotonic() > deadline:
                    raise TimeoutError("the lab change feed did not catch up within 600 s")
                time.sleep(0.5)

    try:
        result = dg.materialize([a for a in defs.assets if isinstance(a, dg.AssetsDefinition)
                                 and changefeed_key(config) in a.keys], resources=resources, instance=instance,
                                run_config=_QUIET)
        if not result.success:
            raise RuntimeError("could not create the benchmark's changefeed")
        log(f"freshness: TPC-C prepare (1 warehouse, scale {scale}) into {db}")
        tpcc.prepare(conn_kwargs, database=db, warehouses=1, scale=scale)
        wait_checkpoint(int(time.time() * 1000))
        while tick():  # land and merge the initial load before measuring
            pass
        log(f"freshness: initial load merged; TPC-C for {duration_s:.0f}s, sensor tick every {tick_s:.0f}s")
        summary: list[Any] = []
        worker = threading.Thread(target=lambda: summary.append(
            tpcc.run(conn_kwargs, database=db, duration_s=duration_s, threads=threads, seed=11,
                     rate_tps=rate_tps)))
        start = time.time()
        measuring = True
        worker.start()
        while worker.is_alive():
            t0 = time.monotonic()
            tick()
            worker.join(timeout=max(0.0, tick_s - (time.monotonic() - t0)))
        end = time.time()
        wait_checkpoint(int(end * 1000))
        for _ in range(20):  # drain: until a tick finds nothing new
            t0 = time.monotonic()
            if not tick():
                break
            time.sleep(max(0.0, tick_s - (time.monotonic() - t0)))
        latencies, latencies_end, feed, pipeline = [], [], [], []
        cur = sf.cursor()
        for t in config.tables:
            names = table_names(config, t)
            cur.execute(
                f'SELECT "RECORD_METADATA":"partition"::int, "RECORD_METADATA":"offset"::int, '
                f'"RECORD_CONTENT":"_tidb_commit_physical_time"::int, "RECORD_METADATA":"CreateTime"::int '
                f'FROM {names.landing.sql} '
                f'WHERE "RECORD_CONTENT":"_tidb_commit_physical_time"::int BETWEEN %s AND %s',
                (int(start * 1000), int(end * 1000)),
            )
            for p, offset, commit_ms, created_ms in cur.fetchall():
                step = assign(steps, names.replica.label, int(p), int(offset))
                if step is None:
                    raise RuntimeError(f"landing row {names.landing.label} p{p} o{offset} was never merged")
                latencies.append(step.merged_at - commit_ms / 1000)
                latencies_end.append(step.run_end - commit_ms / 1000)
                if created_ms is not None:
                    feed.append((created_ms - commit_ms) / 1000)
                    pipeline.append(step.merged_at - created_ms / 1000)
        if not latencies:
            raise RuntimeError("no landing rows committed during the workload; nothing to measure")
        result = FreshnessResult(
            rows=len(latencies), p50=percentile(latencies, 50), p95=percentile(latencies, 95), max=max(latencies),
            p50_run_end=percentile(latencies_end, 50), p95_run_end=percentile(latencies_end, 95),
            max_run_end=max(latencies_end), runs=len(run_seconds), ticks=ticks,
            run_seconds_median=statistics.median(run_seconds) if run_seconds else 0.0,
            tpmc=summary[0].tpmc if summary else 0.0, duration_s=duration_s, tick_s=tick_s,
            latencies=tuple(latencies),
            feed_p50=percentile(feed, 50) if feed else 0.0, feed_p95=percentile(feed, 95) if feed else 0.0,
            feed_max=max(feed, default=0.0), pipeline_p50=percentile(pipeline, 50) if pipeline else 0.0,
            pipeline_p95=percentile(pipeline, 95) if pipeline else 0.0, pipeline_max=max(pipeline, default=0.0),
        )
        log(f"freshness: commit -> merged p50/p95/max {result.p50:.1f}/{result.p95:.1f}/{result.max:.1f}s = "
            f"feed (commit -> Kafka) {result.feed_p50:.1f}/{result.feed_p95:.1f}/{result.feed_max:.1f}s + pipeline "
            f"(Kafka -> merged) {result.pipeline_p50:.1f}/{result.pipeline_p95:.1f}/{result.pipeline_max:.1f}s; "
            f"{result.runs} runs, median {result.run_seconds_median:.1f}s")
        return result
    finally:
        try:
            with resources["ticdc"].get_client() as client:
                client.delete(config.source.changefeed_id)
        except Exception as exc:  # noqa: BLE001 - cleanup only
            log(f"freshness: could not delete changefeed {config.source.changefeed_id}: {exc}")
        with pymysql.connect(autocommit=True, **conn_kwargs) as conn, conn.cursor() as c:
            c.execute(f"DROP DATABASE IF EXISTS `{db}`")
        cur = sf.cursor()
        for schema in (config.snowflake.landing_schema, config.snowflake.replica_schema,
                       config.snowflake.control_schema):
            cur.execute(f'DROP SCHEMA IF EXISTS "{BENCH_DATABASE}"."{schema}" CASCADE')
        sf.close()
        environment.close()
        down(list(reversed(fresh)), log=log)
