"""Benchmarks of the built-in landing (lab only): the encoder alone, and `load_topic` against the raw read limit.

    python -m tidb_pipeline.bench.landing --bench 1000000   # produce 1M order_line records, load them, compare
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import tempfile
import time
import uuid
from decimal import Decimal
from typing import Any

import fastavro
import snowflake.connector
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from tidb_pipeline.engine.landing import (
    MAX_READERS,
    PARALLEL_MIN_RECORDS,
    consumer_config,
    load_topic,
    plan_ranges,
    run_readers,
    split_ranges,
    topic_schemas,
)
from tidb_pipeline.lab import stack
from tidb_pipeline.lab.service import down, up
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.replication.ddl import TableRef, quote_ident
from tidb_pipeline.replication.landing import RecordEncoder
from tidb_pipeline.replication.wire import RangeJob
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.warehouse import Warehouse

# An order_line-shaped TiCDC value schema (TPC-C), for the benchmark.
ORDER_LINE_KEY = {
    "type": "record",
    "name": "order_line",
    "namespace": "default.tpcc",
    "fields": [
        {"name": n, "type": {"type": "int", "connect.parameters": {"tidb_type": "INT"}}}
        for n in ("ol_w_id", "ol_d_id", "ol_o_id", "ol_number")
    ],
}
ORDER_LINE_VALUE = {
    "type": "record",
    "name": "order_line",
    "namespace": "default.tpcc",
    "fields": [
        *ORDER_LINE_KEY["fields"],
        {"name": "ol_i_id", "type": {"type": "int", "connect.parameters": {"tidb_type": "INT"}}},
        {"name": "ol_supply_w_id", "type": {"type": "int", "connect.parameters": {"tidb_type": "INT"}}},
        {
            "default": None,
            "name": "ol_delivery_d",
            "type": ["null", {"type": "string", "connect.parameters": {"tidb_type": "DATETIME"}}],
        },
        {"name": "ol_quantity", "type": {"type": "int", "connect.parameters": {"tidb_type": "INT"}}},
        {
            "name": "ol_amount",
            "type": {
                "type": "bytes",
                "connect.parameters": {"tidb_type": "DECIMAL"},
                "logicalType": "decimal",
                "precision": 6,
                "scale": 2,
            },
        },
        {"name": "ol_dist_info", "type": {"type": "string", "connect.parameters": {"tidb_type": "TEXT"}}},
        {"default": "", "name": "_tidb_op", "type": "string"},
        {"default": 0, "name": "_tidb_commit_ts", "type": "long"},
        {"default": 0, "name": "_tidb_commit_physical_time", "type": "long"},
    ],
}


def bench_encode(n: int = 200_000) -> dict[str, float]:
    """Print and return records/s for encoding alone and for fastavro decode + encode (one core)."""
    key_schema = fastavro.parse_schema(ORDER_LINE_KEY)
    value_schema = fastavro.parse_schema(ORDER_LINE_VALUE)
    encoder = RecordEncoder(ORDER_LINE_KEY, ORDER_LINE_VALUE)
    pairs = []
    for i in range(1000):
        key = {"ol_w_id": 1, "ol_d_id": i % 10, "ol_o_id": i, "ol_number": i % 15}
        value = {
            **key,
            "ol_i_id": i * 7,
            "ol_supply_w_id": 1,
            "ol_delivery_d": None if i % 3 else "2026-11-25 12:00:00",
            "ol_quantity": 5,
            "ol_amount": Decimal(i % 10000) / 100,
            "ol_dist_info": "abcdefghijklmnopqrstuvwx",
            "_tidb_op": "c",
            "_tidb_commit_ts": 449_000_000_000_000_000 + i,
            "_tidb_commit_physical_time": 1_764_000_000_000 + i,
        }
        kb, vb = io.BytesIO(), io.BytesIO()
        fastavro.schemaless_writer(kb, key_schema, key)
        fastavro.schemaless_writer(vb, value_schema, value)
        pairs.append((key, value, kb.getvalue(), vb.getvalue()))

    start = time.perf_counter()
    for i in range(n):
        key, value, _, _ = pairs[i % 1000]
        encoder.metadata("tidb_tpcc_order_line", 0, i, 1_764_000_000_000, key), encoder.content(value)
    encode_rate = n / (time.perf_counter() - start)

    reader = fastavro.schemaless_reader
    start = time.perf_counter()
    for i in range(n):
        _, _, kb, vb = pairs[i % 1000]
        key = reader(io.BytesIO(kb), key_schema, None)
        value = reader(io.BytesIO(vb), value_schema, None)
        encoder.metadata("tidb_tpcc_order_line", 0, i, 1_764_000_000_000, key), encoder.content(value)
    full_rate = n / (time.perf_counter() - start)
    print(f"encode only: {encode_rate:,.0f} records/s; fastavro decode + encode: {full_rate:,.0f} records/s (one core)")
    return {"encode": encode_rate, "decode_and_encode": full_rate}



def produce_order_lines(settings: Any, topic: str, n: int, partitions: int = 3, filler_per_partition: int = 0,
                        create_topic: bool = True) -> tuple[int, int]:
    """Create `topic` and fill it with `n` TiCDC-shaped order_line records; returns (key id, value id).

    `filler_per_partition` empty records first in each partition, so the order_lines sit above those offsets
    (the retention bench's retained landing rows take the offsets below; nothing ever reads the filler)."""
    if create_topic:
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=60)
    if filler_per_partition:
        filler = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 100,
                           "compression.type": "lz4", "batch.num.messages": 100_000,
                           "queue.buffering.max.messages": 2_000_000})
        for p in range(partitions):
            for _ in range(filler_per_partition):
                while True:
                    try:
                        filler.produce(topic, value=b"", partition=p)
                        break
                    except BufferError:
                        filler.poll(0.05)
        if filler.flush(300) != 0:
            raise RuntimeError(f"could not deliver the filler records to {topic}")
    registry = SchemaRegistryClient({"url": settings.registry_url})
    key_id = registry.register_schema(f"{topic}-key", Schema(json.dumps(ORDER_LINE_KEY), "AVRO"))
    value_id = registry.register_schema(f"{topic}-value", Schema(json.dumps(ORDER_LINE_VALUE), "AVRO"))
    key_schema, value_schema = fastavro.parse_schema(ORDER_LINE_KEY), fastavro.parse_schema(ORDER_LINE_VALUE)
    key_header, value_header = b"\x00" + key_id.to_bytes(4, "big"), b"\x00" + value_id.to_bytes(4, "big")

    def body(schema: Any, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        return buf.getvalue()

    values = []
    for i in range(1000):
        values.append(value_header + body(value_schema, {
            "ol_w_id": 1, "ol_d_id": i % 10 + 1, "ol_o_id": 3000 + i, "ol_number": i % 15 + 1,
            "ol_i_id": i * 97 % 100_000, "ol_supply_w_id": 1,
            "ol_delivery_d": None if i % 3 else "2026-11-25 12:00:00", "ol_quantity": 5,
            "ol_amount": Decimal(i * 37 % 1_000_000) / 100, "ol_dist_info": f"dist-info-{i:014d}",
            "_tidb_op": "c", "_tidb_commit_ts": 463_000_000_000_000_000 + i,
            "_tidb_commit_physical_time": 1_764_072_000_000 + i,
        }))
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 50,
                         "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576})
    for i in range(n):
        key = key_header + body(key_schema, {"ol_w_id": 1 + i // 3_000_000, "ol_d_id": i // 300_000 % 10 + 1,
                                             "ol_o_id": i // 15 % 20_000 + 1, "ol_number": i % 15 + 1})
        while True:
            try:
                producer.produce(topic, key=key, value=values[i % 1000], partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120) != 0:
        raise RuntimeError(f"could not deliver all {n} benchmark records to {topic}")
    return key_id, value_id


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (Linux /proc), 0 when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(n: int, partitions: int = 3) -> dict[str, float]:
    """Time `load_topic` for `n` order_line records on the lab, and the raw limit (consume + decode only)."""
    settings = LabSettings()
    needed = stack.services(settings, ["kafka", "registry", "snowflake"])
    fresh = [s for s in needed if s.pid() is None]
    up(needed, log=print)
    tag = uuid.uuid4().hex[:8]
    topic, database = f"tidb_landingbench_{tag}_order_line", f"LANDING_BENCH_{tag.upper()}"
    try:
        started = time.perf_counter()
        produce_order_lines(settings, topic, n, partitions)
        print(f"produced {n:,} records into {topic} ({partitions} partitions) in {time.perf_counter() - started:.1f}s")
        kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap)
        registry = SchemaRegistryClient({"url": settings.registry_url})
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        log = logging.getLogger("tidb_pipeline.bench")
        log.setLevel(logging.INFO)
        server = next(s for s in needed if s.name == "snowflake").pid()
        with snowflake.connector.connect(**connection_args(settings)) as conn:
            Warehouse.of(conn).execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(database)}")
            server_cpu = _cpu_seconds(server)
            result = load_topic(kafka=kafka, registry=registry, connection=conn, topic=topic,
                                landing=TableRef("LANDING", topic.upper(), database),
                                control=TableRef("PIPELINE", "", database), log=log)
            if result.rows_loaded != n:
                raise RuntimeError(f"benchmark loaded {result.rows_loaded} rows, expected {n}")
            load_rate = n / result.seconds
            server_cpu = _cpu_seconds(server) - server_cpu
        # The raw limit: the same readers and parallelism, consume + Avro decode only.
        end = kafka.end_offsets([topic])[topic]
        ranges = plan_ranges({}, end)
        parts = max(1, min(MAX_READERS, n // max(1, PARALLEL_MIN_RECORDS // 2))) if n >= PARALLEL_MIN_RECORDS else 1
        schemas = topic_schemas(registry, topic)
        with tempfile.TemporaryDirectory() as folder:
            jobs = [dataclasses.replace(RangeJob(consumer_config(kafka, topic), topic, g, schemas, folder, f"raw{i}"),
                                        decode_only=True) for i, g in enumerate(split_ranges(ranges, parts))]
            started = time.perf_counter()
            raw = run_readers(jobs)
            raw_seconds = time.perf_counter() - started
        if sum(r.rows for r in raw) != n:
            raise RuntimeError(f"raw read decoded {sum(r.rows for r in raw)} records, expected {n}")
        raw_rate = n / raw_seconds
        print(f"load_topic: {n:,} records in {result.seconds:.2f}s = {load_rate:,.0f} records/s "
              f"(the Snowflake stand-in used {server_cpu:.1f} CPU-s = {server_cpu / n * 1e6:.1f} us/record)")
        raw_cpu = sum(r.cpu_seconds for r in raw)
        print(f"raw limit (consume + Avro decode, {len(jobs)} reader(s)): {raw_seconds:.2f}s = {raw_rate:,.0f} "
              f"records/s ({raw_cpu:.1f} CPU-s = {raw_cpu / n * 1e6:.1f} us/record)")
        print(f"load / raw limit: {load_rate / raw_rate:.0%}")
        return {"load": load_rate, "raw": raw_rate, "ratio": load_rate / raw_rate}
    finally:
        AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).delete_topics([topic])
        down(list(reversed(fresh)), log=print)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the built-in landing loader on the lab")
    parser.add_argument("--bench", type=int, metavar="N", required=True, help="records to produce and load")
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args(argv)
    bench(args.bench, args.partitions)


if __name__ == "__main__":
    main()
