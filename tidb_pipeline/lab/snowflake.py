"""The lab's Snowflake: fakesnow's HTTP server over file-backed DuckDB databases.

One server process owns the database files; every client (tests, Dagster runs, the CLI) connects over
HTTP with the real `snowflake-connector-python`, e.g. through
`SnowflakeResource(additional_snowflake_connection_args=connection_args(settings))`.

What survives a restart, and why this module does more than `fakesnow -s`:
- fakesnow keeps each Snowflake database in `<data>/<DATABASE>.db`, but only attaches a file when a session
  names that database at login or runs `CREATE DATABASE`. A client that logs in without a database and says
  `USE DATABASE X` would not see X after a restart, so the server attaches every `*.db` file at start.
- fakesnow's own catalog (`_fs_global`: stages, file formats, column lengths, table comments) is in memory
  by default; here it lives in `<data>/_fs_global.duckdb` (not `*.db`, so it is never taken for a database).
- Internal stages (`PUT` files) go to `<data>/stages` instead of a fresh temp dir per process.

Run it as `python -m tidb_pipeline.lab.snowflake --port N --data DIR`.
"""

from __future__ import annotations

import argparse
import os
import signal
import warnings
from pathlib import Path
from typing import Any

from tidb_pipeline.lab.service import Service, python_command
from tidb_pipeline.lab.settings import LabSettings

# Without a network timeout the connector retries an HTTP 500 (fakesnow's answer to an unsupported
# statement) forever; it caps only retries, not a running statement. The socket timeout is the longest a
# single statement may run: fakesnow answers synchronously, and on a read timeout the connector re-sends
# the request, gets "connection is busy" and reports a failure while the first statement still completes.
LAB_NETWORK_TIMEOUT = 30
LAB_SOCKET_TIMEOUT = 900
# Tables a merge run lands and merges at once. The lab server runs one statement at a time (its adapter's
# lock: concurrent sessions used to fail racing creates with DuckDB write conflicts the connector retried),
# so more than 1 is safe here (`python -m tidb_pipeline.bench.production --parallel-tables N` measures it),
# but on the 2 shared cores (load 6-12) 4 showed no clear gain over 1 in paired replays (issue 18), and the
# lab tests run the one-table-after-another path. Snowflake runs 8 queries per warehouse at once, the
# production default.
LAB_PARALLEL_TABLES = 1
# Credentials fakesnow ignores but the connector insists on; not secrets.
LAB_ACCOUNT = "fakesnow"
LAB_USER = "fake"
LAB_PASSWORD = "snow"
GLOBAL_CATALOG_FILE = "_fs_global.duckdb"
MEMORY_LIMIT_ENV = "TIDB_PIPELINE_LAB_SNOWFLAKE_MEMORY_LIMIT"  # e.g. "3GB": DuckDB's memory_limit
STAGES_DIR = "stages"


def connection_args(settings: LabSettings) -> dict[str, Any]:
    """Keyword arguments for `snowflake.connector.connect` that reach the lab's server.

    `lab_env` gives the same through the SNOWFLAKE_* variables `tidb_pipeline.resources.snowflake` reads.
    """
    return {
        "host": settings.host,
        "port": settings.port("snowflake"),
        "protocol": "http",
        "account": LAB_ACCOUNT,
        "user": LAB_USER,
        "password": LAB_PASSWORD,
        "network_timeout": LAB_NETWORK_TIMEOUT,
        "socket_timeout": LAB_SOCKET_TIMEOUT,
    }


def lab_env(settings: LabSettings) -> dict[str, str]:
    """The SNOWFLAKE_* variables that point `tidb_pipeline.resources.snowflake` at the lab's server."""
    return {
        "SNOWFLAKE_ACCOUNT": LAB_ACCOUNT,
        "SNOWFLAKE_USER": LAB_USER,
        "SNOWFLAKE_PASSWORD": LAB_PASSWORD,
        "SNOWFLAKE_HOST": settings.host,
        "SNOWFLAKE_PORT": str(settings.port("snowflake")),
        "SNOWFLAKE_PROTOCOL": "http",
        "SNOWFLAKE_NETWORK_TIMEOUT": str(LAB_NETWORK_TIMEOUT),
        "SNOWFLAKE_SOCKET_TIMEOUT": str(LAB_SOCKET_TIMEOUT),
        "SNOWFLAKE_PARALLEL_TABLES": str(LAB_PARALLEL_TABLES),
    }


class SnowflakeService(Service):
    name = "snowflake"
    port_names = ("snowflake",)
    ready_timeout = 60.0

    def command(self) -> list[str]:
        return python_command(
            "tidb_pipeline.lab.snowflake",
            self.name,
            "--host",
            self.settings.host,
            "--port",
            str(self.settings.port("snowflake")),
            "--data",
            str(self.data_dir / "data"),
        )

    def address(self) -> str:
        return self.settings.snowflake_url

    def is_ready(self) -> bool:
        # A real login + query, because the HTTP port opens before fakesnow can serve sessions.
        import snowflake.connector

        args = connection_args(self.settings)
        args.update(login_timeout=5, network_timeout=5, socket_timeout=5)
        with snowflake.connector.connect(**args) as conn:
            return conn.cursor().execute("SELECT 1").fetchone() == (1,)


# --- the server process -----------------------------------------------------------------------------


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def persistent_fakesnow(data: Path) -> Any:
    """A `FakeSnow` whose databases, catalog and stages all live under `data`."""
    from fakesnow import info_schema, macros
    from fakesnow.instance import GLOBAL_DATABASE_NAME, FakeSnow
    from fakesnow.transforms import show

    data.mkdir(parents=True, exist_ok=True)
    fs = FakeSnow(db_path=data)
    duck = fs.duck_conn
    # DuckDB takes up to 80% of the machine's memory by default; on a shared machine a big lab table (the
    # retention bench's 10M landing rows) must spill to disk instead.
    if limit := os.environ.get(MEMORY_LIMIT_ENV):
        duck.execute(f"SET memory_limit = {_sql_string(limit)}")
    duck.execute(f"DETACH {GLOBAL_DATABASE_NAME}")
    duck.execute(f"ATTACH {_sql_string(str(data / GLOBAL_CATALOG_FILE))} AS {GLOBAL_DATABASE_NAME}")
    duck.execute(info_schema.fs_global_creation_sql())
    duck.execute(show.fs_global_creation_sql())
    for db_file in sorted(data.glob("*.db")):
        name = db_file.stem
        # The file name is the database name fakesnow gave it, already in Snowflake's upper case.
        duck.execute(f"ATTACH IF NOT EXISTS {_sql_string(str(db_file))} AS {_sql_ident(name)}")
        duck.execute(info_schema.per_db_creation_sql(name))
        duck.execute(macros.creation_sql(name))
    return fs


def _use_stage_dir(path: Path) -> None:
    from fakesnow.transforms import stage

    path.mkdir(parents=True, exist_ok=True)
    default = stage.LOCAL_BUCKET_PATH
    stage.LOCAL_BUCKET_PATH = str(path.resolve())
    # fakesnow made an empty temp dir at import; don't leave it behind.
    try:
        os.rmdir(default)
    except OSError:
        pass


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def serve(host: str, port: int, data: Path) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT, then flush DuckDB to disk."""
    import uvicorn

    import fakesnow.server

    from tidb_pipeline.lab import snowflake_adapter, statement_log

    # Snowflake SQL that fakesnow cannot run as sent is rewritten here, never in production code.
    snowflake_adapter.install()
    # Every statement as a client sent it, counted where Snowflake would bill it (lab/statement_log.py).
    statement_log.install(data.parent / statement_log.LOG_NAME)
    # fakesnow warns on every query that it copies an Arrow result; nothing to act on in a lab log.
    warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
    _use_stage_dir(data / STAGES_DIR)
    fs = persistent_fakesnow(data)
    # Sessions without FAKESNOW_DB_PATH (all of ours) use the server's shared instance.
    fakesnow.server.shared_fs = fs
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn that into SystemExit so `finally` runs.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.Server(uvicorn.Config(fakesnow.server.app, host=host, port=port, log_level="warning")).run()
    finally:
        # Fold each file's WAL into it so the next start opens clean files.
        duck = fs.duck_conn
        files = duck.execute("SELECT database_name FROM duckdb_databases() WHERE path IS NOT NULL").fetchall()
        for (name,) in files:
            duck.execute(f"CHECKPOINT {_sql_ident(name)}")
        duck.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fakesnow server over file-backed DuckDB (the lab's Snowflake)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder for the database files and stages")
    args, _ = parser.parse_known_args(argv)
    serve(args.host, args.port, args.data.resolve())


if __name__ == "__main__":
    main()
