"""Fault injection for the reliability tests: kill -9 the landing load or the merge at a named stage.

`run_killed(CrashRun(...))` runs `load_topic` or `merge_replica` in a child process (forked from a
pre-warmed fork server, so a run costs a fork, not an 8 s import of Dagster and the Snowflake connector).
Before running, the child monkeypatches the production functions so that the `hit`-th time it reaches the
stage it sends itself SIGKILL: no `finally`, no rollback, no goodbye to the server, exactly like an OOM kill
or a pulled plug. Production code carries no test hooks; the stages are defined by what is patched:

| stage                       | the child dies                                                        |
|-----------------------------|-----------------------------------------------------------------------|
| `landing.mid_consume`       | after building the `hit`-th landing row (records read, nothing sent)  |
| `landing.after_consume`     | after every reader finished (files written locally)                   |
| `landing.after_stage_upload`| after `PUT` of the files to the stage, before the transaction         |
| `landing.mid_copy`          | after the `hit`-th of COPY (of a file) / DELETE (rows, in the txn)    |
| `landing.before_commit`     | inside the transaction, everything written, before COMMIT             |
| `landing.after_commit`      | after COMMIT, before the run reports anything                         |
| `merge.mid_merge`           | inside the transaction after the `hit`-th statement (checks, MERGE, watermark) |
| `merge.before_commit`       | MERGE and watermark written, before COMMIT                            |
| `merge.after_commit`        | after COMMIT, before the row count and the result                     |

A SIGKILLed client leaves its open transaction *detached*: it keeps its locks until the warehouse aborts
it. Snowflake does that when the session expires (or on `SYSTEM$ABORT_TRANSACTION`); fakesnow never does,
so a detached transaction would block every later load of that table. `abort_detached` plays Snowflake's
part: the child records the session token of every connection it opens (in a file of the test's tmp dir),
and the parent deletes those sessions on the lab server after the kill, which rolls their transactions back.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.replication.ddl import TableRef

LANDING_STAGES = (
    "landing.mid_consume",
    "landing.after_consume",
    "landing.after_stage_upload",
    "landing.mid_copy",
    "landing.before_commit",
    "landing.after_commit",
)
MERGE_STAGES = ("merge.mid_merge", "merge.before_commit", "merge.after_commit")
STAGES = LANDING_STAGES + MERGE_STAGES
# Statements of the copy step a one-file load always reaches (COPY of the file into the load's rows table,
# DELETE of the rows table inside the transaction).
COPY_STATEMENTS = 2
# Statements of the merge transaction before COMMIT: BEGIN, the batch statistics (counts, one row per key,
# key range), MERGE, watermark DELETE, watermark INSERT (`replication.merge.run_merge`, through the
# warehouse seam's `Warehouse.execute`, which is what the merge stages patch).
MERGE_STATEMENTS = 5


class StageNotReached(AssertionError):
    """The child finished without reaching its stage: the trial injected no fault and proves nothing."""


@dataclass(frozen=True)
class CrashRun:
    """One faulted run: which job, where it dies, and everything the child needs to rebuild its clients."""

    stage: str
    hit: int
    settings: LabSettings
    topic: str
    landing: TableRef
    control: TableRef
    replica: TableRef | None = None
    watermarks: TableRef | None = None
    max_records: int | None = None
    workdir: str = ""
    mode: str = "replica"  # the replica's mode (`replication.modes`): history merges have their own statements  # tmp folder of the test: session tokens and the loader's temp files go here

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown fault stage {self.stage!r}; choose from {', '.join(STAGES)}")
        if self.stage.startswith("merge.") and (self.replica is None or self.watermarks is None):
            raise ValueError(f"stage {self.stage} kills a merge: pass replica and watermarks")
        if self.hit < 1:
            raise ValueError("hit counts arrivals at the stage from 1")

    @property
    def tokens_file(self) -> Path:
        return Path(self.workdir) / f"sessions-{os.getpid()}.txt"


@dataclass(frozen=True)
class Fault:
    stage: str
    hit: int


def plan_faults(seed: int, *, records: int) -> list[Fault]:
    """One or two faults for a trial, chosen by `seed`; `records` bounds the mid-consume kill point."""
    rng = random.Random(seed)
    stages = rng.sample(STAGES, 2 if rng.random() < 0.4 else 1)
    faults = []
    for stage in stages:
        if stage == "landing.mid_consume":
            hit = rng.randint(1, max(1, records))
        elif stage == "landing.mid_copy":
            hit = rng.randint(1, COPY_STATEMENTS)
        elif stage == "merge.mid_merge":
            hit = rng.randint(1, MERGE_STATEMENTS)
        else:
            hit = 1
        faults.append(Fault(stage, hit))
    return faults


# --- the child --------------------------------------------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _counter(hit: int) -> Callable[[], bool]:
    """True on the `hit`-th call."""
    seen = [0]

    def arrived() -> bool:
        seen[0] += 1
        return seen[0] == hit

    return arrived


def _record_sessions(tokens_file: Path) -> None:
    """Write each new connection's session token to `tokens_file`, so the parent can abort what we leave."""
    import snowflake.connector

    real_connect = snowflake.connector.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        conn = real_connect(*args, **kwargs)
        with open(tokens_file, "a") as f:
            f.write(conn.rest.token + "\n")
        return conn

    snowflake.connector.connect = connect


def install(stage: str, hit: int) -> None:
    """Patch this process so that it SIGKILLs itself at the `hit`-th arrival at `stage`."""
    from tidb_pipeline.engine import landing
    from tidb_pipeline.replication import wire
    from tidb_pipeline.resources.warehouse import Warehouse

    arrived = _counter(hit)
    if stage == "landing.mid_consume":
        # Every landing row is built by a row function of its (key, value) schema pair (`LineBuilder.row`
        # and the readers' loop both get theirs here): count the rows those functions build.
        row_function = wire.LineBuilder.row_function

        def patched_row_function(self: Any, key: Any, value: Any) -> Any:
            build = row_function(self, key, value)

            def counted(*args: Any) -> tuple[str, str]:
                out = build(*args)
                if arrived():
                    _die()
                return out

            return counted

        wire.LineBuilder.row_function = patched_row_function  # type: ignore[method-assign]
    elif stage == "landing.after_consume":
        run_readers = landing.run_readers

        def patched_readers(*args: Any, **kwargs: Any) -> Any:
            out = run_readers(*args, **kwargs)
            if arrived():
                _die()
            return out

        landing.run_readers = patched_readers
    elif stage == "landing.after_stage_upload":
        from tidb_pipeline.engine import staging

        put = staging.put_file  # the loader's PUT went there with the engine move (engine/staging.py)

        def patched_put(*args: Any) -> str:
            out = put(*args)
            if arrived():
                _die()
            return out

        staging.put_file = patched_put
    elif stage == "landing.mid_copy":
        execute = Warehouse.execute

        def patched_execute(self: Warehouse, stmt: Any, params: Any = ()) -> Any:
            out = execute(self, stmt, params)
            sql = stmt if isinstance(stmt, str) else stmt.sql
            if sql.startswith(("DELETE FROM", "COPY INTO")) and arrived():
                _die()
            return out

        Warehouse.execute = patched_execute  # type: ignore[method-assign]
    elif stage in ("landing.before_commit", "landing.after_commit"):
        commit = Warehouse.commit

        def patched_commit(self: Warehouse) -> None:
            if stage == "landing.before_commit" and arrived():
                _die()
            commit(self)
            if stage == "landing.after_commit" and arrived():
                _die()

        Warehouse.commit = patched_commit  # type: ignore[method-assign]
    elif stage.startswith("merge."):
        execute_m = Warehouse.execute
        in_txn = [False]

        def patched_merge_execute(self: Warehouse, stmt: Any, params: Any = ()) -> Any:
            sql = stmt if isinstance(stmt, str) else stmt.sql
            if sql == "BEGIN":
                in_txn[0] = True
            if stage == "merge.before_commit" and sql == "COMMIT" and arrived():
                _die()
            out = execute_m(self, stmt, params)
            if stage == "merge.after_commit" and sql == "COMMIT" and arrived():
                _die()
            if stage == "merge.mid_merge" and in_txn[0] and sql != "COMMIT" and arrived():
                _die()
            return out

        Warehouse.execute = patched_merge_execute  # type: ignore[method-assign]
    else:  # pragma: no cover - CrashRun validates the stage
        raise ValueError(stage)


def _child(run: CrashRun) -> None:
    """Entry point in the forked child: patch, then run the job the way its asset does."""
    import logging

    import snowflake.connector
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from tidb_pipeline.lab.snowflake import connection_args
    from tidb_pipeline.resources.kafka import KafkaResource

    logging.disable(logging.CRITICAL)  # a dying child has nothing useful to say on the test's stderr
    tempfile.tempdir = run.workdir or None
    _record_sessions(run.tokens_file)
    install(run.stage, run.hit)
    registry = SchemaRegistryClient({"url": run.settings.registry_url})
    conn = snowflake.connector.connect(**connection_args(run.settings))
    if run.stage.startswith("landing."):
        from tidb_pipeline.engine import landing

        landing.load_topic(
            kafka=KafkaResource(bootstrap_servers=run.settings.kafka_bootstrap), registry=registry,
            connection=conn, topic=run.topic, landing=run.landing, control=run.control, max_records=run.max_records,
        )
    else:
        from tidb_pipeline.engine.landing import DEAD_LETTER_TABLE, LANDED_OFFSETS_TABLE
        from tidb_pipeline.engine.replica import merge_replica
        from tidb_pipeline.replication.holes import OFFSET_GAPS_TABLE

        assert run.replica is not None and run.watermarks is not None
        control = run.control
        merge_replica(connection=conn, registry=registry, topic=run.topic, landing=run.landing,
                      replica=run.replica, watermarks=run.watermarks,
                      dead_letters=TableRef(control.schema, DEAD_LETTER_TABLE, control.database),
                      offset_gaps=TableRef(control.schema, OFFSET_GAPS_TABLE, control.database),
                      kafka=KafkaResource(bootstrap_servers=run.settings.kafka_bootstrap), mode=run.mode,
                      landed_offsets=TableRef(control.schema, LANDED_OFFSETS_TABLE, control.database))
    conn.close()


# --- the parent -------------------------------------------------------------------------------------------


_CONTEXT: Any = None


def _context() -> Any:
    """A fork server that has imported the loader and the merge once; children fork from it."""
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["tidb_pipeline.lab.faults", "tidb_pipeline.engine.landing",
                                    "tidb_pipeline.engine.replica", "snowflake.connector"])
        _CONTEXT = ctx
    return _CONTEXT


def abort_detached(settings: LabSettings, tokens: Sequence[str]) -> int:
    """End the lab sessions a killed client left open (Snowflake's abort of a detached transaction)."""
    import httpx

    ended = 0
    for token in tokens:
        response = httpx.post(
            f"{settings.snowflake_url}/session", params={"delete": "true"},
            headers={"Authorization": f'Snowflake Token="{token}"'}, timeout=30,
        )
        ended += response.status_code == 200 and response.json().get("success") is True
    return ended


@dataclass(frozen=True)
class CrashOutcome:
    stage: str
    hit: int
    exit_code: int | None
    sessions_aborted: int

    @property
    def killed(self) -> bool:
        return self.exit_code == -signal.SIGKILL


def _cpu_ticks(pid: int) -> int | None:
    """The process's user + system CPU time in clock ticks (None once it is gone, or without /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def _join_while_progressing(proc: multiprocessing.process.BaseProcess, *, idle_timeout: float) -> None:
    """Wait for `proc` while it keeps using CPU; give up after `idle_timeout` seconds without any.

    A fixed deadline failed runs that were only slow on a busy machine; a hung child uses no CPU.
    """
    assert proc.pid is not None
    last, since = _cpu_ticks(proc.pid), time.monotonic()
    while proc.is_alive():
        proc.join(min(5.0, idle_timeout))
        ticks = _cpu_ticks(proc.pid)
        if ticks is not None and ticks != last:
            last, since = ticks, time.monotonic()
        elif time.monotonic() - since >= idle_timeout:
            return


def run_killed(run: CrashRun, *, timeout: float = 300.0, require_kill: bool = True) -> CrashOutcome:
    """Run the job in a child that dies at `run.stage`; clean up its detached sessions; report how it ended.

    `timeout` is how long the child may go without using CPU (hung), not how long it may take.
    Raises StageNotReached when the child finished normally and `require_kill` is set, and RuntimeError
    when it failed with an error of its own (a bug, not the injected fault).
    """
    workdir = run.workdir or tempfile.mkdtemp(prefix="faults-")
    run = dataclasses.replace(run, workdir=workdir)
    proc = _context().Process(target=_child, args=(run,), name=f"crash-{run.stage}")
    proc.start()
    _join_while_progressing(proc, idle_timeout=timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise TimeoutError(f"faulted run {run.stage} (hit {run.hit}) used no CPU for {timeout:.0f}s: it hangs")
    tokens_file = Path(workdir) / f"sessions-{proc.pid}.txt"
    tokens = tokens_file.read_text().split() if tokens_file.exists() else []
    tokens_file.unlink(missing_ok=True)
    outcome = CrashOutcome(run.stage, run.hit, proc.exitcode, abort_detached(run.settings, tokens))
    if outcome.exit_code not in (0, -signal.SIGKILL):
        raise RuntimeError(f"faulted run {run.stage} (hit {run.hit}) failed by itself with exit code {outcome.exit_code}")
    if require_kill and not outcome.killed:
        raise StageNotReached(f"run finished without reaching {run.stage} (hit {run.hit})")
    return outcome
