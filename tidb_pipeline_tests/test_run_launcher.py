"""WarmRunLauncher on a real Dagster instance: runs launched through it from a real code server, in real
worker processes (a spare started ahead, or cold), their events in the instance; termination; stale code.

The code location is a small module written to a temporary directory (its jobs are what a test needs: one
that succeeds and says which version of the code ran it, one that runs until it is terminated).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef
from dagster._core.launcher import WorkerStatus
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import ModuleTarget

from tidb_pipeline.run_launcher import PID_TAG, START_TAG, WarmRunLauncher

_DEFS = '''
import time
from pathlib import Path

import dagster as dg

# Read at import, as the project's definitions read tidb_pipeline.yaml; version 10 adds a job.
VERSION = {version} + int(Path(__file__).with_name("version.txt").read_text())


@dg.op
def say_version(context: dg.OpExecutionContext) -> None:
    context.log.info(f"code version {{VERSION}}")


@dg.op
def wait_forever(context: dg.OpExecutionContext) -> None:
    context.log.info("waiting")
    while True:
        time.sleep(0.1)


@dg.job
def ok_job() -> None:
    say_version()


@dg.job
def slow_job() -> None:
    wait_forever()


@dg.job
def extra_job() -> None:
    say_version()


defs = dg.Definitions(jobs=[ok_job, slow_job] + ([extra_job] if VERSION >= 10 else []), executor=dg.in_process_executor)
'''
_TIMEOUT_S = 600  # a bound for a broken launcher, not a pace: every wait polls the run's status


def _write(path: Path, text: str) -> None:
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    # A rewrite within the file system's timestamp granularity must still look changed.
    os.utime(path, ns=(old + 10**9, old + 10**9))


def _write_defs(folder: Path, version: int, extra: int = 0) -> None:
    _write(folder / "warm_defs.py", _DEFS.format(version=version))
    _write(folder / "version.txt", str(extra))


@pytest.fixture(scope="module")
def location(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dg.DagsterInstance, WorkspaceProcessContext, Path]]:
    folder = tmp_path_factory.mktemp("warm_location")
    _write_defs(folder, 1)
    overrides = {"run_launcher": {"module": "tidb_pipeline.run_launcher", "class": "WarmRunLauncher",
                                  "config": {"preload_modules": ["warm_defs"]}}}
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path_factory.mktemp("dagster_home"))) as instance:
        target = ModuleTarget(module_name="warm_defs", attribute="defs", working_directory=str(folder),
                              location_name="warm_location")
        with WorkspaceProcessContext(instance, target) as context:
            yield instance, context, folder


def _launch(instance: dg.DagsterInstance, workspace: WorkspaceRequestContext, job_name: str) -> dg.DagsterRun:
    location = workspace.get_code_location("warm_location")
    remote_job = location.get_repository("__repository__").get_full_job(job_name)
    plan = location.get_execution_plan(remote_job, {}, step_keys_to_execute=None, known_state=None)
    # As the UI's launch creates a run of a remote job: from its snapshots and origins.
    run = instance.create_run(
        job_name=job_name, run_id=None, run_config={}, status=None, tags={}, root_run_id=None,
        parent_run_id=None, step_keys_to_execute=None, execution_plan_snapshot=plan.execution_plan_snapshot,
        job_snapshot=remote_job.job_snapshot, parent_job_snapshot=remote_job.parent_job_snapshot,
        asset_selection=None, asset_check_selection=None, resolved_op_selection=None, op_selection=None,
        remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
        asset_graph=workspace.asset_graph)
    instance.launch_run(run.run_id, workspace)
    return run


def _wait(instance: dg.DagsterInstance, run_id: str, statuses: set[dg.DagsterRunStatus]) -> dg.DagsterRun:
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        if run.status in statuses:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status} after {_TIMEOUT_S}s"
        time.sleep(0.1)


def _finished(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    return _wait(instance, run_id, {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                                    dg.DagsterRunStatus.CANCELED})


def _logged(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.dagster_event.message or "" if e.dagster_event else e.user_message for e in instance.all_logs(run_id)]


def _launcher(instance: dg.DagsterInstance) -> WarmRunLauncher:
    launcher = instance.run_launcher
    assert isinstance(launcher, WarmRunLauncher)
    return launcher


def _ready_spare(instance: dg.DagsterInstance, workspace: WorkspaceRequestContext) -> None:
    """A spare worker exists and has imported the definitions (a run launched before then would find it mid-import)."""
    if _launcher(instance)._spare is None:
        _finished(instance, _launch(instance, workspace, "ok_job").run_id)
    spare = _launcher(instance)._spare
    assert spare is not None
    deadline = time.monotonic() + _TIMEOUT_S
    while not spare.ready():
        assert spare.proc.poll() is None, f"the spare worker exited ({spare.proc.returncode}) before it was ready"
        assert time.monotonic() < deadline, f"the spare worker did not import its modules within {_TIMEOUT_S}s"
        time.sleep(0.1)


def _spare_pid(instance: dg.DagsterInstance) -> int:
    spare = _launcher(instance)._spare
    assert spare is not None, "no spare worker was started after the launch"
    return spare.proc.pid


def test_runs_launch_cold_then_on_the_spare(location: Any) -> None:
    instance, context, _folder = location
    workspace = context.create_request_context()
    first = _launch(instance, workspace, "ok_job")
    spare = _spare_pid(instance)
    assert _finished(instance, first.run_id).status == dg.DagsterRunStatus.SUCCESS
    done = instance.get_run_by_id(first.run_id)
    assert done is not None and done.tags[START_TAG] == "cold: no spare worker yet"
    assert "code version 1" in _logged(instance, first.run_id)

    second = _launch(instance, workspace, "ok_job")
    assert _finished(instance, second.run_id).status == dg.DagsterRunStatus.SUCCESS
    done = instance.get_run_by_id(second.run_id)
    assert done is not None
    assert (done.tags[START_TAG], done.tags[PID_TAG]) == ("warm", str(spare))
    # The run's own events, written by the worker that took it: started in that process, the step, success.
    logged = _logged(instance, second.run_id)
    assert f"Started process for run (pid: {spare})." in logged
    assert "code version 1" in logged
    assert _spare_pid(instance) != spare  # and the next spare is already waiting


def test_a_killed_spare_still_lets_the_run_launch(location: Any) -> None:
    instance, context, _folder = location
    workspace = context.create_request_context()
    _ready_spare(instance, workspace)
    spare = _launcher(instance)._spare
    assert spare is not None
    os.kill(spare.proc.pid, signal.SIGKILL)
    spare.proc.wait(timeout=_TIMEOUT_S)

    run = _launch(instance, workspace, "ok_job")
    assert _finished(instance, run.run_id).status == dg.DagsterRunStatus.SUCCESS
    done = instance.get_run_by_id(run.run_id)
    assert done is not None
    assert done.tags[START_TAG] == f"cold: the spare worker (pid {spare.proc.pid}) had exited (-9)"
    assert "code version 1" in _logged(instance, run.run_id)


def test_terminate_ends_a_running_run_canceled(location: Any) -> None:
    instance, context, _folder = location
    workspace = context.create_request_context()
    run = _launch(instance, workspace, "slow_job")
    deadline = time.monotonic() + _TIMEOUT_S
    while "waiting" not in _logged(instance, run.run_id):  # the op is running
        assert time.monotonic() < deadline
        assert not instance.get_run_by_id(run.run_id).is_finished  # type: ignore[union-attr]
        time.sleep(0.1)
    running = instance.get_run_by_id(run.run_id)
    assert running is not None
    assert _launcher(instance).check_run_worker_health(running).status == WorkerStatus.RUNNING
    assert instance.run_coordinator.cancel_run(run.run_id)  # what the UI's Terminate calls
    assert _finished(instance, run.run_id).status == dg.DagsterRunStatus.CANCELED
    pid = int(instance.get_run_by_id(run.run_id).tags[PID_TAG])  # type: ignore[union-attr]
    deadline = time.monotonic() + _TIMEOUT_S
    while os.path.exists(f"/proc/{pid}") and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():
        assert time.monotonic() < deadline, f"the terminated run's worker (pid {pid}) is still running"
        time.sleep(0.1)
    assert not _launcher(instance).terminate(run.run_id)  # a finished run: nothing to end
    assert _launcher(instance).check_run_worker_health(running).status == WorkerStatus.NOT_FOUND


def test_a_spare_never_runs_changed_code(location: Any) -> None:
    instance, context, folder = location
    workspace = context.create_request_context()
    _ready_spare(instance, workspace)
    _write(folder / "warm_defs.py", _DEFS.format(version=2))  # after the spare imported version 1; only the code

    run = _launch(instance, workspace, "ok_job")
    assert _finished(instance, run.run_id).status == dg.DagsterRunStatus.SUCCESS
    done = instance.get_run_by_id(run.run_id)
    assert done is not None
    assert done.tags[START_TAG] == f"cold: {folder / 'warm_defs.py'} changed since the spare worker started"
    logged = _logged(instance, run.run_id)
    assert "code version 2" in logged and "code version 1" not in logged


def test_a_spare_never_runs_with_a_changed_file_it_read(location: Any) -> None:
    """A file the definitions read at import (a config file) changed: not code, but stale all the same."""
    instance, context, folder = location
    workspace = context.create_request_context()
    _ready_spare(instance, workspace)
    _write(folder / "version.txt", "1")

    run = _launch(instance, workspace, "ok_job")
    assert _finished(instance, run.run_id).status == dg.DagsterRunStatus.SUCCESS
    done = instance.get_run_by_id(run.run_id)
    assert done is not None
    assert done.tags[START_TAG] == f"cold: {folder / 'version.txt'} changed since the spare worker started"
    assert f"code version {_version(folder)}" in _logged(instance, run.run_id)


def _version(folder: Path) -> int:
    text = (folder / "warm_defs.py").read_text()
    return int(text.split("VERSION = ")[1].split(" ")[0]) + int((folder / "version.txt").read_text())


def test_a_reloaded_code_location_keeps_the_spare_only_when_its_definitions_are_the_same(location: Any) -> None:
    instance, context, folder = location
    _ready_spare(instance, context.create_request_context())
    # The daemon reloads its code locations every minute: the same code must keep its spare worker.
    context.reload_code_location("warm_location")
    run = _launch(instance, context.create_request_context(), "ok_job")
    assert _finished(instance, run.run_id).status == dg.DagsterRunStatus.SUCCESS
    done = instance.get_run_by_id(run.run_id)
    assert done is not None and done.tags[START_TAG] == "warm"

    _write_defs(folder, 10)  # a new job: other definitions
    context.reload_code_location("warm_location")
    run = _launch(instance, context.create_request_context(), "extra_job")
    assert _finished(instance, run.run_id).status == dg.DagsterRunStatus.SUCCESS
    done = instance.get_run_by_id(run.run_id)
    assert done is not None
    assert done.tags[START_TAG] == "cold: the code location's definitions changed since the spare worker started"
    assert "code version 10" in _logged(instance, run.run_id)


@pytest.mark.parametrize(("config", "field"), [
    ({"preload_modules": ["tidb_pipeline definitions"]}, "preload_modules"),
    ({"handoff_timeout_seconds": 0.0}, "handoff_timeout_seconds"),
])
def test_bad_config_fails_at_load_naming_the_field(tmp_path: Path, config: dict[str, Any], field: str) -> None:
    overrides = {"run_launcher": {"module": "tidb_pipeline.run_launcher", "class": "WarmRunLauncher",
                                  "config": config}}
    with pytest.raises(dg.DagsterInvalidConfigError, match=field), \
            dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
        _ = instance.run_launcher


def test_the_repo_instance_preloads_the_definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", tmp_path / "dagster.yaml")
    launcher = InstanceRef.from_dir(str(tmp_path)).run_launcher
    assert isinstance(launcher, WarmRunLauncher)
    assert launcher._preload == ("tidb_pipeline.definitions",)
