"""Freshness at production rates (issue 18, item 3): go-tpc end to end, and the pipeline alone by replay.

    python -m tidb_pipeline.bench.production --seconds 120 --fractions 0.25 0.5 1 \
        --replay-rates 1000 5000 20000 50000 --replay-seconds 60

Both parts run the real Dagster daemon (`dagster-daemon run -m tidb_pipeline.definitions`, the project's
`dagster.yaml` in a temporary `$DAGSTER_HOME`): the offsets sensor ticks every `sensor_interval_seconds`
(5 s here, Dagster's floor) and every run it requests is queued, launched in its own process and executed
as in production. This process only drives the workload and watches.

1. **End to end** (commit in MariaDB -> row in the replica): `go-tpc tpcc prepare` (1 warehouse), the
   `backfill` job (snapshot, replicas, changefeed from that point), then for each fraction of go-tpc's full
   rate a `go-tpc tpcc run` of `--seconds`. go-tpc has no rate option, so a fraction below 1 is a duty cycle:
   the process runs `fraction` of every second and is stopped (SIGSTOP) for the rest. `--nice-workload N` runs
   go-tpc and the lab MariaDB under `nice N` during these windows (`tidb_pipeline.bench.priority`): in the lab
   they share two cores with the change feed and the pipeline, in production TiDB has its own machines; go-tpc
   is not throttled by it, and its tpmC is printed. `--replay-rates` with no rate runs this part alone.
2. **The pipeline alone** (Kafka -> row in the replica): the TiCDC topics part 1 recorded are copied, record
   by record (the same key, value and partition), into fresh topics at a fixed rate, one set of topics per
   rate, with the same schemas registered under the new topics' subjects. The rates up to 50k/s always
   run; higher ones only while p95 stays within 10 s and the producer reaches the rate.

Latency per landing row: a thread reads the watermark table every `POLL_S` seconds and notes when each
(replica, partition) watermark moved; a row is visible once a watermark covers its offset, so "visible" is
at most `POLL_S` late. End to end is measured from `_tidb_commit_physical_time` (MariaDB's binlog: whole
seconds, so up to 1 s high) and split at the Kafka record's `CreateTime` into the feed's share (commit ->
Kafka) and the pipeline's (Kafka -> visible); the replay from the replayed record's `CreateTime`. Deletes
(tombstones carry no commit time) are left out of the end-to-end figures. Large windows are sampled (every
n-th offset) when the rows are read back.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tidb_pipeline.bench.freshness import percentile
from tidb_pipeline.lab.settings import LabSettings

_REPO = Path(__file__).resolve().parents[2]
POLL_S = 1.0
SAMPLE_ROWS = 60_000  # rows read back per window at most (every n-th offset beyond that)
DATABASE = "TIDB_PIPELINE_PRODUCTION_BENCH"


def _say(msg: str) -> None:
    print(f"[production] {time.strftime('%H:%M:%S')} {msg}", flush=True)


@dataclass(frozen=True)
class Step:
    replica: str
    partition: int
    after: int
    through: int
    merged_at: float  # the watermark's MERGED_AT (epoch s)
    seen: float  # when the poller first saw it (epoch s): the row was visible by then


@dataclass
class Window:
    """One measured window: a go-tpc fraction or a replay rate."""

    label: str
    kind: str  # "end to end" | "pipeline alone"
    target: str
    seconds: float
    changes: int  # change records written to Kafka in the window
    rate: float  # changes / s
    rows: int  # rows measured (sampled)
    p50: float
    p95: float
    max: float
    feed: tuple[float, float, float] = (0.0, 0.0, 0.0)  # commit -> Kafka p50/p95/max (end to end only)
    pipeline: tuple[float, float, float] = (0.0, 0.0, 0.0)  # Kafka -> visible p50/p95/max
    tpmc: float = 0.0
    runs: int = 0
    run_seconds_median: float = 0.0
    launch_seconds_median: float = 0.0  # run request -> run process started (queue + launch + imports)
    drained_rate: float = 0.0  # pipeline alone: changes / (first produced -> last one in the replica)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    latencies: list[float] = field(default_factory=list, repr=False)
    nice: int = 0  # end to end: go-tpc's and the lab MariaDB's niceness (`bench.priority`)


class Poller:
    """Reads the watermark table every POLL_S s and keeps every move as a Step."""

    def __init__(self, settings: LabSettings, watermarks_sql: str) -> None:
        self.settings, self.sql = settings, watermarks_sql
        self.steps: list[Step] = []
        self._by: dict[tuple[str, int], tuple[list[int], list[Step]]] = {}  # (replica, p) -> (throughs, steps)
        self.last: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watermarks", daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import snowflake.connector

        from tidb_pipeline.lab.snowflake import connection_args

        with snowflake.connector.connect(**connection_args(self.settings)) as sf:
            while not self._stop.is_set():
                t = time.time()
                try:
                    cur = sf.cursor()
                    cur.execute(f'SELECT "REPLICA_TABLE", "PARTITION", "MERGED_OFFSET", "MERGED_AT" FROM {self.sql}')
                    rows = cur.fetchall()
                except Exception:  # noqa: BLE001 - the table appears with the first merge
                    rows = []
                seen = time.time()
                for label, p, offset, merged_at in rows:
                    self.record(label, int(p), int(offset), merged_at.replace(tzinfo=dt.timezone.utc).timestamp(), seen)
                self._stop.wait(max(0.0, POLL_S - (time.time() - t)))

    def record(self, replica: str, partition: int, offset: int, merged_at: float, seen: float) -> None:
        """Note a watermark read at `seen`; a move past the last one read is a Step."""
        k = (replica, partition)
        before = self.last.get(k, -1)
        if offset > before:
            step = Step(replica, partition, before, offset, merged_at, seen)
            self.steps.append(step)
            throughs, steps = self._by.setdefault(k, ([], []))
            throughs.append(offset)
            steps.append(step)
            self.last[k] = offset

    def visible(self, replica: str, partition: int, offset: int) -> Step | None:
        """The first watermark move that covered (partition, offset) of `replica`."""
        import bisect

        throughs, steps = self._by.get((replica, partition), ([], []))
        i = bisect.bisect_left(throughs, offset)
        return steps[i] if i < len(steps) else None


class Daemon:
    """`dagster-daemon run` on the project's definitions with `config_path`, in a fresh $DAGSTER_HOME."""

    def __init__(self, settings: LabSettings, config_path: Path, home: Path, parallel_tables: int | None = None) -> None:
        from tidb_pipeline.lab.env import pipeline_env
        from tidb_pipeline.resources.warehouse import PARALLEL_TABLES_VAR

        home.mkdir(parents=True, exist_ok=True)
        # The project's instance config with this home written in (it names $DAGSTER_HOME, which in this
        # process may name another instance).
        (home / "dagster.yaml").write_text(
            (_REPO / "dagster.yaml").read_text().replace("env: DAGSTER_HOME", json.dumps(str(home))))
        self.home = home
        # The instance's SQLite storages created (and their schema stamped) here, before the daemon starts:
        # two processes creating them at once can stamp two alembic heads, and every later open then fails.
        self.instance().get_runs(limit=1)
        env = {**os.environ, **pipeline_env(settings), "DAGSTER_HOME": str(home),
               "TIDB_PIPELINE_CONFIG": str(config_path)}
        if parallel_tables is not None:  # instead of the lab's setting (lab/snowflake.py), for paired runs
            env[PARALLEL_TABLES_VAR] = str(parallel_tables)
        self.log = home / "daemon.log"
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "tidb_pipeline.definitions"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), start_new_session=True, cwd=_REPO)

    def instance(self) -> Any:
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.home))

    def ticks(self) -> int:
        """The offsets sensor's ticks so far, from the instance's tick storage."""
        from dagster._core.scheduler.instigation import InstigatorType

        instance = self.instance()
        return sum(len(instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1))
                   for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR))

    def wait_ready(self, timeout_s: float = 600) -> float:
        """Until the offsets sensor has ticked once; returns the seconds it took."""
        started = time.monotonic()
        while not self.ticks():
            self.check()
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"the daemon's offsets sensor did not tick within {timeout_s:.0f}s; see {self.log}")
            time.sleep(1)
        return time.monotonic() - started

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with {self.proc.returncode}; see {self.log}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def _runs(instance: Any, since: float, until: float) -> tuple[list[float], list[float]]:
    """(durations, launch delays) of the runs that ran during [since, until]: start -> end, and the time from
    the sensor's run request to the run process starting (queue, launch, imports)."""
    durations, delays = [], []
    for r in instance.get_run_records(limit=10_000):
        if r.start_time and r.end_time and r.create_timestamp.timestamp() <= until and r.end_time >= since:
            durations.append(r.end_time - r.start_time)
            delays.append(r.start_time - r.create_timestamp.timestamp())
    return durations, delays


def _write_config(path: Path, tables: list[dict[str, Any]], suffix: str, changefeed: str) -> Any:
    from tidb_pipeline.config import parse_config

    data = yaml.safe_load((_REPO / "tidb_pipeline.yaml").read_text())
    data["source"]["changefeed_id"] = changefeed
    data["snowflake"].update({"database": DATABASE, "landing_schema": f"LANDING_{suffix}",
                              "replica_schema": f"REPLICA_{suffix}", "control_schema": f"PIPELINE_{suffix}"})
    data["sensor_interval_seconds"] = 5
    data["tables"] = tables
    data.pop("alerts", None)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return parse_config(data)


def _end_offsets(kafka: Any, topics: list[str]) -> dict[str, dict[int, int]]:
    return kafka.end_offsets(topics)


def _wait_merged(poller: Poller, config: Any, kafka: Any, daemon: Daemon, timeout_s: float = 900) -> None:
    """Until every partition's watermark reaches the topic's end offsets read now."""
    from tidb_pipeline.defs.tables import table_names

    names = [table_names(config, t) for t in config.tables]
    end = _end_offsets(kafka, [n.topic for n in names])
    deadline = time.monotonic() + timeout_s
    while True:
        daemon.check()
        behind = sum(max(0, o - 1 - poller.last.get((n.replica.label, p), -1))
                     for n in names for p, o in end.get(n.topic, {}).items() if o > 0)
        if behind == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the pipeline did not merge the last {behind:,} records within {timeout_s:.0f}s")
        time.sleep(1)


def _measure(settings: LabSettings, poller: Poller, config: Any, start: float, end: float,
             by_commit: bool) -> tuple[list[float], list[float], list[float]]:
    """(total, feed, pipeline) latencies of the landing rows of the window (sampled to SAMPLE_ROWS)."""
    import snowflake.connector

    from tidb_pipeline.defs.tables import table_names
    from tidb_pipeline.lab.snowflake import connection_args

    total, feed, pipe = [], [], []
    when = '"RECORD_CONTENT":"_tidb_commit_physical_time"::int' if by_commit else '"RECORD_METADATA":"CreateTime"::int'
    with snowflake.connector.connect(**connection_args(settings)) as sf:
        cur = sf.cursor()
        counts = {}
        for t in config.tables:
            n = table_names(config, t)
            try:
                cur.execute(f"SELECT COUNT(*) FROM {n.landing.sql} WHERE {when} BETWEEN %s AND %s",
                            (int(start * 1000), int(end * 1000)))
            except snowflake.connector.errors.ProgrammingError:
                continue  # no landing table: the topic never had a record (go-tpc only reads `item`)
            counts[t.db, t.table] = int(cur.fetchone()[0])
        every = max(1, -(-sum(counts.values()) // SAMPLE_ROWS))
        for t in config.tables:
            if (t.db, t.table) not in counts:
                continue
            n = table_names(config, t)
            cur.execute(
                f'SELECT "RECORD_METADATA":"partition"::int, "RECORD_METADATA":"offset"::int, '
                f'"RECORD_CONTENT":"_tidb_commit_physical_time"::int, "RECORD_METADATA":"CreateTime"::int '
                f'FROM {n.landing.sql} WHERE {when} BETWEEN %s AND %s AND "RECORD_METADATA":"offset"::int %% %s = 0',
                (int(start * 1000), int(end * 1000), every))
            for p, offset, commit_ms, created_ms in cur.fetchall():
                step = poller.visible(n.replica.label, int(p), int(offset))
                if step is None:
                    raise RuntimeError(f"landing row {n.landing.label} p{p} o{offset} was never seen merged")
                if by_commit:
                    total.append(step.seen - commit_ms / 1000)
                    feed.append((created_ms - commit_ms) / 1000)
                pipe.append(step.seen - created_ms / 1000)
    return (total if by_commit else pipe), feed, pipe


def _stats(values: list[float]) -> tuple[float, float, float]:
    return (percentile(values, 50), percentile(values, 95), max(values)) if values else (0.0, 0.0, 0.0)


def _paced_gotpc(conn_kwargs: dict[str, Any], db: str, seconds: float, fraction: float, threads: int,
                 nice: int = 0) -> Any:
    """`go-tpc tpcc run` for `seconds`; below 1, stopped for (1 - fraction) of every second (a duty cycle).

    `nice` > 0: go-tpc and the lab MariaDB at that lower CPU priority meanwhile (`bench.priority`)."""
    from tidb_pipeline.bench.priority import mariadb_pid, niced
    from tidb_pipeline.workload import gotpc

    with niced(mariadb_pid(), nice):
        return gotpc.run(conn_kwargs, database=db, warehouses=1, threads=threads, duration_s=seconds, duty=fraction,
                         nice=nice)


# Before the measured windows, a few seconds of changes are merged, so the windows see the daemon as it runs 24x7
# (its first run starts cold: no run worker waits yet), not its start.
WARMUP_RATE, WARMUP_SECONDS = 1_000, 10


def end_to_end(settings: LabSettings, work: Path, fractions: list[float], seconds: float,
               threads: int, nice: int = 0) -> tuple[list[Window], list[str]]:
    """Part 1; returns the windows and the recorded topics."""
    import dagster as dg
    import pymysql

    from tidb_pipeline.defs import build_defs
    from tidb_pipeline.defs.backfill_job import build_backfill_job
    from tidb_pipeline.defs.tables import table_names
    from tidb_pipeline.lab.env import applied, pipeline_env
    from tidb_pipeline.lab.snapshot import MariaDBSnapshotSource
    from tidb_pipeline.replication.ticdc_schema import tso_from_ms
    from tidb_pipeline.resources.kafka import KafkaResource
    from tidb_pipeline.workload import gotpc
    from tidb_pipeline.workload.schema import CDC_KEYS

    suffix = uuid.uuid4().hex[:6]
    db = f"prod_{suffix}"
    config = _write_config(work / "e2e.yaml", [{"db": db, "table": t, "key": list(k)} for t, k in CDC_KEYS.items()],
                           f"E2E_{suffix.upper()}", f"bench-prod-{suffix}")
    windows: list[Window] = []
    with applied(pipeline_env(settings)):
        conn_kwargs = {"host": os.environ["TIDB_HOST"], "port": int(os.environ["TIDB_PORT"]),
                       "user": os.environ["TIDB_USER"], "password": os.environ["TIDB_PASSWORD"]}
        with pymysql.connect(autocommit=True, **conn_kwargs) as conn, conn.cursor() as c:
            c.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        _say(f"go-tpc tpcc prepare (1 warehouse) into {db}")
        gotpc.prepare(conn_kwargs, database=db, warehouses=1, threads=threads)
        import snowflake.connector

        from tidb_pipeline.lab.snowflake import connection_args

        with snowflake.connector.connect(**connection_args(settings)) as sf:
            sf.cursor().execute(f'CREATE DATABASE IF NOT EXISTS "{DATABASE}"')
        defs = build_defs(config=config)
        _say("backfill job: snapshot, replicas, changefeed from that point")
        run = build_backfill_job(config=config, snapshot_source=MariaDBSnapshotSource.from_tidb).execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), resources=defs.resources or {}, raise_on_error=False)
        if not run.success:
            raise RuntimeError(f"the backfill job failed (run {run.run_id})")
        kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap)
        names = [table_names(config, t) for t in config.tables]
        topics = [n.topic for n in names]
        poller = Poller(settings, names[0].watermarks.sql).start()
        daemon = Daemon(settings, work / "e2e.yaml", work / "dagster_home_e2e")
        instance = daemon.instance()
        try:
            _say(f"dagster-daemon (pid {daemon.proc.pid}): first sensor tick after {daemon.wait_ready():.0f}s")
            _say(f"warm-up: go-tpc at 25% for {WARMUP_SECONDS}s, merged before the measured windows")
            _paced_gotpc(conn_kwargs, db, WARMUP_SECONDS, 0.25, threads, nice)
            _wait_merged(poller, config, kafka, daemon)
            for fraction in fractions:
                before = _end_offsets(kafka, topics)
                load_before = os.getloadavg()
                _say(f"go-tpc at {fraction:.0%} of its full rate for {seconds:.0f}s (daemon pid {daemon.proc.pid})")
                start = time.time()
                result = _paced_gotpc(conn_kwargs, db, seconds, fraction, threads, nice)
                end = time.time()
                daemon.check()
                with defs.resources["ticdc"].get_client() as client:  # type: ignore[index]
                    while client.get_status(config.source.changefeed_id).checkpoint_ts < tso_from_ms(int(end * 1000)):
                        time.sleep(0.5)
                _wait_merged(poller, config, kafka, daemon)
                load_after = os.getloadavg()
                after = _end_offsets(kafka, topics)
                changes = sum(o - before.get(t, {}).get(p, 0) for t, parts in after.items() for p, o in parts.items())
                total, feed, pipe = _measure(settings, poller, config, start, end, by_commit=True)
                runs, delays = _runs(instance, start, end)
                w = Window(f"go-tpc {fraction:.0%}", "end to end", f"{fraction:.0%} of go-tpc's full rate",
                           end - start, changes, changes / (end - start), len(total), *_stats(total),
                           feed=_stats(feed), pipeline=_stats(pipe), tpmc=result.tpmc, runs=len(runs),
                           run_seconds_median=percentile(runs, 50) if runs else 0.0,
                           launch_seconds_median=percentile(delays, 50) if delays else 0.0, load_before=load_before,
                           load_after=load_after, latencies=total, nice=nice)
                _say(_line(w))
                windows.append(w)
        finally:
            daemon.stop()
            poller.stop()
            with contextlib.suppress(Exception), defs.resources["ticdc"].get_client() as client:  # type: ignore[index]
                client.delete(config.source.changefeed_id)
    return windows, topics


def _line(w: Window) -> str:
    text = (f"{w.label}: {w.changes:,} changes in {w.seconds:.0f}s ({w.rate:,.0f}/s), p50/p95/max "
            f"{w.p50:.1f}/{w.p95:.1f}/{w.max:.1f}s over {w.rows:,} rows")
    if w.kind == "end to end":
        text += (f" = feed {w.feed[0]:.1f}/{w.feed[1]:.1f}/{w.feed[2]:.1f}s + pipeline "
                 f"{w.pipeline[0]:.1f}/{w.pipeline[1]:.1f}/{w.pipeline[2]:.1f}s; tpmC {w.tpmc:,.0f}")
        if w.nice:
            text += f" (go-tpc and MariaDB under nice {w.nice}, unthrottled: lab only, TiDB has its own machines)"
    if w.drained_rate:
        text += f"; drained at {w.drained_rate:,.0f}/s"
    return text + (f"; {w.runs} runs (median {w.run_seconds_median:.1f}s, launched {w.launch_seconds_median:.1f}s "
                   f"after the request); load {w.load_before[0]:.1f} -> {w.load_after[0]:.1f}")


def _recorded(settings: LabSettings, topics: list[str]) -> list[tuple[str, int, bytes | None, bytes | None]]:
    """Every record of the recorded topics: (topic, partition, key, value), in offset order per partition."""
    from confluent_kafka import Consumer, TopicPartition

    from tidb_pipeline.resources.kafka import KafkaResource

    end = KafkaResource(bootstrap_servers=settings.kafka_bootstrap).end_offsets(topics)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"replay-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    out: list[tuple[str, int, bytes | None, bytes | None]] = []
    try:
        left = {(t, p): o for t, parts in end.items() for p, o in parts.items() if o > 0}
        consumer.assign([TopicPartition(t, p, 0) for t, p in left])
        while left:
            for m in consumer.consume(10_000, 1.0):
                if m.error() is not None or (m.topic(), m.partition()) not in left:
                    continue
                out.append((m.topic(), m.partition(), m.key(), m.value()))
                if m.offset() + 1 >= left[m.topic(), m.partition()]:
                    del left[m.topic(), m.partition()]
    finally:
        consumer.close()
    return out


def _copy_schemas(settings: LabSettings, source: str, target: str) -> dict[bytes, bytes]:
    """Register the source topic's schemas under the target's subjects; wire header old -> new."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    registry = SchemaRegistryClient({"url": settings.registry_url})
    headers = {}
    for part in ("key", "value"):
        for version in registry.get_versions(f"{source}-{part}"):
            reg = registry.get_version(f"{source}-{part}", version)
            new = registry.register_schema(f"{target}-{part}", Schema(reg.schema.schema_str, "AVRO"))
            headers[b"\x00" + reg.schema_id.to_bytes(4, "big")] = b"\x00" + new.to_bytes(4, "big")
    return headers


def _produce(settings: LabSettings, records: list[tuple[str, int, bytes | None, bytes | None]],
             topic_of: dict[str, str], headers: dict[bytes, bytes], rate: float, seconds: float) -> tuple[int, float]:
    """Copy `records` (cycling) at `rate` records/s for `seconds`; returns (records, seconds taken)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 20,
                         "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 2_097_152})

    def fix(data: bytes | None) -> bytes | None:
        if data is None:
            return None
        new = headers.get(data[:5])
        return data if new is None or new == data[:5] else new + data[5:]

    total = int(rate * seconds)
    start = time.monotonic()
    slice_n = max(1, int(rate / 100))  # produce in 10 ms slices
    sent = 0
    while sent < total:
        due = start + sent / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        for _ in range(min(slice_n, total - sent)):
            topic, p, key, value = records[sent % len(records)]
            while True:
                try:
                    producer.produce(topic_of[topic], key=fix(key), value=fix(value), partition=p)
                    break
                except BufferError:
                    producer.poll(0.01)
            sent += 1
        producer.poll(0)
    producer.flush(300)
    return sent, time.monotonic() - start


def pipeline_alone(settings: LabSettings, work: Path, recorded_topics: list[str], rates: list[float],
                   seconds: float, parallel_tables: int | None = None) -> list[Window]:
    """Part 2: replay the recorded topics at each rate into fresh topics, the daemon landing and merging them."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from tidb_pipeline.defs.tables import table_names
    from tidb_pipeline.resources.kafka import KafkaResource
    from tidb_pipeline.workload.schema import CDC_KEYS

    records = _recorded(settings, recorded_topics)
    recorded_topics = sorted({r[0] for r in records})  # topics that never had a record have no schemas either
    _say(f"recorded {len(records):,} TiCDC records in {len(recorded_topics)} topics")
    if not records:
        raise RuntimeError("nothing recorded to replay")
    suffix = uuid.uuid4().hex[:6]
    table_of = {t: t.rsplit("_", 1)[-1] for t in recorded_topics}
    for topic in recorded_topics:  # table names with underscores (order_line, new_order)
        for name in CDC_KEYS:
            if topic.endswith("_" + name):
                table_of[topic] = name
    # Rate 0 is the warm-up (WARMUP_RATE for WARMUP_SECONDS), never a window.
    dbs = {rate: f"replay_{int(rate)}_{suffix}" for rate in [0.0, *rates]}
    tables = [{"db": dbs[r], "table": table_of[t], "key": list(CDC_KEYS[table_of[t]]),
               "replica_table": f"R{int(r)}_{table_of[t]}".upper()} for r in dbs for t in recorded_topics]
    config = _write_config(work / "replay.yaml", tables, f"REPLAY_{suffix.upper()}", f"bench-replay-{suffix}")
    names = {(t.db, t.table): table_names(config, t) for t in config.tables}
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for n in names.values():
        admin.create_topics([NewTopic(n.topic, config.source.partitions, 1)])[n.topic].result(timeout=60)
    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap)
    poller = Poller(settings, next(iter(names.values())).watermarks.sql).start()
    daemon = Daemon(settings, work / "replay.yaml", work / "dagster_home_replay", parallel_tables)
    instance = daemon.instance()
    windows: list[Window] = []
    try:
        _say(f"dagster-daemon (pid {daemon.proc.pid}): first sensor tick after {daemon.wait_ready():.0f}s")
        for rate in [0.0, *rates]:
            topic_of = {t: names[dbs[rate], table_of[t]].topic for t in recorded_topics}
            headers: dict[bytes, bytes] = {}
            for source, target in topic_of.items():
                headers.update(_copy_schemas(settings, source, target))
            load_before = os.getloadavg()
            _say(f"replaying at {rate:,.0f} changes/s for {seconds:.0f}s" if rate else
                 f"warm-up: {WARMUP_RATE:,} changes/s for {WARMUP_SECONDS}s, merged before the measured windows")
            start = time.time()
            sent, took = _produce(settings, records, topic_of, headers, rate or WARMUP_RATE,
                                  seconds if rate else WARMUP_SECONDS)
            end = time.time()
            sub_config = config.model_copy(update={"tables": [t for t in config.tables if t.db == dbs[rate]]})
            _wait_merged(poller, sub_config, kafka, daemon)
            if not rate:
                continue
            drained = time.time() - start  # within POLL_S of the last watermark move
            load_after = os.getloadavg()
            total, _, _ = _measure(settings, poller, sub_config, start - 1, end + 1, by_commit=False)
            runs, delays = _runs(instance, start, end)
            w = Window(f"replay {rate:,.0f}/s", "pipeline alone", f"{rate:,.0f} changes/s", took, sent, sent / took,
                       len(total), *_stats(total), runs=len(runs),
                       run_seconds_median=percentile(runs, 50) if runs else 0.0,
                       launch_seconds_median=percentile(delays, 50) if delays else 0.0, load_before=load_before,
                       load_after=load_after, latencies=total, drained_rate=sent / drained)
            _say(_line(w))
            windows.append(w)
            # The rates (up to 50k/s) always run, so the curve shows where it bends; beyond them only
            # while p95 stays within 10 s and the producer keeps up.
            if rate >= 50_000 and (w.p95 > 10 or sent / took < 0.9 * rate):
                _say(f"falls behind at {rate:,.0f}/s (p95 {w.p95:.1f}s, produced {sent / took:,.0f}/s): stopping")
                break
    finally:
        daemon.stop()
        poller.stop()
    return windows


def run(seconds: float, fractions: list[float], threads: int, replay_rates: list[float],
        replay_seconds: float, recorded: list[str] | None = None, parallel_tables: int | None = None,
        nice: int = 0) -> list[Window]:
    """Both parts on this checkout's lab (started if needed); the windows in order."""
    from tidb_pipeline.lab import stack
    from tidb_pipeline.lab.service import up

    settings = LabSettings()
    up(stack.services(settings, ["mariadb", "kafka", "registry", "snowflake", "ticdc"]), log=_say)
    work = Path(tempfile.mkdtemp(prefix="tidb-pipeline-production-"))
    _say(f"work folder {work} (daemon logs, configs)")
    windows, topics = ([], recorded) if recorded else end_to_end(settings, work, fractions, seconds, threads, nice)
    if replay_rates:
        windows += pipeline_alone(settings, work, topics, replay_rates, replay_seconds, parallel_tables)
    return windows


def measures(windows: list[Window]) -> list[Any]:
    """The windows as `bench` report lines: each p95 beside the sensor interval and the target."""
    from tidb_pipeline.bench.report import Measure

    out = []
    for w in windows:
        load = f"load average {w.load_before[0]:.1f} -> {w.load_after[0]:.1f}"
        note = (f"{w.changes:,} changes at {w.rate:,.0f}/s; p50 {w.p50:.1f}s, max {w.max:.1f}s; {w.runs} runs "
                f"(median {w.run_seconds_median:.1f}s, launched {w.launch_seconds_median:.1f}s after the request); "
                f"{w.rows:,} rows measured; {load}")
        if w.kind == "end to end":
            note += (f"; tpmC {w.tpmc:,.0f}; feed p50/p95/max {w.feed[0]:.1f}/{w.feed[1]:.1f}/{w.feed[2]:.1f}s, "
                     f"pipeline {w.pipeline[0]:.1f}/{w.pipeline[1]:.1f}/{w.pipeline[2]:.1f}s")
            if w.nice:
                note += f"; go-tpc and MariaDB under nice {w.nice} (lab only), unthrottled"
        out.append(Measure("freshness at production rates", f"{w.kind}, {w.target}: p95", w.p95, "s",
                           "sensor interval", 5.0, target="<= 10 s", met=w.p95 <= 10, note=note))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Freshness at production rates: go-tpc end to end, pipeline alone")
    parser.add_argument("--seconds", type=float, default=120, help="go-tpc seconds per fraction")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.5, 1.0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--replay-rates", type=float, nargs="*", default=[1000, 5000, 20000, 50000, 100000])
    parser.add_argument("--replay-seconds", type=float, default=60)
    parser.add_argument("--out", type=Path, default=_REPO / "benchmarks" / "production.json")
    parser.add_argument("--recorded", nargs="*", metavar="TOPIC",
                        help="replay these TiCDC topics (recorded by an earlier run) and skip the end-to-end part")
    parser.add_argument("--parallel-tables", type=int, metavar="N",
                        help="SNOWFLAKE_PARALLEL_TABLES for the replay's daemon instead of the lab's 1 (paired runs)")
    parser.add_argument("--nice-workload", type=int, default=0, metavar="N",
                        help="go-tpc and the lab MariaDB under nice N during the go-tpc windows (lab only: in "
                             "production TiDB has its own machines); go-tpc stays unthrottled")
    args = parser.parse_args(argv)
    # A SIGTERM (timeout, kill) unwinds like Ctrl-C, so the daemon this started is stopped with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    windows = run(args.seconds, args.fractions, args.threads, args.replay_rates, args.replay_seconds, args.recorded,
                  args.parallel_tables, args.nice_workload)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m tidb_pipeline.bench.production " + " ".join(sys.argv[1:] if argv is None else argv),
        "windows": [{**asdict(w), "latencies": None} for w in windows]}, indent=2))
    charts(windows, args.out.parent)
    for w in windows:
        print(_line(w))
    return 0


def charts(windows: list[Window], folder: Path) -> Path:
    """freshness_production.png: p50/p95/max per window, end to end split feed / pipeline, and replay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    e2e = [w for w in windows if w.kind == "end to end"]
    alone = [w for w in windows if w.kind == "pipeline alone"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    if e2e:
        x = range(len(e2e))
        left.bar([i - 0.2 for i in x], [w.feed[1] for w in e2e], 0.4, label="p95 feed (commit -> Kafka)")
        left.bar([i - 0.2 for i in x], [w.pipeline[1] for w in e2e], 0.4, bottom=[w.feed[1] for w in e2e],
                 label="p95 pipeline (Kafka -> replica)")
        left.bar([i + 0.2 for i in x], [w.p95 for w in e2e], 0.4, label="p95 end to end", color="tab:red")
        left.plot([i + 0.2 for i in x], [w.max for w in e2e], "k^", label="max")
        left.plot([i + 0.2 for i in x], [w.p50 for w in e2e], "wo", markeredgecolor="k", label="p50")
        left.axhline(10, color="gray", linestyle="--", label="target p95 10 s")
        left.set_xticks(list(x), [f"{w.label}\n{w.rate:,.0f} changes/s" for w in e2e])
        left.set_ylabel("seconds")
        left.set_title("go-tpc commit -> row in the replica (real daemon)")
        left.legend(fontsize=7)
    if alone:
        rates = [w.rate for w in alone]
        right.plot(rates, [w.p95 for w in alone], "o-", color="tab:red", label="p95")
        right.plot(rates, [w.p50 for w in alone], "o-", label="p50")
        right.plot(rates, [w.max for w in alone], "^--", color="k", label="max")
        right.axhline(10, color="gray", linestyle="--", label="target p95 10 s")
        right.axvline(20_000, color="gray", linestyle=":", label="target 20k changes/s")
        right.set_xscale("log")
        right.set_xlabel("replayed changes/s (achieved)")
        right.set_ylabel("Kafka -> row in the replica, seconds")
        right.set_title("pipeline alone, recorded TiCDC topics replayed")
        right.legend(fontsize=7)
    fig.tight_layout()
    path = folder / "freshness_production.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
