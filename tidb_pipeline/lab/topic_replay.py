"""Rebuild a table from its TiCDC Avro topic: the reference consumer the lab's end-to-end checks use.

Every record of the topic, up to the end offsets at the time of the call, is decoded with confluent-kafka's
own `AvroDeserializer` (schemas fetched from the registry by the id in each record) and applied in offset
order to an in-memory table keyed by the key record: a value upserts the full row, a tombstone (null value)
deletes the key. With `index-value` partitioning every version of a key sits in one partition, so applying
each partition in offset order is enough; a key's partition never matters to the result.

TiCDC delivers at least once, so a replay after a restart puts records on the topic again, possibly with
*older* commit timestamps at higher offsets; applying in offset order converges regardless. `duplicates`
counts value records that repeat a row version (same key, same column values) seen earlier in the topic:
the replayed versions. Commit timestamps cannot tell them apart, since a replay may carry a new one.

`check_every=N` (> 1) is for big topics: `AvroDeserializer` costs ~75 us a record here (it expands the
schema on every call), fastavro on the registry's writer schema ~16 us. Then every record is decoded with
fastavro, and the first record of each schema id plus every N-th record also with `AvroDeserializer`,
asserting both agree; the default N=1 decodes every record both ways.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import fastavro

EXTENSION_FIELDS = ("_tidb_op", "_tidb_commit_ts", "_tidb_commit_physical_time")


@dataclass(frozen=True)
class TopicReplay:
    """A topic applied to an empty table."""

    topic: str
    rows: dict[tuple, dict[str, Any]]  # key values in key-field order -> row without the _tidb_* fields
    records: int
    tombstones: int
    duplicates: int  # value records repeating a row version (key + values) seen before: replays
    end_offsets: dict[int, int]  # partition -> offset the replay stopped at (exclusive)


class _Decoder:
    """Confluent-framed Avro -> dict: fastavro on the registry's schema, cross-checked by AvroDeserializer."""

    def __init__(self, registry, topic: str, check_every: int) -> None:
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        self.registry = registry
        self.real = AvroDeserializer(registry)
        self.contexts = {True: SerializationContext(topic, MessageField.KEY),
                         False: SerializationContext(topic, MessageField.VALUE)}
        self.check_every = max(1, check_every)
        self.schemas: dict[int, Any] = {}
        self.count = 0

    def __call__(self, data: bytes, *, key: bool) -> dict[str, Any]:
        if len(data) < 5 or data[0] != 0:
            raise ValueError(f"record is not in Confluent wire format (magic byte {data[:1]!r}); was it produced by TiCDC?")
        schema_id = int.from_bytes(data[1:5], "big")
        parsed = self.schemas.get(schema_id)
        first = parsed is None
        if first:
            parsed = self.schemas[schema_id] = fastavro.parse_schema(
                json.loads(self.registry.get_schema(schema_id).schema_str)
            )
        datum = fastavro.schemaless_reader(io.BytesIO(data[5:]), parsed, None)
        self.count += 1
        if first or self.count % self.check_every == 0:
            real = self.real(data, self.contexts[key])
            if real != datum:
                raise AssertionError(f"AvroDeserializer decoded schema id {schema_id} as {real!r}, fastavro as {datum!r}")
        return datum


def read_topic(
    topic: str, *, bootstrap: str, registry_url: str, timeout_s: float = 30.0, check_every: int = 1
) -> TopicReplay:
    """Consume `topic` from the beginning to its current end offsets and apply every record in order."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient

    decode = _Decoder(SchemaRegistryClient({"url": registry_url}), topic, check_every)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"topic-replay-{uuid.uuid4().hex}",  # never committed: offsets are assigned explicitly
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        if metadata.error is not None:
            raise RuntimeError(f"topic {topic!r} cannot be read: {metadata.error}; check the name and that it exists")
        ends: dict[int, int] = {}
        assignment = []
        for p in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            ends[p] = high
            if high > low:
                assignment.append(TopicPartition(topic, p, low))
        next_offset = {tp.partition: tp.offset for tp in assignment}
        consumer.assign(assignment)

        rows: dict[tuple, dict[str, Any]] = {}
        seen: set[tuple] = set()
        records = tombstones = duplicates = 0
        stalled_at = time.monotonic() + timeout_s
        while any(next_offset[p] < ends[p] for p in next_offset):
            # consume() waits for all num_messages or the timeout: keep the timeout short, judge progress here.
            batch = consumer.consume(num_messages=2_000, timeout=0.2)
            if batch:
                stalled_at = time.monotonic() + timeout_s
            elif time.monotonic() > stalled_at:
                behind = {p: (next_offset[p], ends[p]) for p in next_offset if next_offset[p] < ends[p]}
                raise TimeoutError(f"topic {topic!r}: no records for {timeout_s}s; partitions behind: {behind}")
            for msg in batch:
                if msg.error() is not None:
                    raise RuntimeError(f"topic {topic!r}: consumer error {msg.error()}")
                p, offset = msg.partition(), msg.offset()
                if offset >= ends[p]:
                    continue  # written after the call started: not part of this replay
                if offset != next_offset[p]:
                    raise RuntimeError(f"topic {topic!r} partition {p}: expected offset {next_offset[p]}, got {offset}")
                next_offset[p] = offset + 1
                records += 1
                key = tuple(decode(msg.key(), key=True).values())
                if msg.value() is None:
                    tombstones += 1
                    rows.pop(key, None)
                    continue
                value = decode(msg.value(), key=False)
                row = {k: v for k, v in value.items() if k not in EXTENSION_FIELDS}
                version = (key, tuple(row.values()))
                if version in seen:
                    duplicates += 1
                seen.add(version)
                rows[key] = row
        return TopicReplay(topic, rows, records, tombstones, duplicates, ends)
    finally:
        consumer.close()


def replay_topic(
    topic: str, *, bootstrap: str, registry_url: str, timeout_s: float = 30.0, check_every: int = 1
) -> dict[tuple, dict[str, Any]]:
    """The table a TiCDC Avro topic describes: {key tuple: row}, built as `read_topic` explains."""
    return read_topic(topic, bootstrap=bootstrap, registry_url=registry_url, timeout_s=timeout_s,
                      check_every=check_every).rows
