"""PostgreSQL from Debian's packages, standing in for SQL Server behind the built-in SQL applier.

A private cluster (`initdb`) under the lab folder, listening on 127.0.0.1 only, with its Unix socket in
the lab folder too (so it never collides with a system cluster's /var/run/postgresql). The lab user is a
superuser with a password checked by SCRAM over TCP, the way the applier will log in to SQL Server; the
lab database `tidb_replica` is created once, in single-user mode, right after `initdb`.

PostgreSQL refuses to run as root. When the lab runs as root (CI containers), the server and `initdb` run
as the Debian package's `postgres` system user through `setpriv`, which execs (so the lab's pid file and
marker check see the server itself, not a wrapper). Test folders under a root-only path (pytest's
`/tmp/pytest-of-root` is 0700) are not searchable by that user; rather than loosen their permissions, the
server keeps one ambient capability that only bypasses directory search/read checks (CAP_DAC_READ_SEARCH,
or CAP_DAC_OVERRIDE where a container's bounding set lacks it). The cluster files themselves belong to the
server's user, as PostgreSQL requires.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from tidb_pipeline.lab.service import LabError, Service, marker
from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER

LAB_DATABASE = "tidb_replica"
SERVER_USER = "postgres"  # created by Debian's postgresql-common

_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


def postgres_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (Debian keeps them out of PATH, per major version)."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0, reverse=True)
    found = shutil.which(name)
    for candidate in [*candidates, *([found] if found else [])]:
        if os.access(candidate, os.X_OK):
            return candidate
    raise LabError(f"PostgreSQL's {name} not found; install the server with `apt-get install postgresql`")


def _bounding_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _as_server_user(argv: list[str]) -> list[str]:
    """argv run as the unprivileged server user when we are root; unchanged otherwise."""
    if os.geteuid() != 0:
        return argv
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise LabError(
            f"running the lab as root needs a system user {SERVER_USER!r} for PostgreSQL (it refuses root); "
            "install Debian's postgresql package (it creates the user) or run the lab as a normal user"
        ) from None
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    prefix = [setpriv, f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--clear-groups"]
    caps = _bounding_caps()
    cap = ("dac_read_search" if caps & (1 << _CAP_DAC_READ_SEARCH)
           else "dac_override" if caps & (1 << _CAP_DAC_OVERRIDE) else None)
    if cap:
        prefix += [f"--inh-caps=+{cap}", f"--ambient-caps=+{cap}"]
    return [*prefix, "--", *argv]


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(SERVER_USER)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.lchown(name, entry.pw_uid, entry.pw_gid)


class PostgresService(Service):
    """A private PostgreSQL cluster on 127.0.0.1 (the SQL Server stand-in)."""

    name = "postgres"
    port_names = ("postgres",)
    ready_timeout = 60.0

    @property
    def cluster_dir(self) -> Path:
        return self.data_dir / "cluster"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "socket"

    @property
    def port(self) -> int:
        return self.settings.port("postgres")

    def connect_kwargs(self, database: str = LAB_DATABASE) -> dict[str, object]:
        """pg8000 keyword arguments for the lab user."""
        return {"host": self.settings.host, "port": self.port, "user": LAB_DB_USER,
                "password": LAB_DB_PASSWORD, "database": database}

    def sqlalchemy_url(self, database: str = LAB_DATABASE) -> str:
        from sqlalchemy.engine import URL

        return URL.create("postgresql+pg8000", username=LAB_DB_USER, password=LAB_DB_PASSWORD,
                          host=self.settings.host, port=self.port,
                          database=database).render_as_string(hide_password=False)

    def prepare(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        _chown_to_server_user(self.socket_dir)
        if (self.cluster_dir / "PG_VERSION").exists():
            return
        shutil.rmtree(self.cluster_dir, ignore_errors=True)  # a half-made cluster from an interrupted initdb
        self.cluster_dir.mkdir(mode=0o700)
        pwfile = self.data_dir / "initdb.pw"
        pwfile.write_text(LAB_DB_PASSWORD + "\n")
        _chown_to_server_user(self.cluster_dir)
        _chown_to_server_user(pwfile)
        try:
            self._run(_as_server_user([
                postgres_bin("initdb"), "-D", str(self.cluster_dir), "-U", LAB_DB_USER, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ]), what="initdb")
            # Single-user mode: no server, no port, no race with another lab; reads SQL from stdin.
            self._run(_as_server_user([
                postgres_bin("postgres"), "--single", "-D", str(self.cluster_dir), "-E", "postgres",
            ]), what="creating the lab database", stdin=f"CREATE DATABASE {LAB_DATABASE};\n")
        except LabError:
            shutil.rmtree(self.cluster_dir, ignore_errors=True)
            raise
        finally:
            pwfile.unlink(missing_ok=True)

    @staticmethod
    def _run(argv: list[str], *, what: str, stdin: str | None = None) -> None:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd="/")
        if result.returncode != 0:
            raise LabError(f"PostgreSQL {what} failed (exit {result.returncode}):\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def command(self) -> list[str]:
        return _as_server_user([
            postgres_bin("postgres"), "-D", str(self.cluster_dir), "-p", str(self.port),
            "-k", str(self.socket_dir), "-c", f"listen_addresses={self.settings.host}",
            # The lab trades crash durability for speed; tests crash the applier, not the database.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200", "-c", "shared_buffers=128MB",
            # A placeholder setting (a dotted name is allowed) that carries the lab's marker in argv.
            f"--lab.{marker(self.name)}",
        ])

    def graceful_stop(self, pid: int) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait for every client to leave.
        os.kill(pid, signal.SIGINT)

    def is_ready(self) -> bool:
        import pg8000.native

        conn = pg8000.native.Connection(timeout=3, **self.connect_kwargs())  # type: ignore[arg-type]
        try:
            return conn.run("SELECT current_database()") == [[LAB_DATABASE]]
        finally:
            conn.close()

    def address(self) -> str:
        return f"postgresql://{LAB_DB_USER}@{self.settings.host}:{self.port}/{LAB_DATABASE}"
