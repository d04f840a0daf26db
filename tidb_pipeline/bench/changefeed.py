"""The lab change feed's own figure: sustained row changes/s and commit -> Kafka latency at a fixed rate.

Measured through the TiCDC server `lab up` starts (its HTTP API, like the pipeline), on a private database:

- **sustained**: `rows` row changes are committed first (transactions of `txn_rows`), then a changefeed is
  created from a TSO taken before them; the rate is rows / (last - first record's broker append time), the
  feed's ceiling from binlog to acknowledged Kafka records; its startup (creation to first record) apart.
- **paced**: a changefeed runs first, then a writer commits `rate` row changes/s for `seconds`; each record's
  latency is its broker append time (the topic is created with `message.timestamp.type=LogAppendTime`, so
  the timestamp is the moment Kafka wrote it, i.e. acknowledged it) minus the moment the writer's COMMIT
  returned. p50 / p95 / max over every row.

- **beside go-tpc** (`--gotpc SECONDS`): go-tpc's TPC-C (one warehouse, prepared first) runs at its full rate
  for SECONDS while a changefeed replicates its database; each record's latency is its broker append time minus
  its commit time (`_tidb_commit_physical_time`, the commit's second: MariaDB's binlog has no finer one, so it
  reads up to 1 s high, as the production bench's feed split does). Sampled, every 10th offset. go-tpc and
  MariaDB share the machine with the feed here; in production TiDB and TiCDC have their own.

    python -m tidb_pipeline.bench.changefeed [--rows 50000] [--rate 1000 --rate 5000] [--seconds 20]
    python -m tidb_pipeline.bench.changefeed --rows 0 --rate 0 --gotpc 60
    tidb-pipeline bench --only changefeed

The machine's load average is part of the result: on a shared two-core machine it moves the figures a lot.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tidb_pipeline.resources.tidb import quote_mysql

_TABLE_SQL = (
    "CREATE TABLE `{db}`.`{table}` (id BIGINT NOT NULL PRIMARY KEY, w_id INT NOT NULL, d_id TINYINT NOT NULL, "
    "i_id INT NOT NULL, quantity TINYINT NOT NULL, amount DECIMAL(6,2) NOT NULL, delivery_d DATETIME NULL, "
    "dist_info CHAR(24) NOT NULL)"
)  # shaped like TPC-C's order_line, with one key column so a record's key names its row


@dataclass(frozen=True)
class Sustained:
    rows: int
    seconds: float  # first to last record's broker append time: the steady rate, startup excluded
    startup_seconds: float  # changefeed creation to the first record (registry, topic metadata, binlog position)
    write_seconds: float  # how long MariaDB took to commit them: the rate the feed is measured against
    txn_rows: int = 10

    @property
    def write_rate(self) -> float:
        return self.rows / self.write_seconds if self.write_seconds else 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _pct(latencies: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of `latencies` by rank; NaN when there are none."""
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Paced:
    target_rate: float
    written_rate: float  # what the writer achieved (it may fall short on a busy machine)
    rows: int
    latencies_s: tuple[float, ...] = field(repr=False)
    missing: int = 0

    def pct(self, q: float) -> float:
        return _pct(self.latencies_s, q)

    @property
    def p50(self) -> float:
        return self.pct(0.50)

    @property
    def p95(self) -> float:
        return self.pct(0.95)

    @property
    def max(self) -> float:
        return max(self.latencies_s) if self.latencies_s else float("nan")


@dataclass(frozen=True)
class ChangefeedBench:
    sustained: Sustained | None
    paced: tuple[Paced, ...]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    gotpc: BesideGoTPC | None = None

    def lines(self) -> list[str]:
        out = []
        if self.sustained is not None:
            s = self.sustained
            out.append(f"sustained: {s.rows:,} row changes in {s.seconds:.1f}s = {s.rate:,.0f} changes/s "
                       f"after a {s.startup_seconds:.1f}s startup "
                       f"(binlog -> acknowledged Kafka records; MariaDB committed them at {s.write_rate:,.0f}/s)")
        for p in self.paced:
            out.append(f"paced {p.target_rate:,.0f}/s (written {p.written_rate:,.0f}/s, {p.rows:,} rows"
                       f"{f', {p.missing} never arrived' if p.missing else ''}): commit -> Kafka p50 {p.p50:.2f}s "
                       f"p95 {p.p95:.2f}s max {p.max:.2f}s")
        if self.gotpc is not None:
            out.append(self.gotpc.line())
        out.append(f"load average {self.load_before[0]:.1f} before, {self.load_after[0]:.1f} after "
                   f"({os.cpu_count()} CPUs)")
        return out


def _key_id(key: bytes) -> int:
    """The `id` of a Confluent-framed Avro key `{id: long}`: a zig-zag varint after the 5-byte header."""
    shift = result = 0
    for byte in key[5:]:
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return (result >> 1) ^ -(result & 1)


class _Lab:
    """Connections to the lab's MariaDB, Kafka and TiCDC server for one bench run."""

    def __init__(self) -> None:
        from tidb_pipeline.lab.env import pipeline_env
        from tidb_pipeline.lab.settings import LabSettings

        self.settings = LabSettings()
        env = pipeline_env(self.settings)
        self.mysql = {"host": env["TIDB_HOST"], "port": int(env["TIDB_PORT"]), "user": env["TIDB_USER"],
                      "password": env["TIDB_PASSWORD"], "charset": "utf8mb4"}
        self.bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
        self.registry = env["SCHEMA_REGISTRY_URL"]
        self.ticdc_url = env["TICDC_URL"]
        self.run = uuid.uuid4().hex[:8]
        self.db = f"bench_cf_{self.run}"

    def connect(self):
        import pymysql

        return pymysql.connect(autocommit=True, **self.mysql)

    def create_table(self, table: str) -> str:
        """The table, and its topic created up front with broker append timestamps."""
        from confluent_kafka.admin import AdminClient, NewTopic

        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_mysql(self.db)}")
            cur.execute(_TABLE_SQL.format(db=self.db, table=table))
        topic = f"tidb_{self.db}_{table}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(topic, 3, 1, config={"message.timestamp.type": "LogAppendTime"})])[topic].result(60)
        return topic

    def changefeed(self, table: str, *, start_ts: int = 0) -> str:
        from tidb_pipeline.resources.ticdc import TiCDCClient

        cf_id = f"bench-{self.run}-{table.replace('_', '-')}"  # TiCDC ids: [a-zA-Z0-9-]
        sink = f"kafka://{self.bootstrap}/unused?protocol=avro&partition-num=3&enable-tidb-extension=true"
        config = {"filter": {"rules": [f"{self.db}.{table}"]},
                  "sink": {"schema_registry": self.registry,
                           "dispatchers": [{"matcher": [f"{self.db}.{table}"], "topic": "tidb_{schema}_{table}",
                                            "partition": "index-value"}]}}
        with TiCDCClient(self.ticdc_url) as client:
            client.create(cf_id, sink, config, start_ts=start_ts)
        return cf_id

    def drop(self, changefeeds: Sequence[str]) -> None:
        from tidb_pipeline.resources.ticdc import TiCDCClient

        with TiCDCClient(self.ticdc_url) as client:
            for cf_id in changefeeds:
                try:
                    client.delete(cf_id)
                except Exception:  # noqa: BLE001 - cleanup of a bench changefeed is best effort
                    pass
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_mysql(self.db)}")


def _rows(start: int, n: int) -> list[tuple]:
    return [(i, 1, i % 10 + 1, i % 100_000 + 1, 5, f"{(i % 9999) / 100:.2f}", None, "x" * 24)
            for i in range(start, start + n)]


def _insert(cur, db: str, table: str, rows: list[tuple]) -> None:
    cur.execute("BEGIN")
    cur.executemany(f"INSERT INTO `{db}`.`{table}` VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", rows)
    cur.execute("COMMIT")


class _Reader:
    """Consumes a topic from the start on a thread: each row id's broker append time (seconds)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.appended: dict[int, float] = {}
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 20})
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(10_000, 0.1):
                if msg.error() is None and msg.key() is not None:
                    self.appended.setdefault(_key_id(msg.key()), msg.timestamp()[1] / 1000)

    def wait_for(self, rows: int, *, stalled_s: float = 120.0) -> None:
        """Until `rows` rows arrived; fails once nothing new arrived for `stalled_s` seconds."""
        seen, since = -1, time.monotonic()
        while len(self.appended) < rows:
            if len(self.appended) != seen:
                seen, since = len(self.appended), time.monotonic()
            elif time.monotonic() - since > stalled_s:
                raise TimeoutError(f"the change feed delivered {seen:,} of {rows:,} rows and nothing more for "
                                   f"{stalled_s:.0f}s; see `tidb-pipeline lab status` and the ticdc log")
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def sustained(lab: _Lab, rows: int, txn_rows: int = 10) -> tuple[Sustained, str]:
    """Commit `rows` row changes, then replicate them from before: the change feed's ceiling."""
    from tidb_pipeline.lab.ticdc.codec import tso_from_ms

    topic = lab.create_table("backlog")
    start_ts = tso_from_ms(int(time.time() * 1000) - 1000)
    written = time.monotonic()
    with lab.connect() as conn, conn.cursor() as cur:
        for start in range(0, rows, txn_rows):
            _insert(cur, lab.db, "backlog", _rows(start, min(txn_rows, rows - start)))
    written = time.monotonic() - written
    reader = _Reader(lab.bootstrap, topic)
    try:
        created = time.time()
        cf_id = lab.changefeed("backlog", start_ts=start_ts)
        reader.wait_for(rows)
        first, last = min(reader.appended.values()), max(reader.appended.values())
    finally:
        reader.close()
    return Sustained(rows, last - first, first - created, written, txn_rows), cf_id


def paced(lab: _Lab, rate: float, seconds: float, txn_rows: int = 10) -> tuple[Paced, str]:
    """Write `rate` row changes/s for `seconds` with the changefeed running; commit -> Kafka latency per row."""
    table = f"paced_{int(rate)}"
    topic = lab.create_table(table)
    cf_id = lab.changefeed(table)
    reader = _Reader(lab.bootstrap, topic)
    committed: dict[int, float] = {}
    try:
        # The changefeed replicates once its first row arrives (registry, topic metadata, binlog stream).
        with lab.connect() as conn, conn.cursor() as cur:
            _insert(cur, lab.db, table, _rows(0, 1))
            reader.wait_for(1)
            next_id, started = 1, time.monotonic()
            interval = txn_rows / rate
            due = started
            while time.monotonic() - started < seconds:
                _insert(cur, lab.db, table, _rows(next_id, txn_rows))
                now = time.time()
                for i in range(next_id, next_id + txn_rows):
                    committed[i] = now
                next_id += txn_rows
                due += interval
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            written_s = time.monotonic() - started
        reader.wait_for(next_id)
        latencies = tuple(max(0.0, reader.appended[i] - t) for i, t in committed.items() if i in reader.appended)
    finally:
        reader.close()
    return Paced(rate, len(committed) / written_s, len(committed), latencies,
                 missing=len(committed) - len(latencies)), cf_id


@dataclass(frozen=True)
class BesideGoTPC:
    """The feed replicating go-tpc's TPC-C at go-tpc's full rate on the same machine."""

    seconds: float
    tpmc: float
    changes: int  # records of the window's commits on Kafka
    latencies_s: tuple[float, ...] = field(repr=False)  # sampled: every 10th offset
    drain_seconds: float = 0.0  # go-tpc's end to the feed's checkpoint passing it
    load: tuple[float, ...] = ()  # 1-minute load average, sampled every 5 s during the window
    nice: int = 0  # go-tpc's and the lab MariaDB's niceness during the window (`bench.priority`)

    @property
    def rate(self) -> float:
        return self.changes / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        pct = lambda q: _pct(self.latencies_s, q)  # noqa: E731
        load = "/".join(f"{x:.1f}" for x in self.load)
        niced = (f", go-tpc and MariaDB under nice {self.nice} (unthrottled; in production TiDB has its own "
                 f"machines)" if self.nice else "")
        return (f"beside go-tpc ({self.tpmc:,.0f} tpmC, {self.seconds:.0f}s{niced}): {self.changes:,} changes "
                f"({self.rate:,.0f}/s), commit -> Kafka p50 {pct(0.5):.2f}s p95 {pct(0.95):.2f}s "
                f"max {pct(1.0):.2f}s ({len(self.latencies_s):,} sampled; commit times are whole seconds); "
                f"checkpoint passed go-tpc's end {self.drain_seconds:.1f}s after it; load average {load}")


class _Sampler:
    """Consumes new topics from the start on a thread: (commit ms, broker append s) of every 10th offset."""

    def __init__(self, bootstrap: str, registry_url: str, topics: Sequence[str]) -> None:
        from confluent_kafka import Consumer, TopicPartition
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.samples: list[tuple[int, float]] = []
        self.records = 0
        self.bootstrap = bootstrap
        self._registry = SchemaRegistryClient({"url": registry_url})
        self._schemas: dict[int, Any] = {}
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 100})
        self.partitions = [TopicPartition(t, p, 0) for t in topics for p in range(3)]
        self._consumer.assign(self.partitions)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _commit_ms(self, value: bytes) -> int:
        import io

        import fastavro

        schema_id = int.from_bytes(value[1:5], "big")
        parsed = self._schemas.get(schema_id)
        if parsed is None:
            import json

            text = self._registry.get_schema(schema_id).schema_str
            parsed = self._schemas[schema_id] = fastavro.parse_schema(json.loads(text))
        record = fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed)
        return int(record["_tidb_commit_physical_time"])  # type: ignore[index, call-overload]

    def _loop(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(10_000, 0.2):
                if msg.error() is not None:
                    continue
                self.records += 1
                if msg.offset() % 10 == 0 and msg.value() is not None:
                    self.samples.append((self._commit_ms(msg.value()), msg.timestamp()[1] / 1000))

    def end_offsets(self) -> int:
        from tidb_pipeline.resources.kafka import KafkaResource

        ends = KafkaResource(bootstrap_servers=self.bootstrap).end_offsets({tp.topic for tp in self.partitions})
        return sum(o for parts in ends.values() for o in parts.values())

    def wait_for(self, records: int, *, stalled_s: float = 120.0) -> None:
        seen, since = -1, time.monotonic()
        while self.records < records:
            if self.records != seen:
                seen, since = self.records, time.monotonic()
            elif time.monotonic() - since > stalled_s:
                raise TimeoutError(f"read {seen:,} of {records:,} records and nothing more for {stalled_s:.0f}s")
            time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def beside_gotpc(lab: _Lab, seconds: float, threads: int = 4, database: str | None = None,
                 nice: int = 0) -> tuple[BesideGoTPC, str]:
    """go-tpc at full rate for `seconds` on a one-warehouse database, its changefeed running.

    `database` names one to keep for the next run (prepared only if it has no `warehouse` table yet); without
    it a fresh one is prepared and dropped after. `nice` > 0 runs go-tpc and the lab MariaDB at that lower CPU
    priority during the window (`tidb_pipeline.bench.priority`).
    """
    from tidb_pipeline.bench.priority import mariadb_pid, niced

    from confluent_kafka.admin import AdminClient, NewTopic

    from tidb_pipeline.lab.ticdc.codec import tso_from_ms
    from tidb_pipeline.resources.ticdc import TiCDCClient
    from tidb_pipeline.workload import gotpc
    from tidb_pipeline.workload.schema import CDC_KEYS

    conn_kwargs = {k: v for k, v in lab.mysql.items() if k != "charset"}
    db = database or lab.db
    with lab.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_mysql(db)}")
        cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = "
                    "'warehouse'", (db,))
        prepared = bool(cur.fetchone()[0])
    if not prepared:
        print(f"go-tpc tpcc prepare (1 warehouse) into {db}", flush=True)
        gotpc.prepare(conn_kwargs, database=db, warehouses=1, threads=threads)
    topics = [f"tidb_{db}_{lab.run}_{t}" for t in CDC_KEYS]
    admin = AdminClient({"bootstrap.servers": lab.bootstrap})
    for topic, fut in admin.create_topics([NewTopic(t, 3, 1, config={"message.timestamp.type": "LogAppendTime"})
                                           for t in topics]).items():
        fut.result(60)
    cf_id = f"bench-{lab.run}-gotpc"
    sink = f"kafka://{lab.bootstrap}/unused?protocol=avro&partition-num=3&enable-tidb-extension=true"
    config = {"filter": {"rules": [f"{db}.*"]}, "ignore_ineligible_table": True,  # go-tpc's history has no key
              "sink": {"schema_registry": lab.registry,
                       "dispatchers": [{"matcher": [f"{db}.*"], "topic": "tidb_{schema}_" + lab.run + "_{table}",
                                        "partition": "index-value"}]}}
    sampler = _Sampler(lab.bootstrap, lab.registry, topics)
    try:
        with TiCDCClient(lab.ticdc_url) as client:
            created = tso_from_ms(int(time.time() * 1000))
            client.create(cf_id, sink, config)
            while client.get_status(cf_id).checkpoint_ts < created:  # capture reads the binlog
                time.sleep(0.2)
            load: list[float] = []
            done = threading.Event()

            def sample_load() -> None:
                while not done.wait(5):
                    load.append(os.getloadavg()[0])

            threading.Thread(target=sample_load, daemon=True).start()
            print(f"go-tpc tpcc run at full rate for {seconds:.0f}s ({threads} threads)", flush=True)
            start = time.time()
            with niced(mariadb_pid(), nice):
                result = gotpc.run(conn_kwargs, database=db, warehouses=1, threads=threads, duration_s=seconds,
                                   nice=nice)
            end = time.time()
            done.set()
            while client.get_status(cf_id).checkpoint_ts < tso_from_ms(int(end * 1000)):
                time.sleep(0.2)
            drain = time.time() - end
        sampler.wait_for(sampler.end_offsets())
    finally:
        sampler.close()
    window = [(c, a) for c, a in sampler.samples if start * 1000 <= c + 999 and c <= end * 1000]
    return BesideGoTPC(end - start, result.tpmc, sampler.records, tuple(max(0.0, a - c / 1000) for c, a in window),
                       drain, (os.getloadavg()[0], *load), nice), cf_id


def run(rows: int = 50_000, rates: Sequence[float] = (1_000, 5_000, 10_000), seconds: float = 20.0,
        txn_rows: int = 10, gotpc_s: float = 0.0, threads: int = 4, gotpc_db: str | None = None,
        nice: int = 0) -> ChangefeedBench:
    """The measures on the running lab (`tidb-pipeline lab up` first)."""
    lab = _Lab()
    load_before = os.getloadavg()
    changefeeds: list[str] = []
    try:
        sus = None
        if rows:
            sus, cf = sustained(lab, rows, txn_rows)
            changefeeds.append(cf)
        results = []
        for rate in rates:
            p, cf = paced(lab, rate, seconds, txn_rows)
            changefeeds.append(cf)
            results.append(p)
        gotpc_window = None
        if gotpc_s:
            gotpc_window, cf = beside_gotpc(lab, gotpc_s, threads, gotpc_db, nice)
            changefeeds.append(cf)
    finally:
        lab.drop(changefeeds)
    return ChangefeedBench(sus, tuple(results), load_before, os.getloadavg(), gotpc_window)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="row changes of the sustained measure (0: skip)")
    parser.add_argument("--rate", type=float, action="append", help="row changes/s of a paced measure (repeatable)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each paced measure")
    parser.add_argument("--txn-rows", type=int, default=10, help="rows per transaction (go-tpc's New-Order: ~10)")
    parser.add_argument("--gotpc", type=float, default=0.0, metavar="SECONDS",
                        help="also run go-tpc at full rate for SECONDS beside the feed (0: skip)")
    parser.add_argument("--threads", type=int, default=4, help="go-tpc threads")
    parser.add_argument("--gotpc-database", metavar="DB",
                        help="go-tpc's database, kept for the next run (prepared if missing); default: a fresh one")
    parser.add_argument("--nice-workload", type=int, default=0, metavar="N",
                        help="run go-tpc and the lab MariaDB under nice N during the go-tpc window (lab only: in "
                             "production TiDB has its own machines); go-tpc stays unthrottled")
    args = parser.parse_args(argv)
    rates = [r for r in args.rate if r] if args.rate is not None else (1_000, 5_000, 10_000)
    result = run(args.rows, rates, args.seconds, args.txn_rows, args.gotpc, args.threads,
                 args.gotpc_database, args.nice_workload)
    for line in result.lines():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
