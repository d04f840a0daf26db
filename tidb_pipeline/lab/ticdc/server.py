"""The lab change feed as a process: TiCDC's OpenAPI v2 subset plus one binlog capture per changefeed.

    python -m tidb_pipeline.lab.ticdc.server --port 8300 --data .lab/ticdc \\
        --mysql-host 127.0.0.1 --mysql-port 13306 --mysql-user tidb_pipeline --mysql-password-env NAME

The MySQL password is read from the environment variable NAME, never from argv (argv is visible to every
user in `ps`). Changefeeds live in `<data>/changefeeds.sqlite`, so they survive restarts; SIGTERM stops
the HTTP server, then the captures, then closes the store.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from tidb_pipeline.lab.service import Service, python_command
from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER
from tidb_pipeline.lab.ticdc.api import Response, TiCDCApi, http_registry_probe, mysql_table_lister
from tidb_pipeline.lab.ticdc.capture import CaptureManager
from tidb_pipeline.lab.ticdc.store import ChangefeedStore

PASSWORD_ENV = "TIDB_PIPELINE_LAB_TICDC_MYSQL_PASSWORD"
STORE_FILE = "changefeeds.sqlite"


def _make_handler(api: TiCDCApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tidb-pipeline-lab-ticdc"
        # Headers and body go out in two writes; with Nagle on, keep-alive clients wait ~40 ms per request.
        disable_nagle_algorithm = True

        def _send(self, response: Response) -> None:
            if isinstance(response.body, str):
                data, ctype = response.body.encode(), "text/plain"
            elif response.status >= 400:
                # gin answers errors with IndentedJSON and successes with compact JSON.
                data, ctype = json.dumps(response.body, indent=4).encode(), "application/json; charset=utf-8"
            else:
                data = json.dumps(response.body, separators=(",", ":")).encode()
                ctype = "application/json; charset=utf-8"
            self.send_response(response.status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self) -> None:
            url = urlsplit(self.path)
            query = dict(parse_qsl(url.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                response = api.handle(self.command, url.path, query, body)
            except Exception as exc:  # noqa: BLE001 - answer 500 like TiCDC and keep serving
                self.log_error("internal error on %s %s: %r", self.command, url.path, exc)
                response = Response(500, {"error_msg": f"internal error: {type(exc).__name__}", "error_code": ""})
            self._send(response)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            # One line per request on stdout (the lab's log file); the query string may carry nothing secret.
            sys.stdout.write(f"{self.address_string()} {format % args}\n")
            sys.stdout.flush()

    return Handler


def serve(host: str, port: int, data: Path, conn_kwargs: Mapping[str, Any], time_zone: str = "UTC") -> None:
    """Run until SIGTERM/SIGINT."""
    data.mkdir(parents=True, exist_ok=True)
    store = ChangefeedStore(data / STORE_FILE)
    api = TiCDCApi(store, list_tables=mysql_table_lister(conn_kwargs), probe_registry=http_registry_probe)
    server = ThreadingHTTPServer((host, port), _make_handler(api))
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever(), which runs in this very thread: call it from another.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    capture = CaptureManager(store, dict(conn_kwargs), addr=f"{host}:{port}", time_zone=time_zone)
    capture.start()
    print(f"lab ticdc listening on http://{host}:{port}, changefeeds in {data / STORE_FILE}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        capture.stop()
        store.close()
        print("lab ticdc stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The lab's TiCDC stand-in (OpenAPI v2 + binlog capture)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder for the changefeed store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mysql-host", default="127.0.0.1")
    parser.add_argument("--mysql-port", type=int, default=3306)
    parser.add_argument("--mysql-user", default="root")
    parser.add_argument(
        "--mysql-password-env", default=PASSWORD_ENV, metavar="NAME", help="environment variable holding the password"
    )
    # Like `cdc server --tz`: the zone TIMESTAMP values are rendered in (TiCDC has no per-changefeed setting).
    parser.add_argument("--tz", default="UTC", help="time zone for TIMESTAMP values (IANA name, UTC or System)")
    # The lab appends a marker argument (--tidb-pipeline-lab=ticdc); ignore it and anything else.
    args, _ = parser.parse_known_args(argv)
    conn_kwargs = {
        "host": args.mysql_host,
        "port": args.mysql_port,
        "user": args.mysql_user,
        "password": os.environ.get(args.mysql_password_env, ""),
        "charset": "utf8mb4",
    }
    serve(args.host, args.port, args.data, conn_kwargs, time_zone=args.tz)


class TiCDCService(Service):
    """The lab change feed as a lab part, reading the lab's MariaDB."""

    name = "ticdc"
    port_names = ("ticdc",)
    depends_on = ("kafka", "mariadb", "registry")
    ready_timeout = 30.0

    def command(self) -> list[str]:
        s = self.settings
        return python_command(
            "tidb_pipeline.lab.ticdc.server",
            self.name,
            "--port", str(s.port("ticdc")),
            "--data", str(self.data_dir),
            "--host", s.host,
            "--mysql-host", s.host,
            "--mysql-port", str(s.port("mariadb")),
            "--mysql-user", LAB_DB_USER,
            "--mysql-password-env", PASSWORD_ENV,
        )  # fmt: skip

    def env(self) -> dict[str, str]:
        return {PASSWORD_ENV: LAB_DB_PASSWORD}

    def is_ready(self) -> bool:
        response = httpx.get(f"{self.address()}/api/v2/health", timeout=1.0)
        return response.status_code == 200 and response.json() == {}

    def address(self) -> str:
        return self.settings.ticdc_url


if __name__ == "__main__":
    main(sys.argv[1:])
