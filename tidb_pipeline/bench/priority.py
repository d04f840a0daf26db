"""The workload side (the lab MariaDB standing in for TiDB, and go-tpc) at a lower CPU priority, for benches.

In production TiDB and TiCDC run on their own machines; in the lab, MariaDB, go-tpc, the change feed and the
pipeline share this machine's cores, and at go-tpc's full rate the workload side takes most of them, so the
parts being measured (change feed -> Kafka -> pipeline) queue behind it. Under `nice` the workload yields the
CPU to them when both want it. go-tpc still runs unthrottled (no rate limit, no pause): its tpmC is what it
reaches with the CPU left over, and the benches print it and say the workload was niced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# Lowest priority short of 19: the workload still gets every cycle the measured parts leave idle.
WORKLOAD_NICENESS = 10


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def niced(pid: int | None, niceness: int = WORKLOAD_NICENESS) -> Iterator[None]:
    """Every thread of `pid` at `niceness` while inside, the old priorities back after (no-op without a pid).

    Linux's priority is per thread: each thread is reniced; threads the process starts later (MariaDB's
    connection threads) inherit it from the thread that starts them.
    """
    if pid is None or niceness == 0:
        yield
        return
    before: dict[int, int] = {}
    try:
        for tid in _threads(pid):
            with contextlib.suppress(ProcessLookupError):
                before[tid] = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        yield
    finally:
        for tid in _threads(pid):
            # Back to the process's old priority (a thread started meanwhile inherited the niced one).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.setpriority(os.PRIO_PROCESS, tid, before.get(tid, before.get(pid, 0)))


def mariadb_pid() -> int | None:
    """The pid of this checkout's lab MariaDB, if it runs."""
    from tidb_pipeline.lab import stack
    from tidb_pipeline.lab.settings import LabSettings

    return stack.service("mariadb", LabSettings()).pid()
