"""Replica checks: pure verdicts, then the reconcile job run through Dagster against the lab.

The lab scenario: a MariaDB table (unique database), its TiCDC-shaped schemas in the lab registry, a real
Kafka topic whose offsets match the landed rows, and a replica built by the pipeline's own `merge_replica`.
TiCDC's status comes from a `TiCDCClient` over an httpx mock transport (the checkpoint is the one input
the test must control exactly).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import dagster as dg
import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema

from tidb_pipeline.config import PipelineConfig, SnowflakeConfig, TableConfig
from tidb_pipeline.config import FreshnessConfig
from tidb_pipeline.defs.jobs import build_reconcile_schedule
from tidb_pipeline.defs.checks import (
    unconverted_result,
    CHECK_KINDS,
    build_all_checks,
    build_reconcile_job,
)
from tidb_pipeline.defs.check_results import (
    CheckSettings,
    Lag,
    Watermark,
    backlog_per_partition,
    changefeed_result,
    checkpoint_lag_s,
    continuity_result,
    freshness_result,
    lag_aware_result,
    schema_differences,
)
from tidb_pipeline.engine.replica import merge_replica
from tidb_pipeline.defs.tables import changefeed_key, table_keys, table_names
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import lab_env
from tidb_pipeline.replication.ddl import TableRef, create_dead_letter_sql, create_landing_sql, quote_ident
from tidb_pipeline.replication.holes import Gap
from tidb_pipeline.replication.landing import RecordEncoder, create_landed_offsets_sql, write_landed_offsets_statements
from tidb_pipeline.resources.snowflake import snowflake_resource
from tidb_pipeline.resources.ticdc import TiCDCClient, TiCDCResource
from tidb_pipeline_tests.replication.support import decimal_type, field, record, with_extension
from tidb_pipeline_tests.lab_resources import (
    kafka_resource, kafka_topics, lab_environment, registry_resource, snowflake_connection, source_databases, tidb_resource,
    unique_suffix,
)

WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR
SETTINGS = CheckSettings(rows_per_chunk=10)

# --- pure --------------------------------------------------------------------------------------------------


def test_backlog_is_end_offset_minus_next_offset_to_merge() -> None:
    wm = {0: Watermark(9, None), 1: Watermark(3, None)}
    assert backlog_per_partition({0: 10, 1: 7, 2: 5}, wm) == {0: 0, 1: 3, 2: 5}
    assert checkpoint_lag_s((1_000_000 << 18) | 77, 1_004_250) == 4.25
    assert checkpoint_lag_s(2_000 << 18, 1_000) == 0.0


@pytest.mark.parametrize(
    ("equal", "backlog", "lag", "severity"),
    [(True, {0: 5}, 100.0, None), (False, {0: 0}, 1.0, ERROR), (False, {0: 2}, 1.0, WARN), (False, {0: 0}, 30.0, WARN),
     (False, {0: 0}, None, WARN)],
)  # fmt: skip
def test_lag_aware_verdict(equal: bool, backlog: dict[int, int], lag: float | None, severity: Any) -> None:
    result = lag_aware_result(equal=equal, lag=Lag(backlog, lag, "down"), settings=CheckSettings(), what="x",
                              metadata={"n": 1})  # fmt: skip
    assert result.passed is equal
    if severity is not None:
        assert result.severity == severity
    assert result.metadata["backlog_per_partition"].value == "p0: " + str(backlog[0])
    assert result.metadata["checkpoint_lag_s"].value == (lag if lag is not None else "unknown (down)")


def test_continuity_verdict_errors_only_past_the_grace_or_on_lost_offsets() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0)
    fresh = Gap(0, 5, 7, "WAITING", "Kafka has offset 5", now - dt.timedelta(seconds=100))
    stale = Gap(1, 3, 3, "WAITING", "Kafka has offset 3", now - dt.timedelta(seconds=301))
    skipped = Gap(2, 9, 9, "ABSENT", "no record at these offsets", now)
    ok = continuity_result("t", [fresh, skipped], now, 300, {})
    assert ok.passed and ok.metadata["holes"].value == [
        "topic t partition 0: offsets 5..7 are in Kafka but have not landed since 2026-01-01 11:58:20"]
    assert ok.metadata["offsets_not_in_kafka"].value == [
        "topic t partition 2: offsets 9..9 are not in Kafka (no record at these offsets); skipped"]
    late = continuity_result("t", [fresh, stale], now, 300, {})
    assert (late.passed, late.severity) == (False, ERROR)
    assert late.description.startswith("1 hole(s) hold the merge back past the 300 s grace period, first: topic t "
                                       "partition 1 offsets 3..3 missing")
    lost = continuity_result("t", [Gap(0, 0, 4, "LOST", "log start offset is now 5", now)], now, 300, {})
    assert (lost.passed, lost.severity) == (False, ERROR)
    assert continuity_result("t", [], now, 300, {}).metadata["holes"].value == "(none)"


def test_schema_differences() -> None:
    drift = schema_differences(["id", "a", "new"], ["id", "a", "gone"], ["id", "old"])
    assert drift.problems == [
        "column 'new' is in TiDB but no change record carries it yet",
        "column 'gone' is in the Avro schema but no longer in TiDB",
        "replica is missing column 'a' (the next merge adds it)",
        "replica is missing column 'gone' (the next merge adds it)",
    ]
    assert drift.notes == ["replica keeps column 'old' dropped upstream"]
    assert schema_differences(["id"], ["id"], ["id"]).problems == []
    assert schema_differences(["id"], None, [])  .problems[0].startswith("no Avro value schema registered")
    # Backfilled and never changed since: no schema in the registry yet, the replica is compared with TiDB.
    quiet = schema_differences(["id", "a"], None, ["id", "a"])
    assert quiet.problems == [] and quiet.notes[0].startswith("no Avro value schema registered")
    assert schema_differences(["id", "a"], None, ["id"]).problems == ["column 'a' is in TiDB but not in the replica"]


def test_unconverted_values_verdict_names_column_and_key() -> None:
    replica = TableRef("REPLICA", "T", "DB")
    assert unconverted_result([], replica, "db.t").passed
    rows = [("c_date", '{"id":4}', "0000-00-00", 0, 12), ("c_datetime", '{"id":4}', "0000-00-00 00:00:00", None, None)]
    result = unconverted_result(rows, replica, "db.t")
    assert (result.passed, result.severity) == (False, ERROR)
    assert result.description.startswith(
        "2 value(s) of db.t could not be converted and are NULL in DB.REPLICA.T, e.g. column c_date key {\"id\":4}: "
        "'0000-00-00'")
    assert _md(result)["values"] == ["column c_date key {\"id\":4}: '0000-00-00' (p0@12)",
                                     "column c_datetime key {\"id\":4}: '0000-00-00 00:00:00' (backfill)"]
    assert _md(result)["per_column"] == "c_date: 1, c_datetime: 1"


def test_freshness_and_changefeed_verdicts() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0)
    wm = {0: Watermark(5, now - dt.timedelta(minutes=20))}
    s = CheckSettings()
    f = FreshnessConfig(warn_after_minutes=10, fail_after_minutes=60)
    assert freshness_result({0: 0}, wm, now, f).passed
    assert freshness_result({0: 3}, wm, now, f).severity == WARN
    assert freshness_result({0: 3}, {0: Watermark(5, now - dt.timedelta(hours=2))}, now, f).severity == ERROR
    assert freshness_result({0: 3}, {}, now, f).severity == WARN
    assert freshness_result({0: 3}, {0: Watermark(5, now - dt.timedelta(seconds=30))}, now, f).passed
    # Dagster's last materialization, when known, is the clock (as for the replica's freshness policy).
    assert freshness_result({0: 3}, wm, now, f, last_materialized=now - dt.timedelta(minutes=1)).passed
    now_ms = 1_000_000_000
    assert changefeed_result("normal", (now_ms - 2_000) << 18, now_ms, None, s).passed
    assert changefeed_result("normal", (now_ms - 120_000) << 18, now_ms, None, s).severity == WARN
    assert changefeed_result("normal", (now_ms - 3_600_000) << 18, now_ms, None, s).severity == ERROR
    failed = changefeed_result("failed", now_ms << 18, now_ms, "sink down", s)
    assert (failed.passed, failed.severity, failed.metadata["error"].value) == (False, ERROR, "sink down")
    assert changefeed_result("stopped", now_ms << 18, now_ms, None, s).severity == ERROR
    assert changefeed_result("warning", now_ms << 18, now_ms, None, s).severity == WARN


# --- the lab -----------------------------------------------------------------------------------------------

KEY = record("t", [field("id", "long", "BIGINT")])
VALUE = with_extension(record("t", [
    field("id", "long", "BIGINT"),
    field("name", "string", "TEXT", nullable=True),
    field("price", decimal_type(10, 2), "DECIMAL", nullable=True),
    field("at", "string", "DATETIME", nullable=True),
]))  # fmt: skip
ROWS = [(i, f"name {i}" if i % 7 else None, Decimal(f"{i}.{i % 100:02d}"), dt.datetime(2024, 1, 1 + i % 28, 0, 0, i % 60, i))
        for i in range(1, 41)]  # fmt: skip


class StubTiCDC(TiCDCResource):
    """TiCDCResource whose client answers `get_status` from fields (the test controls state and checkpoint)."""

    state: str = "normal"
    behind_s: float = 0.0

    def get_client(self) -> TiCDCClient:
        checkpoint = int((time.time() - self.behind_s) * 1000) << 18
        body = {"state": self.state, "checkpoint_ts": checkpoint, "resolved_ts": checkpoint}
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
        return TiCDCClient(self.url, transport=transport, max_retries=0)


class Lab:
    def __init__(self, settings: LabSettings, suffix: str, src: Any, sf: Any) -> None:
        self.db = f"chk_{suffix}"
        self.table = TableConfig(db=self.db, table="t", key=("id",))
        # No grace: a hole is overdue as soon as a merge has seen it (builtin mode has no flush to wait for).
        self.config = PipelineConfig(
            snowflake=SnowflakeConfig(database=f"CHK_{suffix.upper()}"), tables=(self.table,), hole_grace_seconds=0,
        )
        self.names = table_names(self.config, self.table)
        self.keys = table_keys(self.config, self.table)
        self.src, self.sf = src, sf
        self.tidb, self.kafka = tidb_resource(settings), kafka_resource(settings)
        self.registry = registry_resource(settings)
        self.settings = settings
        self.offset = 0

    def setup(self) -> None:
        """The source table with its rows, the topic's schemas, the landing table, landed and merged."""
        with self.src.cursor() as cur:
            cur.execute(f"CREATE TABLE {self.db}.t (id BIGINT PRIMARY KEY, name VARCHAR(40), price DECIMAL(10,2), "
                        "at DATETIME(6))")  # fmt: skip
            cur.executemany(f"INSERT INTO {self.db}.t VALUES (%s, %s, %s, %s)", ROWS)
        client = self.registry.get_client()
        client.register_schema(f"{self.names.topic}-key", Schema(json.dumps(KEY), "AVRO"))
        client.register_schema(f"{self.names.topic}-value", Schema(json.dumps(VALUE), "AVRO"))
        cur = self.sf.cursor()
        for schema in (self.names.landing.schema, self.names.control.schema):
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.config.snowflake.database)}.{quote_ident(schema)}")
        cur.execute(create_landing_sql(self.names.landing))
        assert self.names.landed_offsets is not None  # built-in mode: the checks read what landed from it
        cur.execute(create_landed_offsets_sql(self.names.landed_offsets))
        self.land(ROWS)
        self.merge()

    def produce(self, n: int) -> None:
        producer = Producer({"bootstrap.servers": self.settings.kafka_bootstrap, "acks": "all"})
        for _ in range(n):
            producer.produce(self.names.topic, key=b"k", value=b"v", partition=0)
        assert producer.flush(30) == 0

    def land(self, rows: list[tuple[Any, ...]], *, skip: int = 0, produce: bool = True) -> None:
        """Land rows at the next offsets, producing their Kafka records first unless already produced.

        `skip` records are produced but never landed: offsets lost between Kafka and the landing table.
        """
        encoder = RecordEncoder(KEY, VALUE)
        if produce:
            self.produce(skip + len(rows))
        self.offset += skip
        values = []
        for i, name, price, at in rows:
            value = {"id": i, "name": name, "price": price, "at": at.isoformat(sep=" "), "_tidb_op": "u",
                     "_tidb_commit_ts": 1, "_tidb_commit_physical_time": 1}  # fmt: skip
            values += [encoder.metadata(self.names.topic, 0, self.offset, 1_700_000_000_000, {"id": i}),
                       encoder.content(value)]  # fmt: skip
            self.offset += 1
        placeholders = ", ".join("(%s, %s)" for _ in rows)
        self.sf.cursor().execute(
            f"INSERT INTO {self.names.landing.sql} SELECT PARSE_JSON(column1), PARSE_JSON(column2) FROM VALUES {placeholders}",
            tuple(values),
        )
        assert self.names.landed_offsets is not None
        # As the built-in loader does with each load (the merge and landing_continuity read only up to it).
        for stmt in write_landed_offsets_statements(self.names.landed_offsets, self.names.landing, self.names.topic,
                                                    {0: self.offset - 1}, "test", dt.datetime(2026, 1, 1)):
            self.sf.cursor().execute(stmt.sql, stmt.params)

    def merge(self) -> None:
        outcome = merge_replica(connection=self.sf, registry=self.registry.get_client(), topic=self.names.topic,
                                landing=self.names.landing, replica=self.names.replica, watermarks=self.names.watermarks,
                                dead_letters=self.names.dead_letters, offset_gaps=self.names.offset_gaps,
                                kafka=self.kafka, landed_offsets=self.names.landed_offsets)  # fmt: skip
        assert outcome is not None

    def run(self, ticdc: TiCDCResource | None = None) -> dict[str, dg.AssetCheckEvaluation]:
        evaluations = self.run_checks(self.config, ticdc=ticdc)
        return {e.check_name: e for e in evaluations}

    def run_checks(self, config: PipelineConfig, selection: Sequence[dg.AssetCheckKey] = (),
                   ticdc: TiCDCResource | None = None) -> list[dg.AssetCheckEvaluation]:
        """The reconcile job for `config` through Dagster, or a job of only the `selection` checks."""
        checks = build_all_checks(config=config, settings=SETTINGS)
        jobs = [build_reconcile_job(checks=checks)]
        if selection:
            jobs.append(dg.define_asset_job("selected", selection=dg.AssetSelection.checks(*selection)))
        assets = [dg.AssetSpec(table_keys(config, t).replica) for t in config.tables]
        defs = dg.Definitions(
            assets=[*assets, dg.AssetSpec(changefeed_key(config))], asset_checks=checks, jobs=jobs,
            resources={"tidb": self.tidb, "kafka": self.kafka, "schema_registry": self.registry,
                       "snowflake": snowflake_resource(lab_env(self.settings)), "ticdc": ticdc or StubTiCDC()},
        )  # fmt: skip
        result = defs.resolve_job_def("selected" if selection else "reconcile").execute_in_process()
        assert result.success
        return result.get_asset_check_evaluations()


@pytest.fixture(scope="module")
def lab(mariadb: Service, snowflake: Service, kafka: Service, registry: Service,
        lab_settings: LabSettings) -> Iterator[Lab]:  # fmt: skip
    suffix = unique_suffix()
    with (lab_environment(lab_settings), source_databases(mariadb, f"chk_{suffix}") as src,
          snowflake_connection(lab_settings, f"CHK_{suffix.upper()}") as sf):
        lab = Lab(lab_settings, suffix, src, sf)
        with kafka_topics(lab_settings, lab.names.topic):
            lab.setup()
            yield lab


def _md(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {k: v.value for k, v in evaluation.metadata.items()}


def test_reconcile_job_and_schedule_cover_every_check() -> None:
    config = PipelineConfig(tables=(TableConfig(db="a", table="b"), TableConfig(db="a", table="c")))
    checks = build_all_checks(config=config)
    keys = {k for c in checks for k in c.check_keys}
    assert {(k.asset_key.to_user_string(), k.name) for k in keys} == {
        ("ticdc/tidb-pipeline", "changefeed_healthy"),
        *((f"snowflake/REPLICA/{t}", n) for t in ("B", "C") for n in (
            "row_count_matches_source", "content_matches_source", "landing_continuity", "no_quarantined_records",
            "no_unconverted_values", "schema_drift", "replica_freshness")),
    }  # fmt: skip
    schedule = build_reconcile_schedule(config=config)
    assert (schedule.cron_schedule, schedule.job_name) == ("0 * * * *", "reconcile")


def test_one_definition_per_check_kind_and_group_with_per_replica_specs() -> None:
    """Checks scale by kind and group, not by table; each replica keeps its own described, non-blocking check."""
    config = PipelineConfig(
        merge_schedules={"default": {"cron": "* * * * *"}, "big": {"cron": "*/5 * * * *"}},
        tables=(TableConfig(db="a", table="b"), TableConfig(db="a", table="c", group="big"),
                TableConfig(db="a", table="d", group="big")),
    )  # fmt: skip
    checks = build_all_checks(config=config)
    assert sorted(c.node_def.name for c in checks) == sorted([
        "ticdc__tidb_pipeline_changefeed_healthy",
        *(f"{k.name}_replication_{g}" for k in CHECK_KINDS for g in ("default", "big"))])
    assert all(c.can_subset for c in checks[1:])
    specs = {(s.asset_key.to_user_string(), s.name): (s.description, s.blocking)
             for c in checks for s in c.check_specs if s.asset_key.path[-1] == "C"}
    assert specs == {
        ("snowflake/REPLICA/C", "row_count_matches_source"):
            ("Replica row count equals `SELECT COUNT(*)` of TiDB `a.c` (lag-aware).", False),
        ("snowflake/REPLICA/C", "content_matches_source"):
            ("Chunked checksums over primary-key ranges equal on TiDB and the replica (lag-aware).", False),
        ("snowflake/REPLICA/C", "landing_continuity"):
            ("No offset hole above the merged watermark of landing table TIDB_REPLICA.LANDING.TIDB_A_C outlasts "
             "300 s (offsets Kafka never had are skipped).", False),
        ("snowflake/REPLICA/C", "no_quarantined_records"):
            ("No record of topic `tidb_a_c` sits in the dead-letter table (poison records are quarantined "
             "there with their offsets instead of being skipped).", False),
        ("snowflake/REPLICA/C", "no_unconverted_values"):
            ("No value of the replica is NULL because Snowflake could not convert it (TiDB zero dates and the like): "
             "each one is listed with its column and key.", False),
        ("snowflake/REPLICA/C", "schema_drift"):
            ("TiDB columns vs the topic's latest Avro value schema vs the replica's columns.", False),
        ("snowflake/REPLICA/C", "replica_freshness"): ("While records wait in Kafka, time since the replica was last materialized, against its freshness policy's windows.", False),
    }  # fmt: skip


def test_checks_on_the_lab(lab: Lab) -> None:
    """One lab scenario, in order: caught up, a row lost behind the pipeline's back, backlog, a gap, drift."""
    # 1. caught up and identical: everything passes
    ev = lab.run()
    assert {n: e.passed for n, e in ev.items()} == {
        "changefeed_healthy": True, "row_count_matches_source": True, "content_matches_source": True,
        "landing_continuity": True, "no_quarantined_records": True, "no_unconverted_values": True,
        "schema_drift": True, "replica_freshness": True,
    }  # fmt: skip
    assert _md(ev["row_count_matches_source"])["source_rows"] == 40
    content = _md(ev["content_matches_source"])
    assert (content["chunks_checked"], content["chunks_differing"], content["columns_compared"]) == (4, 0, 4)

    # 2. a row deleted from the replica and a value changed, caught up: ERROR naming exactly those ranges
    cur = lab.sf.cursor()
    cur.execute(f'DELETE FROM {lab.names.replica.sql} WHERE "id" = 25')
    cur.execute(f"UPDATE {lab.names.replica.sql} SET \"name\" = 'changed' WHERE \"id\" = 3")
    ev = lab.run()
    rc, ct = ev["row_count_matches_source"], ev["content_matches_source"]
    assert (rc.passed, rc.severity) == (False, ERROR)
    assert {k: _md(rc)[k] for k in ("source_rows", "replica_rows", "difference", "backlog_records")} == {
        "source_rows": 40, "replica_rows": 39, "difference": -1, "backlog_records": 0}
    assert (ct.passed, ct.severity) == (False, ERROR)
    assert _md(ct)["differing_ranges"] == [
        "id < 11: source 10 rows, replica 10 rows", "id >= 21 AND id < 31: source 10 rows, replica 9 rows"]

    # 3. the same, with two records waiting in Kafka above the watermark: WARN, not ERROR
    lab.produce(2)
    ev = lab.run()
    for name in ("row_count_matches_source", "content_matches_source"):
        assert (ev[name].passed, ev[name].severity) == (False, WARN), name
        assert _md(ev[name])["backlog_per_partition"] == "p0: 2"
    # those two records are the rows re-sent: landing and merging them repairs the replica
    lab.land([ROWS[24], ROWS[2]], produce=False)
    lab.merge()
    ev = lab.run()
    assert all(e.passed for e in ev.values()), {n: _md(e) for n, e in ev.items() if not e.passed}
    # Kafka caught up but TiCDC's checkpoint a minute behind: a difference is WARN
    cur.execute(f'DELETE FROM {lab.names.replica.sql} WHERE "id" = 25')
    ev = lab.run(StubTiCDC(behind_s=61))
    assert (ev["row_count_matches_source"].severity, _md(ev["row_count_matches_source"])["backlog_records"]) == (WARN, 0)
    assert (ev["changefeed_healthy"].passed, ev["changefeed_healthy"].severity) == (False, WARN)  # over 60 s
    lab.land([ROWS[24]])
    lab.merge()

    # 4. two records lost between Kafka and the landing table: the merge holds before them, and continuity is
    # ERROR naming the offsets (the lab's grace is 0)
    lab.land([ROWS[9]], skip=2)
    lab.merge()
    ev = lab.run()
    continuity = ev["landing_continuity"]
    assert (continuity.passed, continuity.severity) == (False, ERROR)
    assert f"topic {lab.names.topic} partition 0 offsets 43..44 missing" in continuity.description
    assert _md(continuity)["merged_watermarks"] == "p0: 42"  # nothing merged past the hole
    assert _md(continuity)["landed_through"] == "p0: 45"  # from the landed-offsets table
    assert ev["row_count_matches_source"].passed and ev["content_matches_source"].passed
    # dead-lettered offsets count as present
    dead = TableRef(lab.names.control.schema, SETTINGS.dead_letter_table, lab.names.control.database)
    cur.execute(create_dead_letter_sql(dead))
    cur.execute(f'INSERT INTO {dead.sql} ("TOPIC", "PARTITION", "OFFSET", "ERROR") VALUES (%s, 0, 43, %s), (%s, 0, 44, %s)',
                (lab.names.topic, "undecodable", lab.names.topic, "undecodable"))  # fmt: skip
    ev = lab.run()
    assert ev["landing_continuity"].passed
    # ...but quarantined records fail loudly, naming the count and the offsets
    quarantine = ev["no_quarantined_records"]
    assert (quarantine.passed, quarantine.severity, _md(quarantine)["quarantined"]) == (False, ERROR, 2)
    assert _md(quarantine)["first_records"] == ["p0@43: undecodable", "p0@44: undecodable"]

    # 5. a column added in TiDB that no change record carries yet: drift WARN; a stopped feed: ERROR
    with lab.src.cursor() as c:
        c.execute(f"ALTER TABLE {lab.db}.t ADD COLUMN note VARCHAR(10)")
    ev = lab.run(StubTiCDC(state="stopped"))
    assert (ev["schema_drift"].passed, ev["schema_drift"].severity) == (False, WARN)
    assert _md(ev["schema_drift"])["differences"] == ["column 'note' is in TiDB but no change record carries it yet"]
    assert (ev["changefeed_healthy"].passed, ev["changefeed_healthy"].severity) == (False, ERROR)
    assert _md(ev["content_matches_source"])["columns_not_in_replica"] == ["note"]
    assert ev["content_matches_source"].passed


def test_one_check_of_one_replica_runs_alone_and_a_failing_replica_does_not_hide_the_others(lab: Lab) -> None:
    # the missing table comes first in the group's op, so its failure happens before the real table is checked
    missing = TableConfig(db=lab.db, table="missing", key=("id",))
    config = PipelineConfig(snowflake=lab.config.snowflake, tables=(missing, lab.table))
    real = dg.AssetCheckKey(lab.keys.replica, "row_count_matches_source")
    gone = dg.AssetCheckKey(table_keys(config, missing).replica, "row_count_matches_source")

    # a single check of a single replica: one result, although its op covers both replicas and six kinds run
    (only,) = lab.run_checks(config, [real])
    assert (only.asset_key, only.check_name, only.passed) == (real.asset_key, real.name, True)
    assert _md(only)["source_rows"] == 40

    # both: the missing table's failure is its own ERROR result naming the exception; the other still runs
    evaluations = lab.run_checks(config, [real, gone])
    assert [(e.asset_key, e.check_name, e.passed) for e in evaluations] == [
        (gone.asset_key, gone.name, False), (real.asset_key, real.name, True)]
    assert evaluations[0].severity == ERROR
    error = _md(evaluations[0])["error"]
    assert error.startswith("ProgrammingError: ") and "MISSING" in error, error
    assert evaluations[0].description == f"the check raised {error}"
