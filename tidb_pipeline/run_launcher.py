"""A run launcher that keeps one run worker started and waiting, so a sensor's run skips the process start-up.

Dagster's `DefaultRunLauncher` asks the code server to start each run in a new Python process, which imports
Dagster and the definitions again before the run's first step (about 4.5 s here, 3 s of it
`dagster_snowflake` importing Snowpark): that sits between every sensor request and its run (issue 18).
`WarmRunLauncher` starts the worker for the *next* run as soon as it launches one: a process, with the
environment and working directory a run gets from the code server, that has imported Dagster and
`preload_modules` and waits on a pipe. `launch_run` hands the run to it; the worker then runs the body of
`dagster api execute_run` (the command Dagster's Docker and Kubernetes launchers run), so the run executes
as under those launchers. Without a usable spare (the first run, a spare that died or timed out, a code
location reloaded or a loaded module's file changed since the spare started) the run starts cold, as
`dagster api execute_run` in a new process. The worker's pid and host are in the run's tags; `terminate`
interrupts it (SIGINT, as Dagster's code server interrupts its run processes) and the run ends CANCELED.

Idle cost: one waiting process after the first run, nothing in a loop. Pick `DockerRunLauncher`
(`deploy/dagster.yaml`) when runs must be isolated in containers; this one when runs share the machine of
the daemon (`dagster dev`, one VM) and their start-up latency matters.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.origin import JobPythonOrigin
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value
from dagster._utils.path import is_likely_venv_executable

PID_TAG = "tidb_pipeline/run_worker_pid"
HOST_TAG = "tidb_pipeline/run_worker_host"
START_TAG = "tidb_pipeline/run_worker_start"  # "warm", or "cold: <why>"
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ACCEPTED = b"accepted"
_READY = b"ready"  # the worker has imported its modules and waits for a run


def _validated(config: Mapping[str, Any]) -> tuple[tuple[str, ...], float]:
    """(preload_modules, handoff_timeout_seconds) from the launcher's config; a bad value names its field."""
    modules = tuple(config.get("preload_modules") or ())
    for name in modules:
        if not _MODULE.match(name):
            raise dg.DagsterInvalidConfigError(
                f"run_launcher.config.preload_modules: {name!r} is not a dotted module name (e.g. "
                "tidb_pipeline.definitions)", [], None)
    timeout = float(config.get("handoff_timeout_seconds", 120))
    if not timeout > 0:
        raise dg.DagsterInvalidConfigError(
            f"run_launcher.config.handoff_timeout_seconds: {timeout} must be > 0 (the seconds a launch waits for "
            "the spare to take the run before starting it cold)", [], None)
    return modules, timeout


def _origin_of(run: dg.DagsterRun) -> JobPythonOrigin:
    if run.job_code_origin is None:
        raise dg.DagsterInvariantViolationError(f"run {run.run_id} has no code origin to execute")
    return run.job_code_origin


@dataclass(frozen=True)
class _Where:
    """Where a run worker starts: the code location's Python and working directory, and what it loaded there
    (a digest of the location's repository snapshots)."""

    executable: str
    cwd: str
    definitions: str | None

    def env(self) -> dict[str, str]:
        """The code server's environment, as `open_server_process` builds it for the runs it starts."""
        env = dict(os.environ)
        if is_likely_venv_executable(self.executable) and self.executable != sys.executable:
            env["PATH"] = os.pathsep.join(p for p in (os.path.dirname(self.executable), env.get("PATH")) if p)
        return env


@dataclass
class _Spare:
    """A started worker waiting for a run on its stdin; it answers on `replies`."""

    proc: subprocess.Popen[bytes]
    replies: IO[bytes]  # unbuffered, so `select` sees every line not yet read
    where: _Where
    imported: bool = False

    def ready(self) -> bool:
        """Whether the worker has imported its modules (it says so once, before any run is handed to it)."""
        if not self.imported and select.select([self.replies], [], [], 0)[0]:
            self.imported = self.replies.readline().strip() == _READY
        return self.imported

    def hand_off(self, payload: str, timeout_s: float) -> str | None:
        """None when the worker took the run; else why not (the caller then discards it)."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(payload.encode() + b"\n")
            self.proc.stdin.close()
        except OSError as exc:
            return f"the spare worker (pid {self.proc.pid}) is gone ({exc.strerror or exc})"
        deadline = time.monotonic() + timeout_s
        reply = b""
        while ready := bool(select.select([self.replies], [], [], max(0.0, deadline - time.monotonic()))[0]):
            reply = self.replies.readline().strip()
            if reply != _READY:
                break
        self.replies.close()
        if reply == _ACCEPTED:
            return None
        if not ready:
            return f"the spare worker (pid {self.proc.pid}) did not take the run within {timeout_s:g}s"
        return reply.decode(errors="replace") or f"the spare worker (pid {self.proc.pid}) exited ({self.proc.poll()})"

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError):
            self.replies.close()
        _reap(self.proc)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the worker in a thread, so a finished run leaves no zombie behind the daemon."""
    threading.Thread(target=proc.wait, name=f"reap-run-worker-{proc.pid}", daemon=True).start()


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a worker process started (and its modules imported) before the run was requested."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, preload_modules: Sequence[str] = (),
                 handoff_timeout_seconds: float = 120) -> None:
        self._inst_data = inst_data
        self._preload, self._timeout = _validated(
            {"preload_modules": list(preload_modules), "handoff_timeout_seconds": handoff_timeout_seconds})
        self._lock = threading.Lock()
        self._spare: _Spare | None = None
        self._digests: dict[str, str] = {}
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, dg.Field]:
        return {
            "preload_modules": dg.Field(
                [str], is_required=False, default_value=[],
                description="Modules the waiting worker imports before it is handed a run (the code location's)."),
            "handoff_timeout_seconds": dg.Field(
                float, is_required=False, default_value=120.0,
                description="Seconds a launch waits for the spare to take the run before starting the run cold."),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> WarmRunLauncher:
        modules, timeout = _validated(config_value)
        return cls(inst_data=inst_data, preload_modules=modules, handoff_timeout_seconds=timeout)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = _origin_of(run)
        where = self._where(context, origin)
        args = ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref())
        with self._lock:
            spare, self._spare = self._spare, None
        why = "no spare worker yet"
        if spare is not None:
            why = self._stale_reason(spare, where) or spare.hand_off(serialize_value(args), self._timeout) or ""
            if why:
                spare.discard()
        proc = spare.proc if spare is not None and not why else self._start_cold(args, where)
        _reap(proc)
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(proc.pid), HOST_TAG: socket.gethostname(),
                                                 START_TAG: "warm" if not why else f"cold: {why}"})
        if why:
            self._instance.report_engine_event(f"Started the run cold in a new process (pid {proc.pid}): {why}.",
                                               run, cls=self.__class__)
        try:
            self._start_spare(where)
        except OSError as exc:  # the run is launched; the next one starts cold
            self._instance.report_engine_event(f"Could not start the next spare run worker: {exc}", run,
                                               cls=self.__class__)

    def _where(self, context: LaunchRunContext, origin: JobPythonOrigin) -> _Where:
        repo = origin.repository_origin
        cwd = getattr(repo.code_pointer, "working_directory", None) or os.getcwd()
        remote = context.dagster_run.remote_job_origin
        definitions = None
        if context.workspace is not None and remote is not None:
            location = context.workspace.get_code_location(remote.repository_origin.code_location_origin.location_name)
            definitions = self._definitions_digest(location)
        return _Where(repo.executable_path, cwd, definitions)

    def _definitions_digest(self, location: Any) -> str:
        """What the code location's server loaded, as a digest of its repository snapshots.

        Not the server's id: the daemon restarts its code servers every minute (RELOAD_WORKSPACE_INTERVAL) with
        the same code, and a reload that loaded the same definitions leaves the spare as good as a cold start.
        Computed once per server (10-40 ms).
        """
        key = str(getattr(location, "server_id", None) or id(location))
        if key not in self._digests:
            snaps = "".join(serialize_value(repo.repository_snap) for _, repo in sorted(location.get_repositories().items()))
            self._digests = {key: hashlib.sha256(snaps.encode()).hexdigest()}
        return self._digests[key]

    @staticmethod
    def _stale_reason(spare: _Spare, where: _Where) -> str | None:
        if spare.proc.poll() is not None:
            return f"the spare worker (pid {spare.proc.pid}) had exited ({spare.proc.returncode})"
        if spare.where.definitions != where.definitions:
            return "the code location's definitions changed since the spare worker started"
        if spare.where != where:
            return "the run's code location uses another Python or working directory than the spare worker"
        return None

    @staticmethod
    def _start_cold(args: ExecuteRunArgs, where: _Where) -> subprocess.Popen[bytes]:
        """`dagster api execute_run` in a new process: the command Dagster's Docker launcher runs.

        Through the location's own interpreter (`python -m dagster`), not the origin's entry point: that is a
        bare `dagster` when the code server was started by the CLI, found only when its venv is on PATH.
        """
        command = [where.executable, "-m", "dagster", "api", "execute_run", serialize_value(args)]
        return subprocess.Popen(command, cwd=where.cwd, env=where.env())  # noqa: S603

    def _start_spare(self, where: _Where) -> None:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(  # noqa: S603 - the code location's own interpreter
                [where.executable, "-m", "tidb_pipeline.run_launcher", str(write_fd), *self._preload],
                stdin=subprocess.PIPE, pass_fds=(write_fd,), cwd=where.cwd, env=where.env())
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        spare = _Spare(proc, os.fdopen(read_fd, "rb", buffering=0), where)
        with self._lock:
            old, self._spare = self._spare, spare
        if old is not None:
            old.discard()

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid, why = _worker_pid(run)
        if pid is None:
            self._instance.report_engine_event(f"Unable to send the termination request: {why}.", run,
                                               cls=self.__class__)
            return False
        os.kill(pid, signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        """For Dagster's run monitoring: a run whose worker is gone is not running."""
        pid, why = _worker_pid(run)
        if pid is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        if run.tags.get(HOST_TAG) not in (None, socket.gethostname()):
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, msg=why)
        return CheckRunHealthResult(WorkerStatus.NOT_FOUND, msg=why)

    def dispose(self) -> None:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()


def _worker_pid(run: dg.DagsterRun) -> tuple[int | None, str]:
    """The pid of the run's worker when it is alive on this host, else (None, why)."""
    pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
    if not pid or not pid.isdigit():
        return None, f"the run has no {PID_TAG} tag (it was not launched by WarmRunLauncher)"
    if host != socket.gethostname():
        return None, f"the run's worker runs on host {host!r}, not on {socket.gethostname()!r}"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except FileNotFoundError:
        return None, f"the run's worker (pid {pid}) is gone"
    except OSError:
        cmdline = b"execute_run"  # no /proc (macOS): trust the tag
    # A pid can be reused once its process is gone: signal only a run worker.
    if b"tidb_pipeline.run_launcher" not in cmdline and b"execute_run" not in cmdline:
        return None, f"pid {pid} is no longer the run's worker"
    return int(pid), ""


def _file_times(opened: set[str]) -> dict[str, int]:
    """The modification time of every loaded module's file and of every other file in `opened`."""
    paths = opened | {path for m in list(sys.modules.values()) if isinstance(path := getattr(m, "__file__", None), str)}
    times: dict[str, int] = {}
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(status.st_mode):  # not /dev, /proc: their times move without the code changing
            times[path] = status.st_mtime_ns
    return times


def _reading(mode: object, flags: object) -> bool:
    """Whether an `open` audit event's file was opened only for reading (one written to is not code)."""
    if isinstance(mode, str):
        return not set(mode) & set("wax+")
    return isinstance(flags, int) and not flags & (os.O_WRONLY | os.O_RDWR)


def _changed(times: Mapping[str, int]) -> str | None:
    for path, mtime in times.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return path
        except OSError:
            return path
    return None


def _serve(reply_fd: int, modules: Sequence[str]) -> int:
    """The spare worker: import, wait for one run on stdin, check the code is unchanged, run it."""
    import importlib

    from dagster._cli.api import execute_run_command
    from dagster._utils.interrupts import setup_interrupt_handlers

    setup_interrupt_handlers()  # as the `dagster` command does: SIGTERM ends a run like SIGINT
    replies = os.fdopen(reply_fd, "wb", buffering=0)
    # Every file read while preloading (a config file the definitions read at import, a .env): a change to
    # one makes this spare stale, as a change to a module's file does.
    opened: set[str] = set()
    preloading = True

    def _note_open(event: str, args: tuple[Any, ...]) -> None:
        if preloading and event == "open" and isinstance(args[0], str) and _reading(args[1], args[2]):
            opened.add(os.path.abspath(args[0]))

    sys.addaudithook(_note_open)
    failed = None
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the cold start reports the import error in the run itself
            failed = f"the spare worker could not import {name}: {type(exc).__name__}: {exc}"
            break
    preloading = False
    times = _file_times(opened)
    with contextlib.suppress(OSError):  # the launcher may have discarded this spare already
        replies.write(_READY + b"\n")
    try:
        payload = sys.stdin.readline()
    except KeyboardInterrupt:  # the daemon stopping (SIGINT/SIGTERM to its process group)
        return 0
    if not payload.strip():
        return 0  # the launcher went away (EOF) or discarded this spare
    changed = failed or (f"{path} changed since the spare worker started" if (path := _changed(times)) else None)
    if changed:
        replies.write(changed.encode() + b"\n")
        return 0
    replies.write(_ACCEPTED + b"\n")
    replies.close()
    execute_run_command.callback(input_json=payload.strip(), compressed_input_json=None)  # type: ignore[misc]
    return 0


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1]), sys.argv[2:]))
