"""The built-in landing loader against the lab's Kafka, schema registry and fakesnow server.

Each test uses its own topic and its own Snowflake database. Expected rows are built here from the produced
records (not with the loader's encoder), and whole table contents are compared.

fakesnow re-encodes VARIANT numbers when it extracts a path, so a landed `12.50` reads back as `12.5`;
the scale of what the loader writes is asserted on its lines in test_wire.py, here decimals compare by value.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import fastavro
import pytest
import snowflake.connector as sf_connector
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from tidb_pipeline.engine import landing as landing_mod
from tidb_pipeline.engine.landing import LandingResult, SchemaRegistryUnavailable, load_topic, plan_ranges, split_ranges
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.replication.ddl import TableRef, quote_ident
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.warehouse import Warehouse
from tidb_pipeline_tests.replication.support import KEY, field as avro_field, small_value
from tidb_pipeline.lab.ports import free_port
from tidb_pipeline_tests.lab_resources import kafka_resource, kafka_topics, snowflake_connection, unique_suffix

VALUE = small_value(avro_field("data", "bytes", "BLOB", nullable=True))
PARTITIONS = 3


# --- pure planning ------------------------------------------------------------------------------------


def test_plan_ranges_reads_from_next_offsets_to_the_end():
    assert plan_ranges({0: 5, 1: 7}, {0: 10, 1: 7, 2: 3}) == {0: (5, 10), 2: (0, 3)}


def test_plan_ranges_shares_max_records_evenly():
    assert plan_ranges({}, {0: 100, 1: 2, 2: 100}, max_records=50) == {0: (0, 24), 1: (0, 2), 2: (0, 24)}
    assert plan_ranges({}, {0: 100, 1: 100}, max_records=3) == {0: (0, 2), 1: (0, 1)}
    assert plan_ranges({}, {0: 5}, max_records=0) == {}


def test_split_ranges_cuts_equal_parts_with_one_range_per_partition_each():
    groups = split_ranges({0: (0, 10), 1: (5, 7), 2: (0, 6)}, 2)
    assert groups == [((0, 0, 9),), ((0, 9, 10), (1, 5, 7), (2, 0, 6))]
    assert split_ranges({0: (3, 4)}, 4) == [((0, 3, 4),)]
    assert split_ranges({}, 2) == []


# --- the lab ------------------------------------------------------------------------------------------


@dataclass
class Produced:
    """What the test put on the topic, to build the expected landing rows from."""

    partition: int
    offset: int
    timestamp: int
    key: dict[str, Any] | None
    value: dict[str, Any] | None
    raw_key: bytes | None = None
    raw_value: bytes | None = None


@dataclass
class Lab:
    settings: LabSettings
    topic: str
    database: str
    conn: Any
    kafka: KafkaResource
    registry: SchemaRegistryClient
    key_id: int = 0
    value_id: int = 0
    produced: list[Produced] = field(default_factory=list)

    @property
    def landing(self) -> TableRef:
        return TableRef("LANDING", self.topic.upper(), self.database)

    @property
    def control(self) -> TableRef:
        return TableRef("PIPELINE", "", self.database)

    def load(self, registry: SchemaRegistryClient | None = None, **kwargs: Any) -> LandingResult:
        return load_topic(kafka=self.kafka, registry=registry or self.registry, connection=self.conn,
                          topic=self.topic, landing=self.landing, control=self.control, **kwargs)

    def wire(self, sid: int, schema: dict, obj: dict) -> bytes:
        buf = io.BytesIO()
        buf.write(b"\x00" + sid.to_bytes(4, "big"))
        fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), obj)
        return buf.getvalue()

    def produce(self, rows: list[tuple[int, dict | None, dict | None]] | None = None,
                raw: list[tuple[int, bytes | None, bytes | None]] | None = None) -> list[Produced]:
        """Produce (partition, key, value|None) records, or raw (partition, key bytes, value bytes)."""
        out: list[Produced] = []
        producer = Producer({"bootstrap.servers": self.settings.kafka_bootstrap, "linger.ms": 5})

        def delivered(err: Any, msg: Any, key: Any, value: Any) -> None:
            assert err is None, err
            out.append(Produced(msg.partition(), msg.offset(), msg.timestamp()[1], key, value, msg.key(), msg.value()))

        for p, key, value in rows or []:
            producer.produce(self.topic, key=self.wire(self.key_id, KEY, key),
                             value=None if value is None else self.wire(self.value_id, VALUE, value), partition=p,
                             on_delivery=lambda err, msg, k=key, v=value: delivered(err, msg, k, v))
            producer.flush(30)  # one at a time keeps the offsets in the order given
        for p, k, v in raw or []:
            producer.produce(self.topic, key=k, value=v, partition=p,
                             on_delivery=lambda err, msg: delivered(err, msg, None, None))
            producer.flush(30)
        assert len(out) == len(rows or []) + len(raw or [])
        self.produced += out
        return out

    def query(self, sql: str, params: Any = None) -> list[tuple]:
        return [tuple(r) for r in self.conn.cursor().execute(sql, params).fetchall()]

    def landed(self) -> list[tuple[dict, dict]]:
        rows = self.query(
            f"SELECT RECORD_METADATA, RECORD_CONTENT FROM {self.landing.sql} "
            "ORDER BY RECORD_METADATA:partition::int, RECORD_METADATA:offset::int"
        )
        return [(json.loads(m, parse_float=Decimal), json.loads(c, parse_float=Decimal)) for m, c in rows]

    def landed_offsets(self) -> list[tuple]:
        """The landed-offsets table's rows of this topic: (partition, last offset, load id)."""
        return self.query(
            'SELECT "PARTITION", "LAST_OFFSET", "LOAD_ID" FROM '
            f'{quote_ident(self.database)}."PIPELINE"."LANDING_OFFSETS" WHERE "TOPIC" = %s ORDER BY 1', (self.topic,)
        )

    def dead_letters(self) -> list[tuple]:
        return self.query(
            'SELECT "TOPIC", "PARTITION", "OFFSET", "RECORD_METADATA", "RAW_KEY", "RAW_VALUE", "ERROR" '
            f'FROM {quote_ident(self.database)}."PIPELINE"."LANDING_DEAD_LETTER" ORDER BY 2, 3'
        )


def expected_rows(lab: Lab, records: list[Produced]) -> list[tuple[dict, dict]]:
    """The connector's layout, written out by hand from what was produced."""
    out = []
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        meta = {"topic": lab.topic, "partition": r.partition, "offset": r.offset, "CreateTime": r.timestamp,
                "key": r.key}
        content = {} if r.value is None else {
            **r.value,
            "data": None if r.value["data"] is None else base64.b64encode(r.value["data"]).decode(),
        }
        out.append((meta, content))
    return out


def row(i: int, price: str = "12.50", name: str | None = "x", data: bytes | None = b"\x00\x01") -> dict:
    return {"id": i, "name": name, "price": Decimal(price), "data": data, "_tidb_op": "c",
            "_tidb_commit_ts": 463_000_000_000_000_000 + i, "_tidb_commit_physical_time": 1_764_072_000_000 + i}


@pytest.fixture
def lab(kafka: Any, registry: Any, snowflake: Any, lab_settings: LabSettings) -> Iterator[Lab]:
    tag = unique_suffix()
    topic, database = f"tidb_landtest_{tag}_t", f"LANDTEST_{tag.upper()}"
    reg = SchemaRegistryClient({"url": lab_settings.registry_url})
    with kafka_topics(lab_settings, topic, partitions=PARTITIONS), snowflake_connection(lab_settings, database) as conn:
        lab = Lab(lab_settings, topic, database, conn, kafka_resource(lab_settings), reg)
        lab.key_id = reg.register_schema(f"{topic}-key", Schema(json.dumps(KEY), "AVRO"))
        lab.value_id = reg.register_schema(f"{topic}-value", Schema(json.dumps(VALUE), "AVRO"))
        yield lab


def test_loads_each_record_once_then_only_new_ones(lab: Lab):
    first = lab.produce([
        (0, {"id": 1}, row(1)),
        (1, {"id": 2}, row(2, price="0.05", name=None, data=None)),
        (2, {"id": 3}, row(3, name='é "q"\n')),
        (0, {"id": 1}, None),  # tombstone
        (1, {"id": 4}, row(4, price="-99999999.99")),
    ])
    result = lab.load()
    assert (result.rows_loaded, result.quarantined) == (5, 0)
    assert result.offsets_before == {0: 0, 1: 0, 2: 0}
    assert result.end_offsets == result.offsets_after == {0: 2, 1: 2, 2: 1}
    assert lab.landed() == expected_rows(lab, first)
    assert lab.landed()[1][1] == {}  # the tombstone, key kept in the metadata

    again = lab.load()
    assert again.rows_loaded == 0
    assert again.offsets_before == again.offsets_after == result.offsets_after
    assert lab.landed() == expected_rows(lab, first)

    lab.produce([(2, {"id": 5}, row(5)), (2, {"id": 3}, None), (0, {"id": 6}, row(6, price="1.00"))])
    third = lab.load()
    assert third.rows_loaded == 3
    assert third.offsets_before == {0: 2, 1: 2, 2: 1} and third.offsets_after == {0: 3, 1: 2, 2: 3}
    assert lab.landed() == expected_rows(lab, lab.produced)
    assert lab.dead_letters() == []


def test_max_records_bounds_a_load_and_the_next_one_continues(lab: Lab):
    lab.produce([(i % PARTITIONS, {"id": i}, row(i)) for i in range(9)])
    first = lab.load(max_records=4)
    assert first.rows_loaded == 4
    assert sum(first.offsets_after.values()) == 4
    rest = lab.load()
    assert rest.rows_loaded == 5
    assert lab.landed() == expected_rows(lab, lab.produced)


def test_empty_and_missing_topics_load_nothing(lab: Lab):
    result = lab.load()
    assert (result.rows_loaded, result.quarantined, result.end_offsets) == (0, 0, {0: 0, 1: 0, 2: 0})
    missing = load_topic(kafka=lab.kafka, registry=lab.registry, connection=lab.conn, topic=lab.topic + "_missing",
                         landing=TableRef("LANDING", "MISSING", lab.database), control=lab.control)
    assert (missing.rows_loaded, missing.end_offsets, missing.offsets_after) == (0, {}, {})
    assert lab.landed() == []


def test_a_crash_before_commit_leaves_nothing_and_the_rerun_lands_everything_once(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
):
    lab.produce([(i % PARTITIONS, {"id": i}, row(i) if i % 4 else None) for i in range(12)])
    lab.produce(raw=[(1, b"garbage", b"\x00")])

    def crash(warehouse: Warehouse) -> None:
        raise RuntimeError("simulated crash after PUT and COPY, before COMMIT")

    monkeypatch.setattr(Warehouse, "commit", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        lab.load()
    assert lab.landed() == []
    assert lab.dead_letters() == []
    assert lab.landed_offsets() == []  # written in the same transaction: rolled back with the rows
    # The load's private tables were temporary and are gone with the failed load.
    assert lab.query("SELECT COUNT(*) FROM information_schema.tables WHERE table_name LIKE 'LOAD_%'") == [(0,)]

    monkeypatch.undo()
    result = lab.load()
    assert (result.rows_loaded, result.quarantined) == (12, 1)
    good = [r for r in lab.produced if r.raw_key != b"garbage"]
    assert lab.landed() == expected_rows(lab, good)
    assert len(lab.dead_letters()) == 1
    # Partition 1 ends with the quarantined record: its offset counts as landed.
    assert [(p, o) for p, o, _ in lab.landed_offsets()] == [(0, 3), (1, 4), (2, 3)]


def test_a_load_that_races_another_inserts_only_what_the_other_did_not(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    lab.produce([(i % PARTITIONS, {"id": i}, row(i)) for i in range(12)])
    real_commit_load = landing_mod.commit_load
    other: list[LandingResult] = []

    def commit_after_another_load(*args: Any, **kwargs: Any) -> tuple[int, int]:
        # Another loader lands part of the same records after this one read them, before it commits.
        with sf_connector.connect(**connection_args(lab.settings)) as conn2:
            monkeypatch.setattr(landing_mod, "commit_load", real_commit_load)
            other.append(load_topic(kafka=lab.kafka, registry=lab.registry, connection=conn2, topic=lab.topic,
                                    landing=lab.landing, control=lab.control, max_records=5))
        return real_commit_load(*args, **kwargs)

    monkeypatch.setattr(landing_mod, "commit_load", commit_after_another_load)
    result = lab.load()
    assert other[0].rows_loaded == 5
    assert result.rows_loaded == 7
    assert lab.landed() == expected_rows(lab, lab.produced)


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every statement the warehouse seam runs from now on, in order."""
    statements: list[str] = []
    real_execute = Warehouse.execute

    def recording_execute(warehouse: Warehouse, stmt: Any, params: Any = ()) -> Any:
        statements.append(stmt if isinstance(stmt, str) else stmt.sql)
        return real_execute(warehouse, stmt, params)

    monkeypatch.setattr(Warehouse, "execute", recording_execute)
    return statements


def test_each_load_moves_the_landed_offsets_and_a_load_with_nothing_new_reads_no_landing_table(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
):
    lab.produce([(i % PARTITIONS, {"id": i}, row(i)) for i in range(7)])
    first = lab.load()
    assert [(p, o) for p, o, _ in lab.landed_offsets()] == [(0, 2), (1, 1), (2, 1)]
    assert first.offsets_after == {0: 3, 1: 2, 2: 2}
    load_ids = {i for _, _, i in lab.landed_offsets()}
    assert len(load_ids) == 1 and "seed" not in load_ids  # the first load's own id, one per load

    lab.produce([(1, {"id": 20}, row(20))])
    statements = _recording(monkeypatch)
    assert lab.load().rows_loaded == 1
    offsets = lab.landed_offsets()
    assert [(p, o) for p, o, _ in offsets] == [(0, 2), (1, 2), (2, 1)]
    assert offsets[1][2] != offsets[0][2]  # only the partition that moved was rewritten, by this load
    # What is landed came from the offsets table: no statement scanned the landing table for it.
    assert not [s for s in statements if s.startswith("SELECT") and f"FROM {lab.landing.sql}" in s]

    statements.clear()
    assert lab.load().rows_loaded == 0
    assert statements and not [s for s in statements if lab.landing.sql in s]
    assert lab.landed() == expected_rows(lab, lab.produced)


def test_a_deployment_from_before_the_offsets_table_is_seeded_once_from_the_landing_table(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
):
    lab.produce([(i % PARTITIONS, {"id": i}, row(i)) for i in range(6)])
    lab.produce(raw=[(2, b"garbage", b"\x00")])  # the last offset of partition 2 is a dead letter
    assert lab.load().rows_loaded == 6
    # As it was before the table existed: no offsets table at all.
    lab.query(f'DROP TABLE {quote_ident(lab.database)}."PIPELINE"."LANDING_OFFSETS"')
    # The process remembers its DDL ran: reading the missing table fails, the DDL runs again, then the seed.
    lab.produce([(0, {"id": 30}, row(30)), (2, {"id": 31}, row(31))])
    statements = _recording(monkeypatch)
    second = lab.load()
    assert second.rows_loaded == 2 and second.offsets_before == {0: 2, 1: 2, 2: 3}
    assert len([s for s in statements if "UNION ALL" in s and lab.landing.sql in s]) >= 1  # the seeding scan
    assert [(p, o) for p, o, _ in lab.landed_offsets()] == [(0, 2), (1, 1), (2, 3)]
    assert lab.landed() == expected_rows(lab, [r for r in lab.produced if r.raw_key != b"garbage"])

    statements.clear()
    lab.produce([(1, {"id": 32}, row(32))])
    assert lab.load().rows_loaded == 1
    assert not [s for s in statements if "UNION ALL" in s and lab.landing.sql in s]  # seeded once
    assert [(p, o) for p, o, _ in lab.landed_offsets()] == [(0, 2), (1, 2), (2, 3)]


def test_poison_records_go_to_the_dead_letter_table_and_the_stream_moves_on(lab: Lab):
    good_key = lab.wire(lab.key_id, KEY, {"id": 1})
    good_value = lab.wire(lab.value_id, VALUE, row(1))
    before = lab.produce([(0, {"id": 10}, row(10)), (1, {"id": 11}, row(11))])
    bad = lab.produce(raw=[
        (0, good_key, b"\x07" + good_value[1:]),  # bad magic byte
        (1, good_key, b"\x00\x00\x0f\x42\x3f" + good_value[5:]),  # schema id 999999: not in the registry
        (2, good_key, good_value[:-4]),  # truncated body
        (2, b"\x00\x00", None),  # key too short, tombstone
    ])
    after = lab.produce([(0, {"id": 12}, row(12)), (1, {"id": 13}, None)])
    result = lab.load()
    assert (result.rows_loaded, result.quarantined) == (4, 4)
    assert lab.landed() == expected_rows(lab, before + after)
    expected_errors = ["magic byte is 0x07", "schema id 999999 is not in the schema registry",
                       "does not match its schema", "2 bytes is too short"]
    dead = lab.dead_letters()
    assert len(dead) == len(bad)
    for (topic, p, o, meta, raw_key, raw_value, error), b, reason in zip(dead, bad, expected_errors):
        assert (topic, p, o) == (lab.topic, b.partition, b.offset)
        assert json.loads(meta) == {"topic": lab.topic, "partition": p, "offset": o, "CreateTime": b.timestamp}
        assert (raw_key, raw_value) == (b.raw_key, b.raw_value)
        assert reason in error
    # Poison offsets count as consumed: the partition that ends with one is not read again.
    assert result.offsets_after == result.end_offsets
    again = lab.load()
    assert (again.rows_loaded, again.quarantined, again.offsets_before) == (0, 0, result.offsets_after)
    assert len(lab.dead_letters()) == 4




def test_an_unreachable_registry_stops_the_load_before_anything_moves(lab: Lab):
    lab.produce([(0, {"id": 1}, row(1)), (2, {"id": 2}, None)])
    down = SchemaRegistryClient({"url": f"http://127.0.0.1:{free_port()}", "max.retries": 0})
    with pytest.raises(SchemaRegistryUnavailable, match=r"schema registry http://127\.0\.0\.1:\d+ failed .*retry"):
        lab.load(registry=down)
    assert lab.landed() == [] and lab.dead_letters() == []
    result = lab.load()
    assert result.offsets_before == {0: 0, 1: 0, 2: 0}
    assert result.rows_loaded == 2
    assert lab.landed() == expected_rows(lab, lab.produced)


def test_parallel_readers_land_the_same_rows(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(landing_mod, "PARALLEL_MIN_RECORDS", 10)
    monkeypatch.setattr(landing_mod, "MAX_READERS", 2)
    monkeypatch.setattr(landing_mod, "ROWS_PER_FILE", 7)
    lab.produce([(i % PARTITIONS, {"id": i}, row(i) if i % 5 else None) for i in range(30)])
    lab.produce(raw=[(1, b"\x00\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00")])  # schema id 0: unknown
    seen: list[int] = []
    real = landing_mod.run_readers
    monkeypatch.setattr(landing_mod, "run_readers",
                        lambda jobs, **kwargs: seen.append(len(jobs)) or real(jobs, **kwargs))
    result = lab.load()
    assert seen == [2]
    assert (result.rows_loaded, result.quarantined) == (30, 1)
    assert lab.landed() == expected_rows(lab, [r for r in lab.produced if r.key is not None])


def test_repeat_loads_skip_the_ddl_and_a_dropped_table_is_created_again(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    statements = _recording(monkeypatch)
    first = lab.produce([(0, {"id": 1}, row(1)), (1, {"id": 2}, row(2))])
    assert lab.load().rows_loaded == 2
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS") for s in statements)

    statements.clear()
    second = lab.produce([(2, {"id": 3}, row(3))])
    assert lab.load().rows_loaded == 1
    assert [s for s in statements if s.startswith(("CREATE STAGE", "CREATE SCHEMA", "CREATE DATABASE"))
            or (s.startswith("CREATE TABLE") and "TEMPORARY" not in s and "_FILE" not in s and "_ROWS" not in s)] == []
    assert lab.landed() == expected_rows(lab, first + second)

    # Someone drops the landing table: the next load with something to land finds out (a load with nothing
    # new reads only the landed-offsets table, never the landing table), creates it again, forgets the
    # table's landed offsets and lands from offset 0.
    lab.query(f"DROP TABLE {lab.landing.sql}")
    lab.produce([(0, {"id": 4}, row(4))])
    statements.clear()
    third = lab.load()
    assert third.rows_loaded == 4 and third.offsets_before == {0: 0, 1: 0, 2: 0}
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS") and lab.landing.sql in s for s in statements)
    assert lab.landed() == expected_rows(lab, lab.produced)
