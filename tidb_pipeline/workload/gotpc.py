"""PingCAP's go-tpc (the workload `tiup bench tpcc` runs), driven as a subprocess.

The binary is built by the project's install step (`make install`) from the Go module proxy at a pinned
version into the virtualenv's bin folder, next to `tidb-pipeline`:

    GOBIN=$PWD/.venv/bin go install github.com/pingcap/go-tpc/cmd/go-tpc@v1.0.12

(the proxy's "latest" is an older 2021 release, so the version is pinned). `TIDB_PIPELINE_GO_TPC` names
another binary. go-tpc has no scale below one warehouse (~600k rows); tests that need less use the Python
driver `tidb_pipeline.workload.tpcc`, which creates the same tables.

`prepare` loads `warehouses` warehouses; `run` drives the standard mix for `duration_s` seconds and returns
tpmC parsed from go-tpc's summary. Both pass `--no-check`/skip the after-load consistency checks (over 10
minutes on MariaDB); the demo compares whole table contents itself. `on_line` sees every output line (the
demo's progress bar counts them).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GO_TPC_VERSION = "v1.0.12"
GO_TPC_MODULE = "github.com/pingcap/go-tpc/cmd/go-tpc"
INSTALL_COMMAND = f"make install  (or: GOBIN=$PWD/.venv/bin go install {GO_TPC_MODULE}@{GO_TPC_VERSION})"

# go-tpc's summary line: `tpmC: 20123.4, tpmTotal: 44567.8, efficiency: ...`
_TPMC = re.compile(r"tpmC:\s*([0-9.]+)")
_TPM_TOTAL = re.compile(r"tpmTotal:\s*([0-9.]+)")


class GoTPCNotFound(RuntimeError):
    """go-tpc is not installed where the project looks for it."""


def binary() -> Path:
    """The go-tpc binary: `$TIDB_PIPELINE_GO_TPC`, else the virtualenv's bin folder, else PATH."""
    override = os.environ.get("TIDB_PIPELINE_GO_TPC")
    if override:
        path = Path(override)
        if not os.access(path, os.X_OK):
            raise GoTPCNotFound(f"TIDB_PIPELINE_GO_TPC={override} is not an executable file; unset it or point it "
                                f"at go-tpc {GO_TPC_VERSION}")
        return path
    local = Path(sysconfig.get_path("scripts")) / "go-tpc"
    if os.access(local, os.X_OK):
        return local
    found = shutil.which("go-tpc")
    if found:
        return Path(found)
    raise GoTPCNotFound(f"go-tpc {GO_TPC_VERSION} is not installed (looked in {local.parent} and PATH); "
                        f"run: {INSTALL_COMMAND}")


def _common(conn_kwargs: Mapping[str, Any], database: str) -> list[str]:
    args = ["-H", str(conn_kwargs.get("host", "127.0.0.1")), "-P", str(conn_kwargs.get("port", 4000)),
            "-U", str(conn_kwargs.get("user", "root")), "-D", database]
    password = conn_kwargs.get("password")
    if password:
        args += ["-p", str(password)]
    return args


def _duty_cycle(proc: subprocess.Popen[str], duty: float, period_s: float = 1.0) -> None:
    """Let `proc` run `duty` of every `period_s` and stop it (SIGSTOP) for the rest, until it exits."""
    while proc.poll() is None:
        time.sleep(period_s * duty)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGSTOP)
        time.sleep(period_s * (1 - duty))
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)


def _run(argv: list[str], on_line: Callable[[str], None] | None, timeout_s: float, duty: float = 1.0,
         nice: int = 0) -> list[str]:
    """Run go-tpc, feeding `on_line` each output line; raise with the output's tail (never the password)."""
    lines: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
    if duty < 1:
        threading.Thread(target=_duty_cycle, args=(proc, duty), name="go-tpc duty cycle", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(lines[-1])
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"go-tpc {argv[1]} {argv[2]} did not finish within {timeout_s:.0f}s")
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    if rc != 0:
        shown = [a if i == 0 or argv[i - 1] != "-p" else "****" for i, a in enumerate(argv)]
        raise RuntimeError(f"{' '.join(shown)} exited {rc}:\n" + "\n".join(lines[-30:]))
    return lines


@dataclass(frozen=True)
class PrepareResult:
    warehouses: int
    seconds: float


def prepare(conn_kwargs: Mapping[str, Any], *, database: str = "tpcc", warehouses: int = 1, threads: int = 4,
            on_line: Callable[[str], None] | None = None, timeout_s: float = 3600) -> PrepareResult:
    """`go-tpc tpcc prepare`: create go-tpc's nine tables in `database` (created if missing) and load them."""
    started = time.monotonic()
    _run([str(binary()), "tpcc", "prepare", *_common(conn_kwargs, database), "--warehouses", str(warehouses),
          "-T", str(threads), "--no-check"], on_line, timeout_s)
    return PrepareResult(warehouses, time.monotonic() - started)


@dataclass(frozen=True)
class RunResult:
    tpmc: float
    tpm_total: float
    seconds: float
    output: tuple[str, ...]


def run(conn_kwargs: Mapping[str, Any], *, database: str = "tpcc", warehouses: int = 1, threads: int = 4,
        duration_s: float = 30.0, on_line: Callable[[str], None] | None = None, duty: float = 1.0,
        nice: int = 0) -> RunResult:
    """`go-tpc tpcc run` for `duration_s` seconds; tpmC from its summary.

    go-tpc has no rate option: `duty` < 1 runs it at about that fraction of its full rate by stopping the
    process (SIGSTOP / SIGCONT) for 1 - `duty` of every second; tpmC is then over the whole wall time. `nice`
    runs it at that lower CPU priority (a bench sharing the machine with what it measures; no rate limit).
    """
    if not 0 < duty <= 1:
        raise ValueError(f"duty={duty} must be in (0, 1]: the fraction of every second go-tpc runs")
    started = time.monotonic()
    lines = _run([str(binary()), "tpcc", "run", *_common(conn_kwargs, database), "--warehouses", str(warehouses),
                  "-T", str(threads), "--time", f"{max(1, round(duration_s))}s", "--interval", "5s"],
                 on_line, timeout_s=duration_s + 600, duty=duty, nice=nice)
    tpmc = tpm_total = None
    for line in lines:
        if (m := _TPMC.search(line)) is not None:
            tpmc = float(m.group(1))
        if (m := _TPM_TOTAL.search(line)) is not None:
            tpm_total = float(m.group(1))
    if tpmc is None:
        raise RuntimeError("go-tpc tpcc run printed no tpmC summary:\n" + "\n".join(lines[-30:]))
    return RunResult(tpmc, tpm_total or 0.0, time.monotonic() - started, tuple(lines))
