"""Figure 5: control-plane costs, plus the private lab the benchmark runs on.

- `private_lab`: a lab of the benchmark's own (a temporary root, free ports, the checkout's Maven jar
  cache linked in), so other people's tests starting and stopping the default lab cannot disturb a run.
  Starting it with `tidb-pipeline lab up` is the "lab up from warm caches" figure.
- `sensor_tick`: the offsets sensor's own bench (`python -m tidb_pipeline.bench.sensor --bench-topics N`),
  parsed; its floor is one `list_offsets` call on a connected client.
- `defs_load`: `build_defs` + `get_repository_def()` for an N-table config in a fresh interpreter with every
  socket connect refused (so "no network" is enforced, not assumed); import time reported separately;
  the baseline is the same for a 1-table config.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tidb_pipeline.lab.env import applied
from tidb_pipeline.lab.settings import DEFAULT_PORTS, LabSettings
from tidb_pipeline.lab.ports import free_ports

_REPO = Path(__file__).resolve().parents[2]




def private_lab_env(root: Path) -> dict[str, str]:
    """Environment pointing LabSettings (and every child process) at a lab under `root` on free ports."""
    env = {"TIDB_PIPELINE_LAB_DIR": str(root)}
    for name, port in zip(DEFAULT_PORTS, free_ports(len(DEFAULT_PORTS))):
        env[f"TIDB_PIPELINE_LAB_{name.upper()}_PORT"] = str(port)
    return env


@dataclass(frozen=True)
class LabUp:
    seconds: float  # the CLI's own "all ready in" figure
    wall_seconds: float  # including interpreter start
    parts: tuple[str, ...]


def _cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidb_pipeline.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout, cwd=_REPO, check=False)


def lab_up(env: dict[str, str], parts: list[str] | None = None) -> LabUp:
    """`tidb-pipeline lab up [--only ...]` in a child process; raises with its output if it fails."""
    args = ["lab", "up", *(["--only", *parts] if parts else [])]
    t0 = time.perf_counter()
    done = _cli(args, env)
    wall = time.perf_counter() - t0
    found = re.search(r"all ready in ([0-9.]+)s", done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"`tidb-pipeline {' '.join(args)}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return LabUp(float(found.group(1)), wall, tuple(parts or DEFAULT_PORTS))


def lab_down(env: dict[str, str]) -> None:
    _cli(["lab", "down"], env)


@contextmanager
def private_lab(keep: bool = False) -> Iterator[dict[str, str]]:
    """A temporary lab root with free ports; sets the environment for this process; stops the lab after."""
    root = Path(tempfile.mkdtemp(prefix="tidb-pipeline-bench-lab-"))
    warm = LabSettings().root / "jars"
    if warm.is_dir():
        (root / "jars").symlink_to(warm, target_is_directory=True)  # the warm Maven cache
    env = private_lab_env(root)
    try:
        with applied(env):
            try:
                yield env
            finally:
                lab_down(env)
    finally:
        if not keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)


# --- sensor tick ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensorTick:
    topics: int
    first_tick_ms: float
    tick_median_ms: float
    tick_max_ms: float
    moved_tick_ms: float
    list_offsets_ms: float  # the floor: one call on a connected client


_PATTERNS = {
    "first_tick_ms": r"tick 1 \(empty cursor[^)]*\): (\d+) ms",
    "tick_median_ms": r"ticks 2\.\.\d+ \([^)]*\): median (\d+) ms",
    "tick_max_ms": r"ticks 2\.\.\d+ \([^)]*\): median \d+ ms, max (\d+) ms",
    "moved_tick_ms": r"tick after 1 message in \d+ topics: (\d+) ms",
    "list_offsets_ms": r"one list_offsets call .*: median (\d+) ms",
}


def parse_sensor_bench(text: str, topics: int) -> SensorTick:
    values = {}
    for name, pattern in _PATTERNS.items():
        found = re.search(pattern, text)
        if not found:
            raise RuntimeError(f"sensor bench output has no {name} line (pattern {pattern!r}); output was:\n{text}")
        values[name] = float(found.group(1))
    return SensorTick(topics=topics, **values)


def sensor_tick(bootstrap: str, topics: int, repeat: int = 5) -> SensorTick:
    done = subprocess.run(
        [sys.executable, "-m", "tidb_pipeline.bench.sensor", "--bench-topics", str(topics), "--bootstrap", bootstrap,
         "--repeat", str(repeat), "--produce", str(min(100, topics))],
        capture_output=True, text=True, timeout=600, cwd=_REPO, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"sensor bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse_sensor_bench(done.stdout, topics)


# --- definitions load ----------------------------------------------------------------------------------

_LOAD = r"""
import json, socket, sys, time
t0 = time.perf_counter()
def _refuse(*a, **k):
    raise OSError("network refused while loading definitions")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
import dagster as dg
from tidb_pipeline.config import parse_config
from tidb_pipeline.defs import build_defs
t1 = time.perf_counter()
n = int(sys.argv[1])
config = parse_config({
    "merge_schedules": {f"g{i}": {"cron": "* * * * *"} for i in range(5)},
    "tables": [{"db": f"db{i % 10}", "table": f"t{i:04d}", "key": ["id"], "group": f"g{i % 5}"} for i in range(n)],
})
t2, c2 = time.perf_counter(), time.process_time()
defs = build_defs(config=config)
repo = defs.get_repository_def()
t3, c3 = time.perf_counter(), time.process_time()
print(json.dumps({"import_s": t1 - t0, "config_s": t2 - t1, "build_s": t3 - t2, "build_cpu_s": c3 - c2,
                  "assets": len(repo.assets_defs_by_key), "jobs": len(repo.get_all_jobs())}))
"""


@dataclass(frozen=True)
class DefsLoad:
    tables: int
    import_s: float
    config_s: float
    build_s: float  # build_defs + get_repository_def
    process_s: float  # the whole child process, interpreter start included
    assets: int
    build_cpu_s: float = 0.0  # CPU seconds of build_s: steadier than wall time on a shared machine

    @property
    def load_s(self) -> float:
        return self.config_s + self.build_s


def defs_load(tables: int, profile: Path | None = None) -> DefsLoad:
    """Time a fresh interpreter loading `tables` tables' definitions; `profile` writes a pyinstrument HTML."""
    argv = [sys.executable]
    if profile is not None:
        argv += ["-m", "pyinstrument", "-r", "html", "-o", str(profile)]
    script = Path(tempfile.mkdtemp()) / "load_defs.py"
    script.write_text(_LOAD)
    t0 = time.perf_counter()
    done = subprocess.run([*argv, str(script), str(tables)], capture_output=True, text=True, timeout=600,
                          cwd=_REPO, check=False, env={**os.environ, "PYTHONPATH": str(_REPO)})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"loading {tables} tables' definitions failed:\n{done.stderr[-3000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return DefsLoad(tables, data["import_s"], data["config_s"], data["build_s"], wall, data["assets"], data["build_cpu_s"])
