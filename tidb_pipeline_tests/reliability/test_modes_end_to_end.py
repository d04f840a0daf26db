"""soft_delete and history replicas on the lab, against a model computed from the statements the test ran.

One table (TPC-C's order shape, small) with a changefeed through the lab's TiCDC stand-in. The test runs
seeded inserts, updates, deletes, primary-key changes and re-inserts of deleted keys, recording each
statement's effect, then 1,000 updates of one hot key with no merge in between. Then a replay: the records
from an earlier point arrive again at higher offsets, byte for byte (same commit TSOs, later Kafka
timestamps), as TiCDC re-sends them after a restart. The test re-produces them itself: the lab's change feed
gives a replayed transaction a new TSO (it derives TSOs from MariaDB's one-second binlog timestamps), where
TiDB's commit ts belongs to the transaction. Both replicas merge from one landing table. The whole soft_delete
table, the whole history (versions in commit order, each valid until the next) and the checks' view of each
(the content check's chunk checksums over the rows that stand for the source) are compared with the model;
the soft-deleted count is in the checks' metadata.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pymysql
import pytest

from tidb_pipeline.config import TableConfig
from tidb_pipeline.defs.check_results import CheckSettings, compare_content
from tidb_pipeline.defs.checks import mode_metadata
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.replication.ddl import TableRef
from tidb_pipeline.replication.mode_columns import HISTORY, SOFT_DELETE
from tidb_pipeline.resources.tidb import TiDBResource, quote_mysql
from tidb_pipeline.resources.warehouse import Warehouse
from tidb_pipeline_tests.reliability.support import (
    Feed,
    Target,
    assert_landed_exactly_once,
    kafka_of,
    land,
    merge,
    mysql_kwargs,
    table_feed,
    wait_for_checkpoint,
    warehouse,
)
from tidb_pipeline_tests.reliability.test_crash_anywhere import current_rows_table

pytestmark = pytest.mark.integration

ORDERS_DDL = ("CREATE TABLE {t} (o_id INT NOT NULL PRIMARY KEY, o_c_id INT NOT NULL, o_carrier_id INT NULL, "
              "o_amount DECIMAL(10,2) NOT NULL)")
HOT_KEY, HOT_UPDATES = 1, 1000
Row = tuple[int, int | None, Decimal]


class Recorder:
    """Runs the workload's statements and records what each did: the model of both replicas."""

    def __init__(self, conn: pymysql.Connection, table: str) -> None:
        self.conn, self.t = conn, table
        self.rows: dict[int, Row] = {}
        self.changes: list[tuple[int, str, Row | None]] = []  # (key, c/u/d, values) in commit order

    def _run(self, sql: str, params: tuple[Any, ...]) -> None:
        with self.conn.cursor() as cur:
            assert cur.execute(sql, params) == 1, sql

    def insert(self, key: int, row: Row) -> None:
        self._run(f"INSERT INTO {self.t} VALUES (%s, %s, %s, %s)", (key, *row))
        self.rows[key] = row
        self.changes.append((key, "c", row))

    def update(self, key: int, carrier: int | None, amount: Decimal) -> None:
        self._run(f"UPDATE {self.t} SET o_carrier_id = %s, o_amount = %s WHERE o_id = %s", (carrier, amount, key))
        self.rows[key] = (self.rows[key][0], carrier, amount)
        self.changes.append((key, "u", self.rows[key]))

    def delete(self, key: int) -> None:
        self._run(f"DELETE FROM {self.t} WHERE o_id = %s", (key,))
        del self.rows[key]
        self.changes.append((key, "d", None))

    def change_key(self, old: int, new: int) -> None:
        """TiCDC splits it: a delete of the old key, an insert of the new one."""
        self._run(f"UPDATE {self.t} SET o_id = %s WHERE o_id = %s", (new, old))
        self.rows[new] = self.rows.pop(old)
        self.changes += [(old, "d", None), (new, "c", self.rows[new])]

    def workload(self, seed: int, changes: int) -> None:
        rnd = random.Random(seed)
        for _ in range(changes):
            live = sorted(k for k in self.rows if k != HOT_KEY)
            free = [k for k in range(2, 60) if k not in self.rows]
            roll = rnd.random()
            if roll < 0.35 or len(live) < 3:
                amount = Decimal(f"{rnd.randint(1, 9999)}.{rnd.randint(0, 99):02d}")
                self.insert(rnd.choice(free), (rnd.randint(1, 30), None, amount))
            elif roll < 0.65:
                carrier = rnd.choice([None, rnd.randint(1, 10)])
                self.update(rnd.choice(live), carrier, Decimal(f"{rnd.randint(1, 999)}.25"))
            elif roll < 0.88:
                self.delete(rnd.choice(live))
            else:
                self.change_key(rnd.choice(live), rnd.choice(free))


def expected_soft_delete(changes: list[tuple[int, str, Row | None]]) -> dict[int, tuple[Row, bool]]:
    out: dict[int, tuple[Row, bool]] = {}
    for key, op, row in changes:
        out[key] = (out[key][0], True) if row is None else (row, False)
    return out


def expected_history(changes: list[tuple[int, str, Row | None]]) -> list[tuple[int, str, Row | None]]:
    """Versions per key in commit order (a stable sort by key keeps each key's commit order)."""
    return sorted(changes, key=lambda c: c[0])


@pytest.fixture(scope="module")
def feed(lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service,
         ticdc: Service) -> Iterator[Feed]:
    with table_feed(lab_settings, "modes_e2e", ORDERS_DDL, table="orders", key=("o_id",)) as f:
        yield f


def _catch_up_and_merge(feed: Feed, sf: Any, targets: dict[str, Target]) -> None:
    wait_for_checkpoint(feed.settings, feed.changefeed_id)
    land(feed.settings, sf, next(iter(targets.values())))
    for mode, target in targets.items():
        merge(feed.settings, sf, target, mode=mode)


def _soft_delete_table(sf: Any, replica: TableRef) -> dict[int, tuple[Row, bool]]:
    cur = sf.cursor()
    cur.execute(f'SELECT "o_id", "o_c_id", "o_carrier_id", "o_amount", "_DELETED", "_DELETED_AT" FROM {replica.sql}')
    out = {}
    for key, c, carrier, amount, deleted, at in cur.fetchall():
        assert (at is not None) == deleted, (key, deleted, at)
        out[int(key)] = ((int(c), None if carrier is None else int(carrier), Decimal(amount)), deleted)
    return out


def _history_table(sf: Any, replica: TableRef) -> list[tuple]:
    cur = sf.cursor()
    cur.execute(f'SELECT "o_id", "_OP", "o_c_id", "o_carrier_id", "o_amount", "_COMMIT_TS", "_VALID_FROM", '
                f'"_VALID_TO", "_IS_CURRENT" FROM {replica.sql} ORDER BY "o_id", "_COMMIT_TS", ("_OP" = \'d\')')
    return [tuple(r) for r in cur.fetchall()]


def _content_check(feed: Feed, sf: Any, replica: TableRef, mode: str, source_rows: int) -> Any:
    kw = mysql_kwargs(feed.settings)
    tidb = TiDBResource(host=kw["host"], port=kw["port"], user=kw["user"], password=kw["password"])
    with pymysql.connect(**kw) as source_conn:
        return compare_content(
            tidb_conn=source_conn, snowflake_conn=sf, table=TableConfig(db=feed.db, table=feed.table), replica=replica,
            key=("o_id",), source_columns=tidb.columns(feed.db, feed.table), source_rows=source_rows,
            settings=CheckSettings(), mode=mode)


def test_soft_delete_and_history_equal_the_model_after_deletes_key_changes_a_hot_key_and_a_replay(
    feed: Feed, lab_settings: LabSettings,
) -> None:
    base = Target.fresh(feed.topic, feed.config.snowflake.database, "MODES")
    targets = {SOFT_DELETE: base, HISTORY: dataclasses.replace(
        base, replica=TableRef(base.replica.schema, "HISTORY", base.replica.database))}
    t = f"{quote_mysql(feed.db)}.{quote_mysql(feed.table)}"
    with warehouse(lab_settings) as sf, feed.connect() as conn:
        sf.cursor().execute(f'CREATE DATABASE IF NOT EXISTS "{feed.config.snowflake.database}"')
        rec = Recorder(conn, t)
        rec.insert(HOT_KEY, (1, None, Decimal("0.00")))
        rec.workload(seed=11, changes=60)
        _catch_up_and_merge(feed, sf, targets)

        replay_from = kafka_of(lab_settings).end_offsets([feed.topic])[feed.topic]
        rec.workload(seed=12, changes=60)
        for i in range(1, HOT_UPDATES + 1):  # no merge in between: one batch holds all of them
            rec.update(HOT_KEY, i % 10, Decimal(f"{i}.00"))
        rec.workload(seed=13, changes=20)
        wait_for_checkpoint(feed.settings, feed.changefeed_id)
        # The replay: everything after `replay_from` arrives a second time.
        before = sum(kafka_of(lab_settings).end_offsets([feed.topic])[feed.topic].values())
        replayed = replay_records(lab_settings, feed.topic, replay_from)
        assert replayed >= 60 + HOT_UPDATES + 20
        rec.workload(seed=14, changes=30)
        _catch_up_and_merge(feed, sf, targets)
        end = kafka_of(lab_settings).end_offsets([feed.topic])[feed.topic]
        assert sum(end.values()) >= before + replayed + 30
        assert_landed_exactly_once(sf, base.landing, end)

        # soft_delete: every key ever written, its last values, deleted or not.
        assert _soft_delete_table(sf, targets[SOFT_DELETE].replica) == expected_soft_delete(rec.changes)
        # history: every version once, in commit order, each valid until the next; the last one current.
        rows = _history_table(sf, targets[HISTORY].replica)
        got = [(int(k), op, None if op == "d" else (int(c), None if ca is None else int(ca), Decimal(a)))
               for k, op, c, ca, a, *_ in rows]
        assert got == expected_history(rec.changes)
        for row, nxt in zip(rows, [*rows[1:], None]):
            same_key = nxt is not None and nxt[0] == row[0]
            assert row[7] == (nxt[6] if same_key else None), row
            assert row[8] == (not same_key and row[1] != "d"), row
            if same_key:
                assert row[6] <= nxt[6], (row, nxt)
        hot = [r for r in rows if r[0] == HOT_KEY]
        assert [r[4] for r in hot] == [Decimal(f"{i}.00") for i in range(HOT_UPDATES + 1)]  # commit order

        # What the checks compare: the rows not deleted / the current versions, equal to the source.
        for mode, target in targets.items():
            copy = current_rows_table(sf, target.replica, mode)
            cur = sf.cursor()
            cur.execute(f'SELECT "o_id", "o_c_id", "o_carrier_id", "o_amount" FROM {copy.sql}')
            assert {int(k): (int(c), None if ca is None else int(ca), Decimal(a)) for k, c, ca, a in cur.fetchall()} \
                == rec.rows, mode
            comparison = _content_check(feed, sf, target.replica, mode, len(rec.rows))
            assert comparison.results and not comparison.differing, mode
        deleted = sum(1 for _, gone in expected_soft_delete(rec.changes).values() if gone)
        soft = mode_metadata(Warehouse.of(sf), targets[SOFT_DELETE].replica, SOFT_DELETE)
        assert soft["soft_deleted_rows"] == deleted
        assert mode_metadata(Warehouse.of(sf), targets[HISTORY].replica, HISTORY)["versions"] == len(rows)

        # The content check fails when a deleted row is revived in the replica behind the pipeline's back.
        gone = next(k for k, (_, d) in expected_soft_delete(rec.changes).items() if d)
        sf.cursor().execute(f'UPDATE {targets[SOFT_DELETE].replica.sql} SET "_DELETED" = FALSE WHERE "o_id" = %s',
                            (gone,))
        assert _content_check(feed, sf, targets[SOFT_DELETE].replica, SOFT_DELETE, len(rec.rows)).differing


def replay_records(settings: LabSettings, topic: str, start: dict[int, int]) -> int:
    """Produce every record of `topic` from offsets `start` to its end again, unchanged, to its partition."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    end = kafka_of(settings).end_offsets([topic])[topic]
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"replay-{time.time_ns()}",
                         "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
    sent = 0
    try:
        for p, stop in end.items():
            if start.get(p, 0) >= stop:
                continue
            consumer.assign([TopicPartition(topic, p, start.get(p, 0))])
            offset = start.get(p, 0)
            while offset < stop:
                msg = consumer.poll(10)
                if msg is None:
                    continue
                assert msg.error() is None, msg.error()
                producer.produce(topic, key=msg.key(), value=msg.value(), partition=p)
                offset = msg.offset() + 1
                sent += 1
        assert producer.flush(60) == 0, "the replayed records were not all acknowledged"
    finally:
        consumer.close()
    return sent
