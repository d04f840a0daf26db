"""Key coverage: the factories build exactly the assets the table list implies, and nothing else."""

from __future__ import annotations

import dagster as dg

from tidb_pipeline.config import load_config, parse_config
from tidb_pipeline.defs import build_defs


def _expected_keys(raw: dict) -> set[dg.AssetKey]:
    # Computed from the raw config independently of the factories' own naming helpers.
    sf = raw.get("snowflake", {})
    landing, replica = sf.get("landing_schema", "LANDING"), sf.get("replica_schema", "REPLICA")
    keys = {dg.AssetKey(["ticdc", raw.get("source", {}).get("changefeed_id", "tidb-pipeline")])}
    for t in raw["tables"]:
        topic = f"tidb_{t['db']}_{t['table']}"
        keys |= {
            dg.AssetKey(["tidb", t["db"], t["table"]]),
            dg.AssetKey(["kafka", topic]),
            dg.AssetKey(["snowflake", landing, topic.upper()]),
            dg.AssetKey(["snowflake", replica, t["table"].upper()]),
        }
    return keys


def test_asset_keys_cover_the_table_list() -> None:
    raw = {"tables": [{"db": "tpcc", "table": "item"}, {"db": "shop", "table": "Orders"}],
           "snowflake": {"landing_schema": "RAW"}}
    repo = build_defs(config=parse_config(raw)).get_repository_def()
    assert set(repo.asset_graph.get_all_asset_keys()) == _expected_keys(raw)


def test_checked_in_config_loads_and_wires_jobs() -> None:
    config = load_config()
    repo = build_defs(config=config).get_repository_def()
    assert {"merge_default", "landing_cleanup"} <= {j.name for j in repo.get_all_jobs()}
    assert {s.name for s in repo.schedule_defs} >= {"merge_default_schedule", "landing_cleanup_schedule"}
    merge = repo.get_job("merge_default")
    selected = {k for k in merge.asset_layer.asset_graph.get_all_asset_keys() if merge.asset_layer.asset_graph.get(k).is_executable}
    expected = set()
    for t in config.tables:
        expected |= {dg.AssetKey(["snowflake", "LANDING", f"TIDB_{t.db}_{t.table}".upper()]),
                     dg.AssetKey(["snowflake", "REPLICA", t.table.upper()])}
    assert expected <= selected


def test_connector_mode_landing_is_external() -> None:
    config = parse_config({"landing_mode": "connector", "tables": [{"db": "tpcc", "table": "item"}]})
    repo = build_defs(config=config).get_repository_def()
    landing = repo.asset_graph.get(dg.AssetKey(["snowflake", "LANDING", "TIDB_TPCC_ITEM"]))
    replica = repo.asset_graph.get(dg.AssetKey(["snowflake", "REPLICA", "ITEM"]))
    assert not landing.is_executable and replica.is_executable


def test_replica_asset_shows_its_mode() -> None:
    """The UI shows each table's mode: in the replica asset's description and metadata, with its columns."""
    config = parse_config({"tables": [{"db": "shop", "table": "orders", "mode": "history"},
                                      {"db": "shop", "table": "customer", "mode": "soft_delete"},
                                      {"db": "shop", "table": "item"}]})
    graph = build_defs(config=config).get_repository_def().asset_graph
    want = {"ORDERS": ("history", "_VALID_FROM"), "CUSTOMER": ("soft_delete", "_DELETED_AT"), "ITEM": ("replica", None)}
    for table, (mode, column) in want.items():
        node = graph.get(dg.AssetKey(["snowflake", "REPLICA", table]))
        assert node.metadata["mode"] == mode
        assert f"Mode {mode}" in (node.description or "")
        assert (column in node.metadata["mode_columns"]) if column else node.metadata["mode_columns"] == "(none)"
    assert "switch_mode" in {j.name for j in build_defs(config=config).get_repository_def().get_all_jobs()}
