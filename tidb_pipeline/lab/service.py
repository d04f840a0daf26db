"""The lab's process model: each part is a `Service` run as a detached process with a pid file.

`up` reuses a part that already answers, refuses a port some other program holds (naming the port and
the service), starts the rest in dependency waves and waits until each answers. `down` stops only
processes whose pid file it wrote *and* whose command line still carries the lab's marker, so a
recycled pid is never killed; it is idempotent.
"""

from __future__ import annotations

import abc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tidb_pipeline.lab.settings import LabSettings

MARKER = "tidb-pipeline-lab"


def marker(service: str) -> str:
    """The tag every lab process carries in its argv (`--tidb-pipeline-lab=kafka`, `-Dtidb-pipeline-lab=kafka`)."""
    return f"{MARKER}={service}"


class LabError(RuntimeError):
    """A lab part could not be started or reached; the message says which and what to do."""


class PortInUseError(LabError):
    def __init__(self, service: str, port: int) -> None:
        super().__init__(
            f"port {port} needed by the lab's {service} is already in use by another program; stop that program "
            f"or choose another port with TIDB_PIPELINE_LAB_{service.upper()}_PORT"
        )
        self.service = service
        self.port = port


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll `check` until true; raise LabError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - a readiness probe failing just means "not yet"
            pass
        if time.monotonic() > deadline:
            raise LabError(f"{what} did not become ready within {timeout:.0f}s")
        time.sleep(interval)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; treat it as dead. A zombie thread-group leader whose other
    # threads still run (a JVM shutting down) is alive: those threads may still hold its listening ports.
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return False
    if not fields.get("State", "").strip().startswith("Z"):
        return True
    return int(fields.get("Threads", "1").strip() or 1) > 1


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return []


@dataclass(frozen=True)
class Status:
    name: str
    address: str
    running: bool
    ready: bool
    pid: int | None


class Service(abc.ABC):
    """One lab part. Subclasses give the command line and a readiness probe."""

    name: str = ""
    port_names: Sequence[str] = ()
    depends_on: Sequence[str] = ()
    ready_timeout: float = 60.0

    def __init__(self, settings: LabSettings) -> None:
        self.settings = settings

    # --- what subclasses provide -------------------------------------------------------------
    @abc.abstractmethod
    def command(self) -> list[str]:
        """The argv that runs the service in the foreground."""

    @abc.abstractmethod
    def is_ready(self) -> bool:
        """True when clients can use the service."""

    @abc.abstractmethod
    def address(self) -> str:
        """What a client connects to."""

    def prepare(self) -> None:
        """One-time setup before the first start (formatting storage, fetching jars)."""

    def env(self) -> dict[str, str]:
        return {}

    def graceful_stop(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)

    # --- shared machinery ---------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.settings.dir(self.name)

    @property
    def pid_file(self) -> Path:
        return self.data_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of the process this lab started, if it still runs that service."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        if not any(arg.endswith(marker(self.name)) for arg in _cmdline(pid)):
            return None
        return pid

    def ports(self) -> list[int]:
        return [self.settings.port(p) for p in self.port_names]

    def check_ports_free(self) -> None:
        for port_name in self.port_names:
            port = self.settings.port(port_name)
            if port_open(self.settings.host, port):
                raise PortInUseError(port_name, port)

    def spawn(self) -> int:
        argv = self.command()
        env = {**os.environ, **self.env()}
        log = open(self.log_file, "ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.data_dir,
            start_new_session=True,
        )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def status(self) -> Status:
        pid = self.pid()
        ready = False
        if pid is not None:
            try:
                ready = self.is_ready()
            except Exception:  # noqa: BLE001
                ready = False
        return Status(self.name, self.address(), pid is not None, ready, pid)

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the process this lab started; True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            self.graceful_stop(pid)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while _pid_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def python_command(module: str, service: str, *args: str) -> list[str]:
    """argv for a lab service written in Python, carrying the marker `down` looks for."""
    return [sys.executable, "-m", module, *args, f"--{marker(service)}"]


def _waves(services: Iterable[Service]) -> list[list[Service]]:
    pending = {s.name: s for s in services}
    done: set[str] = set()
    waves: list[list[Service]] = []
    while pending:
        wave = [s for s in pending.values() if all(d in done or d not in pending for d in s.depends_on)]
        if not wave:
            raise LabError(f"lab services have a dependency cycle: {sorted(pending)}")
        waves.append(wave)
        for s in wave:
            done.add(s.name)
            del pending[s.name]
    return waves


def up(services: Sequence[Service], *, log: Callable[[str], None] = print) -> None:
    """Start what is not running, in dependency waves, and wait until every part answers."""
    for wave in _waves(services):
        started: list[Service] = []
        # Refuse taken ports before starting anything, so a clash leaves nothing half-started.
        for svc in wave:
            if svc.pid() is None:
                svc.check_ports_free()
        for svc in wave:
            if svc.pid() is not None:
                log(f"{svc.name}: already running at {svc.address()}")
                started.append(svc)
                continue
            svc.prepare()
            svc.spawn()
            log(f"{svc.name}: starting at {svc.address()}")
            started.append(svc)
        for svc in started:
            try:
                wait_until(
                    lambda s=svc: s.pid() is not None and s.is_ready(), timeout=svc.ready_timeout, what=svc.name
                )
            except LabError as exc:
                raise LabError(f"{exc}; last log lines of {svc.log_file}:\n{svc.tail_log()}") from None
            log(f"{svc.name}: ready at {svc.address()}")


def down(services: Sequence[Service], *, log: Callable[[str], None] = print) -> None:
    """Stop, in reverse dependency order, only what this lab started."""
    for wave in reversed(_waves(services)):
        for svc in wave:
            if svc.stop():
                log(f"{svc.name}: stopped")
            else:
                log(f"{svc.name}: not running")
