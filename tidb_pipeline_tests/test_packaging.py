"""The wheel as a user gets it: its metadata; the definitions and the component load where only the core
requirements are installed (no lab, test or UI extras); and a fresh `dg` project made by create-dagster adds
the component with `dg scaffold defs`, passes `dg check`, and materialises a replica on the lab.

The wheel and one venv (the wheel with its core requirements, plus `dagster-dg-cli`) are built once per
module; pip's cache makes the venv a matter of unpacking (about a minute and a half on this machine).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pymysql
import pytest
import yaml

from tidb_pipeline.components import TYPE_NAME
from tidb_pipeline.config import parse_config
from tidb_pipeline.defs.tables import changefeed_key, table_keys, table_names
from tidb_pipeline.lab.env import pipeline_env
from tidb_pipeline.lab.service import Service, wait_until
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.ticdc.codec import tso_from_ms
from tidb_pipeline_tests.lab_resources import drop_pipeline_output
from tidb_pipeline_tests.dg_cli import REPO, dg_env, run, this_venv
from tidb_pipeline_tests.test_components import shape

# Modules only an extra installs; none may be importable in the core venv.
EXTRAS_ONLY = ("fakesnow", "pymysqlreplication", "pandas", "pg8000", "matplotlib", "dagster_webserver",
               "dagster_docker", "pytest", "hypothesis", "playwright")
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([*PIP, "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)], check=True, capture_output=True,
                   timeout=600)
    (built,) = out.glob("tidb_pipeline-*.whl")
    return built


@pytest.fixture(scope="module")
def core_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the wheel, its core requirements and `dg`: what a Dagster project installs."""
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # pip of this venv installs into that one; --no-compile: bytecode is written on first import anyway.
    done = subprocess.run([*PIP, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-compile",
                           str(wheel), "dagster-dg-cli==1.13.27"], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return venv


def test_wheel_metadata_license_classifiers_entry_points_and_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert "License-Expression: Apache-2.0" in metadata and f"{info}/licenses/LICENSE" in names
    assert "Classifier: Framework :: Dagster" in metadata
    assert "Description-Content-Type: text/markdown" in metadata  # the README is the long description
    assert "[console_scripts]\ntidb-pipeline = tidb_pipeline.cli:main" in entry_points
    assert "[dagster_dg_cli.registry_modules]\ntidb_pipeline = tidb_pipeline.components" in entry_points
    assert {"tidb_pipeline/components.py", "tidb_pipeline/location/tidb_replication/defs.yaml"} <= names
    assert not [n for n in names if n.startswith("tidb_pipeline_tests/")]
    # The core requirements name none of the extras' packages; each of those sits behind its extra.
    core = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)[^;\n]*$", metadata, re.MULTILINE)
    assert "dagster" in core and not {"fakesnow", "mysql-replication", "pandas", "pg8000", "matplotlib",
                                      "dagster-webserver", "dagster-docker", "pytest"} & set(core)
    for package, extra in [("fakesnow", "lab"), ("mysql-replication", "lab"), ("dagster-dg-cli", "dev"),
                           ("dagster-webserver", "dev"), ("dagster-docker", "deploy"), ("pytest", "test")]:
        assert re.search(rf"^Requires-Dist: {package}\b.*; extra == \"{extra}\"$", metadata, re.MULTILINE), package


def test_readme_records_the_pinned_dagster_versions() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    pins = dict(re.findall(r'"(dagster[a-z-]*|create-dagster)==([0-9.]+)"', pyproject))
    assert {"dagster", "dagster-dg-cli", "dagster-dg-core", "dagster-snowflake", "create-dagster"} <= set(pins)
    readme = (REPO / "README.md").read_text()
    for name, version in pins.items():
        assert f"`{name}=={version}`" in readme, f"README does not record {name}=={version}"


_LOAD = """
import importlib.util, json, os, sys
missing = [m for m in sys.argv[1].split(",") if importlib.util.find_spec(m) is None]
from tidb_pipeline.definitions import defs
from tidb_pipeline.components import TiDBReplicationComponent
import dagster as dg
repo = defs.get_repository_def()
inline = dg.build_defs_for_component(TiDBReplicationComponent.from_attributes_dict(
    attributes={"tables": [{"db": "shop", "table": "orders", "key": ["id"]}]}))
print(json.dumps({"missing": missing, "assets": sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()),
                  "inline": len(inline.get_repository_def().asset_graph.get_all_asset_keys())}))
"""


@pytest.mark.timeout(1500)
def test_definitions_and_component_load_without_the_extras(core_venv: Path, tmp_path: Path) -> None:
    from tidb_pipeline.definitions import defs

    env = dg_env(core_venv, tmp_path / "home", {"TIDB_PIPELINE_CONFIG": str(REPO / "tidb_pipeline.yaml")})
    python = str(core_venv / "bin" / "python")
    # Run from tmp_path: the repo's own package must not shadow the installed one.
    done = run([python, "-c", _LOAD, ",".join(EXTRAS_ONLY)], cwd=tmp_path, env=env)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(loaded["missing"]) == sorted(EXTRAS_ONLY)
    assert loaded["assets"] == sorted(shape(defs)["assets"])
    assert loaded["inline"] == 5  # changefeed, tidb, kafka, landing, replica

    # The CLI is installed; what needs the lab says which extra to install instead of a traceback.
    assert "discover" in run([str(core_venv / "bin" / "tidb-pipeline"), "--help"], cwd=tmp_path, env=env).stdout
    # (It checks before starting anything.)
    done = run([str(core_venv / "bin" / "tidb-pipeline"), "lab", "up", "--only", "snowflake"], cwd=tmp_path,
               env={**env, "TIDB_PIPELINE_LAB_DIR": str(tmp_path / "lab")}, check=False)
    assert done.returncode == 2 and "pip install 'tidb_pipeline[lab]'" in done.stderr, done.stderr[-2000:]
    # dg finds the component through the entry point.
    listed = run([str(core_venv / "bin" / "dg"), "list", "components", "--json"], cwd=tmp_path, env=env).stdout
    assert TYPE_NAME in {c["key"] for c in json.loads(listed)["items"]}


# --- a fresh dg project -------------------------------------------------------------------------------------

ROWS = [(1, "apple", "1.50"), (2, "pear", "2.25"), (3, "plum", "0.99")]


def _sql(mariadb: Service, *statements: str) -> None:
    with pymysql.connect(autocommit=True, **mariadb.connect_kwargs()) as conn, conn.cursor() as cur:  # type: ignore[attr-defined]
        for statement in statements:
            cur.execute(statement)


@pytest.fixture()
def shop_table(mariadb: Service, lab_settings: LabSettings, kafka: Service, registry: Service, snowflake: Service,
               ticdc: Service) -> Iterator[dict]:
    """An empty source table in a database of its own and the component attributes that replicate only it
    (own changefeed id, Snowflake database; schedules off so only the test's runs touch it)."""
    suffix = uuid.uuid4().hex[:8]
    db = f"shop_{suffix}"
    _sql(mariadb, f"CREATE DATABASE `{db}`",
         f"CREATE TABLE `{db}`.items (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, price DECIMAL(10,2) NOT NULL)")
    off = {"enabled": False}
    attributes = {
        "source": {"changefeed_id": f"shop-{suffix}", "partitions": 1},
        "snowflake": {"database": f"SHOP_{suffix.upper()}"},
        "merge_schedules": {"default": {"cron": "* * * * *", **off}},
        "cleanup_schedule": {"cron": "0 */2 * * *", **off},
        "reconcile_schedule": {"cron": "0 * * * *", **off},
        "tables": [{"db": db, "table": "items", "key": ["id"]}],
    }
    try:
        yield {"db": db, "table": "items", "attributes": attributes}
    finally:
        _drop(lab_settings, mariadb, attributes)


def _drop(lab: LabSettings, mariadb: Service, attributes: dict) -> None:
    config = parse_config(attributes)
    drop_pipeline_output(lab, config)
    _sql(mariadb, f"DROP DATABASE IF EXISTS `{config.tables[0].db}`")


def _wait_checkpoint_past(lab: LabSettings, changefeed_id: str, tso: int) -> None:
    """Until the changefeed's checkpoint passes `tso` (every earlier commit is on Kafka)."""
    def passed() -> bool:
        status = httpx.get(f"{lab.ticdc_url}/api/v2/changefeeds/{changefeed_id}/status", timeout=30).json()
        assert status["state"] == "normal", status
        return status["checkpoint_ts"] > tso

    # The lab feed reads the server's whole binlog, other tests' traffic included: allow for a busy machine.
    wait_until(passed, timeout=300, what=f"changefeed {changefeed_id} passing TSO {tso}", interval=0.25)


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_a_fresh_dg_project_scaffolds_the_component_and_materialises_a_replica(
    core_venv: Path, tmp_path: Path, lab_settings: LabSettings, mariadb: Service, shop_table: dict
) -> None:
    from tidb_pipeline.lab.compare import compare_table
    from tidb_pipeline.lab.snowflake import connection_args

    started, phases = time.monotonic(), dict[str, float]()
    # 1. A new project, as the Dagster docs make one, with the core venv as its environment.
    create_dagster = str(this_venv() / "bin" / "create-dagster")
    run([create_dagster, "project", "shop", "--no-uv-sync"], cwd=tmp_path, env=dg_env(this_venv(), tmp_path / "h0"))
    project = tmp_path / "shop"
    (project / ".venv").symlink_to(core_venv)
    run([*PIP, "--python", str(core_venv / "bin" / "python"), "install", "-q", "--no-compile", "--no-deps", "-e",
         str(project)], cwd=tmp_path, env=dg_env(this_venv(), tmp_path / "h0"))
    env = dg_env(core_venv, tmp_path / "home", pipeline_env(lab_settings))
    dg = str(core_venv / "bin" / "dg")
    phases["project"] = time.monotonic() - started

    # 2. `dg scaffold defs` writes the component's starter YAML; point it at the test's table.
    run([dg, "scaffold", "defs", TYPE_NAME, "tidb_replica"], cwd=project, env=env)
    defs_yaml = project / "src" / "shop" / "defs" / "tidb_replica" / "defs.yaml"
    written = yaml.safe_load(defs_yaml.read_text())
    assert written["type"] == TYPE_NAME
    defs_yaml.write_text(yaml.safe_dump({**written, "attributes": shop_table["attributes"]}, sort_keys=False))

    # 3. dg sees it: the schema check and the definitions load (`check defs` runs both), the listing has the
    #    table's assets.
    checked = run([dg, "check", "defs"], cwd=project, env=env).stdout
    assert "All component YAML validated successfully." in checked and "All definitions loaded successfully." in checked
    config = parse_config(shop_table["attributes"])
    keys, names = table_keys(config, config.tables[0]), table_names(config, config.tables[0])
    listed = json.loads(run([dg, "list", "defs", "--json"], cwd=project, env=env).stdout)
    assert {a["asset_key"] for a in listed["assets"]} == {
        "/".join(k.path) for k in (changefeed_key(config), keys.tidb, keys.kafka, keys.landing, keys.replica)}
    phases["scaffold + check + list"] = time.monotonic() - started

    # 4. Materialise: the changefeed first (before any row, so every row flows), rows in the source, then
    #    landing + replica once the changefeed has passed them.
    # In the launching process: a step subprocess would only load the definitions a second time.
    in_process = ["--config-json", json.dumps({"execution": {"config": {"in_process": {}}}})]
    run([dg, "launch", "--assets", "/".join(changefeed_key(config).path), *in_process], cwd=project, env=env)
    phases["changefeed run"] = time.monotonic() - started
    _sql(mariadb, *[
        f"INSERT INTO `{shop_table['db']}`.items (id, name, price) VALUES ({i}, '{n}', {p})" for i, n, p in ROWS])
    _wait_checkpoint_past(lab_settings, config.source.changefeed_id, tso_from_ms(time.time_ns() // 1_000_000))
    phases["rows on Kafka"] = time.monotonic() - started
    # The group's merge job: what its schedule and the offsets sensor run (landing, then replica).
    done = run([dg, "launch", "--job", "merge_default"], cwd=project, env=env)
    assert "RUN_SUCCESS" in done.stdout + done.stderr
    phases["landing + replica run"] = time.monotonic() - started

    # 5. The replica in (the lab's) Snowflake holds exactly the source's rows.
    import snowflake.connector

    with pymysql.connect(database=shop_table["db"], **mariadb.connect_kwargs()) as source, \
            snowflake.connector.connect(**connection_args(lab_settings)) as sf:  # type: ignore[attr-defined]
        comparison = compare_table(source, shop_table["db"], "items", sf, names.replica, ["id"])
    assert comparison.equal and comparison.replica_rows == len(ROWS), comparison
    print(f"\nfresh project phases (s since start): { {k: round(v, 1) for k, v in phases.items()} }")
