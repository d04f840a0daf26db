"""Cost against retention: load and merge the same batch next to 100k and to 10M retained landing rows (lab only).

For each retained size R, on its own topic and database:
1. The topic gets R/3 empty filler records per partition (so the batch's offsets lie above the retained
   rows', as in production; nothing reads them), then the batch of order_line records.
2. The landing table gets R retained rows at offsets 0 .. R/3 - 1 of each partition, written by bulk
   `INSERT ... SELECT ... FROM TABLE(GENERATOR(...))`s of 1M rows at the lab's Snowflake (not through Kafka), in the
   connector's layout with order_line contents; the landed-offsets table and the replica's watermarks say
   they are landed and merged, as after a long history that the cleanup has not yet deleted.
3. The replica's DDL runs (a merge with nothing pending), then `load_topic` and `merge_replica` are timed,
   exactly as the landing/replica asset runs them. The batch must land and merge completely. Then the same
   keys again as the next batch (updates), `--rounds` batches in all; medians are reported.

Beside them, same run: the merge of the same batch through the landing-table scan the merge used before the
landed-offsets table (a second replica, `landed_offsets=None`, connector mode's path), and the seeding
scan that every load used to run twice (`landed_offsets_sql`).

    python -m tidb_pipeline.bench.retention --retained 100000 10000000 --batch 30000
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tidb_pipeline.replication.ddl import Statement, TableRef, create_watermark_sql, quote_ident

PARTITIONS = 3


@dataclass(frozen=True)
class RetentionPoint:
    """Medians over the rounds (one batch each) at one retained size."""

    retained: int
    batch: int
    rounds: int
    fill_seconds: float  # filler records + retained rows (setup, not measured)
    load_seconds: float
    merge_seconds: float
    scan_merge_seconds: float  # the same batch merged through the landing-table scan (before the table)
    seed_scan_seconds: float  # one `landed_offsets_sql` scan of the landing table

    @property
    def seconds(self) -> float:
        return self.load_seconds + self.merge_seconds


def retained_rows_sql(landing: TableRef, topic: str, first: int, rows: int, create_time_ms: int) -> Statement:
    """Landing rows `first .. first + rows - 1` of R in the connector's layout (row n: partition n mod 3, offset
    n div 3), order_line contents. The JSON texts are built by concatenation and parsed once (`PARSE_JSON`),
    which the lab's stand-in runs far faster than nested `OBJECT_CONSTRUCT`s."""
    n = '"N"'
    key = (f"'\"ol_w_id\":9,\"ol_d_id\":' || (MOD({n}, 10) + 1) || ',\"ol_o_id\":' || (FLOOR({n} / 150)::INTEGER + 1) || "
           f"',\"ol_number\":' || (MOD({n}, 15) + 1)")
    metadata = (f"'{{\"topic\":\"' || %s || '\",\"partition\":' || MOD({n}, {PARTITIONS}) || ',\"offset\":' || "
                f"FLOOR({n} / {PARTITIONS})::INTEGER || ',\"CreateTime\":' || %s || ',\"key\":{{' || {key} || '}}}}'")
    content = (f"'{{' || {key} || ',\"ol_i_id\":' || MOD({n} * 97, 100000) || ',\"ol_supply_w_id\":9,"
               f"\"ol_delivery_d\":\"2026-11-25 12:00:00\",\"ol_quantity\":5,\"ol_amount\":12.50,"
               f"\"ol_dist_info\":\"dist-info-' || {n} || '\",\"_tidb_op\":\"c\",\"_tidb_commit_ts\":' || "
               f"(463000000000000000 + {n}) || ',\"_tidb_commit_physical_time\":1764072000000}}'")
    return Statement(
        f'INSERT INTO {landing.sql} ("RECORD_METADATA", "RECORD_CONTENT") '
        f"SELECT PARSE_JSON({metadata}), PARSE_JSON({content}) "
        f"FROM (SELECT SEQ8() + %s AS {n} FROM TABLE(GENERATOR(ROWCOUNT => {int(rows)})))",
        (topic, create_time_ms, first),
    )


FILL_CHUNK = 1_000_000  # rows per INSERT: bounds the stand-in's working memory


def _one(conn: Any, settings: Any, retained: int, batch: int, rounds: int, log: logging.Logger) -> RetentionPoint:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from tidb_pipeline.bench.landing import produce_order_lines
    from tidb_pipeline.engine.landing import LandingTables, ensure_tables, load_topic
    from tidb_pipeline.engine.replica import merge_replica
    from tidb_pipeline.replication.landing import landed_offsets_sql, write_landed_offsets_statements
    from tidb_pipeline.resources.kafka import KafkaResource
    from tidb_pipeline.resources.warehouse import Warehouse

    per = retained // PARTITIONS
    tag = uuid.uuid4().hex[:8]
    topic, database = f"tidb_retention_{tag}_order_line", f"RETENTION_BENCH_{tag.upper()}"
    landing = TableRef("LANDING", topic.upper(), database)
    control = TableRef("PIPELINE", "", database)
    replica, scan_replica = TableRef("REPLICA", "ORDER_LINE", database), TableRef("REPLICA", "ORDER_LINE_SCAN", database)
    watermarks = TableRef("PIPELINE", "MERGE_WATERMARKS", database)
    tables = LandingTables.of(landing, control)
    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap)
    registry = SchemaRegistryClient({"url": settings.registry_url})
    wh = Warehouse.of(conn)
    try:
        t0 = time.perf_counter()
        produce_order_lines(settings, topic, batch, PARTITIONS, filler_per_partition=per)
        wh.execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(database)}")
        ensure_tables(wh, tables)
        wh.execute(create_watermark_sql(watermarks))
        created = int(time.time() * 1000)
        for first in range(0, per * PARTITIONS, FILL_CHUNK):
            wh.execute(retained_rows_sql(landing, topic, first, min(FILL_CHUNK, per * PARTITIONS - first), created))
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        last = {p: per - 1 for p in range(PARTITIONS)}
        for stmt in write_landed_offsets_statements(tables.offsets, landing, topic, last, "bench", now):
            wh.execute(stmt)
        for r in (replica, scan_replica):
            for p in range(PARTITIONS):
                wh.execute(Statement(f"INSERT INTO {watermarks.sql} VALUES (%s, %s, %s, %s)", (r.label, p, per - 1, now)))
        fill = time.perf_counter() - t0
        log.info("retained %s rows and %s filler records in %.0fs", f"{retained:,}", f"{retained:,}", fill)

        def merge(target: TableRef, landed: TableRef | None) -> Any:
            return merge_replica(connection=conn, registry=registry, topic=topic, landing=landing, replica=target,
                                 watermarks=watermarks, dead_letters=tables.dead_letter, landed_offsets=landed,
                                 kafka=kafka, log=log)

        for target, landed in ((replica, tables.offsets), (scan_replica, None)):  # the DDL, nothing pending
            merge(target, landed)
        times: list[tuple[float, float, float, float]] = []
        for i in range(rounds):
            if i:  # the same keys again, above the last batch: updates this time
                produce_order_lines(settings, topic, batch, PARTITIONS, create_topic=False)
            t0 = time.perf_counter()
            loaded = load_topic(kafka=kafka, registry=registry, connection=conn, topic=topic, landing=landing,
                                control=control, log=log)
            load_s = time.perf_counter() - t0
            if loaded.rows_loaded != batch:
                raise RuntimeError(f"the load landed {loaded.rows_loaded} rows, expected {batch}")
            t0 = time.perf_counter()
            merged = merge(replica, tables.offsets)
            merge_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            scanned = merge(scan_replica, None)
            scan_s = time.perf_counter() - t0
            for what, outcome in (("merge", merged), ("scan merge", scanned)):
                c = None if outcome is None else outcome.counts
                if c is None or c.inserted + c.updated != batch or outcome.row_count != batch:
                    raise RuntimeError(f"the {what} did not apply the whole batch of {batch}: {outcome}")
            t0 = time.perf_counter()
            wh.execute(landed_offsets_sql(landing, tables.dead_letter, topic))
            times.append((load_s, merge_s, scan_s, time.perf_counter() - t0))
        med = [statistics.median(t[k] for t in times) for k in range(4)]
        return RetentionPoint(retained, batch, rounds, fill, *med)
    finally:
        AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).delete_topics([topic])
        for schema in ("LANDING", "REPLICA", "PIPELINE"):  # the retained rows are large: give the memory back
            try:
                wh.execute(f"DROP SCHEMA IF EXISTS {quote_ident(database)}.{quote_ident(schema)} CASCADE")
            except Exception as exc:  # noqa: BLE001 - cleanup after a failure must not hide the failure
                log.warning("could not drop %s.%s: %s", database, schema, exc)


def retention_scaling(retained: tuple[int, ...], batch: int, rounds: int = 3) -> list[RetentionPoint]:
    """One point per retained size, smallest first, on the lab (Kafka, registry, Snowflake stand-in)."""
    import snowflake.connector

    from tidb_pipeline.lab import stack
    from tidb_pipeline.lab.service import up
    from tidb_pipeline.lab.settings import LabSettings
    from tidb_pipeline.lab.snowflake import MEMORY_LIMIT_ENV, connection_args

    settings = LabSettings()
    # A lab server this starts keeps DuckDB within 3 GB (spilling to disk): 10M rows on a shared machine.
    os.environ.setdefault(MEMORY_LIMIT_ENV, "3GB")
    up(stack.services(settings, ["kafka", "registry", "snowflake"]), log=lambda _m: None)
    log = logging.getLogger("tidb_pipeline.bench.retention")
    points = []
    with snowflake.connector.connect(**connection_args(settings)) as conn:
        for r in sorted(retained):
            points.append(_one(conn, settings, r, batch, rounds, log))
            p = points[-1]
            print(f"[bench] retention {r:,}: load {p.load_seconds:.2f}s + merge {p.merge_seconds:.2f}s = "
                  f"{p.seconds:.2f}s; merge through the landing scan {p.scan_merge_seconds:.2f}s; "
                  f"one seeding scan {p.seed_scan_seconds:.2f}s (setup {p.fill_seconds:.0f}s)", flush=True)
    return points


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Load + merge time of one batch against retained landing rows")
    parser.add_argument("--retained", type=int, nargs="+", default=[100_000, 10_000_000])
    parser.add_argument("--batch", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3, help="batches per size (medians are reported)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    points = retention_scaling(tuple(args.retained), args.batch, args.rounds)
    base = points[0]
    for p in points[1:]:
        print(f"{p.retained:,} vs {base.retained:,} retained: {p.seconds / base.seconds:.2f}x "
              f"(scan path {p.scan_merge_seconds / base.scan_merge_seconds:.2f}x)")


if __name__ == "__main__":
    main()
