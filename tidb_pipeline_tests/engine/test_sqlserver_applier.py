"""The built-in SQL Server applier end to end: TiCDC-shaped Avro on the lab's Kafka -> the lab's PostgreSQL.

PostgreSQL stands in for SQL Server (none runs here); the same applier code runs with the PostgreSQL
dialect of `tidb_pipeline.replication.sqlserver`. Records go through the lab's schema registry in the
Confluent wire format, partitioned by key like TiCDC's index-value dispatcher. Every test compares the
whole target table with a Python model of the sink's semantics (upsert by key, tombstone = delete).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import dagster as dg
import fastavro
import pytest
import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.sqlserver_assets import build_sqlserver_assets
from tidb_pipeline.engine import sqlserver as applier
from tidb_pipeline.lab.postgres import LAB_DATABASE
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER, LabSettings
from tidb_pipeline.replication.sqlserver import OFFSETS_TABLE, TargetTable
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.sqlserver import SqlServerResource

PARTITIONS = 3


def _t(tidb_type: str, avro: str | dict[str, Any]) -> dict[str, Any]:
    base = {"type": avro} if isinstance(avro, str) else dict(avro)
    return {**base, "connect.parameters": {"tidb_type": tidb_type}}


def _record(table: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "record", "name": table, "namespace": "default.sqlsrv", "fields": fields}


EXTENSION = [
    {"default": "", "name": "_tidb_op", "type": "string"},
    {"default": 0, "name": "_tidb_commit_ts", "type": "long"},
    {"default": 0, "name": "_tidb_commit_physical_time", "type": "long"},
]
V1_FIELDS = [
    {"name": "id", "type": _t("BIGINT", "long")},
    {"default": None, "name": "name", "type": ["null", _t("TEXT", "string")]},
    {"name": "price", "type": _t("DECIMAL", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2})},
    {"default": 1, "name": "flag", "type": _t("INT", "int")},
    {"default": None, "name": "data", "type": ["null", _t("BLOB", "bytes")]},
]
# TiDB: ALTER TABLE t ADD COLUMN note VARCHAR(20) NULL DEFAULT 'n/a' -> [T, "null"] with the default.
NOTE = {"default": "n/a", "name": "note", "type": [_t("TEXT", "string"), "null"]}


@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int
    key: int
    value: dict[str, Any] | None  # None = tombstone


class TopicWriter:
    """Writes TiCDC-shaped records (wire format, registry ids, index-value partitioning) to one topic."""

    def __init__(self, bootstrap: str, registry_url: str, topic: str, table: str) -> None:
        self.topic, self.table = topic, table
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        self.registry = SchemaRegistryClient({"url": registry_url})
        key = _record(table, [V1_FIELDS[0]])
        self.key_schema = fastavro.parse_schema(key)
        self.key_id = self.registry.register_schema(f"{topic}-key", Schema(json.dumps(key), "AVRO"))
        self.values: dict[int, tuple[int, Any]] = {}
        self.sent: list[Sent] = []

    def value_version(self, version: int) -> None:
        fields = V1_FIELDS + ([NOTE] if version >= 2 else []) + EXTENSION
        schema = _record(self.table, fields)
        sid = self.registry.register_schema(f"{self.topic}-value", Schema(json.dumps(schema), "AVRO"))
        self.values[version] = (sid, fastavro.parse_schema(schema))

    @staticmethod
    def _frame(sid: int, parsed: Any, datum: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(b"\x00" + sid.to_bytes(4, "big"))
        fastavro.schemaless_writer(buf, parsed, datum)
        return buf.getvalue()

    def _produce(self, key: int, value: bytes | None, row: dict[str, Any] | None) -> None:
        partition = key % PARTITIONS  # every version of a key in one partition, as with index-value

        def delivered(err: Any, msg: Any) -> None:
            assert err is None, err
            self.sent.append(Sent(msg.partition(), msg.offset(), key, row))

        self.producer.produce(self.topic, key=self._frame(self.key_id, self.key_schema, {"id": key}), value=value,
                              partition=partition, on_delivery=delivered)

    def upsert(self, version: int, row: dict[str, Any], op: str = "c") -> None:
        sid, parsed = self.values[version]
        datum = {**row, "_tidb_op": op, "_tidb_commit_ts": 1, "_tidb_commit_physical_time": 1}
        self._produce(row["id"], self._frame(sid, parsed, datum), row)

    def delete(self, key: int) -> None:
        self._produce(key, None, None)

    def raw(self, key: int, value: bytes) -> None:
        self._produce(key, value, {"poison": True})

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def row(id_: int, name: str | None, price: str, flag: int = 1, data: bytes | None = None, **more: Any) -> dict:
    return {"id": id_, "name": name, "price": Decimal(price), "flag": flag, "data": data, **more}


def write_phase1(w: TopicWriter) -> None:
    w.value_version(1)
    for r in [row(1, "a", "1.00", 1, b"\x00\x01"), row(2, "b", "2.50"), row(3, "c", "3.00", 0), row(4, "d", "4.00"),
              row(5, "e", "5.00")]:
        w.upsert(1, r)
    w.upsert(1, row(2, "b2", "2.75", 0, b"x"), op="u")
    w.delete(3)
    w.delete(4)  # UPDATE t SET id = 41 WHERE id = 4: delete old key + insert new key (another partition)
    w.upsert(1, row(41, "d", "4.00"))
    w.upsert(1, row(7, "g", "7.00"))
    w.delete(7)
    w.upsert(1, row(3, "c", "3.00", 0))  # TiCDC replays an earlier range after a restart
    w.delete(3)
    w.flush()


def write_phase2(w: TopicWriter) -> None:
    w.value_version(2)
    w.upsert(2, row(1, "a2", "1.25", 1, b"\x00\x01", note=None), op="u")
    w.upsert(2, row(8, "h", "8.00", note="hello"))
    w.delete(5)
    w.flush()


def model(sent: Sequence[Sent], applied: dict[int, int] | None = None) -> list[tuple]:
    """The table the sink's semantics give for the records below `applied` (all of them if None)."""
    state: dict[int, dict[str, Any] | None] = {}
    with_note = False  # the column exists once a value of the newer schema has been applied
    for s in sorted(sent, key=lambda s: (s.partition, s.offset)):  # a key lives in one partition
        if applied is None or s.offset < applied.get(s.partition, 0):
            state[s.key] = s.value
            with_note = with_note or (s.value is not None and "note" in s.value)
    out = []
    for key, value in sorted(state.items()):
        if value is None:
            continue
        cols = [value["id"], value["name"], value["price"], value["flag"], value["data"]]
        if with_note:
            # Rows not rewritten since the column was added read as TiDB backfilled them: the default.
            cols.append(value["note"] if "note" in value else "n/a")
        out.append(tuple(cols))
    return out


# --- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture()
def target(postgres: Service) -> Iterator[tuple[SqlServerResource, sa.Engine]]:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    resource = SqlServerResource(drivername="postgresql+pg8000", host=postgres.settings.host,
                                 port=postgres.settings.port("postgres"), username=LAB_DB_USER,
                                 password=LAB_DB_PASSWORD, database=LAB_DATABASE, db_schema=schema)
    engine = resource.get_engine()
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield resource, engine
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture()
def writer(kafka: Service, registry: Service, lab_settings: LabSettings) -> Iterator[TopicWriter]:
    table = f"t{uuid.uuid4().hex[:10]}"
    topic = f"tidb_sqlsrv_{table}"
    admin = AdminClient({"bootstrap.servers": lab_settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    w = TopicWriter(lab_settings.kafka_bootstrap, lab_settings.registry_url, topic, table)
    yield w
    admin.delete_topics([topic])[topic].result(30)


def _kafka(lab_settings: LabSettings) -> KafkaResource:
    return KafkaResource(bootstrap_servers=lab_settings.kafka_bootstrap)


def _contents(engine: sa.Engine, table: TargetTable) -> list[tuple]:
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT * FROM {table.sql('postgresql')} ORDER BY 1"))
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in result]


def _offsets(engine: sa.Engine, schema: str, topic: str) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            f'SELECT kafka_partition, next_offset FROM "{schema}"."{OFFSETS_TABLE}" WHERE topic = :t'), {"t": topic})
        return {int(p): int(o) for p, o in rows}


def _exists(engine: sa.Engine, table: TargetTable) -> bool:
    with engine.connect() as conn:
        return sa.inspect(conn).has_table(table.name, schema=table.schema)


def _apply(writer: TopicWriter, engine: sa.Engine, table: TargetTable, lab_settings: LabSettings,
           **kwargs: Any) -> applier.ApplyResult:
    return applier.apply_topic(kafka=_kafka(lab_settings), registry=writer.registry, engine=engine,
                               topic=writer.topic, table=table, timeout_s=60, **kwargs)


def _ends(writer: TopicWriter) -> dict[int, int]:
    out: dict[int, int] = {}
    for s in writer.sent:
        out[s.partition] = max(out.get(s.partition, 0), s.offset + 1)
    return out


# --- tests ------------------------------------------------------------------------------------------------
def test_apply_converges_adds_columns_and_reruns_change_nothing(
    writer: TopicWriter, target: tuple[SqlServerResource, sa.Engine], lab_settings: LabSettings
) -> None:
    resource, engine = target
    table = TargetTable(writer.topic, resource.db_schema)
    write_phase1(writer)
    first = _apply(writer, engine, table, lab_settings)
    expected1 = [(1, "a", Decimal("1.00"), 1, b"\x00\x01"), (2, "b2", Decimal("2.75"), 0, b"x"),
                 (5, "e", Decimal("5.00"), 1, None), (41, "d", Decimal("4.00"), 1, None)]
    assert model(writer.sent) == expected1  # the model agrees with a hand-written answer
    assert _contents(engine, table) == expected1
    assert (first.created, first.records_read, first.batches, first.row_count) == (True, 13, 1, 4)
    assert [(c.name, c.sql_type) for c in first.columns] == [
        ("id", "bigint"), ("name", "text"), ("price", "numeric(38,2)"), ("flag", "integer"), ("data", "bytea")]
    assert _offsets(engine, table.schema, writer.topic) == _ends(writer) == dict(first.offsets_after)
    assert first.backlog == 0

    again = _apply(writer, engine, table, lab_settings)
    assert (again.records_read, again.batches, again.created) == (0, 0, False)
    assert _contents(engine, table) == expected1
    assert _offsets(engine, table.schema, writer.topic) == _ends(writer)

    write_phase2(writer)
    second = _apply(writer, engine, table, lab_settings)
    assert second.columns_added == ("note",) and second.records_read == 3
    expected2 = [(1, "a2", Decimal("1.25"), 1, b"\x00\x01", None), (2, "b2", Decimal("2.75"), 0, b"x", "n/a"),
                 (8, "h", Decimal("8.00"), 1, None, "hello"), (41, "d", Decimal("4.00"), 1, None, "n/a")]
    assert model(writer.sent) == expected2
    assert _contents(engine, table) == expected2
    assert _offsets(engine, table.schema, writer.topic) == _ends(writer)

    third = _apply(writer, engine, table, lab_settings)
    assert third.records_read == 0 and _contents(engine, table) == expected2
    assert _offsets(engine, table.schema, writer.topic) == _ends(writer)


def test_crash_before_commit_applies_nothing_and_rerun_converges_once(
    writer: TopicWriter, target: tuple[SqlServerResource, sa.Engine], lab_settings: LabSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resource, engine = target
    table = TargetTable(writer.topic, resource.db_schema)
    write_phase1(writer)
    write_phase2(writer)
    real_store = applier._store_offsets
    calls: list[dict[int, int]] = []

    def crash_on(n: int) -> Any:
        def store(conn: sa.Connection, plan: Any, offsets: dict[int, int]) -> None:
            real_store(conn, plan, offsets)  # rows and offsets are written; the COMMIT never comes
            calls.append(dict(offsets))
            if len(calls) == n:
                raise RuntimeError("simulated crash between applying rows and COMMIT")
        return store

    # A crash in the first batch: not even the auto-created table survives (DDL is in the transaction).
    monkeypatch.setattr(applier, "_store_offsets", crash_on(1))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _apply(writer, engine, table, lab_settings)
    assert not _exists(engine, table) and _offsets(engine, table.schema, writer.topic) == {}

    # A crash in the third of several batches: the first two stay committed, the third leaves no trace.
    calls.clear()
    monkeypatch.setattr(applier, "_store_offsets", crash_on(3))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _apply(writer, engine, table, lab_settings, batch_size=4)
    committed = calls[1]
    assert _offsets(engine, table.schema, writer.topic) == committed
    assert sum(committed.values()) == 8  # two batches of four records
    assert _contents(engine, table) == model(writer.sent, committed)

    monkeypatch.setattr(applier, "_store_offsets", real_store)
    rerun = _apply(writer, engine, table, lab_settings, batch_size=4)
    assert rerun.records_read == len(writer.sent) - 8 and rerun.offsets_before == committed
    assert _contents(engine, table) == model(writer.sent)
    assert _offsets(engine, table.schema, writer.topic) == _ends(writer)
    assert _apply(writer, engine, table, lab_settings).records_read == 0
    assert _contents(engine, table) == model(writer.sent)


def test_offsets_moved_by_another_run_stop_this_one(
    writer: TopicWriter, target: tuple[SqlServerResource, sa.Engine], lab_settings: LabSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resource, engine = target
    table = TargetTable(writer.topic, resource.db_schema)
    write_phase1(writer)
    real_collapse = applier._collapse

    def racing_collapse(*args: Any, **kwargs: Any) -> Any:
        # Another applier commits offsets for this table while this run is decoding its batch.
        with engine.begin() as conn:
            conn.execute(sa.text(f'INSERT INTO "{table.schema}"."{OFFSETS_TABLE}" VALUES (:n, :t, 0, 2)'),
                         {"n": table.label, "t": writer.topic})
        return real_collapse(*args, **kwargs)

    monkeypatch.setattr(applier, "_collapse", racing_collapse)
    with pytest.raises(applier.ConcurrentApplyError, match="another applier"):
        _apply(writer, engine, table, lab_settings)
    assert not _exists(engine, table)
    assert _offsets(engine, table.schema, writer.topic) == {0: 2}


def test_undecodable_record_stops_with_its_position(
    writer: TopicWriter, target: tuple[SqlServerResource, sa.Engine], lab_settings: LabSettings
) -> None:
    resource, engine = target
    table = TargetTable(writer.topic, resource.db_schema)
    writer.value_version(1)
    writer.upsert(1, row(3, "c", "3.00"))
    writer.raw(3, b"not avro")
    writer.flush()
    bad = writer.sent[-1]
    with pytest.raises(applier.ApplyError, match=rf"{writer.topic}/{bad.partition}@{bad.offset} \(value\)"):
        _apply(writer, engine, table, lab_settings)
    assert not _exists(engine, table) and _offsets(engine, table.schema, writer.topic) == {}


def test_asset_materializes_through_resources(
    writer: TopicWriter, target: tuple[SqlServerResource, sa.Engine], lab_settings: LabSettings
) -> None:
    resource, engine = target
    config = PipelineConfig(tables=(TableConfig(db="sqlsrv", table=writer.table),))
    assert config.topic(config.tables[0]) == writer.topic
    (asset,) = build_sqlserver_assets(config=config, table=config.tables[0], database=LAB_DATABASE)
    key = dg.AssetKey(["sqlserver", LAB_DATABASE, writer.topic])
    assert asset.key == key
    assert asset.asset_deps[key] == {dg.AssetKey(["kafka", writer.topic])}

    write_phase1(writer)
    result = dg.materialize([asset], resources={
        "kafka": _kafka(lab_settings),
        "schema_registry": SchemaRegistryResource(url=lab_settings.registry_url),
        "sqlserver": resource,
    })
    assert result.success
    (mat,) = result.asset_materializations_for_node(asset.node_def.name)
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["records_read"] == 13 and meta["dagster/row_count"] == 4 and meta["backlog_records"] == 0
    assert meta["table_created"] is True
    assert _contents(engine, TargetTable(writer.topic, resource.db_schema)) == model(writer.sent)


def test_column_policy_excludes_hashes_and_masks(
    writer: TopicWriter, target: tuple[SqlServerResource, sa.Engine], lab_settings: LabSettings
) -> None:
    """The applier follows the table's column policy: `data` left out, `name`/`price` hashed, `flag` NULL."""
    import hashlib

    from tidb_pipeline.config import ColumnsConfig

    resource, engine = target
    table = TargetTable(writer.topic, resource.db_schema)
    write_phase1(writer)
    salt = "pëpper"
    reads: list[int] = []

    def read_salt() -> str:
        reads.append(1)
        return salt

    result = _apply(writer, engine, table, lab_settings, policy=ColumnsConfig(exclude=("data",), hash=("name", "price"),
                    mask=("flag",)), hash_salt=read_salt, source="sqlsrv.t")

    def h(text: str | None) -> str | None:
        return None if text is None else hashlib.sha256((salt + text).encode()).hexdigest()

    # The model's values in MySQL's text (DECIMAL(10,2) with both digits), hashed here independently.
    expected = [(i, h(name), h(f"{price:.2f}"), None) for i, name, price, _flag, _data in model(writer.sent)]
    assert _contents(engine, table) == expected and len(expected) == 4
    assert [(c.name, c.sql_type) for c in result.columns] == [
        ("id", "bigint"), ("name", "varchar(64)"), ("price", "varchar(64)"), ("flag", "integer")]
    assert reads == [1]  # read once per batch, only because a value was hashed
