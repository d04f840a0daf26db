"""Helpers shared by the reliability tests: a small source table fed through the lab change feed, the
pipeline's steps called the way their assets call them, and the two proofs (replica == source, landing
holds each offset once)."""

from __future__ import annotations

import os
import random
import re
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import snowflake.connector
from confluent_kafka.schema_registry import SchemaRegistryClient

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.engine.changefeed import desired_changefeed
from tidb_pipeline.engine.landing import DEAD_LETTER_TABLE, LANDED_OFFSETS_TABLE, LandingResult, load_topic
from tidb_pipeline.engine.replica import MergeOutcome, merge_replica
from tidb_pipeline.defs.tables import TableNames
from tidb_pipeline.lab import stack
from tidb_pipeline.lab.compare import TableComparison, compare_table
from tidb_pipeline.lab.service import down, port_open, up, wait_until
from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER, LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.replication.ddl import TableRef
from tidb_pipeline.replication.holes import OFFSET_GAPS_TABLE
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import TiCDCResource
from tidb_pipeline_tests.changefeed import wait_for_checkpoint  # the one wait (tidb_pipeline_tests/changefeed.py)
from tidb_pipeline.resources.tidb import quote_mysql
from tidb_pipeline.lab.ports import free_port


def mysql_kwargs(settings: LabSettings) -> dict[str, Any]:
    return {"host": settings.host, "port": settings.port("mariadb"), "user": LAB_DB_USER,
            "password": LAB_DB_PASSWORD}


def kafka_of(settings: LabSettings) -> KafkaResource:
    return KafkaResource(bootstrap_servers=settings.kafka_bootstrap, request_timeout_s=10)


def registry_of(settings: LabSettings) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": settings.registry_url})


@contextmanager
def warehouse(settings: LabSettings) -> Iterator[Any]:
    conn = snowflake.connector.connect(**connection_args(settings))
    try:
        yield conn
    finally:
        conn.close()




@contextmanager
def private_services(shared: LabSettings, root: Path, names: Sequence[str]) -> Iterator[LabSettings]:
    """Private instances of `names` on free ports under `root`; every other part stays the shared one.

    The reliability tests restart or own these, so other tests never see them go down; a private change
    feed also has its own process, so its capture does not queue behind everybody else's changefeeds.
    """
    settings = LabSettings(root=root, ports={**shared.ports, **{n: free_port() for n in names}})
    if "kafka" in names:
        settings.ports["kafka_controller"] = free_port()
        # Share the resolved Kafka jars instead of fetching them from Maven again.
        settings.root.mkdir(parents=True, exist_ok=True)
        (settings.root / "jars").symlink_to(shared.jars_dir, target_is_directory=True)
    parts = [stack.service(n, settings) for n in names]
    try:
        up(parts, log=lambda _m: None)
        yield settings
    finally:
        down(parts, log=lambda _m: None)


# --- the source side ------------------------------------------------------------------------------------


def start_changefeed(settings: LabSettings, config: PipelineConfig) -> None:
    desired = desired_changefeed(config, kafka_of(settings), SchemaRegistryResource(url=settings.registry_url))
    with TiCDCResource(url=settings.ticdc_url).get_client() as client:
        client.create(desired.changefeed_id, desired.sink_uri, desired.replica_config)


def delete_changefeed(settings: LabSettings, changefeed_id: str) -> None:
    with TiCDCResource(url=settings.ticdc_url).get_client() as client:
        client.delete(changefeed_id)


def restart(settings: LabSettings, name: str, *, kill: bool = False) -> None:
    """Stop a (private) lab part, gracefully or with SIGKILL, and start it again on the same data."""
    svc = stack.service(name, settings)
    pid = svc.pid()
    assert pid is not None, f"{name} of {settings.root} is not running"
    if kill:
        os.kill(pid, signal.SIGKILL)
        while svc.pid() is not None:
            time.sleep(0.05)
    else:
        svc.stop()
    wait_ports_closed(settings, [svc])
    up([svc], log=lambda _m: None)


def wait_ports_closed(settings: LabSettings, services: Sequence[Any]) -> None:
    """Until the stopped `services`' ports no longer answer: a process can be gone before the kernel has
    released its listening port, and a busy machine takes its time."""
    for svc in services:
        if svc.pid() is not None:
            continue
        for port in svc.ports():
            wait_until(lambda p=port: not port_open(settings.host, p), timeout=120,
                       what=f"{svc.name} port {port} closing")


ITEMS_DDL = (
    "CREATE TABLE {t} (id INT NOT NULL PRIMARY KEY, name VARCHAR(40) NOT NULL, qty INT NOT NULL, "
    "price DECIMAL(10,2) NOT NULL, note MEDIUMTEXT NULL, updated DATETIME(3) NULL)"
)


def write_history(conn: pymysql.Connection, db: str, table: str, *, seed: int, changes: int) -> int:
    """A seeded mix of inserts, updates, deletes and primary-key changes; returns the statements run.

    Each seed owns the keys `seed * 1_000_000 + 1 .. + 20_000`, so histories of different seeds can share a table.
    """
    rng = random.Random(seed)
    base = seed * 1_000_000
    t = f"{quote_mysql(db)}.{quote_mysql(table)}"
    live: set[int] = set()
    done = 0
    with conn.cursor() as cur:
        while done < changes:
            roll = rng.random()
            if roll < 0.4 or len(live) < 5:
                k = base + rng.randint(1, 10_000)
                if k in live:
                    continue
                cur.execute(f"INSERT INTO {t} VALUES (%s, %s, %s, %s, %s, NOW(3))",
                            (k, f"item-{k}", rng.randint(0, 99), f"{rng.randint(0, 99999) / 100:.2f}",
                             rng.choice([None, "fragile", "ünïcødé ✓", "quote ' \" back\\slash"])))
                live.add(k)
            elif roll < 0.75:
                k = rng.choice(sorted(live))
                cur.execute(f"UPDATE {t} SET qty = qty + 1, note = %s, updated = NOW(3) WHERE id = %s",
                            (rng.choice([None, f"v{done}"]), k))
            elif roll < 0.9:
                k = rng.choice(sorted(live))
                cur.execute(f"DELETE FROM {t} WHERE id = %s", (k,))
                live.discard(k)
            else:
                old, new = rng.choice(sorted(live)), base + rng.randint(10_001, 20_000)
                if new in live:
                    continue
                cur.execute(f"UPDATE {t} SET id = %s WHERE id = %s", (new, old))  # TiCDC: delete + insert
                live.discard(old)
                live.add(new)
            done += 1
    return done


# --- the pipeline's steps, as the assets run them -------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One table's place in the warehouse (a `TableNames` without the config)."""

    topic: str
    landing: TableRef
    replica: TableRef
    watermarks: TableRef
    control: TableRef

    @classmethod
    def of(cls, names: TableNames) -> Target:
        return cls(names.topic, names.landing, names.replica, names.watermarks, names.control)

    @classmethod
    def fresh(cls, topic: str, database: str, tag: str) -> Target:
        control = TableRef(f"PIPELINE_{tag}", "", database)
        return cls(topic, TableRef(f"LANDING_{tag}", topic.upper(), database),
                   TableRef(f"REPLICA_{tag}", "T", database), TableRef(control.schema, "MERGE_WATERMARKS", database),
                   control)

    @property
    def dead_letter(self) -> TableRef:
        return TableRef(self.control.schema, DEAD_LETTER_TABLE, self.control.database)


def land(settings: LabSettings, conn: Any, target: Target, *, max_records: int | None = None,
         registry: SchemaRegistryClient | None = None) -> LandingResult:
    return load_topic(kafka=kafka_of(settings), registry=registry or registry_of(settings), connection=conn,
                      topic=target.topic, landing=target.landing, control=target.control, max_records=max_records)


def merge(settings: LabSettings, conn: Any, target: Target, *, source: tuple[str, str] | None = None,
          mode: str = "replica") -> MergeOutcome | None:
    """Merge `target`; with `source` (db, table) its replica takes TiDB's column names, as the asset's does."""
    columns = None if source is None else (lambda: source_columns(settings, *source))
    return merge_replica(connection=conn, registry=registry_of(settings), topic=target.topic, landing=target.landing,
                         replica=target.replica, watermarks=target.watermarks, source_columns=columns,
                         dead_letters=target.dead_letter,
                         offset_gaps=TableRef(target.control.schema, OFFSET_GAPS_TABLE, target.control.database),
                         kafka=kafka_of(settings), mode=mode,
                         landed_offsets=TableRef(target.control.schema, LANDED_OFFSETS_TABLE, target.control.database))


def source_columns(settings: LabSettings, db: str, table: str) -> list[str]:
    """The table's column names in the lab's TiDB stand-in, in table order."""
    with pymysql.connect(**mysql_kwargs(settings)) as conn, conn.cursor() as cur:
        cur.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
                    "ORDER BY ORDINAL_POSITION", (db, table))
        return [r[0] for r in cur.fetchall()]


# --- the proofs ------------------------------------------------------------------------------------------


def landing_offsets(conn: Any, landing: TableRef) -> dict[int, list[int]]:
    """Every landed offset per partition, duplicates kept, sorted."""
    cur = conn.cursor()
    cur.execute(f'SELECT "RECORD_METADATA":"partition"::int, "RECORD_METADATA":"offset"::int FROM {landing.sql}')
    out: dict[int, list[int]] = {}
    for p, o in cur.fetchall():
        out.setdefault(int(p), []).append(int(o))
    return {p: sorted(os_) for p, os_ in sorted(out.items())}


def assert_landed_exactly_once(conn: Any, landing: TableRef, end_offsets: dict[int, int],
                               quarantined: dict[int, set[int]] | None = None) -> int:
    """Each (partition, offset) below Kafka's end is in the landing table exactly once (or quarantined)."""
    landed = landing_offsets(conn, landing)
    quarantined = quarantined or {}
    for p, end in end_offsets.items():
        expected = [o for o in range(end) if o not in quarantined.get(p, set())]
        got = landed.get(p, [])
        dupes = sorted({o for o in got if got.count(o) > 1})
        assert not dupes, f"partition {p}: offsets landed more than once: {dupes[:20]}"
        missing = sorted(set(expected) - set(got))
        assert not missing, f"partition {p}: offsets never landed: {missing[:20]}"
        assert got == expected, f"partition {p}: unexpected offsets {sorted(set(got) - set(expected))[:20]}"
    assert set(landed) <= set(end_offsets), f"landed partitions {sorted(landed)} beyond Kafka's {sorted(end_offsets)}"
    return sum(len(v) for v in landed.values())


def compare(settings: LabSettings, sf: Any, db: str, table: str, replica: TableRef, key: Sequence[str]) -> TableComparison:
    with pymysql.connect(**mysql_kwargs(settings)) as src:
        return compare_table(src, db, table, sf, replica, key)


def assert_replica_equals_source(settings: LabSettings, sf: Any, db: str, table: str, replica: TableRef,
                                 key: Sequence[str]) -> TableComparison:
    cmp = compare(settings, sf, db, table, replica, key)
    assert cmp.source_rows > 0, f"{cmp.source} is empty: the comparison would prove nothing"
    assert cmp.equal, f"{cmp.source} vs {cmp.replica}: {cmp}"
    return cmp


@dataclass(frozen=True)
class Feed:
    """A source table with a running changefeed into its topic."""

    settings: LabSettings  # the lab whose change feed runs it (a private one, usually)
    config: PipelineConfig
    db: str
    table: str

    @property
    def topic(self) -> str:
        return self.config.topic(self.config.tables[0])

    @property
    def changefeed_id(self) -> str:
        return self.config.source.changefeed_id

    def connect(self) -> pymysql.Connection:
        return pymysql.connect(autocommit=True, **mysql_kwargs(self.settings))

    def catch_up(self, stall_s: float = 300) -> None:
        wait_for_checkpoint(self.settings, self.changefeed_id, stall_s=stall_s)


@contextmanager
def table_feed(settings: LabSettings, prefix: str, ddl: str = ITEMS_DDL, table: str = "items",
               key: Sequence[str] = ("id",)) -> Iterator[Feed]:
    """Create `<prefix>_<random>`.`table` with `ddl` (`{t}` = the quoted name) and a changefeed for it."""
    suffix = uuid.uuid4().hex[:6]
    db = f"{prefix}_{suffix}"
    plain = re.sub(r"[^A-Za-z0-9]+", "-", prefix).strip("-")
    # One attempt per step: the trials inject failures and check what one attempt leaves behind (the step's
    # retry policy is tested in defs/test_retries.py).
    config = parse_config({"source": {"changefeed_id": f"{plain}-{suffix}"},
                           "snowflake": {"database": f"{plain.replace('-', '_').upper()}_{suffix.upper()}"},
                           "retries": {"max_retries": 0},
                           "tables": [{"db": db, "table": table, "key": list(key)}]})
    with pymysql.connect(autocommit=True, **mysql_kwargs(settings)) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {quote_mysql(db)}")
        cur.execute(ddl.format(t=f"{quote_mysql(db)}.{quote_mysql(table)}"))
    feed = Feed(settings, config, db, table)
    start_changefeed(settings, config)
    try:
        yield feed
    finally:
        try:
            delete_changefeed(settings, feed.changefeed_id)
        finally:
            with pymysql.connect(autocommit=True, **mysql_kwargs(settings)) as conn, conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {quote_mysql(db)}")
