"""`dg` in this repository: `dg check yaml`, `dg check defs` and `dg list defs` pass and agree with
`tidb_pipeline.definitions`; a bad field is reported with its path (in the YAML and in the config file it
names); `dg dev` serves the definitions in the UI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tidb_pipeline.components import TYPE_NAME
from tidb_pipeline_tests.dg_cli import REPO, dg_env, run, this_venv
from tidb_pipeline_tests.test_components import shape
from tidb_pipeline_tests.ui import dagster_dev
from tidb_pipeline.lab.ports import free_port

DG = str(this_venv() / "bin" / "dg")


def test_dg_check_yaml_and_check_defs_pass_in_this_repo(tmp_path: Path) -> None:
    env = dg_env(this_venv(), tmp_path / "home")
    assert "All component YAML validated successfully." in run([DG, "check", "yaml"], cwd=REPO, env=env).stdout
    assert "All definitions loaded successfully." in run([DG, "check", "defs"], cwd=REPO, env=env).stdout


def test_dg_list_defs_shows_what_the_definitions_hold(tmp_path: Path) -> None:
    from tidb_pipeline.definitions import defs

    listed = json.loads(run([DG, "list", "defs", "--json"], cwd=REPO, env=dg_env(this_venv(), tmp_path / "home")).stdout)
    expected = shape(defs)
    assert {a["asset_key"]: sorted(a["dependency_keys"]) for a in listed["assets"]} == {
        k: a["deps"] for k, a in expected["assets"].items()}
    assert {c["key"] for c in listed["asset_checks"]} == set(expected["checks"])
    assert {j["name"] for j in listed["jobs"]} == set(expected["jobs"]) - {"__ASSET_JOB"}
    assert {s["name"]: s["cron_schedule"] for s in listed["schedules"]} == {
        n: s[0] for n, s in expected["schedules"].items()}
    assert {s["name"] for s in listed["sensors"]} == set(expected["sensors"])
    assert {r["name"] for r in listed["resources"]} == set(expected["resources"])
    # Each definition points at the YAML that declared it.
    assert {a["source"] for a in listed["assets"]} == {"tidb_pipeline/location/tidb_replication/defs.yaml:3"}


def _project(root: Path, attributes: dict) -> Path:
    """A minimal `dg` project (what create-dagster writes) with one TiDBReplicationComponent instance; it
    runs in this venv, its package on PYTHONPATH."""
    (root / "src" / "shop" / "defs" / "tidb").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "shop"\nversion = "0.1.0"\n\n[tool.dg]\n'
                                         'directory_type = "project"\n\n[tool.dg.project]\nroot_module = "shop"\n')
    (root / "src" / "shop" / "__init__.py").write_text("")
    (root / "src" / "shop" / "defs" / "__init__.py").write_text("")
    (root / "src" / "shop" / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n\n@dg.definitions\ndef defs():\n"
        "    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n")
    defs_yaml = root / "src" / "shop" / "defs" / "tidb" / "defs.yaml"
    defs_yaml.write_text(yaml.safe_dump({"type": TYPE_NAME, "attributes": attributes}, sort_keys=False))
    return defs_yaml


def test_dg_check_reports_a_bad_field_with_its_path_and_line(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    defs_yaml = _project(root, {"source": {"partitions": "many"}, "tables": [{"db": "shop", "key": ["id"]}]})
    env = dg_env(this_venv(), tmp_path / "home", {"PYTHONPATH": str(root / "src")})

    # The schema check (what an editor shows): each bad field by its path, file and line.
    done = run([DG, "check", "yaml"], cwd=root, env=env, check=False)
    assert done.returncode == 1, done.stdout
    assert f"{defs_yaml}:4 - {TYPE_NAME} attributes.source.partitions 'many' is not of type 'integer'" in done.stdout
    assert f"{defs_yaml}:6 - {TYPE_NAME} attributes.tables.0 'table' is a required property" in done.stdout

    # A value the schema cannot judge fails when the definitions load, named the same way.
    defs_yaml.write_text(f"type: {TYPE_NAME}\nattributes:\n  merge_schedules:\n    default:\n"
                         "      cron: every minute\n  tables:\n    - {db: shop, table: t}\n")
    assert run([DG, "check", "yaml"], cwd=root, env=env).returncode == 0
    done = run([DG, "check", "defs"], cwd=root, env=env, check=False)
    assert done.returncode == 1
    assert f"attributes.merge_schedules.default.cron at {defs_yaml}:5" in done.stdout + done.stderr
    assert "is not a five-field cron expression" in done.stdout + done.stderr


def test_dg_check_defs_names_a_bad_field_of_the_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "tidb_pipeline.yaml"
    bad.write_text(yaml.safe_dump({"tables": [{"db": "shop", "key": ["id"]}]}))
    env = dg_env(this_venv(), tmp_path / "home", {"TIDB_PIPELINE_CONFIG": str(bad)})
    done = run([DG, "check", "defs"], cwd=REPO, env=env, check=False)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert f"invalid config {bad}:" in out and "tables.0.table: Field required" in out


@pytest.mark.timeout(600)
def test_dg_dev_serves_this_repos_definitions(tmp_path: Path) -> None:
    from tidb_pipeline.definitions import defs

    env = dg_env(this_venv(), tmp_path / "home")
    port = free_port()
    log = tmp_path / "dg_dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([DG, "dev", "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    client = dagster_dev.Dagster(f"http://127.0.0.1:{port}")
    try:
        location, _ = client.wait_loaded(proc, log, timeout=300)
        assert location == "tidb_pipeline"
        assert {"/".join(k) for k in client.asset_keys()} == set(shape(defs)["assets"])
        assert client._http.get("/").status_code == 200  # the UI's page itself
    finally:
        client.close()
        dagster_dev.stop(proc)
