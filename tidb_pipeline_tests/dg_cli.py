"""Running `dg` (and `create-dagster`) the way a user does: a child process in a project folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dg_env(venv: Path, home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a shell with `venv` activated and a private DAGSTER_HOME (telemetry off, as in the
    repo's dagster.yaml), without dg's check for a newer release."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TIDB_PIPELINE_CONFIG")}
    env.update({"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                "DAGSTER_HOME": str(home), "DAGSTER_DG_UPDATE_CHECK_ENABLED": "0", "NO_COLOR": "1"})
    env.update(extra or {})
    return env


def this_venv() -> Path:
    return Path(sys.executable).parent.parent


def run(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; with `check`, fail with its output unless it exits 0."""
    done = subprocess.run(list(argv), cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done
