"""`tidb-pipeline demo` end to end with go-tpc, in a private lab (its own folder and ports), as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tidb_pipeline.bench.control import private_lab_env
from tidb_pipeline.config import load_config
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.workload import gotpc

_REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.timeout(3600)
def test_the_demo_runs_go_tpc_through_backfill_changefeed_merge_and_checks(tmp_path: Path) -> None:
    gotpc.binary()  # fails with the install command when `make install` has not built go-tpc
    root = tmp_path / "lab"
    root.mkdir()
    warm = LabSettings().root / "jars"
    if warm.is_dir():
        (root / "jars").symlink_to(warm, target_is_directory=True)  # the warm Maven cache
    env = {**os.environ, **private_lab_env(root), "DAGSTER_HOME": str(tmp_path / "dagster")}
    (tmp_path / "dagster").mkdir()

    def cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tidb_pipeline.cli", *args], env=env, cwd=_REPO, text=True,
                              capture_output=True, timeout=timeout, check=False)

    try:
        done = cli("demo", "--duration", "5", "--threads", "2", timeout=3000)
    finally:
        cli("lab", "down", timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    # Its own progress bars, not Dagster's event stream.
    for phase in ("go-tpc prepare", "backfill job", "go-tpc run", "change feed catch-up", "merge jobs",
                  "full-content comparison", "asset checks"):
        assert f"[demo] {phase}" in out, phase
    assert " - DEBUG - " not in out and "STEP_START" not in out
    tpmc = re.search(r"go-tpc: ([0-9,]+) tpmC", out)
    assert tpmc and int(tpmc.group(1).replace(",", "")) > 0, out[-3000:]
    # Every configured table: a row of source vs replica counts that matched in full, go-tpc's sizes.
    for t in load_config(_REPO / "tidb_pipeline.yaml").tables:
        line = re.search(rf"^{re.escape(f'{t.db}.{t.table}')}\s+([0-9,]+)\s+([0-9,]+)\s+match$", out, re.M)
        assert line, f"{t.db}.{t.table} has no matching row in:\n{out[-3000:]}"
        assert line.group(1) == line.group(2)
    assert re.search(r"^tpcc\.item\s+100,000\s", out, re.M), "go-tpc loads 100,000 items"
    assert re.search(r"^\s+PASS\s", out, re.M) and not re.search(r"^\s+FAIL", out, re.M)
    assert "every replica equals its source and every check passed" in out
