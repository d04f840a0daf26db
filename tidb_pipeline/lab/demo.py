"""`tidb-pipeline demo`: a smoke run over the lab that prints what it did.

Produces an Avro record through the schema registry into Kafka, consumes and decodes it, and writes it
to the Snowflake stand-in through `dagster_snowflake.SnowflakeResource`, then reads it back.
"""

from __future__ import annotations

import json
import time
import uuid

from tidb_pipeline.lab.settings import LabSettings

_SCHEMA = json.dumps({
    "type": "record", "name": "smoke", "namespace": "default.lab",
    "fields": [{"name": "id", "type": "long"}, {"name": "note", "type": "string"}],
})


def run_smoke(settings: LabSettings) -> dict[str, object]:
    """Kafka + registry + Snowflake stand-in round trip; returns what it observed."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    import snowflake.connector

    from tidb_pipeline.lab.snowflake import connection_args

    topic = "lab_smoke"
    registry = SchemaRegistryClient({"url": settings.registry_url})
    serializer = AvroSerializer(registry, _SCHEMA)
    deserializer = AvroDeserializer(registry)
    record = {"id": int(time.time() * 1000), "note": f"smoke-{uuid.uuid4().hex[:8]}"}

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
    ctx = SerializationContext(topic, MessageField.VALUE)
    delivered: list = []
    producer.produce(topic, value=serializer(record, ctx), on_delivery=lambda err, msg: delivered.append((err, msg)))
    producer.flush(30)
    err, msg = delivered[0]
    if err is not None:
        raise RuntimeError(f"producing to {topic} failed: {err}")
    partition, offset = msg.partition(), msg.offset()

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "lab-smoke",
                         "enable.auto.commit": False})
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        got = consumer.poll(30)
    finally:
        consumer.close()
    if got is None or got.error():
        raise RuntimeError(f"consuming {topic}[{partition}]@{offset} failed: {got and got.error()}")
    decoded = deserializer(got.value(), ctx)

    with snowflake.connector.connect(**connection_args(settings)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE DATABASE IF NOT EXISTS LAB_SMOKE")
        cur.execute("CREATE SCHEMA IF NOT EXISTS LAB_SMOKE.PUBLIC")
        cur.execute("CREATE TABLE IF NOT EXISTS LAB_SMOKE.PUBLIC.SMOKE (ID NUMBER(19,0), NOTE VARCHAR)")
        cur.execute("INSERT INTO LAB_SMOKE.PUBLIC.SMOKE (ID, NOTE) VALUES (%s, %s)", (decoded["id"], decoded["note"]))
        cur.execute("SELECT ID, NOTE FROM LAB_SMOKE.PUBLIC.SMOKE WHERE ID = %s", (decoded["id"],))
        row = cur.fetchone()
    return {"topic": topic, "partition": partition, "offset": offset, "sent": record,
            "decoded": decoded, "snowflake_row": {"id": row[0], "note": row[1]} if row else None}


def run_demo(settings: LabSettings) -> int:
    result = run_smoke(settings)
    print(f"produced {result['sent']} to {result['topic']}[{result['partition']}]@{result['offset']} (Avro via the registry)")
    print(f"consumed and decoded: {result['decoded']}")
    print(f"wrote to the Snowflake stand-in and read back: {result['snowflake_row']}")
    ok = result["decoded"] == result["sent"] and result["snowflake_row"] == result["sent"]
    print("demo: OK" if ok else "demo: MISMATCH")
    return 0 if ok else 1
