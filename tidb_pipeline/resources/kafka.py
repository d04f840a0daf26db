"""The `kafka` resource: client config plus an admin client and a consumer factory.

Works the same against Confluent Cloud (SASL_SSL / PLAIN with a Kafka API key) and the lab's broker
(PLAINTEXT). End offsets for any number of topics come from one `list_offsets` call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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
        """High watermark per partition for every topic (missing topics map to {}), in one list_offsets call."""
        topics = list(dict.fromkeys(topics))
        # Keep the client referenced until the futures resolve: a collected AdminClient never completes them.
        admin = self.admin()
        read = read_end_offsets(admin, topics, {}, refresh_metadata=True, request_timeout_s=self.request_timeout_s,
                                deadline=time.monotonic() + 2 * self.request_timeout_s + 5)
        if read.errors or read.unread:
            failed = read.errors or {t: "not read within the request timeout" for t in read.unread}
            raise KafkaException(f"reading end offsets of {len(failed)} topic(s) failed: "
                                 + "; ".join(f"{t}: {e}" for t, e in list(failed.items())[:5]))
        return {t: dict(read.offsets.get(t, {})) for t in topics}

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


# --- reading end offsets (the one reader: the sensor's budgeted tick and `KafkaResource.end_offsets`) ---

# A chunk must not be cut short by the budget below this much time.
_MIN_CHUNK_S = 1.0


@dataclass(frozen=True)
class OffsetsRead:
    """The outcome of reading end offsets within a budget."""

    offsets: Mapping[str, Mapping[int, int]]  # topics fully read
    at: float
    # Topics whose read raised (deleted, leader moving), with the first error; metadata is re-read next tick.
    errors: Mapping[str, str]
    unread: tuple[str, ...]  # topics the budget did not reach
    metadata_read: bool
    calls: int  # list_offsets calls made


def _chunks(partitions: Mapping[str, Sequence[int]], order: Sequence[str], limit: int) -> list[list[str]]:
    """Topics in `order`, grouped so each group has at most `limit` partitions (a bigger topic goes alone)."""
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for topic in order:
        n = len(partitions[topic])
        if current and size + n > limit:
            out.append(current)
            current, size = [], 0
        current.append(topic)
        size += n
    if current:
        out.append(current)
    return out


def read_end_offsets(
    admin: AdminClient,
    topics: Sequence[str],
    known: Mapping[str, Sequence[int]],
    *,
    refresh_metadata: bool,
    deadline: float,
    request_timeout_s: float,
    chunk_partitions: int = 10_000,
    clock: Callable[[], float] = time.monotonic,
) -> OffsetsRead:
    """End offsets of `topics` (in that order of priority), one `list_offsets` call per chunk, until `deadline`.

    `known` holds partition lists from the cursor; metadata is read (one call) only if `refresh_metadata`
    or a topic is not in `known`. A topic that does not exist yet reads as no partitions.
    """
    partitions: dict[str, list[int]] = {t: list(known[t]) for t in topics if known.get(t)}
    metadata_read = False
    if refresh_metadata or len(partitions) < len(topics):
        remaining = deadline - clock()
        if remaining <= 0:
            return OffsetsRead({}, time.time(), {}, tuple(topics), False, 0)
        metadata = admin.list_topics(timeout=min(request_timeout_s, remaining))
        metadata_read = True
        for topic in topics:
            meta = metadata.topics.get(topic)
            partitions[topic] = sorted(meta.partitions) if meta is not None and meta.error is None else []

    offsets: dict[str, dict[int, int]] = {t: {} for t in topics if not partitions[t]}
    errors: dict[str, str] = {}
    unread: list[str] = []
    calls = 0
    # Rounded as the cursor stores it, so rates computed now and from a saved cursor agree.
    at = round(time.time(), 3)
    for chunk in _chunks(partitions, [t for t in topics if partitions[t]], chunk_partitions):
        remaining = deadline - clock()
        if remaining < _MIN_CHUNK_S:
            unread.extend(chunk)
            continue
        timeout = min(request_timeout_s, remaining)
        request = {TopicPartition(t, p): OffsetSpec.latest() for t in chunk for p in partitions[t]}
        calls += 1
        futures = admin.list_offsets(request, request_timeout=timeout)
        got: dict[str, dict[int, int]] = {t: {} for t in chunk}
        for tp, future in futures.items():
            try:
                # One second of grace past the deadline for the whole chunk, not per partition.
                got[tp.topic][tp.partition] = future.result(timeout=max(0.0, deadline + 1 - clock())).offset
            except (KafkaException, TimeoutError) as exc:
                errors.setdefault(tp.topic, f"partition {tp.partition}: {exc}")
        offsets.update({t: o for t, o in got.items() if t not in errors})
    return OffsetsRead(offsets, at, errors, tuple(unread), metadata_read, calls)


def kafka_resource(env: Mapping[str, str] | None = None) -> KafkaResource:
    from tidb_pipeline.resources.env import secret, setting

    return KafkaResource(
        bootstrap_servers=setting("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092", env),
        security_protocol=setting("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", env),
        sasl_mechanism=setting("KAFKA_SASL_MECHANISM", "PLAIN", env),
        sasl_username=secret("KAFKA_API_KEY", env),
        sasl_password=secret("KAFKA_API_SECRET", env),
    )


# --- consuming up to end offsets read earlier (the SQL Server apply and the lab's sink stand-in) ---------


_K = TypeVar("_K")


class BelowEnds(Generic[_K]):
    """Records below `ends` (exclusive, keyed by `key(msg)`) from an assigned consumer; `pending` lists the
    positions not yet at their end. A record at or past its end (left for the next run) or a partition-EOF
    ends its position; any other consumer error raises."""

    def __init__(self, ends: Mapping[_K, int], key: Callable[[Any], _K]) -> None:
        self.ends = ends
        self.key = key
        self.pending: set[_K] = set(ends)

    def take(self, consumer: Any, num_messages: int, timeout_s: float) -> list[Any]:
        """One `consume` call's records below their ends."""
        out: list[Any] = []
        for msg in consumer.consume(num_messages=num_messages, timeout=timeout_s):
            err, k = msg.error(), self.key(msg)
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.pending.discard(k)
                    continue
                raise KafkaException(err)
            if k not in self.pending or msg.offset() >= self.ends[k]:
                self.pending.discard(k)
                continue
            out.append(msg)
            if msg.offset() + 1 >= self.ends[k]:
                self.pending.discard(k)
        return out
