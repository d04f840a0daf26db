"""ruff and mypy, configured in pyproject.toml, are clean: `make test` runs them through this module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=1200)


def test_ruff_is_clean() -> None:
    done = _run("ruff", "check", "--no-cache", "tidb_pipeline", "tidb_pipeline_tests")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean() -> None:
    done = _run("mypy")  # files and settings from [tool.mypy]
    assert done.returncode == 0, done.stdout + done.stderr
