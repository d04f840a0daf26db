"""A group's land-and-merge step: one step per group, tables in threads, a failed table named, the others kept.

The landing and merge functions are replaced by fakes that record their calls, so this runs without a lab;
the real landing and merge are covered end to end in test_pipeline_end_to_end.py.
"""

from __future__ import annotations

import threading
from typing import Any

import dagster as dg
import pytest
from dagster_snowflake import SnowflakeResource

import tidb_pipeline.defs.tables as tables
from tidb_pipeline.config import parse_config
from tidb_pipeline.defs.jobs import build_merge_jobs
from tidb_pipeline.defs.tables import build_all_table_assets, table_keys
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.tidb import TiDBResource

# Never connected to: the fakes below stand in for everything that would use them.
RESOURCES = {"kafka": KafkaResource(bootstrap_servers="127.0.0.1:1"),
             "schema_registry": SchemaRegistryResource(url="http://127.0.0.1:1"),
             "snowflake": SnowflakeResource(account="none", user="none", password="none"),
             "tidb": TiDBResource(host="127.0.0.1", port=1)}

CONFIG = parse_config({
    "merge_schedules": {"default": {"cron": "* * * * *"}, "bulk": {"cron": "0 * * * *"}},
    # One attempt: these tests are about one run's tables (retries: test_retries.py).
    "retries": {"max_retries": 0},
    "tables": [{"db": "s", "table": t} for t in ("a", "b", "c")]
    + [{"db": "s", "table": "d", "group": "bulk", "mode": "history"},
       {"db": "s", "table": "e", "landing_mode": "connector"}],
})


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    made: list[tuple[str, str, str]] = []
    lock = threading.Lock()
    both_running = threading.Barrier(2, timeout=10)

    def land(names: Any, kafka: Any, registry: Any, snowflake: Any, log: Any) -> dict[str, Any]:
        with lock:
            made.append(("land", names.topic, threading.current_thread().name))
        if names.topic in ("tidb_s_a", "tidb_s_b"):
            both_running.wait()  # proves two tables' work overlaps: neither returns until both started
        if names.topic == "tidb_s_c":
            raise ConnectionError("warehouse went away")
        log.info("landed %s", names.topic)
        return {"rows_loaded": 1}

    def merge(names: Any, kafka: Any, registry: Any, snowflake: Any, log: Any, source_columns: Any,
              table: Any = None, ddl: Any = None) -> dict[str, Any]:
        # Each table's merge gets its table, hence its configured mode.
        assert table.mode == ("history" if names.topic == "tidb_s_d" else "replica"), (names.topic, table.mode)
        with lock:
            made.append(("merge", names.topic, threading.current_thread().name))
        return {"rows_inserted": 1}

    monkeypatch.setenv("SNOWFLAKE_PARALLEL_TABLES", "4")  # the threaded path (1, the lab's setting, is a loop)
    monkeypatch.setattr(tables, "_land", land)
    monkeypatch.setattr(tables, "_merge", merge)
    return made


def _defs() -> dg.Definitions:
    return dg.Definitions(assets=build_all_table_assets(config=CONFIG), jobs=build_merge_jobs(config=CONFIG),
                          resources=RESOURCES)


def test_one_step_per_group_with_every_asset_key() -> None:
    steps = [a for a in build_all_table_assets(config=CONFIG) if isinstance(a, dg.AssetsDefinition)]
    assert sorted(a.node_def.name for a in steps) == ["land_and_merge_bulk", "land_and_merge_default"]
    default = next(a for a in steps if a.node_def.name == "land_and_merge_default")
    expected = {table_keys(CONFIG, t).replica for t in CONFIG.tables if t.group == "default"}
    expected |= {table_keys(CONFIG, t).landing for t in CONFIG.tables if t.group == "default" and t.table != "e"}
    assert set(default.keys) == expected and default.can_subset


def test_failed_table_is_named_and_the_others_materialize(calls: list[tuple[str, str, str]]) -> None:
    job = _defs().resolve_job_def("merge_default")
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(raise_on_error=False, instance=instance)
    assert not result.success
    got = {e.asset_key for e in result.get_asset_materialization_events()}
    keys = {t.table: table_keys(CONFIG, t) for t in CONFIG.tables}
    assert got == {keys["a"].landing, keys["a"].replica, keys["b"].landing, keys["b"].replica, keys["e"].replica}
    # c's landing failed, so c was not merged; e is connector-landed, so only merged.
    assert sorted((op, topic) for op, topic, _ in calls) == [
        ("land", "tidb_s_a"), ("land", "tidb_s_b"), ("land", "tidb_s_c"),
        ("merge", "tidb_s_a"), ("merge", "tidb_s_b"), ("merge", "tidb_s_e")]
    failure = result.failure_data_for_node("land_and_merge_default")
    assert failure is not None
    assert "1 of 4 tables failed, the others materialized: s.c (landing): ConnectionError: warehouse went away" \
        in failure.error.to_string()
    # Lines logged in a table's thread reach the run's log.
    assert {e.user_message for e in instance.all_logs(result.run_id)} >= {"landed tidb_s_a", "landed tidb_s_b"}


def test_a_subset_runs_only_the_selected_assets(calls: list[tuple[str, str, str]]) -> None:
    keys = table_keys(CONFIG, CONFIG.tables[0])
    assets = build_all_table_assets(config=CONFIG)
    result = dg.materialize(assets, selection=[keys.replica], resources=RESOURCES)
    assert result.success
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [keys.replica]
    assert [(op, topic) for op, topic, _ in calls] == [("merge", "tidb_s_a")]
