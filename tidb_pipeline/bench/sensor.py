"""The offsets sensor's own benchmark: tick time against a running Kafka (the lab's by default).

    python -m tidb_pipeline.bench.sensor --bench-topics 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

import dagster as dg
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from tidb_pipeline.config import parse_config
from tidb_pipeline.defs.sensors import build_offsets_sensor, deserialize_cursor
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.resources.kafka import KafkaResource, read_end_offsets


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Time the offsets sensor's tick against a running Kafka.")
    parser.add_argument("--bench-topics", type=int, default=500, help="topics to watch (created if missing)")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--groups", type=int, default=5, help="table groups the topics' tables are spread over")
    parser.add_argument("--produce", type=int, default=100, help="topics that get one new message before tick 3")
    parser.add_argument("--repeat", type=int, default=5, help="no-change ticks to time")
    parser.add_argument("--bootstrap", default=None, help="default: the lab's Kafka")
    args, _ = parser.parse_known_args(argv)

    bootstrap = args.bootstrap or LabSettings().kafka_bootstrap
    kafka = KafkaResource(bootstrap_servers=bootstrap)
    admin = kafka.admin()
    db = f"bench_offsets_p{args.partitions}"
    groups = [f"g{i}" for i in range(args.groups)]
    config = parse_config({
        "merge_schedules": {g: {"cron": "* * * * *"} for g in groups},
        "tables": [{"db": db, "table": f"t{i:04d}", "group": groups[i % len(groups)]}
                   for i in range(args.bench_topics)],
    })
    topics = [config.topic(t) for t in config.tables]

    started = time.monotonic()
    existing = set(admin.list_topics(timeout=30).topics)
    missing = [t for t in topics if t not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=args.partitions, replication_factor=1) for t in missing], request_timeout=120
        )
        for f in futures.values():
            f.result(timeout=120)
    # A created topic answers list_offsets only once its leader is ready; time ticks on a settled broker.
    while True:
        read = read_end_offsets(admin, topics, {}, refresh_metadata=True, deadline=time.monotonic() + 60,
                                request_timeout_s=30)
        if not read.errors and len(read.offsets) == len(topics) and all(read.offsets.values()):
            break
        if time.monotonic() - started > 180:
            raise SystemExit(f"bench: {len(read.errors)} of {len(topics)} topics on {bootstrap} still do not "
                             "answer list_offsets after 180 s; check the broker's log")
        time.sleep(0.5)
    print(f"kafka {bootstrap}: {len(topics)} topics x {args.partitions} partitions "
          f"({len(missing)} created in {time.monotonic() - started:.1f} s)")

    sensor = build_offsets_sensor(config=config)
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: str | None) -> tuple[float, dg.SensorResult]:
        context = dg.build_sensor_context(cursor=cursor, resources={"kafka": kafka}, instance=instance)
        t0 = time.perf_counter()
        result = sensor(context)
        return time.perf_counter() - t0, result

    def describe(result: dg.SensorResult) -> str:
        if result.skip_reason:
            return f"skip: {result.skip_reason.skip_message}"
        return (f"{len(result.asset_events)} observations, {len(result.run_requests)} run requests "
                f"({sum(len(r.asset_selection or []) for r in result.run_requests)} assets)")

    cold, result = tick(None)
    print(f"tick 1 (empty cursor: metadata + list_offsets): {cold * 1000:.0f} ms; {describe(result)}")
    cursor = result.cursor
    warm: list[float] = []
    for _ in range(args.repeat):
        seconds, result = tick(cursor)
        warm.append(seconds)
        cursor = result.cursor
    print(f"ticks 2..{args.repeat + 1} (no new data, list_offsets only): "
          f"median {statistics.median(warm) * 1000:.0f} ms, max {max(warm) * 1000:.0f} ms; {describe(result)}")

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for topic in topics[: args.produce]:
        producer.produce(topic, key=b"k", value=b"v")
    producer.flush(30)
    seconds, result = tick(cursor)
    print(f"tick after 1 message in {args.produce} topics: {seconds * 1000:.0f} ms; {describe(result)}")
    cursor = result.cursor

    stale = json.loads(cursor)
    stale["metadata_at"] = 0
    seconds, result = tick(json.dumps(stale))
    print(f"tick with a metadata refresh (no new data): {seconds * 1000:.0f} ms; {describe(result)}")
    print(f"cursor size: {len(cursor)} bytes")

    # The tick's floor: one list_offsets call on an already connected client (no client setup).
    known = {t: sorted(s.offsets) for t, s in deserialize_cursor(cursor).topics.items()}
    calls: list[float] = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        read = read_end_offsets(admin, topics, known, refresh_metadata=False, deadline=time.monotonic() + 30,
                                request_timeout_s=30)
        calls.append(time.perf_counter() - t0)
    print(f"one list_offsets call for {sum(len(p) for p in known.values())} partitions on a connected client: "
          f"median {statistics.median(calls) * 1000:.0f} ms ({read.calls} call, {len(read.errors)} errors)")


if __name__ == "__main__":
    main()
