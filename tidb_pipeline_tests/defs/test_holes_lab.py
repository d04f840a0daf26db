"""Holes in a landing table, on the lab: real Kafka (a transactional producer), the Snowflake Sink stand-in,
fakesnow, the Dagster replica asset and the `landing_continuity` check.

Acceptance of issue 13's first item:
- connector mode, SNOWPIPE: files land out of order with a hole that fills only after a merge; the merge holds
  the partition before the hole (nothing merged past it, the run's metadata names it), then the replica ends
  equal to the source. A hole never filled: `landing_continuity` is ERROR naming topic, partition and offsets
  once the grace period is over, and nothing past it is ever merged.
- offsets Kafka never had (a transactional producer's commit markers, which no consumer sees): they do not
  block the merge, in connector mode and in builtin mode alike (the built-in loader skips them too).
The change feed here is the test itself: each change goes to MariaDB (the source) and, TiCDC-shaped, to
Kafka in a transaction, so the topic's offsets have the markers a real transactional producer leaves.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import dagster as dg
import fastavro
import pymysql
import pytest
import snowflake.connector as sf_connector
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.tables import table_keys, table_names
from tidb_pipeline.lab.compare import compare_table
from tidb_pipeline.lab.connector_landing import SinkSpec, deliver, ingest_withheld
from tidb_pipeline.lab.env import applied, pipeline_env
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.replication.connectors import KafkaCredentials, SnowflakeSinkSettings, snowflake_sink_config
from tidb_pipeline.replication.ddl import quote_ident
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline_tests.defs.lab_pipeline import materialize

pytestmark = pytest.mark.integration

PARTITIONS = 2
KEY = {"type": "record", "name": "t", "namespace": "default.db", "fields": [
    {"name": "id", "type": {"type": "long", "connect.parameters": {"tidb_type": "BIGINT"}}}]}


def value_schema(decimal_handling: str) -> dict[str, Any]:
    price = ({"type": "string", "connect.parameters": {"tidb_type": "DECIMAL"}} if decimal_handling == "string" else
             {"type": "bytes", "connect.parameters": {"tidb_type": "DECIMAL"}, "logicalType": "decimal",
              "precision": 10, "scale": 2})
    return {"type": "record", "name": "t", "namespace": "default.db", "fields": [
        *KEY["fields"],
        {"default": None, "name": "name", "type": ["null", {"type": "string", "connect.parameters": {"tidb_type": "TEXT"}}]},
        {"name": "price", "type": price},
        {"default": "", "name": "_tidb_op", "type": "string"},
        {"default": 0, "name": "_tidb_commit_ts", "type": "long"},
        {"default": 0, "name": "_tidb_commit_physical_time", "type": "long"}]}  # fmt: skip


class Feed:
    """One table in MariaDB and its topic, changed together; Kafka writes go in transactions."""

    def __init__(self, settings: LabSettings, mariadb: Service, *, landing_mode: str) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.settings = settings
        self.db = f"holes_{suffix}"
        self.config: PipelineConfig = parse_config({
            "source": {"changefeed_id": f"holes-{suffix}"},
            "snowflake": {"database": f"HOLES_{suffix.upper()}"},
            "landing_mode": landing_mode,
            "connectors": {"snowflake_sink_name": f"sink-{suffix}", "snowflake_ingestion_method": "SNOWPIPE"},
            "tables": [{"db": self.db, "table": "t", "key": ["id"]}],
        })
        self.table = self.config.tables[0]
        self.names = table_names(self.config, self.table)
        self.keys = table_keys(self.config, self.table)
        self.decimal_handling = self.config.decimal_handling
        self.conn_kwargs = mariadb.connect_kwargs()  # type: ignore[attr-defined]
        self.src = pymysql.connect(autocommit=True, **self.conn_kwargs)
        with self.src.cursor() as cur:
            cur.execute(f"CREATE DATABASE {self.db}")
            cur.execute(f"CREATE TABLE {self.db}.t (id BIGINT PRIMARY KEY, name VARCHAR(40), price DECIMAL(10,2))")
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        for f in admin.create_topics([NewTopic(self.names.topic, num_partitions=PARTITIONS,
                                               replication_factor=1)]).values():
            f.result(30)
        registry = SchemaRegistryResource(url=settings.registry_url).get_client()
        self.key_id = registry.register_schema(f"{self.names.topic}-key", Schema(json.dumps(KEY), "AVRO"))
        value = value_schema(self.decimal_handling)
        self.value_id = registry.register_schema(f"{self.names.topic}-value", Schema(json.dumps(value), "AVRO"))
        self.parsed = (fastavro.parse_schema(KEY), fastavro.parse_schema(value))
        self.producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "transactional.id": f"feed-{suffix}"})
        self.producer.init_transactions(30)
        with sf_connector.connect(**connection_args(settings)) as sf:
            cur = sf.cursor()
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(self.config.snowflake.database)}")
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.config.snowflake.database)}."
                        f"{quote_ident(self.config.snowflake.landing_schema)}")
        with applied(pipeline_env(settings)):
            self.defs = build_defs(config=self.config)

    def _wire(self, sid: int, schema: Any, datum: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, datum)
        return b"\x00" + sid.to_bytes(4, "big") + buf.getvalue()

    def change(self, rows: Sequence[tuple[int, str | None, str | None]]) -> None:
        """One transaction: (id, name, price) upserts, or (id, None, None) deletes, in MariaDB and on Kafka."""
        self.producer.begin_transaction()
        with self.src.cursor() as cur:
            for i, name, price in rows:
                key = self._wire(self.key_id, self.parsed[0], {"id": i})
                if price is None:
                    cur.execute(f"DELETE FROM {self.db}.t WHERE id = %s", (i,))
                    value = None
                else:
                    cur.execute(f"REPLACE INTO {self.db}.t VALUES (%s, %s, %s)", (i, name, price))
                    amount: Any = price if self.decimal_handling == "string" else Decimal(price)
                    value = self._wire(self.value_id, self.parsed[1], {
                        "id": i, "name": name, "price": amount, "_tidb_op": "u", "_tidb_commit_ts": 1,
                        "_tidb_commit_physical_time": 1})
                self.producer.produce(self.names.topic, key=key, value=value, partition=i % PARTITIONS)
        self.producer.commit_transaction(30)

    def merge(self) -> dict[str, Any]:
        keys = {self.keys.replica} | ({self.keys.landing} if self.config.landing_mode == "builtin" else set())
        with applied(pipeline_env(self.settings)):
            result = materialize(self.defs, keys)
        (mat,) = [e.materialization for e in result.get_asset_materialization_events()
                  if e.materialization.asset_key == self.keys.replica]
        return {k: v.value for k, v in mat.metadata.items()}

    def continuity(self) -> dg.AssetCheckEvaluation:
        key = dg.AssetCheckKey(self.keys.replica, "landing_continuity")
        job = dg.define_asset_job("continuity", selection=dg.AssetSelection.checks(key))
        defs = dg.Definitions(assets=self.defs.assets, asset_checks=self.defs.asset_checks, jobs=[job],
                              resources=self.defs.resources)
        with applied(pipeline_env(self.settings)):
            result = defs.resolve_job_def("continuity").execute_in_process()
        assert result.success
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    def watermarks(self) -> dict[int, int]:
        with sf_connector.connect(**connection_args(self.settings)) as sf:
            cur = sf.cursor()
            cur.execute(f'SELECT "PARTITION", "MERGED_OFFSET" FROM {self.names.watermarks.sql} '
                        'WHERE "REPLICA_TABLE" = %s', (self.names.replica.label,))
            return {int(p): int(o) for p, o in cur.fetchall()}

    def equal(self) -> bool:
        with sf_connector.connect(**connection_args(self.settings)) as sf:
            cmp = compare_table(self.src, self.db, "t", sf, self.names.replica, ("id",))
        assert cmp.source_rows > 0
        return cmp.equal

    def sink(self) -> SinkSpec:
        """The stand-in running the Snowflake Sink config the project builds for this table."""
        settings = SnowflakeSinkSettings(name=self.config.connectors.snowflake_sink_name,
                                         kafka=KafkaCredentials("k", "s"), url="lab", user="u", private_key="K",
                                         ingestion_method=self.config.connectors.snowflake_ingestion_method)
        return SinkSpec.from_connector_config(snowflake_sink_config(self.config, settings))

    def close(self) -> None:
        with self.src.cursor() as cur:
            cur.execute(f"DROP DATABASE {self.db}")
        self.src.close()
        AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap}).delete_topics([self.names.topic])


@pytest.fixture
def feed_factory(lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service,
                 snowflake: Service) -> Iterator[Any]:
    feeds: list[Feed] = []

    def make(landing_mode: str) -> Feed:
        feeds.append(Feed(lab_settings, mariadb, landing_mode=landing_mode))
        return feeds[-1]

    yield make
    for f in feeds:
        f.close()


def _batch(start: int, n: int, tag: str) -> list[tuple[int, str | None, str | None]]:
    return [(i, f"{tag}{i}", f"{i}.{i % 100:02d}") for i in range(start, start + n)]


def test_connector_mode_holes_filled_late_and_never(feed_factory: Any, lab_settings: LabSettings) -> None:
    feed: Feed = feed_factory("connector")
    assert feed.decimal_handling == "string"
    # Three transactions: inserts, updates and deletes (each leaves a commit marker in both partitions).
    feed.change(_batch(1, 30, "a"))
    feed.change([*_batch(5, 10, "b"), (20, None, None), (21, None, None)])
    feed.change([(3, None, None), *_batch(25, 10, "c")])
    spec = feed.sink()
    assert spec.ingestion_method == "SNOWPIPE"
    kafka = KafkaResource(bootstrap_servers=lab_settings.kafka_bootstrap)
    registry = SchemaRegistryResource(url=lab_settings.registry_url).get_client()
    with sf_connector.connect(**connection_args(lab_settings)) as sf:
        first = deliver(spec, kafka=kafka, registry=registry, connection=sf, file_records=4,
                        shuffle=random.Random(3), duplicate_files=2, withhold_files=2)
    assert len(first.withheld) == 2

    meta = feed.merge()
    watermarks = feed.watermarks()
    for f in first.withheld:
        assert watermarks.get(f.partition, -1) < f.offsets[0], "merged past a hole"
    held = meta["held_back"]
    assert {int(h.split(":")[0].removeprefix("partition ")) for h in held} == {f.partition for f in first.withheld}
    # The commit markers below the holes were decided with Kafka and skipped, not waited for.
    assert any("are not in Kafka" in s for s in meta["offsets_not_in_kafka_skipped"]), meta
    assert not feed.equal()
    within = feed.continuity()
    assert within.passed, within.metadata  # a hole younger than the grace period is Snowpipe being Snowpipe
    assert len(within.metadata["holes"].value) >= 1

    with sf_connector.connect(**connection_args(lab_settings)) as sf:
        ingest_withheld(spec, first.withheld, sf)  # the pipe gets to them after the merge
    meta = feed.merge()
    assert meta["held_back"] == "(none)"
    assert feed.equal()
    assert feed.continuity().passed

    # A file the pipe gives up on: the hole never fills.
    feed.change([*_batch(40, 12, "d"), (1, None, None)])
    with sf_connector.connect(**connection_args(lab_settings)) as sf:
        second = deliver(spec, kafka=kafka, registry=registry, connection=sf, file_records=3,
                         shuffle=random.Random(4), withhold_files=1)
    (lost,) = second.withheld
    meta = feed.merge()
    assert feed.watermarks()[lost.partition] == lost.offsets[0] - 1  # everything below it, nothing past it
    assert meta["held_back"][0].startswith(f"partition {lost.partition}: offsets {lost.offsets[0]}..{lost.offsets[1]} ")
    assert feed.continuity().passed  # still within the grace period
    # Time passes (the first sighting moves back past the grace): ERROR naming topic, partition and offsets.
    with sf_connector.connect(**connection_args(lab_settings)) as sf:
        sf.cursor().execute(
            f'UPDATE {feed.names.offset_gaps.sql} SET "SEEN_AT" = %s WHERE "TOPIC" = %s AND "STATUS" = \'WAITING\'',
            (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(
                seconds=feed.config.hole_grace_seconds + 1), feed.names.topic))
    late = feed.continuity()
    assert (late.passed, late.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert (f"topic {feed.names.topic} partition {lost.partition} offsets {lost.offsets[0]}..{lost.offsets[1]} "
            "missing; nothing above them is merged") in late.description
    feed.merge()
    assert feed.watermarks()[lost.partition] == lost.offsets[0] - 1
    assert not feed.equal()


def test_builtin_mode_skips_offsets_kafka_never_had(feed_factory: Any) -> None:
    """The built-in loader reads read_committed, so every commit marker is a hole in its landing table."""
    feed: Feed = feed_factory("builtin")
    assert feed.decimal_handling == "precise"
    feed.change(_batch(1, 10, "a"))
    feed.change([*_batch(3, 4, "b"), (9, None, None)])
    meta = feed.merge()
    assert meta["held_back"] == "(none)"
    assert len(meta["offsets_not_in_kafka_skipped"]) >= PARTITIONS
    assert feed.equal()
    feed.change(_batch(11, 5, "c"))
    meta = feed.merge()
    assert feed.equal() and meta["held_back"] == "(none)"
    continuity = feed.continuity()
    assert continuity.passed and continuity.metadata["holes"].value == "(none)"
