"""The `kafka` resource: client config plus an admin client and a consumer factory.

Works the same against Confluent Cloud (SASL_SSL / PLAIN with a Kafka API key) and the lab's broker
(PLAINTEXT). End offsets for any number of topics come from one `list_offsets` call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from pydantic import Field

_log = logging.getLogger("tidb_pipeline.kafka")


class KafkaResource(dg.ConfigurableResource):
    """Kafka client settings; secrets from KAFKA_API_KEY / KAFKA_API_SECRET."""

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = Field(default=None, description="Kafka API key")
    sasl_password: str | None = Field(default=None, description="Kafka API secret")
    request_timeout_s: float = 30.0

    def client_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "socket.timeout.ms": int(self.request_timeout_s * 1000),
            # librdkafka logs through this logger, which never sees the SASL password.
            "logger": _log,
        }
        if self.security_protocol.upper().startswith("SASL"):
            config.update({"sasl.mechanisms": self.sasl_mechanism, "sasl.username": self.sasl_username or "",
                           "sasl.password": self.sasl_password or ""})
        return config

    def admin(self) -> AdminClient:
        return AdminClient(self.client_config())

    def consumer(self, group_id: str, **overrides: Any) -> Consumer:
        """A consumer that never commits to Kafka: the pipeline keeps its offsets in the warehouse."""
        config = {**self.client_config(), "group.id": group_id, "enable.auto.commit": False,
                  "enable.auto.offset.store": False, "auto.offset.reset": "earliest", **overrides}
        return Consumer(config)

    def partitions(self, topics: Iterable[str]) -> dict[str, list[int]]:
        """Partition ids per topic (missing topics map to [])."""
        metadata = self.admin().list_topics(timeout=self.request_timeout_s)
        out: dict[str, list[int]] = {}
        for topic in topics:
            t = metadata.topics.get(topic)
            out[topic] = sorted(t.partitions) if t is not None and t.error is None else []
        return out

    def end_offsets(self, topics: Iterable[str]) -> dict[str, dict[int, int]]:
        """High watermark per partition for every topic, in one list_offsets call."""
        parts = self.partitions(list(topics))
        request = {TopicPartition(t, p): OffsetSpec.latest() for t, ps in parts.items() for p in ps}
        out: dict[str, dict[int, int]] = {t: {} for t in parts}
        if not request:
            return out
        # Keep the client referenced until the futures resolve: a collected AdminClient never completes them.
        admin = self.admin()
        futures = admin.list_offsets(request, request_timeout=self.request_timeout_s)
        for tp, future in futures.items():
            out[tp.topic][tp.partition] = future.result(timeout=self.request_timeout_s + 5).offset
        return out

    def first_offsets(self, topic: str, starts: Sequence[tuple[int, int]],
                      timeout_s: float | None = None) -> list[tuple[int, int | None]]:
        """For each (partition, offset): (log start offset, first offset Kafka returns reading from there).

        Reads one record per start as a read_committed consumer, from `max(offset, log start)`, so offsets
        that hold no record (transaction markers, aborted or compacted records) are skipped as any consumer
        skips them. The second value is None when the read reached the partition's end (or the timeout)
        without a record: nothing is known above that point.
        """
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        consumer = self.consumer("tidb-pipeline-offset-probe", **{"enable.partition.eof": True,
                                                                  "isolation.level": "read_committed"})
        out: list[tuple[int, int | None]] = []
        try:
            for partition, offset in starts:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout,
                                                           cached=False)
                start = max(offset, low)
                if start >= high:
                    out.append((int(low), None))
                    continue
                consumer.assign([TopicPartition(topic, partition, start)])
                found: int | None = None
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    msg = consumer.poll(0.5)
                    if msg is None or msg.partition() != partition:
                        continue
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            break
                        raise KafkaException(err)
                    if msg.offset() < start:  # left over from an earlier assignment of this partition
                        continue
                    found = msg.offset()
                    break
                out.append((int(low), found))
        finally:
            consumer.close()
        return out


def kafka_resource(env: Mapping[str, str] | None = None) -> KafkaResource:
    from tidb_pipeline.resources.env import secret, setting

    return KafkaResource(
        bootstrap_servers=setting("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092", env),
        security_protocol=setting("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", env),
        sasl_mechanism=setting("KAFKA_SASL_MECHANISM", "PLAIN", env),
        sasl_username=secret("KAFKA_API_KEY", env),
        sasl_password=secret("KAFKA_API_SECRET", env),
    )
