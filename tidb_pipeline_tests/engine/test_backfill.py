"""Backfill at a consistent point: the SQL the TiDB snapshot issues, the refusals, the job, and the lab end to end.

The end-to-end test is the acceptance: a MariaDB table holds rows before any changefeed exists; a writer thread
inserts, updates and deletes throughout; the backfill snapshots, loads the replica and creates the changefeed at
the snapshot's TSO; after landing and merging, the replica equals the source in full, and every landed change
was committed after the snapshot (nothing from before it was sent again).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import threading
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import pymysql
import pytest

from tidb_pipeline.config import PipelineConfig, SnowflakeConfig, SourceConfig, TableConfig
from tidb_pipeline.engine.backfill import (
    BackfillError,
    MySQLSnapshot,
    backfill,
    check_selection,
    insert_from_load_sql,
    tidb_snapshot,
)
from tidb_pipeline.defs.backfill_job import build_backfill_job, select_tables
from tidb_pipeline.lab.service import Service, wait_until
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.replication.avro_types import ReplicaColumn
from tidb_pipeline.replication.ddl import TableRef
from tidb_pipeline.replication.merge import json_to_sql
from tidb_pipeline_tests.lab_resources import (
    changefeed_client, kafka_topics, snowflake_connection, source_databases, unique_suffix,
)

# --- the TiDB snapshot's SQL, against a fake connection -----------------------------------------------------


class FakeCursor:
    def __init__(self, conn: FakeConnection, kind: Any) -> None:
        self.conn, self.kind, self.result = conn, kind, []

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> None:
        self.conn.log.append((sql, params, None if self.kind is None else self.kind.__name__))
        self.result = list(self.conn.answer(sql))

    def fetchone(self) -> Any:
        return self.result.pop(0)

    def fetchall(self) -> list:
        rows, self.result = self.result, []
        return rows

    def fetchmany(self, n: int) -> list:
        rows, self.result = self.result[:n], self.result[n:]
        return rows


class FakeConnection:
    """Answers TiDB's TSO function, information_schema and the table read; records every statement."""

    TSO = 449_572_345_123_456_789

    def __init__(self) -> None:
        self.log: list[tuple[str, Any, str | None]] = []

    def cursor(self, kind: Any = None) -> FakeCursor:
        return FakeCursor(self, kind)

    def answer(self, sql: str) -> Sequence[tuple]:
        if sql == "SELECT TIDB_CURRENT_TSO()":
            return [(self.TSO,)]
        if "information_schema.COLUMNS" in sql:
            # TiDB marks generated columns in EXTRA; `g` is virtual (never replicated), `s` stored (replicated).
            return [("id", "int", "int(11)", "NO", None, 10, 0, None, None, ""),
                    ("g", "int", "int(11)", "YES", None, 10, 0, None, None, "VIRTUAL GENERATED"),
                    ("v", "varchar", "varchar(10)", "YES", None, None, None, None, 40, ""),
                    ("s", "int", "int(11)", "YES", None, 10, 0, None, None, "STORED GENERATED")]  # fmt: skip
        if "information_schema.STATISTICS" in sql:
            return [("uq_g", 0, 1, "g"), ("PRIMARY", 0, 1, "id")]
        if sql.startswith("SELECT `id`"):
            return [(i, f"v{i}", i + 1) for i in range(5)]
        return []


def test_tidb_snapshot_pins_the_session_to_the_current_tso_and_reads_under_it() -> None:
    conn = FakeConnection()
    with tidb_snapshot(conn, time_zone="+00:00") as snap:
        info = snap.table_info("shop", "orders")
        chunks = list(snap.read("shop", "orders", [c.name for c in info.columns], chunk_rows=2))
        statements = len(conn.log)
    assert snap.tso == FakeConnection.TSO
    # The virtual generated column is neither a column nor part of a unique key TiCDC sees.
    assert (info.handle_key, [c.name for c in info.columns], info.unique_keys) == (("id",), ["id", "v", "s"], (("id",),))
    assert chunks == [[(0, "v0", 1), (1, "v1", 2)], [(2, "v2", 3), (3, "v3", 4)], [(4, "v4", 5)]]
    tso = str(FakeConnection.TSO)
    assert [(sql.split(" FROM ")[0], params, kind) for sql, params, kind in conn.log] == [
        ("SELECT TIDB_CURRENT_TSO()", None, None),
        ("SET @@session.time_zone = %s", ("+00:00",), None),
        ("SET @@tidb_snapshot = %s", (tso,), None),
        ("SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, NUMERIC_PRECISION, "
         "NUMERIC_SCALE, DATETIME_PRECISION, CHARACTER_OCTET_LENGTH, EXTRA", ("shop", "orders"), None),
        ("SELECT INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME", ("shop", "orders"), None),
        # Streamed: an unbuffered cursor, so a large table never sits in memory whole.
        ("SELECT `id`, `v`, `s`", None, "SSCursor"),
        ("SET @@tidb_snapshot = ''", None, None),
    ]
    assert statements == 6  # the snapshot is released only when the block ends
    assert conn.log[5][0] == "SELECT `id`, `v`, `s` FROM `shop`.`orders`"


def test_missing_source_table_is_named() -> None:
    class Empty(FakeConnection):
        def answer(self, sql: str) -> Sequence[tuple]:
            return [] if "information_schema" in sql else super().answer(sql)

    with pytest.raises(BackfillError, match="table shop.gone does not exist in the source"):
        MySQLSnapshot(Empty(), 1).table_info("shop", "gone")


# --- pure parts ---------------------------------------------------------------------------------------------


def _config(*tables: str, cf_id: str = "feed", database: str = "TIDB_REPLICA") -> PipelineConfig:
    return PipelineConfig(
        source=SourceConfig(changefeed_id=cf_id),
        snowflake=SnowflakeConfig(database=database),
        tables=tuple(TableConfig(db=t.split(".")[0], table=t.split(".")[1]) for t in tables),
    )


class Observed:
    def __init__(self, rules: list[str], state: str = "normal") -> None:
        self.config = {"filter": {"rules": rules}}
        self.state = state


def test_selection_rules() -> None:
    config = _config("shop.a", "shop.b")
    a, b = config.tables
    check_selection(config, [a, b], None)  # a new changefeed: every table at once
    with pytest.raises(BackfillError, match=r"does not exist yet .* \['shop.b'\] would miss their earlier rows"):
        check_selection(config, [a], None)
    check_selection(config, [b], Observed(["shop.a"]))  # adding b to a running changefeed
    with pytest.raises(BackfillError, match=r"already replicates \['shop.a'\]"):
        check_selection(config, [a, b], Observed(["shop.a"]))
    with pytest.raises(BackfillError, match=r"\['shop.c'\] are not in the config"):
        check_selection(config, [TableConfig(db="shop", table="c")], None)
    assert select_tables(config, []) == (a, b)
    assert select_tables(config, ["shop.b"]) == (b,)
    with pytest.raises(BackfillError, match=r"\['shop.x'\] are not in the config \(known: shop.a, shop.b\)"):
        select_tables(config, ["shop.x"])


def test_insert_from_load_uses_the_merges_casts() -> None:
    cols = [
        ReplicaColumn("id", "NUMBER(10,0)", False, "INT", True, "int"),
        ReplicaColumn("u", "NUMBER(20,0)", True, "BIGINT UNSIGNED", False, "long"),
        ReplicaColumn("at", "TIMESTAMP_NTZ(6)", True, "DATETIME", False, "string"),
        ReplicaColumn("b", "BINARY", True, "BLOB", False, "bytes"),
    ]
    stmt = insert_from_load_sql(TableRef("R", "T", "DB"), TableRef("C", "L", "DB"), cols)
    values = ", ".join(f'{json_to_sql(c, f"l.{chr(34)}RECORD_CONTENT{chr(34)}:{chr(34)}{c.name}{chr(34)}")} AS "{c.name}"' for c in cols)
    assert stmt.sql == f'INSERT INTO "DB"."R"."T" ("id", "u", "at", "b") SELECT {values} FROM "DB"."C"."L" l'
    assert "STRIP_NULL_VALUE(l.\"RECORD_CONTENT\":\"at\")" in stmt.sql
    assert stmt.params == ()


def test_backfill_job_is_one_op_with_a_table_selection() -> None:
    job = build_backfill_job(config=_config("shop.a"))
    assert job.name == "backfill"
    assert [n.name for n in job.graph.nodes] == ["backfill_tables"]
    assert set(job.graph.node_named("backfill_tables").definition.required_resource_keys) == {
        "tidb", "snowflake", "ticdc", "kafka", "schema_registry"}  # fmt: skip
    op_config = job.run_config_schema.config_type.fields["ops"].config_type.fields["backfill_tables"]
    assert set(op_config.config_type.fields["config"].config_type.fields) == {"tables", "chunk_rows"}


class FakeTiCDC:
    """A changefeed that already replicates shop.a; records the calls a backfill makes, in order."""

    def __init__(self, calls: list[str]) -> None:
        from tidb_pipeline.resources.ticdc import ChangefeedInfo

        self.calls = calls
        self.info = ChangefeedInfo(id="feed", state="normal", checkpoint_ts=1 << 18, checkpoint_time="", error=None,
                                   sink_uri_masked="kafka://k:9092/t?protocol=avro",
                                   config={"filter": {"rules": ["shop.a"]}})  # fmt: skip

    def get(self, cf_id: str) -> Any:
        self.calls.append("get")
        return self.info

    def __getattr__(self, name: str) -> Any:
        import dataclasses

        def call(*args: Any, **kwargs: Any) -> None:
            self.calls.append(name)
            state = {"pause": "stopped", "resume": "normal"}.get(name)
            if state:
                self.info = dataclasses.replace(self.info, state=state)

        return call


class FakeSnapshotSource:
    def __init__(self, calls: list[str], fail: bool = False) -> None:
        self.calls, self.fail = calls, fail

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        from tidb_pipeline.replication import ticdc_schema

        calls, fail = self.calls, self.fail

        class Snap:
            tso = 99 << 18

            def table_info(self, db: str, table: str) -> Any:
                return ticdc_schema.TableInfo(db, table, (ticdc_schema.Column("id", "int", False),
                                                          ticdc_schema.Column("v", "varchar", True)), ("id",))

            def read(self, db: str, table: str, columns: Sequence[str], chunk_rows: int) -> Iterator[list[tuple]]:
                if fail:
                    raise ConnectionError("source went away")
                yield [(1, "x"), (2, None)]
                yield [(3, "z")]

        calls.append("snapshot")
        yield Snap()
        calls.append("snapshot released")


def _fake_backfill(calls: list[str], fail: bool = False) -> Any:
    from tidb_pipeline.resources.kafka import KafkaResource
    from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
    from tidb_pipeline_tests.replication.support import fake_snowflake

    config = _config("shop.a", "shop.b", database="DB")
    with fake_snowflake() as sf:
        result = backfill(tidb=None, snowflake_connection=sf, ticdc_client=FakeTiCDC(calls), kafka=KafkaResource(),
                          registry=SchemaRegistryResource(), config=config, tables=[config.tables[1]],
                          snapshot=FakeSnapshotSource(calls, fail), chunk_rows=2)  # fmt: skip
        cur = sf.cursor()
        cur.execute('SELECT "id", "v" FROM "DB"."REPLICA"."B" ORDER BY 1')
        return result, cur.fetchall()


def test_adding_a_table_to_a_running_changefeed_pauses_it_before_the_snapshot() -> None:
    calls: list[str] = []
    result, rows = _fake_backfill(calls)
    # Paused first (its checkpoint stays before the snapshot), updated and resumed only after the load.
    assert calls == ["get", "pause", "snapshot", "snapshot released", "get", "update", "resume", "get"]
    assert rows == [(1, "x"), (2, None), (3, "z")]
    assert (result.tso, result.rows, result.tables[0].chunks, result.changefeed.action) == (99 << 18, 3, 2, "update")


def test_a_failed_backfill_resumes_the_changefeed_it_paused() -> None:
    calls: list[str] = []
    with pytest.raises(ConnectionError, match="source went away"):
        _fake_backfill(calls, fail=True)
    assert calls == ["get", "pause", "snapshot", "resume"]


# --- the lab, end to end ------------------------------------------------------------------------------------

INITIAL_ROWS = 3000
# `seen` is NOT NULL because the fakesnow server returns a NULL TIMESTAMP_NTZ as 1970-01-01 (it stores NULL;
# `COUNT_IF(col IS NULL)` counts it), which would make compare_table report a difference that is not there.
TABLE_SQL = """CREATE TABLE `{db}`.items (
  id INT PRIMARY KEY,
  name VARCHAR(40) NOT NULL,
  amount DECIMAL(12,2) NOT NULL,
  qty BIGINT NOT NULL,
  big BIGINT UNSIGNED NULL,
  ratio DOUBLE NULL,
  born DATE NULL,
  seen DATETIME(6) NOT NULL,
  span TIME NULL,
  note TEXT NULL,
  raw VARBINARY(16) NULL,
  kind ENUM('a','b','c') NOT NULL DEFAULT 'a'
)"""
COLUMNS = ("id", "name", "amount", "qty", "big", "ratio", "born", "seen", "span", "note", "raw", "kind")


def _row(i: int, rnd: random.Random) -> tuple:
    return (
        i, f"item-{i}-{rnd.randrange(10**6)}", Decimal(rnd.randrange(-10**9, 10**9)) / 100, rnd.randrange(-2**62, 2**62),
        rnd.choice([None, 0, 2**64 - 1, rnd.randrange(2**64)]), rnd.choice([None, rnd.uniform(-1e6, 1e6)]),
        rnd.choice([None, dt.date(2000, 1, 1) + dt.timedelta(days=rnd.randrange(9000))]),
        dt.datetime(2020, 1, 1) + dt.timedelta(microseconds=rnd.randrange(10**14)),
        rnd.choice([None, dt.timedelta(seconds=rnd.randrange(-3_000_000, 3_000_000))]),
        rnd.choice([None, "", "ünïcødé ✓", "x" * rnd.randrange(200)]),
        rnd.choice([None, b"", bytes(rnd.randrange(256) for _ in range(rnd.randrange(16)))]),
        rnd.choice("abc"),
    )  # fmt: skip


def _insert(cur: Any, db: str, rows: Sequence[tuple]) -> None:
    placeholders = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
    cur.execute(f"INSERT INTO `{db}`.items ({', '.join(COLUMNS)}) VALUES " + ", ".join([placeholders] * len(rows)),
                [v for r in rows for v in r])  # fmt: skip


class Writer(threading.Thread):
    """Inserts, updates and deletes rows until stopped; counts what it committed."""

    def __init__(self, conn_kwargs: dict, db: str, first_id: int) -> None:
        super().__init__(daemon=True)
        self.conn_kwargs, self.db, self.next_id = conn_kwargs, db, first_id
        self.stop = threading.Event()
        self.ops = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(7)
        try:
            with pymysql.connect(autocommit=True, **self.conn_kwargs) as conn, conn.cursor() as cur:
                while not self.stop.is_set():
                    op = rnd.random()
                    if op < 0.4:
                        _insert(cur, self.db, [_row(self.next_id, rnd)])
                        self.next_id += 1
                    elif op < 0.8:
                        cur.execute(f"UPDATE `{self.db}`.items SET name = %s, amount = amount + 1.25, qty = qty - 3, "
                                    "seen = NOW(6), kind = %s WHERE id = %s",
                                    (f"upd-{self.ops}", rnd.choice("abc"), rnd.randrange(self.next_id)))  # fmt: skip
                    else:
                        cur.execute(f"DELETE FROM `{self.db}`.items WHERE id = %s", (rnd.randrange(self.next_id),))
                    self.ops += 1
                    time.sleep(0.002)  # a steady trickle, not a flood the 2-core machine spends all its time on
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc


class WatchedSource:
    """Wraps a snapshot source and records the writer's progress while the snapshot is open."""

    def __init__(self, inner: Any, writer: Writer) -> None:
        self.inner, self.writer = inner, writer
        self.ops_while_open = -1

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        with self.inner.open() as snap:
            before = self.writer.ops
            yield snap
            self.ops_while_open = self.writer.ops - before


@pytest.fixture()
def lab_env(
    mariadb: Service, kafka: Service, registry: Service, ticdc: Service, snowflake: Service, lab_settings: LabSettings
) -> Iterator[dict]:
    suffix = unique_suffix(10)
    db, cf_id = f"backfill_{suffix}", f"backfill-{suffix}"
    config = _config(f"{db}.items", cf_id=cf_id, database=f"BACKFILL_{suffix.upper()}")
    # The tests create the source database and the pipeline its topic and warehouse database; all go after.
    with (source_databases(mariadb, db, create=False) as src,
          snowflake_connection(lab_settings, config.snowflake.database, create=False) as sf,
          kafka_topics(lab_settings, config.topic(config.tables[0]), create=False),
          changefeed_client(lab_settings, cf_id) as client):
        yield {"db": db, "cf_id": cf_id, "src": src, "conn_kwargs": mariadb.connect_kwargs(),  # type: ignore[attr-defined]
               "client": client, "sf": sf, "config": config, "settings": lab_settings}  # fmt: skip


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_backfill_under_writes_ends_equal_to_the_source(lab_env: dict) -> None:
    from tidb_pipeline.engine.landing import load_topic
    from tidb_pipeline.engine.replica import merge_replica
    from tidb_pipeline.defs.tables import table_names
    from tidb_pipeline.lab.compare import compare_table
    from tidb_pipeline.lab.snapshot import MariaDBSnapshotSource
    from tidb_pipeline.lab.ticdc.codec import tso_from_ms
    from tidb_pipeline.resources.kafka import KafkaResource
    from tidb_pipeline.resources.schema_registry import SchemaRegistryResource

    db, cf_id, src, sf, config = lab_env["db"], lab_env["cf_id"], lab_env["src"], lab_env["sf"], lab_env["config"]
    settings: LabSettings = lab_env["settings"]
    client = lab_env["client"]
    rnd = random.Random(1)
    with src.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}`")
        cur.execute(TABLE_SQL.format(db=db))
        for start in range(0, INITIAL_ROWS, 500):
            _insert(cur, db, [_row(i, rnd) for i in range(start, start + 500)])
    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap)
    registry = SchemaRegistryResource(url=settings.registry_url)
    names = table_names(config, config.tables[0])

    writer = Writer(lab_env["conn_kwargs"], db, INITIAL_ROWS)
    writer.start()
    wait_until(lambda: writer.ops >= 20, timeout=30, what="the writer getting going")
    source = WatchedSource(MariaDBSnapshotSource(lab_env["conn_kwargs"]), writer)
    result = backfill(tidb=None, snowflake_connection=sf, ticdc_client=client, kafka=kafka, registry=registry,
                      config=config, tables=config.tables, snapshot=source, chunk_rows=700)  # fmt: skip
    ops_at_backfill_end = writer.ops
    # Keep writing after the changefeed exists, so the stream has changes of every kind on top of the snapshot.
    wait_until(lambda: writer.ops >= ops_at_backfill_end + 300, timeout=60, what="writes after the backfill")
    writer.stop.set()
    writer.join(30)
    assert writer.error is None, writer.error
    target = tso_from_ms(time.time_ns() // 1_000_000)

    assert result.changefeed.action == "create" and result.changefeed.state == "normal"
    assert client.get(cf_id).config["filter"]["rules"] == [f"{db}.items"]
    (table,) = result.tables
    assert INITIAL_ROWS * 0.8 < table.rows < INITIAL_ROWS * 1.5 and table.chunks == -(-table.rows // 700)
    assert source.ops_while_open > 0, "writes stalled while the snapshot was open"

    wait_until(lambda: client.get_status(cf_id).checkpoint_ts >= target, timeout=120,
               what="the changefeed passing the end of the writes")  # fmt: skip
    landed = load_topic(kafka=kafka, registry=registry.get_client(), connection=sf, topic=names.topic,
                        landing=names.landing, control=names.control)  # fmt: skip
    assert landed.rows_loaded >= 200  # at least the writes after the backfill, most of which hit a row
    outcome = merge_replica(connection=sf, registry=registry.get_client(), topic=names.topic, landing=names.landing,
                            replica=names.replica, watermarks=names.watermarks)  # fmt: skip
    assert outcome is not None and outcome.counts.landing_rows == landed.rows_loaded

    # The changefeed started exactly at the snapshot: every record it sent was committed after it.
    cur = sf.cursor()
    cur.execute(f'SELECT MIN("RECORD_CONTENT":"_tidb_commit_ts"::NUMBER(20,0)), COUNT(*) FROM {names.landing.sql} '
                "WHERE \"RECORD_CONTENT\":\"_tidb_commit_ts\" IS NOT NULL")  # fmt: skip
    first_commit_ts, values = cur.fetchone()
    assert values > 0 and int(first_commit_ts) > result.tso

    with pymysql.connect(**lab_env["conn_kwargs"]) as check:
        cmp = compare_table(check, db, "items", sf, names.replica, ["id"])
    assert cmp.equal, cmp
    assert cmp.source_rows > INITIAL_ROWS * 0.8


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_backfill_job_runs_in_dagster_against_the_lab(lab_env: dict) -> None:
    import dagster as dg
    from dagster_snowflake import SnowflakeResource

    from tidb_pipeline.defs.tables import table_names
    from tidb_pipeline.lab.compare import compare_table
    from tidb_pipeline.lab.snapshot import MariaDBSnapshotSource
    from tidb_pipeline.lab.snowflake import connection_args
    from tidb_pipeline.resources.kafka import KafkaResource
    from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
    from tidb_pipeline.resources.ticdc import TiCDCResource
    from tidb_pipeline.resources.tidb import TiDBResource

    db, cf_id, src, sf, config = lab_env["db"], lab_env["cf_id"], lab_env["src"], lab_env["sf"], lab_env["config"]
    settings: LabSettings = lab_env["settings"]
    rnd = random.Random(2)
    with src.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}`")
        cur.execute(TABLE_SQL.format(db=db))
        _insert(cur, db, [_row(i, rnd) for i in range(1200)])
    kw = lab_env["conn_kwargs"]
    sf_args = connection_args(settings)
    resources = {
        "tidb": TiDBResource(host=kw["host"], port=kw["port"], user=kw["user"], password=kw["password"]),
        "snowflake": SnowflakeResource(
            account=sf_args.pop("account"), user=sf_args.pop("user"), password=sf_args.pop("password"),
            additional_snowflake_connection_args=sf_args),
        "ticdc": TiCDCResource(url=settings.ticdc_url),
        "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap),
        "schema_registry": SchemaRegistryResource(url=settings.registry_url),
    }  # fmt: skip
    job = build_backfill_job(config=config, snapshot_source=MariaDBSnapshotSource.from_tidb)
    run = job.execute_in_process(
        resources=resources, instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"backfill_tables": {"config": {"tables": [f"{db}.items"], "chunk_rows": 500}}}},
    )
    assert run.success
    (materialization,) = [e for e in run.events_for_node("backfill_tables") if e.event_type_value == "STEP_OUTPUT"]
    metadata = materialization.step_output_data.metadata
    assert metadata["rows_loaded"].value == 1200
    assert metadata["changefeed_action"].value == "create"
    assert lab_env["client"].get(cf_id).state == "normal"
    with pymysql.connect(**kw) as check:
        cmp = compare_table(check, db, "items", sf, table_names(config, config.tables[0]).replica, ["id"])
    assert cmp.equal and cmp.replica_rows == 1200, cmp


def test_backfill_schemas_use_the_changefeeds_decimal_mode() -> None:
    """The snapshot's Avro schemas are the changefeed's: string decimals in connector mode, precise otherwise."""
    from tidb_pipeline.engine.backfill import codec_config

    tables = (TableConfig(db="a", table="b"),)
    assert codec_config(PipelineConfig(tables=tables)).decimal_handling_mode == "precise"
    assert codec_config(PipelineConfig(tables=tables, landing_mode="connector")).decimal_handling_mode == "string"
