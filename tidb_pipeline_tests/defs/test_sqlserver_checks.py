"""The SQL Server tables' row-count and content checks: wiring (one multi_asset_check per kind, in the reconcile
job), the lag rule for a backlog that may be unknown, and, on the lab (MariaDB as TiDB, PostgreSQL as SQL Server,
Kafka), connector mode run through Dagster: the sink's committed offsets give the backlog, a subset runs alone.
The built-in applier's mode, with TiCDC and ERROR verdicts, is in test_sqlserver_end_to_end.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from confluent_kafka import Producer, TopicPartition

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.check_results import CheckSettings, Watermark, lag_aware_result
from tidb_pipeline.defs.fanout import build_fanout_checks
from tidb_pipeline.defs.sqlserver_checks import (
    CONTENT_CHECK,
    ROW_COUNT_CHECK,
    TargetLag,
    build_sqlserver_checks,
    group_offsets,
    sink_group,
)
from tidb_pipeline.lab.ports import free_port
from tidb_pipeline.lab.postgres import LAB_DATABASE
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER, LabSettings
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.sqlserver import SqlServerResource
from tidb_pipeline.resources.ticdc import TiCDCResource
from tidb_pipeline_tests.lab_resources import (
    kafka_resource, kafka_topics, source_databases, tidb_resource, unique_suffix,
)

TABLES = [{"db": "shop", "table": "orders", "key": ["id"]}, {"db": "crm", "table": "people", "key": ["id"]}]
EXPECTED = {dg.AssetCheckKey(dg.AssetKey(["sqlserver", "tidb_replica", f"tidb_{db}_{t}"]), name)
            for db, t in (("shop", "orders"), ("crm", "people")) for name in (ROW_COUNT_CHECK, CONTENT_CHECK)}


# --- wiring -----------------------------------------------------------------------------------------------
def test_no_checks_unless_sqlserver_is_enabled() -> None:
    assert build_fanout_checks(config=parse_config({"tables": TABLES})) == []
    assert build_fanout_checks(config=parse_config({"sqlserver": {"enabled": True}})) == []


@pytest.mark.parametrize("mode", ["builtin", "connector"])
def test_one_subsettable_multi_check_per_kind_over_every_table(mode: str) -> None:
    config = parse_config({"sqlserver": {"enabled": True, "mode": mode}, "tables": TABLES})
    checks = build_fanout_checks(config=config)
    assert [c.node_def.name for c in checks] == ["sqlserver_row_count_matches_source", "sqlserver_content_matches_source"]
    assert [{k.name for k in c.check_keys} for c in checks] == [{ROW_COUNT_CHECK}, {CONTENT_CHECK}]
    assert {k for c in checks for k in c.check_keys} == EXPECTED
    assert all(c.can_subset for c in checks)
    assert all(set(c.required_resource_keys) - {"io_manager"} == {"tidb", "sqlserver", "kafka", "ticdc"} for c in checks)
    assert not any(s.blocking for c in checks for s in c.check_specs)
    defs = build_defs(config=config)
    sql_asset_keys = {k for a in defs.assets or [] for k in (a.keys if isinstance(a, dg.AssetsDefinition) else [a.key])
                      if k.path[0] == "sqlserver"}
    assert {k.asset_key for k in EXPECTED} == sql_asset_keys  # every table asset has both, in either mode
    reconcile = defs.resolve_job_def("reconcile")
    assert EXPECTED <= set(reconcile.asset_layer.asset_graph.asset_check_keys)


# --- the lag rule when the backlog may be unknown -------------------------------------------------------
def test_unknown_backlog_is_behind_so_a_difference_is_only_a_warning() -> None:
    settings = CheckSettings()
    unknown = TargetLag({}, 0.5, "", "consumer group connect-x has no committed offsets for the topic")
    assert unknown.behind(settings.checkpoint_tolerance_s)
    assert unknown.metadata() == {"backlog_per_partition": "unknown (consumer group connect-x has no committed offsets "
                                  "for the topic)", "backlog_records": "unknown (consumer group connect-x has no "
                                  "committed offsets for the topic)", "checkpoint_lag_s": 0.5}
    warn = lag_aware_result(equal=False, lag=unknown, settings=settings, what="row counts", metadata={})
    assert (warn.passed, warn.severity) == (False, dg.AssetCheckSeverity.WARN)
    caught_up = TargetLag({0: 0}, 0.5)
    assert not caught_up.behind(settings.checkpoint_tolerance_s)
    error = lag_aware_result(equal=False, lag=caught_up, settings=settings, what="row counts", metadata={})
    assert (error.passed, error.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert lag_aware_result(equal=True, lag=unknown, settings=settings, what="row counts", metadata={}).passed


# --- connector mode on the lab, through Dagster ---------------------------------------------------------
@pytest.fixture(scope="module")
def lab(lab_settings: LabSettings, mariadb: Service, postgres: Service, kafka: Service) -> Iterator[dict[str, Any]]:
    """30 rows in MariaDB and the same rows in PostgreSQL's default schema, as the SQL Server Sink writes them
    (JDBC sink types: bigint, text, numeric(38,2), the datetime as TiCDC's text); a topic with 5 records."""
    suffix = unique_suffix()
    db = f"sqc_{suffix}"
    config = parse_config({
        "source": {"changefeed_id": f"sqc-{suffix}"},
        "sqlserver": {"enabled": True, "mode": "connector", "database": LAB_DATABASE},
        "connectors": {"sqlserver_sink_name": f"sqc-sink-{suffix}"},
        "tables": [{"db": db, "table": "t", "key": ["id"]}, {"db": db, "table": "missing", "key": ["id"]}],
    })
    topic = config.topic(config.tables[0])
    resources = {
        "tidb": tidb_resource(lab_settings),
        "sqlserver": SqlServerResource(drivername="postgresql+pg8000", host=lab_settings.host,
                                       port=lab_settings.port("postgres"), username=LAB_DB_USER,
                                       password=LAB_DB_PASSWORD, database=LAB_DATABASE),
        "kafka": kafka_resource(lab_settings),
        # No changefeed: the checkpoint is unknown, so differences stay WARN (ERROR is covered end to end).
        "ticdc": TiCDCResource(url=f"http://127.0.0.1:{free_port()}", max_retries=0, connect_timeout_s=1.0),
    }
    rows = [(i, f"name {i}" if i % 4 else None, f"{i * 3}.25", f"2024-01-{1 + i % 28:02d} 10:00:0{i % 10}.123")
            for i in range(1, 31)]
    tables = tuple(f"CREATE TABLE `{db}`.`{table}` (id BIGINT PRIMARY KEY, name VARCHAR(20), price DECIMAL(10,2), "
                   "at DATETIME(3))" for table in ("t", "missing"))
    with source_databases(mariadb, db, statements=tables) as conn, conn.cursor() as cur:
        for table in ("t", "missing"):
            cur.executemany(f"INSERT INTO `{db}`.`{table}` VALUES (%s, %s, %s, %s)", rows)
        engine = resources["sqlserver"].get_engine()
        with engine.begin() as pg:
            pg.execute(sa.text(f'CREATE TABLE "{topic}" (id bigint PRIMARY KEY, name text, price numeric(38,2), at text)'))
            pg.execute(sa.text(f'INSERT INTO "{topic}" VALUES (:i, :n, CAST(:p AS numeric), :a)'),
                       [{"i": i, "n": n, "p": p, "a": a} for i, n, p, a in rows])
        with kafka_topics(lab_settings, topic):
            producer = Producer(resources["kafka"].client_config())
            for i in range(5):
                producer.produce(topic, key=b"k", value=str(i).encode())
            assert producer.flush(30) == 0
            try:
                yield {"config": config, "resources": resources, "engine": engine, "topic": topic, "db": db}
            finally:
                with engine.begin() as pg:
                    pg.execute(sa.text(f'DROP TABLE "{topic}"'))
                engine.dispose()


def _commit(kafka: KafkaResource, group: str, topic: str, offset: int) -> None:
    consumer = kafka.consumer(group)
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def _run(config: PipelineConfig, resources: dict[str, Any], selection: list[dg.AssetCheckKey] | None = None,
         ) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    checks = build_sqlserver_checks(config=config, settings=CheckSettings(rows_per_chunk=10))
    specs = [dg.AssetSpec(k) for k in {k.asset_key for c in checks for k in c.check_keys}]
    job = dg.define_asset_job("checks", selection=dg.AssetSelection.checks(*selection) if selection
                              else dg.AssetSelection.checks(*checks))
    defs = dg.Definitions(assets=specs, asset_checks=checks, jobs=[job], resources=resources)
    result = defs.resolve_job_def("checks").execute_in_process()
    assert result.success
    return {(e.asset_key.path[-1].split("_")[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def _md(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {k: v.value for k, v in evaluation.metadata.items()}


def test_connector_mode_backlog_from_the_sinks_committed_offsets(lab: dict[str, Any]) -> None:
    config, resources, topic = lab["config"], lab["resources"], lab["topic"]
    kafka: KafkaResource = resources["kafka"]
    assert group_offsets(kafka, sink_group(config), [topic]) == {}
    # never committed: backlog unknown; equal still passes, a missing table is at most WARN
    results = _run(config, resources)
    assert set(results) == {(t, c) for t in ("t", "missing") for c in (ROW_COUNT_CHECK, CONTENT_CHECK)}
    row_t = _md(results[("t", ROW_COUNT_CHECK)])
    assert results[("t", ROW_COUNT_CHECK)].passed and results[("t", CONTENT_CHECK)].passed
    assert (row_t["source_rows"], row_t["target_rows"], row_t["backlog_records"]) == (
        30, 30, f"unknown (consumer group {sink_group(config)} has no committed offsets for the topic)")
    assert row_t["checkpoint_lag_s"].startswith("unknown (TiCDC: ")
    assert _md(results[("t", CONTENT_CHECK)])["chunks_checked"] == 3  # id is numeric: ranges from TiDB's quantiles
    missing = results[("missing", ROW_COUNT_CHECK)]
    assert (missing.passed, missing.severity, _md(missing)["target_rows"], _md(missing)["note"]) == (
        False, dg.AssetCheckSeverity.WARN, 0, f"{config.topic(config.tables[1])} does not exist yet")
    missing_content = _md(results[("missing", CONTENT_CHECK)])
    assert missing_content["chunks_differing"] == missing_content["chunks_checked"] > 1  # every chunk empty there

    _commit(kafka, sink_group(config), topic, 3)
    assert group_offsets(kafka, sink_group(config), [topic, "other"]) == {topic: {0: Watermark(2, None)}}
    with lab["engine"].begin() as conn:
        conn.execute(sa.text(f'DELETE FROM "{topic}" WHERE id = 17'))
    t_key = dg.AssetKey(["sqlserver", LAB_DATABASE, topic])
    only = _run(config, resources, selection=[dg.AssetCheckKey(t_key, ROW_COUNT_CHECK), dg.AssetCheckKey(t_key, CONTENT_CHECK)])
    assert set(only) == {("t", ROW_COUNT_CHECK), ("t", CONTENT_CHECK)}  # the subset ran alone
    count, content = only[("t", ROW_COUNT_CHECK)], only[("t", CONTENT_CHECK)]
    assert (count.passed, count.severity, _md(count)["difference"]) == (False, dg.AssetCheckSeverity.WARN, -1)
    assert (_md(count)["backlog_records"], _md(count)["backlog_per_partition"]) == (2, "p0: 2")
    assert (content.passed, content.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert _md(content)["differing_ranges"] == ["id >= 11 AND id < 21: source 10 rows, replica 9 rows"]

