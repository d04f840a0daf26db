"""`tidb-pipeline bench [--quick]`: run every figure on a private lab, print the table, write the report.

Each figure function returns its `Measure`s (value beside its same-run baseline) and raw results for the
charts, so the smoke test can run them one by one on tiny sizes.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidb_pipeline.bench.report import Measure

_REPO = Path(__file__).resolve().parents[2]
BENCH_DATABASE = "TIDB_PIPELINE_BENCH"


@dataclass(frozen=True)
class Sizes:
    landing_records: int
    merge_sizes: tuple[int, ...]
    merge_batch: int
    recipe_initial: int
    recipe_rounds: int
    recipe_changes: int
    freshness_s: float
    freshness_scale: float
    tick_s: float
    topics: int
    tables: int
    freshness_rate_tps: float | None  # TPC-C transactions/s during the freshness figure; None: flat out
    changefeed_rows: int = 50_000  # the lab change feed's sustained measure
    changefeed_rates: tuple[float, ...] = (1_000, 5_000, 10_000)  # its paced measures, row changes/s
    changefeed_s: float = 20.0
    retention_sizes: tuple[int, ...] = (100_000, 10_000_000)  # retained landing rows (issue 14)
    retention_batch: int = 30_000


# Freshness is measured at a steady TPC-C rate the lab's Python change feed sustains next to the pipeline
# (~20 tps is ~540 tpmC, ~350 row changes/s); flat out it saturates the feed, whose own lag then grows
# without bound and says nothing about the pipeline (`--freshness-rate 0` measures that too). The 5 s tick
# is Dagster's floor for a sensor (`sensor_interval_seconds`).
FULL = Sizes(1_000_000, (10_000, 100_000, 1_000_000), 10_000, 10_000, 5, 10_000, 180.0, 0.05, 5.0, 500, 500, 20.0)
QUICK = Sizes(20_000, (1_000, 10_000), 1_000, 300, 2, 300, 20.0, 0.01, 5.0, 20, 20, 10.0,
              changefeed_rows=5_000, changefeed_rates=(500,), changefeed_s=5.0,
              retention_sizes=(3_000, 30_000), retention_batch=3_000)


def profiler_available() -> bool:
    """Whether pyinstrument (optional: only the freshness profile uses it) is importable."""
    import importlib.util

    return importlib.util.find_spec("pyinstrument") is not None


# --- figures ------------------------------------------------------------------------------------------


def landing_figure(records: int) -> tuple[list[Measure], dict[str, Any]]:
    """Figure 1 through the landing loader's own bench (load_topic vs consume + decode, same readers)."""
    from tidb_pipeline.bench.landing import bench

    r = bench(records)
    return [Measure("landing throughput", f"builtin load_topic, {records:,} order_line records", r["load"],
                    "records/s", "raw consume + Avro decode", r["raw"],
                    target=">= 100k/s and >= 60% of raw", met=r["load"] >= 100_000 and r["ratio"] >= 0.6)], {}


def _bench_schema(connection: Any, prefix: str) -> Any:
    from tidb_pipeline.replication.ddl import TableRef

    schema = TableRef(f"{prefix}_{uuid.uuid4().hex[:8].upper()}", "", BENCH_DATABASE)
    cur = connection.cursor()
    cur.execute(f'CREATE DATABASE IF NOT EXISTS "{BENCH_DATABASE}"')
    cur.execute(f'CREATE SCHEMA "{BENCH_DATABASE}"."{schema.schema}"')
    return schema


def _drop_schema(connection: Any, schema: Any) -> None:
    connection.cursor().execute(f'DROP SCHEMA IF EXISTS "{BENCH_DATABASE}"."{schema.schema}" CASCADE')


def merge_figure(connection: Any, sizes: tuple[int, ...], batch: int) -> tuple[list[Measure], dict[str, Any]]:
    """Figure 2: the batch into each replica size, with and without the prune; ratio largest / smallest."""
    from tidb_pipeline.bench.merge import merge_scaling

    schema = _bench_schema(connection, "SCALING")
    try:
        points = merge_scaling(connection, schema, sizes=sizes, changes=batch)
    finally:
        _drop_schema(connection, schema)
    out = []
    small, large = min(sizes), max(sizes)
    for prune in (True, False):
        by = {p.size: p for p in points if p.prune == prune}
        label = "with key-range prune" if prune else "without prune"
        for size in sizes:
            p = by[size]
            out.append(Measure("merge scaling", f"{batch:,}-change batch into {size:,} rows, {label}", p.seconds,
                               "s", f"same batch into {small:,} rows" if size != small else "",
                               by[small].seconds if size != small else None,
                               target="ratio <= 3" if size == large else "",
                               met=(p.seconds / by[small].seconds <= 3) if size == large else None,
                               note=(f"{p.landing_rows:,} landing rows, {p.keys:,} keys: +{p.inserted:,} "
                                     f"~{p.updated:,} -{p.deleted:,}; replica built in {p.build_seconds:.1f}s"
                                     if size == large else "")))
    return out, {"scaling": points}


def recipe_figure(connection: Any, initial: int, rounds: int, changes: int) -> tuple[list[Measure], dict[str, Any]]:
    """Figure 3: our merge vs PingCAP's recipe (as published, and with deletes fixed) on the same rows."""
    from tidb_pipeline.bench.merge import recipe_comparison

    schema = _bench_schema(connection, "RECIPE")
    try:
        r = recipe_comparison(connection, schema, initial=initial, rounds=rounds, changes=changes)
    finally:
        _drop_schema(connection, schema)
    size = f"{initial:,} rows + {rounds} x {changes:,} changes"
    return [
        Measure("recipe side by side", f"recipe MERGE as published ({size})", r.recipe_seconds, "s",
                "our merge", r.ours_seconds, target="replica equals source", met=r.recipe.equal,
                note=f"recipe replica: {r.recipe.summary()}; up to {r.max_versions_per_key} versions of one key "
                     "in one batch (Snowflake raises on such a MERGE; fakesnow applies one arbitrarily)"),
        Measure("recipe side by side", "recipe MERGE with deletes fixed, still no dedup", r.fixed_seconds, "s",
                "our merge", r.ours_seconds, target="replica equals source", met=r.fixed.equal,
                note=f"replica: {r.fixed.summary()}"),
        Measure("recipe side by side", f"our merge ({size})", r.ours_seconds, "s",
                target="replica equals source", met=r.ours.equal, note=f"replica: {r.ours.summary()}"),
    ], {"recipe": r}


def freshness_figure(
    duration_s: float, scale: float, tick_s: float, profile: Path | None = None, rate_tps: float | None = None,
) -> tuple[list[Measure], dict[str, Any]]:
    from tidb_pipeline.bench.freshness import run_freshness
    from tidb_pipeline.lab.settings import LabSettings

    r = run_freshness(LabSettings(), duration_s=duration_s, scale=scale, tick_s=tick_s, profile=profile,
                      rate_tps=rate_tps)
    pace = f"paced at {rate_tps:g} transactions/s" if rate_tps else "flat out"
    ctx = (f"{r.rows:,} rows, TPC-C {r.tpmc:,.0f} tpmC ({pace}) for {r.duration_s:.0f}s, sensor tick "
           f"{r.tick_s:.0f}s, {r.runs} runs (median {r.run_seconds_median:.1f}s)")
    return [
        Measure("end-to-end freshness", "p50 commit -> merged", r.p50, "s", "sensor interval", r.tick_s, note=ctx),
        Measure("end-to-end freshness", "p95 commit -> merged", r.p95, "s", "sensor interval", r.tick_s,
                target="<= 30 s", met=r.p95 <= 30),
        Measure("end-to-end freshness", "max commit -> merged", r.max, "s", "sensor interval", r.tick_s),
        Measure("end-to-end freshness", "p95 commit -> run end (upper bound)", r.p95_run_end, "s",
                "sensor interval", r.tick_s),
        Measure("end-to-end freshness", "p95 of it in the lab change feed (commit -> Kafka)", r.feed_p95, "s",
                note=f"p50 {r.feed_p50:.1f}s, max {r.feed_max:.1f}s; whole seconds (MariaDB's binlog)"),
        Measure("end-to-end freshness", "p95 of it in the pipeline (Kafka -> merged)", r.pipeline_p95, "s",
                note=f"p50 {r.pipeline_p50:.1f}s, max {r.pipeline_max:.1f}s"),
    ], {"freshness": r}


def control_figure(topics: int, tables: int, bootstrap: str) -> tuple[list[Measure], dict[str, Any]]:
    from tidb_pipeline.bench.control import defs_load, sensor_tick

    tick = sensor_tick(bootstrap, topics)
    one, many = defs_load(1), defs_load(tables)
    return [
        Measure("sensor tick", f"{topics} topics, no new data (median)", tick.tick_median_ms / 1000, "s",
                "one list_offsets call", tick.list_offsets_ms / 1000, target="far below the 60 s timeout",
                met=tick.tick_max_ms < 10_000,
                note=f"first tick (metadata) {tick.first_tick_ms:.0f} ms; tick with 100 moved topics "
                     f"{tick.moved_tick_ms:.0f} ms; max {tick.tick_max_ms:.0f} ms"),
        Measure("definitions load", f"{tables} tables: config + build_defs + get_repository_def", many.load_s, "s",
                "1 table", one.load_s, target="<= 2 s, no network", met=many.load_s <= 2,
                note=f"imports {many.import_s:.1f}s and the whole process {many.process_s:.1f}s reported apart; "
                     f"{many.assets} assets; sockets refused in the child"),
    ], {}


def changefeed_figure(rows: int, rates: tuple[float, ...], seconds: float) -> tuple[list[Measure], dict[str, Any]]:
    """The lab change feed alone (`tidb_pipeline.bench.changefeed`): sustained rate, and p95 at fixed rates."""
    from tidb_pipeline.bench.changefeed import run as run_changefeed

    r = run_changefeed(rows, rates, seconds)
    for line in r.lines():
        print(f"[bench] change feed: {line}", flush=True)
    load = f"load average {r.load_before[0]:.1f} -> {r.load_after[0]:.1f}"
    out = []
    if r.sustained is not None:
        out.append(Measure("lab change feed", f"sustained, {r.sustained.rows:,} row changes from the binlog",
                           r.sustained.rate, "changes/s", f"MariaDB committing them ({r.sustained.txn_rows} rows/txn)",
                           r.sustained.write_rate, target=">= 10,000/s", met=r.sustained.rate >= 10_000,
                           note=load))
    for p in r.paced:
        out.append(Measure("lab change feed", f"commit -> Kafka p95 at {p.target_rate:,.0f} changes/s "
                           f"(written {p.written_rate:,.0f}/s)", p.p95, "s", target="<= 2 s",
                           met=p.p95 <= 2 and not p.missing,
                           note=f"p50 {p.p50:.2f}s, max {p.max:.2f}s; {load}"))
    return out, {"changefeed": r}


def production_figure(seconds: float, replay_seconds: float) -> tuple[list[Measure], dict[str, Any]]:
    """Freshness at production rates (`tidb_pipeline.bench.production`): go-tpc at 25/50/100% under the real
    daemon, then the pipeline alone by replay at 1k, 5k, 20k, 50k, 100k changes/s until it falls behind."""
    from tidb_pipeline.bench import production

    windows = production.run(seconds, [0.25, 0.5, 1.0], 4, [1_000, 5_000, 20_000, 50_000, 100_000], replay_seconds)
    return production.measures(windows), {"production": windows}


def retention_figure(retained: tuple[int, ...], batch: int, rounds: int = 3) -> tuple[list[Measure], dict[str, Any]]:
    """Load + merge of one batch beside few and many retained landing rows (`tidb_pipeline.bench.retention`)."""
    from tidb_pipeline.bench import report
    from tidb_pipeline.bench.retention import retention_scaling

    points = retention_scaling(retained, batch, rounds)
    base = points[0]
    out = []
    for p in points:
        largest = p is points[-1] and p is not base
        load = report.load_average()  # the machine is shared: the figure says how busy it was
        out.append(Measure(
            "cost vs retention", f"load + merge of {batch:,} records beside {p.retained:,} retained landing rows "
            f"(median of {p.rounds})", p.seconds, "s",
            f"same batch beside {base.retained:,}" if p is not base else "", base.seconds if p is not base else None,
            target="ratio <= 1.2" if largest else "", met=(p.seconds / base.seconds <= 1.2) if largest else None,
            note=(f"load {p.load_seconds:.2f}s, merge {p.merge_seconds:.2f}s; the merge through a landing scan "
                  f"(before the landed-offsets table) {p.scan_merge_seconds:.2f}s; one seeding scan "
                  f"{p.seed_scan_seconds:.2f}s; load average (1/5/15 min) {load} at the end of the figure")))
    return out, {"retention": points}


def lab_up_figure(env: dict[str, str], parts: list[str] | None) -> tuple[list[Measure], dict[str, Any]]:
    from tidb_pipeline.bench.control import lab_up

    r = lab_up(env, parts)
    return [Measure("lab up", f"`lab up` {'all parts' if not parts else ' '.join(parts)}, fresh data, warm jar cache",
                    r.seconds, "s", note=f"{r.wall_seconds:.1f}s including the CLI's interpreter start")], {}


# --- the command ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    import snowflake.connector

    from tidb_pipeline.bench import report
    from tidb_pipeline.bench.control import private_lab
    from tidb_pipeline.lab.settings import LabSettings
    from tidb_pipeline.lab.snowflake import connection_args

    sizes = QUICK if args.quick else FULL
    only = set(args.only or ["lab", "landing", "merge", "recipe", "freshness", "control", "changefeed", "retention"])
    command = "tidb-pipeline bench" + (" --quick" if args.quick else "") + \
        (f" --only {' '.join(args.only)}" if args.only else "") + \
        (f" --freshness-rate {args.freshness_rate:g}" if args.freshness_rate is not None else "")
    load_before = report.load_average()
    measures: list[Measure] = []
    extra: dict[str, Any] = {}

    def step(name: str, fn: Callable[[], tuple[list[Measure], dict[str, Any]]]) -> None:
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        got, more = fn()
        measures.extend(got)
        extra.update(more)
        print(f"[bench] {name} done in {time.perf_counter() - t0:.0f}s", flush=True)

    import os

    from tidb_pipeline.lab.snowflake import MEMORY_LIMIT_ENV

    # The private lab's DuckDB spills past 3 GB instead of taking most of a shared machine's memory.
    os.environ.setdefault(MEMORY_LIMIT_ENV, "3GB")
    with private_lab() as env:
        parts = None  # the whole lab, so later figures find every part running
        if "lab" in only:
            step("lab up", lambda: lab_up_figure(env, parts))
        if "landing" in only:
            step("landing throughput", lambda: landing_figure(sizes.landing_records))
        if only & {"merge", "recipe"}:
            from tidb_pipeline.lab import stack
            from tidb_pipeline.lab.service import up

            up(stack.services(LabSettings(), ["snowflake"]), log=lambda _m: None)
            with snowflake.connector.connect(**connection_args(LabSettings())) as conn:
                if "merge" in only:
                    step("merge scaling", lambda: merge_figure(conn, sizes.merge_sizes, sizes.merge_batch))
                if "recipe" in only:
                    step("recipe side by side", lambda: recipe_figure(
                        conn, sizes.recipe_initial, sizes.recipe_rounds, sizes.recipe_changes))
        if "freshness" in only:
            profile = None if args.no_profile else Path(args.charts_dir) / "profile_freshness_run.txt"
            if profile is not None and not profiler_available():
                # Optional: the figure itself needs no profiler, and no install extra provides one.
                print("bench: pyinstrument is not installed, so no freshness-run profile is written "
                      "(pip install pyinstrument to get one, or pass --no-profile)", flush=True)
                profile = None
            rate = sizes.freshness_rate_tps if args.freshness_rate is None else (args.freshness_rate or None)
            step("end-to-end freshness", lambda: freshness_figure(sizes.freshness_s, sizes.freshness_scale,
                                                                  sizes.tick_s, profile, rate))
        if "changefeed" in only:
            from tidb_pipeline.lab import stack
            from tidb_pipeline.lab.service import up

            up(stack.services(LabSettings(), ["ticdc"]), log=lambda _m: None)
            step("lab change feed", lambda: changefeed_figure(sizes.changefeed_rows, sizes.changefeed_rates,
                                                               sizes.changefeed_s))
        if "production" in only:  # only when asked: about 15 minutes, and it uses this checkout's lab
            step("freshness at production rates", lambda: production_figure(120.0, 60.0))
        if "retention" in only:
            step("cost vs retention", lambda: retention_figure(sizes.retention_sizes, sizes.retention_batch))
        if "control" in only:
            from tidb_pipeline.lab import stack
            from tidb_pipeline.lab.service import up

            up(stack.services(LabSettings(), ["kafka"]), log=lambda _m: None)
            step("control plane", lambda: control_figure(sizes.topics, sizes.tables, LabSettings().kafka_bootstrap))

    print()
    print(report.text_table(measures))
    facts = report.machine(load_before)
    print(f"\n{facts.cpus} CPUs ({facts.cpu_model}), {facts.memory_gib} GiB; load {facts.load_before} -> "
          f"{facts.load_after}; {facts.date}")
    output = Path(args.output) if args.output else (None if args.quick else _REPO / "BENCHMARKS.md")
    if output is not None:
        charts = [] if args.no_charts else report.charts(measures, Path(args.charts_dir), extra)
        details = []
        if (scaling := extra.get("scaling")) is not None:
            details += [f"- merge scaling, {p.size:,} rows, {'prune' if p.prune else 'no prune'}: {p.seconds:.2f}s "
                        f"(+{p.inserted:,} ~{p.updated:,} -{p.deleted:,}, {p.keys:,} keys from {p.landing_rows:,} rows)"
                        for p in scaling]
        if (points := extra.get("retention")) is not None:
            details += [f"- retention {p.retained:,}: load {p.load_seconds:.2f}s, merge {p.merge_seconds:.2f}s, "
                        f"merge through the landing scan {p.scan_merge_seconds:.2f}s, seeding scan "
                        f"{p.seed_scan_seconds:.2f}s, setup {p.fill_seconds:.0f}s" for p in points]
        if (r := extra.get("recipe")) is not None:
            details += [f"- recipe run {i + 1}: ours {a:.2f}s, recipe {b:.2f}s, recipe with deletes fixed {c:.2f}s"
                        for i, (a, b, c) in enumerate(r.per_round)]
        section = report.generated_section(measures, facts, command, charts, details, output.parent)
        report.write_markdown(output, section)
        print(f"wrote {output}" + (f" and {len(charts)} charts under {args.charts_dir}" if charts else ""))
    return 0


def register(subparsers: Any) -> None:
    """Add `bench` to the `tidb-pipeline` command."""
    p = subparsers.add_parser("bench", help="measure throughput, merge scaling, the recipe, freshness, control plane")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run; minutes, not tens of minutes)")
    p.add_argument("--only", nargs="+",
                   choices=["lab", "landing", "merge", "recipe", "freshness", "control", "changefeed", "production",
                            "retention"],
                   help="run only these figures")
    p.add_argument("--output", help="markdown file to write (default: BENCHMARKS.md for a full run, none for --quick)")
    p.add_argument("--charts-dir", default=str(_REPO / "benchmarks"), help="folder for the PNG charts")
    p.add_argument("--no-charts", action="store_true", help="skip the charts (no matplotlib needed)")
    p.add_argument("--no-profile", action="store_true", help="do not profile a freshness run with pyinstrument")
    p.add_argument("--freshness-rate", type=float, metavar="TPS",
                   help="TPC-C transactions/s during the freshness figure (default 20; 0 runs flat out)")
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidb-pipeline")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
