"""Poison and odd messages on a live change stream: quarantined with where and why, the load moves past
them, the replica still equals the source, and a registry outage moves nothing.

The topic is fed by the lab change feed from a real table; poison records are produced into the same
partitions between real changes, the way a misbehaving producer would interleave them.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.tables import build_table_assets, table_keys, table_names
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import lab_env
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.snowflake import snowflake_resource
from tidb_pipeline.resources.tidb import TiDBResource, quote_mysql
from tidb_pipeline_tests.reliability.support import (
    Feed,
    Target,
    assert_landed_exactly_once,
    assert_replica_equals_source,
    free_port,
    kafka_of,
    land,
    merge,
    mysql_kwargs,
    private_services,
    registry_of,
    table_feed,
    warehouse,
)

pytestmark = pytest.mark.integration

BIG_NOTE = "large-record " * 40_000  # ~520 kB: far above a TPC-C row, below Kafka's 1 MB default


@pytest.fixture(scope="module")
def feed(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Feed]:
    with private_services(lab_settings, tmp_path_factory.mktemp("poison-lab"), ["ticdc"]) as own, \
            table_feed(own, "rel_poison") as f:
        yield f


def _wire(schema_id: int, schema: dict[str, Any], datum: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), datum)
    return buf.getvalue()


def _poison(settings: LabSettings, topic: str) -> list[tuple[int, int, str]]:
    """Produce the odd records; returns (partition, offset, expected error fragment) of each."""
    reg = registry_of(settings)
    key_reg, value_reg = reg.get_latest_version(f"{topic}-key"), reg.get_latest_version(f"{topic}-value")
    key_schema, value_schema = json.loads(key_reg.schema.schema_str), json.loads(value_reg.schema.schema_str)
    # Row 7 exists in the source and is never changed again: were the key-less value merged, it would vanish.
    key = _wire(key_reg.schema_id, key_schema, {"id": 7})
    datum = {"id": 7, "name": "poison", "qty": 1, "price": Decimal("1.00"), "note": None,
             "updated": None, "_tidb_op": "u", "_tidb_commit_ts": 1, "_tidb_commit_physical_time": 1}
    value = _wire(value_reg.schema_id, value_schema, datum)
    no_key = {**value_schema, "fields": [f for f in value_schema["fields"] if f["name"] != "id"]}
    no_key_id = reg.register_schema(f"{topic}-nokey-value", Schema(json.dumps(no_key), "AVRO"))
    records = [
        (0, key, b"\x07" + value[1:], "magic byte is 0x07"),
        (1, key, b"\x00" + (999_999).to_bytes(4, "big") + value[5:], "schema id 999999"),
        (2, key, value[:-3], "does not match its schema"),
        (0, key, _wire(no_key_id, no_key, {k: v for k, v in datum.items() if k != "id"}), "id"),
    ]
    out: list[tuple[int, int, str]] = []
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for p, k, v, reason in records:
        producer.produce(topic, key=k, value=v, partition=p,
                         on_delivery=lambda err, msg, r=reason: out.append((msg.partition(), msg.offset(), r)))
        producer.flush(30)
    assert len(out) == len(records)
    return out


def _landing_assets(config: PipelineConfig) -> list[Any]:
    return build_table_assets(config=config, table=config.tables[0])


def test_poison_is_quarantined_the_load_moves_on_and_the_replica_equals_the_source(
    feed: Feed, lab_settings: LabSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    t = f"{quote_mysql(feed.db)}.{quote_mysql(feed.table)}"
    with feed.connect() as conn, conn.cursor() as cur:
        for i in range(1, 31):
            cur.execute(f"INSERT INTO {t} (id, name, qty, price) VALUES (%s, %s, %s, %s)", (i, f"n{i}", i, f"{i}.25"))
        cur.execute(f"UPDATE {t} SET qty = qty * 2 WHERE id <= 10")
    feed.catch_up()
    poison = _poison(lab_settings, feed.topic)
    with feed.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM {t} WHERE id IN (3, 4)")
        cur.execute(f"UPDATE {t} SET id = 300 WHERE id = 30")
        cur.execute(f"INSERT INTO {t} (id, name, qty, price, note) VALUES (100, 'big', 1, 1.00, %s)", (BIG_NOTE,))
        cur.execute(f"UPDATE {t} SET note = 'after' WHERE id = 1")
    feed.catch_up()
    config = feed.config
    names = table_names(config, config.tables[0])
    target = Target.of(names)
    end = kafka_of(lab_settings).end_offsets([feed.topic])[feed.topic]

    # 1. The registry is down: the landing asset fails with a retryable, clear error and moves nothing.
    for k, v in lab_env(lab_settings).items():
        monkeypatch.setenv(k, v)
    resources = {
        "kafka": KafkaResource(bootstrap_servers=lab_settings.kafka_bootstrap),
        "schema_registry": SchemaRegistryResource(url=f"http://127.0.0.1:{free_port()}", timeout_s=2),
        "snowflake": snowflake_resource(),
        "tidb": TiDBResource(**mysql_kwargs(lab_settings)),
    }
    keys = table_keys(config, config.tables[0])
    result = dg.materialize(_landing_assets(config), selection=[keys.landing], resources=resources,
                            raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error, message = failure.step_failure_data.error, ""  # type: ignore[union-attr]
    while error is not None:  # Dagster wraps the asset's exception; its text is in the cause
        message, error = message + error.message, error.cause
    assert "SchemaRegistryUnavailable" in message and "retry the load once the registry answers" in message
    with warehouse(lab_settings) as sf:
        cur = sf.cursor()
        cur.execute(f"SELECT COUNT(*) FROM {names.landing.sql}")
        assert cur.fetchone() == (0,), "a failed load must not land anything"

    # 2. The registry is back: one load lands every good record and quarantines the four odd ones.
    resources["schema_registry"] = SchemaRegistryResource(url=lab_settings.registry_url)
    result = dg.materialize(_landing_assets(config), selection=[keys.landing], resources=resources)
    md = result.asset_materializations_for_node(result.get_asset_materialization_events()[0].step_key)[0].metadata
    assert md["quarantined"].value == len(poison)
    assert md["rows_loaded"].value == sum(end.values()) - len(poison)
    assert md["backlog_records"].value == 0

    with warehouse(lab_settings) as sf:
        cur = sf.cursor()
        cur.execute(f'SELECT "TOPIC", "PARTITION", "OFFSET", "ERROR", "RECORD_METADATA" FROM {target.dead_letter.sql} '
                    'WHERE "TOPIC" = %s ORDER BY 2, 3', (feed.topic,))
        dead = cur.fetchall()
        assert [(d[0], d[1], d[2]) for d in dead] == sorted((feed.topic, p, o) for p, o, _ in poison)
        for (_, p, o, error, meta), (_, _, reason) in zip(dead, sorted(poison)):
            assert reason in error, f"partition {p} offset {o}: {error!r} does not say {reason!r}"
            assert json.loads(meta)["offset"] == o
        # What the missing dead-letter check would report: a loud, counted failure.
        cur.execute(f'SELECT COUNT(*) FROM {target.dead_letter.sql} WHERE "TOPIC" = %s', (feed.topic,))
        assert cur.fetchone() == (len(poison),)

        quarantined: dict[int, set[int]] = {}
        for p, o, _ in poison:
            quarantined.setdefault(p, set()).add(o)
        assert_landed_exactly_once(sf, target.landing, end, quarantined)
        merge(lab_settings, sf, target)
        assert_replica_equals_source(lab_settings, sf, feed.db, feed.table, target.replica, ["id"])
        cur.execute(f'SELECT LENGTH("note") FROM {target.replica.sql} WHERE "id" = 100')
        assert cur.fetchone() == (len(BIG_NOTE),)

        # 3. Nothing is read twice: the next load finds nothing new, the dead letters stay as they were.
        again = land(lab_settings, sf, target)
        assert (again.rows_loaded, again.quarantined) == (0, 0)
        cur.execute(f'SELECT COUNT(*) FROM {target.dead_letter.sql} WHERE "TOPIC" = %s', (feed.topic,))
        assert cur.fetchone() == (len(poison),)
