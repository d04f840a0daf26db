"""deploy/: the instance config passes Dagster's own schema and runs on a real PostgreSQL; the compose file,
workspace and images agree with it and with the project's pins; every variable the pipeline reads is forwarded."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._serdes.config_class import class_from_code_pointer
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.workspace.config_schema import process_workspace_config
from dagster_docker import DockerRunLauncher

from tidb_pipeline.lab.service import Service

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PG_VARS = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")
DAGSTER_PINS = {"dagster": "1.13.27", "dagster-graphql": "1.13.27", "dagster-webserver": "1.13.27",
                "dagster-postgres": "0.29.27", "dagster-docker": "0.29.27"}


def _yaml(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def _instance_dir(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    return home


def test_instance_config_passes_dagsters_schema(tmp_path: Path) -> None:
    config, custom_class = dagster_instance_config(str(_instance_dir(tmp_path)))
    assert custom_class is None
    assert config["storage"]["postgres"]["postgres_db"] == {
        "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USERNAME"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"}, "scheme": "postgresql+psycopg2",
    }
    assert config["telemetry"] == {"enabled": False}


def test_run_launcher_coordinator_and_storage_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = InstanceRef.from_dir(str(_instance_dir(tmp_path)))
    # Rehydrating validates each class's own config schema (and resolves nothing secret: none is inline).
    launcher = ref.run_launcher
    assert isinstance(launcher, DockerRunLauncher)
    assert launcher.networks == [_yaml("docker-compose.yaml")["networks"]["tidb_pipeline"]["name"]]
    assert launcher.env_vars == _yaml("dagster.yaml")["run_launcher"]["config"]["env_vars"]
    coordinator = ref.run_coordinator
    assert isinstance(coordinator, QueuedRunCoordinator)
    assert coordinator.get_run_queue_config().max_concurrent_runs == 8
    data = ref.storage_data
    assert data is not None
    assert (data.module_name, data.class_name) == ("dagster_postgres", "DagsterPostgresStorage")
    # The storage class imports and its own schema resolves the variables (without connecting).
    for i, var in enumerate(PG_VARS):
        monkeypatch.setenv(var, "5432" if var == "DAGSTER_PG_PORT" else f"value{i}")
    storage_class = class_from_code_pointer(data.module_name, data.class_name)
    resolved = process_config(storage_class.config_type(), yaml.safe_load(data.config_yaml))
    assert resolved.success, resolved.errors
    assert resolved.value["postgres_db"] == {"hostname": "value0", "port": 5432, "username": "value2",
                                             "password": "value3", "db_name": "value4", "params": {},
                                             "scheme": "postgresql+psycopg2"}


def test_every_variable_the_pipeline_reads_is_forwarded_once() -> None:
    forwarded = _yaml("dagster.yaml")["run_launcher"]["config"]["env_vars"]
    assert len(forwarded) == len(set(forwarded)), "a variable is listed twice"
    # Found independently of the list: every setting/secret name in the production packages.
    name = re.compile(r'"((?:TIDB|TICDC|KAFKA|SCHEMA_REGISTRY|CONFLUENT|KSQLDB|SNOWFLAKE|SQLSERVER)_[A-Z0-9_]+)"')
    read: set[str] = set()
    for folder in ("resources", "engine", "defs"):
        for path in (ROOT / "tidb_pipeline" / folder).rglob("*.py"):
            read.update(name.findall(path.read_text()))
    assert "KSQLDB_API_SECRET" in read and "SNOWFLAKE_ACCOUNT" in read  # the scan sees what it should
    # TIDB_PIPELINE_CONFIG is not forwarded: it is baked into the image (asserted below).
    assert sorted(read - set(forwarded) - {"TIDB_PIPELINE_CONFIG"}) == []
    assert set(PG_VARS) <= set(forwarded)
    # The env file template defines every forwarded variable the compose file does not set itself.
    template = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", (DEPLOY / ".env.example").read_text(), re.MULTILINE))
    assert sorted(set(forwarded) - set(template)) == ["DAGSTER_PG_HOST", "DAGSTER_PG_PORT"]
    assert sorted(set(template) - set(forwarded)) == []
    # TIDB_PIPELINE_CONFIG is baked into the image (ENV), which run containers share.
    assert "TIDB_PIPELINE_CONFIG=/opt/dagster/app/tidb_pipeline.yaml" in (DEPLOY / "Dockerfile").read_text()


def test_compose_workspace_and_images_agree() -> None:
    compose = _yaml("docker-compose.yaml")
    services = compose["services"]
    assert set(services) == {"postgresql", "tidb_pipeline_code", "dagster_webserver", "dagster_daemon"}
    code = services["tidb_pipeline_code"]
    assert code["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert code["environment"]["DAGSTER_CURRENT_IMAGE"] == code["image"]
    for name in ("dagster_webserver", "dagster_daemon"):
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile.dagster"}
        assert services[name]["image"] == "tidb-pipeline-dagster"
    for name in ("tidb_pipeline_code", "dagster_webserver", "dagster_daemon"):
        env = services[name]["environment"]
        assert set(PG_VARS) <= set(env) and env["DAGSTER_PG_HOST"] == "postgresql"
        assert services[name]["networks"] == ["tidb_pipeline"]
    # The launcher forwards from the daemon's environment; the code location reads the same file at load.
    assert services["dagster_daemon"]["env_file"] == services["tidb_pipeline_code"]["env_file"] == [".env"]

    workspace = process_workspace_config(_yaml("workspace.yaml"))
    assert workspace.success, workspace.errors
    (entry,) = _yaml("workspace.yaml")["load_from"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    port = re.search(r'"--port", "(\d+)"', dockerfile)
    assert port and entry["grpc_server"]["port"] == int(port.group(1))
    assert entry["grpc_server"]["host"] == "tidb_pipeline_code"
    assert f'"--location-name", "{entry["grpc_server"]["location_name"]}"' in dockerfile
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile


def test_image_pins_match_the_project() -> None:
    pins = dict(re.findall(r'"([a-z-]+)==([0-9.]+)"', (DEPLOY / "Dockerfile.dagster").read_text()))
    assert pins == DAGSTER_PINS
    project = dict(re.findall(r'"([a-z-]+)(?:\[[^\]]*\])?==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()))
    assert {k: project[k] for k in ("dagster", "dagster-webserver", "dagster-docker")} == {
        k: DAGSTER_PINS[k] for k in ("dagster", "dagster-webserver", "dagster-docker")}
    assert '"dagster-postgres==0.29.27"' in (DEPLOY / "Dockerfile").read_text()


@pytest.mark.integration
def test_instance_runs_on_postgresql(postgres: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deploy instance config, pointed at the lab's PostgreSQL: storage tables are created and a run is stored."""
    import pg8000.native

    database = f"dagster_{uuid.uuid4().hex[:8]}"
    admin = pg8000.native.Connection(**postgres.connect_kwargs())  # type: ignore[attr-defined]
    try:
        admin.run(f'CREATE DATABASE "{database}"')
    finally:
        admin.close()
    kwargs = postgres.connect_kwargs(database)  # type: ignore[attr-defined]
    env = {"DAGSTER_PG_HOST": kwargs["host"], "DAGSTER_PG_PORT": str(kwargs["port"]),
           "DAGSTER_PG_USERNAME": kwargs["user"], "DAGSTER_PG_PASSWORD": kwargs["password"],
           "DAGSTER_PG_DB": database}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))

    @dg.asset
    def deploy_probe() -> int:
        return 1

    try:
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(_instance_dir(tmp_path)))) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            result = dg.materialize([deploy_probe], instance=instance)
            assert result.success
            records = instance.get_run_records()
            assert [r.dagster_run.run_id for r in records] == [result.run_id]
            event = instance.get_latest_materialization_event(dg.AssetKey("deploy_probe"))
            assert event is not None and event.run_id == result.run_id
    finally:
        admin = pg8000.native.Connection(**postgres.connect_kwargs())  # type: ignore[attr-defined]
        try:
            admin.run(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            admin.close()


@pytest.mark.parametrize("instance_file", ["deploy/dagster.yaml", "dagster.yaml"])
def test_one_merge_run_per_table_group_at_a_time(instance_file: str, tmp_path: Path) -> None:
    from tidb_pipeline.config import parse_config
    from tidb_pipeline.defs.jobs import GROUP_TAG, build_merge_jobs

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / instance_file, home / "dagster.yaml")
    coordinator = InstanceRef.from_dir(str(home)).run_coordinator
    assert isinstance(coordinator, QueuedRunCoordinator)
    limits = coordinator.get_run_queue_config().tag_concurrency_limits
    assert [(lim["key"], lim["value"], lim["limit"]) for lim in limits] == [
        (GROUP_TAG, {"applyLimitPerUniqueValue": True}, 1)]
    assert coordinator.dequeue_interval_seconds == 1  # a queued merge starts within a second of its slot freeing
    # ... and every merge job's runs carry that tag, one value per group (the sensor's requests do too).
    config = parse_config({"merge_schedules": {"a": {"cron": "* * * * *"}, "b": {"cron": "* * * * *"}},
                           "tables": [{"db": "d", "table": "t1", "key": ["id"], "group": "a"},
                                      {"db": "d", "table": "t2", "key": ["id"], "group": "b"}]})
    assert {job.name: job.tags[GROUP_TAG] for job in build_merge_jobs(config=config)} == {
        "merge_a": "a", "merge_b": "b"}
