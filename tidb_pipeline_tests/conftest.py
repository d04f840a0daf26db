"""Session fixtures that bring up the lab parts an integration test needs, and the test tiers.

They use the default lab (`.lab/`, default ports) so a lab already started with `tidb-pipeline lab up`
is reused; a part a fixture had to start is stopped again at the end of the session. Under pytest-xdist
(`make test` runs both tiers on two processes) the first worker uses that default lab and every other worker a
lab of its own (`_worker_lab`), so no two processes share a lab folder, a port or a part to stop.

Tiers: every test that uses a lab part (one of `LAB_FIXTURES`, directly or through another fixture) is
marked `integration` here, so `make test-unit` (`-m "not integration"`) runs everything that needs no lab
and `make test` runs everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tidb_pipeline.lab import stack
from tidb_pipeline.lab.service import Service, down, up
from tidb_pipeline.lab.settings import LabSettings


def _worker_lab() -> None:
    """Point pytest-xdist worker gwN (N >= 1) at a lab of its own: folder `<lab>-gwN`, every port moved by
    200*N - 100 (between the 200-apart port sets developers' labs use). Set in the environment at import, before
    any LabSettings is made, so the fixtures, the tests and every child process they start agree on it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker.removeprefix("gw") or 0)
    if n == 0:
        return
    base = LabSettings()
    os.environ["TIDB_PIPELINE_LAB_DIR"] = f"{base.root}-{worker}"
    for name, port in base.ports.items():
        os.environ[f"TIDB_PIPELINE_LAB_{name.upper()}_PORT"] = str(port + 200 * n - 100)


_worker_lab()


# The fixtures that start a lab part (below), and the test-local ones that start private lab parts.
LAB_FIXTURES = frozenset({"kafka", "mariadb", "registry", "snowflake", "ticdc", "postgres", "connect",
                          "service", "stand_in", "cloud", "worker", "mariadb_service", "dagster_dev"})


# Modules that build whole environments (a wheel and a venv, a `dg` project, the UI in a browser, code servers
# and run processes): no lab part, but minutes each, so they run with the integration tier.
ENVIRONMENT_MODULES = ("test_packaging.py", "test_dg.py", "ui/", "test_run_launcher.py")

# Modules holding each tier's longest tests (unit: mypy, the mode models on fakesnow; integration: a minute or
# more each, longest first) run first, so that on several workers (pytest-xdist, Makefile's PYTEST_WORKERS) they
# start at once rather than end as one worker's tail.
LONG_FIRST = ("tidb_pipeline_tests/test_lint.py", "tidb_pipeline_tests/replication/test_modes.py",
              "tidb_pipeline_tests/lab/test_demo.py", "tidb_pipeline_tests/test_packaging.py",
              "tidb_pipeline_tests/reliability/test_crash_anywhere.py", "tidb_pipeline_tests/bench/test_bench_smoke.py",
              "tidb_pipeline_tests/ui/test_ui.py", "tidb_pipeline_tests/test_dg.py",
              "tidb_pipeline_tests/defs/test_schema_changes_lab.py", "tidb_pipeline_tests/reliability/test_restarts.py",
              "tidb_pipeline_tests/defs/test_connector_mode_end_to_end.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.as_posix()
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())) or any(m in path for m in ENVIRONMENT_MODULES):
            item.add_marker(pytest.mark.integration)
    def rank(item: pytest.Item) -> int:
        return next((i for i, m in enumerate(LONG_FIRST) if item.path.as_posix().endswith(m)), len(LONG_FIRST))
    items.sort(key=rank)  # stable: each module stays whole and in order


@pytest.fixture(scope="session")
def lab_settings() -> LabSettings:
    return LabSettings()


_started: list[Service] = []


def _bring_up(settings: LabSettings, name: str) -> Service:
    needed = stack.services(settings, [name])
    fresh = [s for s in needed if s.pid() is None]
    up(needed, log=lambda _msg: None)
    _started.extend(s for s in fresh if s.name not in {x.name for x in _started})
    return next(s for s in needed if s.name == name)


@pytest.fixture(scope="session", autouse=True)
def _stop_what_we_started() -> Iterator[None]:
    yield
    down(list(reversed(_started)), log=lambda _msg: None)


@pytest.fixture(scope="session")
def kafka(lab_settings: LabSettings) -> Service:
    return _bring_up(lab_settings, "kafka")


@pytest.fixture(scope="session")
def mariadb(lab_settings: LabSettings) -> Service:
    return _bring_up(lab_settings, "mariadb")


@pytest.fixture(scope="session")
def registry(lab_settings: LabSettings) -> Service:
    return _bring_up(lab_settings, "registry")


@pytest.fixture(scope="session")
def snowflake(lab_settings: LabSettings) -> Service:
    return _bring_up(lab_settings, "snowflake")


@pytest.fixture(scope="session")
def ticdc(lab_settings: LabSettings) -> Service:
    return _bring_up(lab_settings, "ticdc")


@pytest.fixture(scope="session")
def postgres(lab_settings: LabSettings) -> Service:
    return _bring_up(lab_settings, "postgres")


@pytest.fixture(scope="session")
def connect(lab_settings: LabSettings) -> Service:
    return _bring_up(lab_settings, "connect")
