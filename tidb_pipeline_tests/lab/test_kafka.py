"""The lab's Kafka is a real broker: exact watermarks, produce/consume round trip."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from tidb_pipeline.lab.service import Service


def _new_topic(admin: AdminClient, partitions: int) -> str:
    topic = f"t_{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(timeout=30)
    return topic


def test_produce_consume_with_exact_watermarks(kafka: Service) -> None:
    admin = AdminClient({"bootstrap.servers": kafka.address()})
    topic = _new_topic(admin, 3)
    per_partition = {0: 7, 1: 0, 2: 13}
    producer = Producer({"bootstrap.servers": kafka.address(), "enable.idempotence": True, "acks": "all"})
    sent: list[tuple[int, bytes, bytes]] = []
    for partition, n in per_partition.items():
        for i in range(n):
            key, value = f"k{partition}-{i}".encode(), f"v{partition}-{i}".encode()
            producer.produce(topic, key=key, value=value, partition=partition)
            sent.append((partition, key, value))
    assert producer.flush(30) == 0

    latest = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in per_partition})
    ends = {tp.partition: f.result().offset for tp, f in latest.items()}
    assert ends == per_partition

    consumer = Consumer({"bootstrap.servers": kafka.address(), "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        for partition, n in per_partition.items():
            assert consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10) == (0, n)
        consumer.assign([TopicPartition(topic, p, 0) for p in per_partition])
        received: list[tuple[int, bytes, bytes]] = []
        while len(received) < len(sent):
            msg = consumer.poll(10)
            assert msg is not None, f"consumed only {len(received)} of {len(sent)} records"
            assert msg.error() is None, msg.error()
            received.append((msg.partition(), msg.key(), msg.value()))
    finally:
        consumer.close()
    assert sorted(received) == sorted(sent)
    # Per partition, order is the produce order.
    for partition in per_partition:
        assert [r for r in received if r[0] == partition] == [s for s in sent if s[0] == partition]
