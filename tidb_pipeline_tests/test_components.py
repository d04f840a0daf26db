"""`TiDBReplicationComponent`: the same definitions as `build_defs` for the same config, whether the config is
this repo's file (through dg's defs folder) or written inline; its attributes are the config model; bad
fields fail naming their path; the scaffolder writes a valid starter or copies an existing config."""

from __future__ import annotations

import importlib
import uuid
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from pydantic import ValidationError

from tidb_pipeline.components import (
    TYPE_NAME,
    ScaffoldParams,
    TiDBReplicationAttributes,
    TiDBReplicationComponent,
    TiDBReplicationScaffolder,
)
from tidb_pipeline.config import PipelineConfig, load_config, parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.sensors import daemon_interval

REPO = Path(__file__).resolve().parents[1]

# Every section of the config away from its default: fan-out on, two groups, a connector-mode table.
RICH: dict[str, Any] = {
    "source": {"changefeed_id": "shop-feed", "topic_pattern": "cdc.{schema}.{table}", "partitions": 6,
               "decimal_handling": "string"},
    "snowflake": {"database": "SHOP_REPLICA", "landing_schema": "RAW", "replica_schema": "CURRENT_STATE",
                  "control_schema": "CTL"},
    "sqlserver": {"enabled": True, "database": "shop", "schema": "dbo"},
    "ksqldb": {"enabled": True},
    "connectors": {"snowflake_sink_name": "shop-sink", "tasks_max": 2},
    "landing_mode": "builtin",
    "merge_schedules": {"default": {"cron": "*/5 * * * *"}, "nightly": {"cron": "0 3 * * *", "enabled": False}},
    "cleanup_schedule": {"cron": "15 * * * *"},
    "reconcile_schedule": {"cron": "30 * * * *", "enabled": False},
    "retention_hours": 6,
    "sensor_interval_seconds": 30,
    "tables": [
        {"db": "shop", "table": "orders", "key": ["id"]},
        {"db": "shop", "table": "order_items", "key": ["order_id", "line"], "group": "nightly",
         "replica_table": "ITEMS"},
        {"db": "crm", "table": "people", "key": ["id"], "landing_mode": "connector"},
    ],
}


def shape(defs: dg.Definitions) -> dict[str, Any]:
    """Everything a user or the daemon sees of `defs`, minus the metadata dg adds about the YAML file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        repo = defs.get_repository_def()
    graph = repo.asset_graph
    added_by_dg = {"dagster/code_references", "dagster/component_origin"}
    assets = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name, "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "materializable": node.is_materializable, "observable": node.is_observable,
            "external": node.is_external, "tags": dict(node.tags), "kinds": sorted(node.kinds),
            "owners": list(node.owners), "description": node.description,
            "metadata": {k: repr(v) for k, v in node.metadata.items() if k not in added_by_dg},
            "automation": repr(node.automation_condition), "partitions": repr(node.partitions_def),
        }
    checks = {f"{k.asset_key.to_user_string()}:{k.name}": (graph.get_check_spec(k).description,
                                                           graph.get_check_spec(k).blocking)
              for k in graph.asset_check_keys}
    jobs = {j.name: {"nodes": sorted(n.name for n in j.graph.nodes), "tags": dict(j.tags),
                     "assets": sorted(k.to_user_string() for k in j.asset_layer.selected_asset_keys),
                     "executor": j.executor_def.name}
            for j in repo.get_all_jobs()}
    schedules = {s.name: (s.cron_schedule, s.job_name, s.default_status, s.execution_timezone, dict(s.tags))
                 for s in repo.schedule_defs}
    sensors = {s.name: (sorted(t.job_name for t in s.targets), s.minimum_interval_seconds, s.default_status)
               for s in repo.sensor_defs}
    resources = {k: type(v).__name__ for k, v in repo.get_top_level_resources().items()}
    return {"assets": assets, "checks": checks, "jobs": jobs, "schedules": schedules, "sensors": sensors,
            "resources": resources}


def _component_defs(attributes: dict[str, Any]) -> dg.Definitions:
    return dg.build_defs_for_component(TiDBReplicationComponent.from_attributes_dict(attributes=attributes))


def test_this_repos_code_location_is_the_component_over_its_config_file() -> None:
    from tidb_pipeline.definitions import defs

    expected = shape(build_defs(config=load_config()))
    assert shape(defs) == expected
    # Not vacuous: the checked-in config has tables, their checks, a merge job, schedules and the sensor.
    assert len(expected["assets"]) > 20 and expected["checks"] and expected["sensors"]
    assert {"merge_default", "landing_cleanup", "reconcile", "backfill"} <= set(expected["jobs"])


def test_inline_attributes_build_what_build_defs_builds_for_every_config_section() -> None:
    got = shape(_component_defs(RICH))
    assert got == shape(build_defs(config=parse_config(RICH)))
    # The fan-out, the second group and the connector-mode table all made it through the YAML model.
    assert {"sqlserver", "ksqldb", "kafka_connect"} <= set(got["resources"])
    assert {"merge_default", "merge_nightly"} <= set(got["jobs"])
    assert got["schedules"]["merge_nightly_schedule"][0] == "0 3 * * *"
    assert got["sensors"]["kafka_offsets_sensor"][1] == daemon_interval(30)  # ticks every 30 s
    assert any(k.startswith("confluent/") for k in got["assets"])


def test_the_attributes_are_the_config_model_plus_config_file() -> None:
    schema = TiDBReplicationComponent.get_model_cls().model_json_schema()  # what `dg check yaml` validates
    assert set(schema["properties"]) == set(PipelineConfig.model_fields) | {"config_file"}
    assert schema.get("additionalProperties") is False  # a misspelt field is an error, not ignored


def test_templates_in_strings_are_rendered_then_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_SNOWFLAKE_DB", "SHOP_PROD")
    component = TiDBReplicationComponent.from_attributes_dict(attributes={
        "snowflake": {"database": "{{ env.SHOP_SNOWFLAKE_DB }}"}, "tables": [{"db": "shop", "table": "t"}]})
    assert component.config.snowflake.database == "SHOP_PROD"
    # A rendered value is validated like a written one.
    monkeypatch.setenv("SHOP_FEED", "not a valid id")
    with pytest.raises(ValidationError, match=r"source\.changefeed_id"):
        TiDBReplicationComponent.from_attributes_dict(attributes={"source": {"changefeed_id": "{{ env.SHOP_FEED }}"}})


@pytest.mark.parametrize(("attributes", "field"), [
    ({"tables": [{"db": "shop"}]}, "tables.0.table"),
    ({"source": {"partitions": "many"}}, "source.partitions"),
    ({"snowflake": {"databse": "X"}}, "snowflake.databse"),
    ({"merge_schedules": {"default": {"cron": "every minute"}}}, "merge_schedules.default.cron"),
    ({"config_file": "tidb_pipeline.yaml", "tables": []}, "config_file"),
])
def test_a_bad_attribute_fails_naming_its_path(attributes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        TiDBReplicationComponent.from_attributes_dict(attributes=attributes)
    assert field in str(err.value)


def _defs_folder(root: Path, attributes: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dg.ComponentTree:
    """A defs folder (a package of its own under `root`) with one defs.yaml, loaded as dg loads a project's."""
    name = f"defs_{uuid.uuid4().hex[:8]}"
    (root / name / "tidb").mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / "tidb" / "defs.yaml").write_text(yaml.safe_dump({"type": TYPE_NAME, "attributes": attributes}))
    monkeypatch.syspath_prepend(str(root))
    return dg.ComponentTree.from_module(defs_module=importlib.import_module(name), project_root=root)


def test_config_file_relative_to_the_defs_yaml_and_its_errors_name_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tidb_pipeline.yaml").write_text(yaml.safe_dump(RICH))
    tree = _defs_folder(tmp_path, {"config_file": "../../tidb_pipeline.yaml"}, monkeypatch)
    assert shape(tree.build_defs()) == shape(build_defs(config=parse_config(RICH)))

    (tmp_path / "tidb_pipeline.yaml").write_text(yaml.safe_dump({"tables": [{"db": "shop"}]}))
    tree = _defs_folder(tmp_path, {"config_file": "../../tidb_pipeline.yaml"}, monkeypatch)
    with pytest.raises(Exception) as err:
        tree.build_defs()
    causes = []
    exc: BaseException | None = err.value
    while exc is not None:
        causes.append(str(exc))
        exc = exc.__cause__
    assert any("tables.0.table" in c and "tidb_pipeline.yaml" in c and "config_file" in c for c in causes), causes


def _scaffold(tmp_path: Path, params: ScaffoldParams | None) -> dict[str, Any]:
    request = dg.ScaffoldRequest(type_name=TYPE_NAME, target_path=tmp_path, scaffold_format="yaml",
                                 project_root=tmp_path, params=params)
    TiDBReplicationScaffolder().scaffold(request)
    return yaml.safe_load((tmp_path / "defs.yaml").read_text())


def test_scaffolder_writes_a_starter_that_loads(tmp_path: Path) -> None:
    written = _scaffold(tmp_path, ScaffoldParams())
    assert written["type"] == TYPE_NAME and written["attributes"]["tables"] == []
    component = TiDBReplicationComponent.from_attributes_dict(attributes=written["attributes"])
    assert component.config.source.changefeed_id == "tidb-pipeline"


def test_scaffolder_from_config_copies_it_inline(tmp_path: Path) -> None:
    source = tmp_path / "tidb_pipeline.yaml"
    source.write_text(yaml.safe_dump(RICH))
    written = _scaffold(tmp_path, ScaffoldParams(from_config=str(source)))
    assert "config_file" not in written["attributes"]
    component = TiDBReplicationComponent.from_attributes_dict(attributes=written["attributes"])
    assert component.config == parse_config(RICH)
    # This repo's own file migrates too.
    written = _scaffold(tmp_path, ScaffoldParams(from_config=str(REPO / "tidb_pipeline.yaml")))
    assert TiDBReplicationAttributes.model_validate(written["attributes"]).tables == load_config().tables
