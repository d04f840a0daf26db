"""`tidb-pipeline workload prepare|run|types`: the TPC-C workload and the type-coverage table.

Connection flags default to `TIDB_HOST`, `TIDB_PORT`, `TIDB_USER`, `TIDB_PASSWORD` (the password is
only ever read from the flag or the environment and never printed).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'30s', '2m', '1h', '500ms' or bare seconds → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"duration {text!r} not understood; write e.g. 30s, 2m or 1h")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return seconds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection (defaults from TIDB_HOST, TIDB_PORT, TIDB_USER, TIDB_PASSWORD)")
    g.add_argument("--host", default=None, help="server host (default $TIDB_HOST or 127.0.0.1)")
    g.add_argument("--port", type=int, default=None, help="server port (default $TIDB_PORT or 4000)")
    g.add_argument("--user", default=None, help="user (default $TIDB_USER or root)")
    g.add_argument("--password", default=None, help="password (default $TIDB_PASSWORD; prefer the variable)")


def connection_kwargs(args: argparse.Namespace, env: dict[str, str] | None = None) -> dict[str, Any]:
    """PyMySQL connect arguments from flags, falling back to the TIDB_* variables."""
    env = dict(os.environ) if env is None else env
    port_text = args.port if args.port is not None else env.get("TIDB_PORT", "4000")
    try:
        port = int(port_text)
    except ValueError:
        raise SystemExit(f"error: TIDB_PORT={port_text!r} is not a port number; set it to an integer") from None
    return {
        "host": args.host or env.get("TIDB_HOST", "127.0.0.1"),
        "port": port,
        "user": args.user or env.get("TIDB_USER", "root"),
        "password": args.password if args.password is not None else env.get("TIDB_PASSWORD", ""),
    }


def _where(kw: dict[str, Any]) -> str:
    return f"{kw['user']}@{kw['host']}:{kw['port']}"


def _prepare(args: argparse.Namespace) -> int:
    from tidb_pipeline.workload import schema, tpcc

    kw = connection_kwargs(args)
    print(f"preparing TPC-C in {args.database!r} on {_where(kw)}: {args.warehouses} warehouse(s), scale {args.scale}",
          file=sys.stderr)
    result = tpcc.prepare(kw, database=args.database, warehouses=args.warehouses, scale=args.scale,
                          seed=args.seed, workers=args.workers, progress=sys.stderr)
    for table in schema.TABLES:
        print(f"{table:<12}{result.rows[table]:>12,}")
    print(f"loaded {result.total_rows:,} rows in {result.seconds:.1f}s ({result.rows_per_second:,.0f} rows/s)")
    ineligible = ", ".join(sorted(schema.INELIGIBLE_FOR_CDC))
    print(f"note: {ineligible} has no primary or unique key (as in go-tpc); TiCDC will not replicate it")
    return 0


def _run(args: argparse.Namespace) -> int:
    from tidb_pipeline.workload import tpcc

    kw = connection_kwargs(args)
    print(f"running TPC-C on {args.database!r} at {_where(kw)} for {args.duration:.0f}s with {args.threads} threads",
          file=sys.stderr)
    summary = tpcc.run(kw, database=args.database, warehouses=args.warehouses, duration_s=args.duration,
                       threads=args.threads, seed=args.seed, progress=sys.stderr, report_every_s=args.report_every)
    return 1 if summary.completed == 0 else 0


def _check(args: argparse.Namespace) -> int:
    import pymysql

    from tidb_pipeline.workload import tpcc

    kw = connection_kwargs(args)
    with pymysql.connect(database=args.database, **kw) as conn:
        found = tpcc.check_consistency(conn)
    bad = 0
    for name, rows in found.items():
        print(f"{'ok  ' if not rows else 'FAIL'} {name}" + (f": {rows[:5]}" if rows else ""))
        bad += bool(rows)
    return 1 if bad else 0


def _types(args: argparse.Namespace) -> int:
    import pymysql

    from tidb_pipeline.workload import types_table

    kw = connection_kwargs(args)
    with pymysql.connect(charset="utf8mb4", **kw) as conn:
        types_table.create_types_table(conn, args.database)
        if args.action == "insert":
            ids = types_table.insert_types_rows(conn, args.database)
            print(f"inserted rows {ids} into {args.database}.{types_table.TABLE}")
        elif args.action == "update":
            print(f"updated {types_table.update_types_rows(conn, args.database)} rows")
        elif args.action == "delete":
            ids = [int(r["id"]) for r in types_table.ROWS]
            print(f"deleted {types_table.delete_types_rows(conn, ids, args.database)} rows")
        else:
            print(f"created {args.database}.{types_table.TABLE}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `workload prepare|run|check|types` to the top-level CLI."""
    workload = subparsers.add_parser("workload", help="TPC-C (go-tpc schema) and type-coverage workloads")
    sub = workload.add_subparsers(dest="workload_command", required=True)

    prepare = sub.add_parser("prepare", help="create go-tpc's TPC-C tables and load them")
    prepare.add_argument("--warehouses", type=_positive_int, default=1)
    prepare.add_argument("--scale", type=float, default=1.0,
                         help="non-standard: shrink items, stock and customers per district by this factor (0-1]")
    prepare.add_argument("--database", default="tpcc")
    prepare.add_argument("--seed", type=int, default=1)
    prepare.add_argument("--workers", type=_positive_int, default=2, help="loading connections")
    _add_connection_flags(prepare)
    prepare.set_defaults(func=_prepare)

    run = sub.add_parser("run", help="run the TPC-C transaction mix and print a tpmC summary")
    run.add_argument("--duration", type=parse_duration, default=60.0, help="e.g. 30s, 2m (default 60s)")
    run.add_argument("--threads", type=_positive_int, default=4)
    run.add_argument("--warehouses", type=_positive_int, default=None, help="default: all prepared warehouses")
    run.add_argument("--database", default="tpcc")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--report-every", type=parse_duration, default=10.0, help="progress line interval")
    _add_connection_flags(run)
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="verify TPC-C consistency conditions (clause 3.3.2)")
    check.add_argument("--database", default="tpcc")
    _add_connection_flags(check)
    check.set_defaults(func=_check)

    types = sub.add_parser("types", help="create and change the type-coverage table")
    types.add_argument("action", choices=["create", "insert", "update", "delete"])
    types.add_argument("--database", default="lab_types")
    _add_connection_flags(types)
    types.set_defaults(func=_types)
