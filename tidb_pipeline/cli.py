"""`tidb-pipeline`: the lab, the workload, discovery, the demo and the benchmarks."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence

from tidb_pipeline.lab.settings import LabSettings


def _lab(args: argparse.Namespace) -> int:
    from tidb_pipeline.lab import stack
    from tidb_pipeline.lab.service import LabError, down, up

    settings = LabSettings()
    names = args.only or None
    try:
        parts = stack.services(settings, names)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "up":
        _require_lab_extra(p.name for p in parts)
        started = time.monotonic()
        try:
            up(parts)
        except LabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"all ready in {time.monotonic() - started:.1f}s (data under {settings.root})")
    elif args.action == "down":
        down(parts)
    elif args.action == "env":
        from tidb_pipeline.lab.env import pipeline_env

        for key, value in pipeline_env(settings).items():
            print(f"{key}={value}")
    else:
        width = max(len(p.name) for p in parts)
        for status in (p.status() for p in parts):
            state = "ready" if status.ready else ("starting" if status.running else "stopped")
            pid = f"pid {status.pid}" if status.pid else ""
            print(f"{status.name:<{width}}  {state:<8}  {status.address:<40}  {pid}")
    return 0


# The module each lab part's process or readiness check imports, from the [lab] extra.
_LAB_PART_NEEDS = {"snowflake": "fakesnow", "ticdc": "pymysqlreplication", "postgres": "pg8000"}


def _require_lab_extra(parts: Iterable[str]) -> None:
    """Raise ModuleNotFoundError before starting anything when a part's module is not installed (`main`
    turns it into "install the [lab] extra")."""
    import importlib.util

    for part in parts:
        module = _LAB_PART_NEEDS.get(part)
        if module and importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def _discover(args: argparse.Namespace) -> int:
    from pathlib import Path

    import dagster as dg
    import pymysql

    from tidb_pipeline.config import ConfigError, dump_tables, load_config, parse_config
    from tidb_pipeline.defs.resources import tidb_resource
    from tidb_pipeline.discover import DiscoverError, discover_tables

    path = Path(args.output)
    try:
        existing = load_config(path) if path.exists() else parse_config({})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        # Outside a run nothing resolves the resource's dg.EnvVar (TIDB_PASSWORD): do it here, as a run would.
        tidb = tidb_resource().process_config_and_initialize()
    except dg.DagsterInvalidConfigError as exc:
        print(f"error: the tidb settings are invalid: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        tables, skipped = discover_tables(tidb, args.database, include=args.include, existing=existing)
    except DiscoverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except pymysql.MySQLError as exc:
        # One line naming where and as whom (never the password); the driver's reason is enough, no traceback.
        reason = exc.args[1] if len(exc.args) > 1 else str(exc)
        print(f"error: cannot read TiDB at {tidb.host}:{tidb.port} as user {tidb.user!r}: {reason}; "
              "check TIDB_HOST, TIDB_PORT, TIDB_USER and TIDB_PASSWORD", file=sys.stderr)
        return 1
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    path.write_text(dump_tables(existing, tables))
    print(f"wrote {len(tables)} tables to {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tidb_pipeline.lab.demo import run_demo

    return run_demo(LabSettings(), duration_s=args.duration, threads=args.threads, fresh=not args.keep_data,
                    warehouses=args.warehouses)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidb-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    lab = sub.add_parser("lab", help="start, stop or inspect the local lab (Kafka, MariaDB, registry, Snowflake stand-in, TiCDC stand-in)")
    lab.add_argument("action", choices=["up", "down", "status", "env"],
                     help="env prints the environment variables that point the pipeline at the lab")
    lab.add_argument("--only", nargs="+", metavar="PART", help="only these parts (and what they depend on)")
    lab.set_defaults(func=_lab)

    discover = sub.add_parser("discover", help="write the table list from TiDB's information_schema")
    discover.add_argument("--database", "-d", action="append", required=True, help="TiDB database (repeatable)")
    discover.add_argument("--include", default="*", help="table name pattern (fnmatch), default *")
    discover.add_argument("--output", "-o", default="tidb_pipeline.yaml", help="config file to write")
    discover.set_defaults(func=_discover)

    demo = sub.add_parser("demo", help="run the main job end to end on the lab and print what it did")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds of go-tpc tpcc run (default 30)")
    demo.add_argument("--threads", type=int, default=4, help="go-tpc threads (default 4)")
    demo.add_argument("--warehouses", type=int, default=1, help="go-tpc warehouses (default 1, ~600k rows)")
    demo.add_argument("--keep-data", action="store_true", help="do not reset the lab's data first")
    demo.set_defaults(func=_demo)

    from tidb_pipeline.workload.cli import register as register_workload

    register_workload(sub)
    from tidb_pipeline.bench.cli import register as register_bench
    register_bench(sub)
    return parser


# Top-level modules of the packages that only an extra installs (pyproject.toml), by extra.
_EXTRA_OF = {"fakesnow": "lab", "pymysqlreplication": "lab", "pandas": "lab", "pg8000": "lab", "matplotlib": "lab",
             "dagster_webserver": "dev"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: `tidb-pipeline {args.command}` needs {exc.name}, which only the [{extra}] extra installs: "
              f"pip install 'tidb_pipeline[{extra}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
