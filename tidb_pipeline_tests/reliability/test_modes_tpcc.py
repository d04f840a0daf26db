"""soft_delete and history replicas after a TPC-C run, against a model taken from the source's own history.

The project's TPC-C driver (sub-warehouse scale) runs a bounded number of transactions: New-Order inserts
`new_order` rows and bumps `district.d_next_o_id`, Payment updates `district.d_ytd`, Delivery deletes
`new_order` rows. `new_order` and `district` are replicated in soft_delete and history mode. The model does
not come from the lab change feed: MariaDB triggers, created before the load, append every row change of
the two tables with its values to an audit table (another schema, AUTO_INCREMENT order) in the writing
transaction, so rolled back New-Orders leave nothing there either. One primary-key change (an UPDATE of
`no_o_id`) and a replay of earlier records (as TiCDC re-sends them after a restart) come before the final
merge. Then, per table: the soft_delete replica is every key ever seen with its last values, `_DELETED`
exactly for the keys gone at the end; the history replica's versions of each key, in `_COMMIT_TS` order, are
that key's audit sequence (op and values), each once; the current / not-deleted rows are the source table.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.replication.ddl import TableRef
from tidb_pipeline.replication.mode_columns import HISTORY, SOFT_DELETE
from tidb_pipeline.resources.tidb import quote_mysql
from tidb_pipeline.workload import tpcc
from tidb_pipeline_tests.reliability.support import (
    Target,
    assert_landed_exactly_once,
    delete_changefeed,
    kafka_of,
    land,
    merge,
    mysql_kwargs,
    source_columns,
    start_changefeed,
    wait_for_checkpoint,
    warehouse,
)
from tidb_pipeline_tests.reliability.test_modes_end_to_end import expected_history, expected_soft_delete, replay_records

pytestmark = pytest.mark.integration

KEYS: dict[str, tuple[str, ...]] = {"new_order": ("no_w_id", "no_d_id", "no_o_id"), "district": ("d_w_id", "d_id")}
SCALE = 0.01  # 10 districts, 90 new_order rows after the load
Change = tuple[tuple[Any, ...], str, tuple[Any, ...] | None]  # (key, c/u/d, values in table order)


@dataclass(frozen=True)
class TpccFeed:
    settings: LabSettings
    config: PipelineConfig
    db: str
    audit: str


def create_audit(cur: Any, db: str, audit: str, table: str, key: tuple[str, ...]) -> None:
    """`audit`.`table` and the AFTER INSERT/UPDATE/DELETE triggers that append each row change to it.

    An update records the old key too (a key change is a delete and an insert to TiCDC). An UPDATE that
    changes nothing is not in the binlog, so its trigger records nothing either.
    """
    q = quote_mysql
    cur.execute("SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                "AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (db, table))
    cols: list[tuple[str, str]] = [(str(n), str(t)) for n, t in cur.fetchall()]
    types = dict(cols)
    cur.execute(f"CREATE TABLE {q(audit)}.{q(table)} (seq BIGINT AUTO_INCREMENT PRIMARY KEY, op CHAR(1) NOT NULL, "
                + ", ".join([*(f"{q('old_' + k)} {types[k]} NULL" for k in key),
                             *(f"{q(n)} {t} NULL" for n, t in cols)]) + ")")
    names = ", ".join(["op", *(q("old_" + k) for k in key), *(q(n) for n, _ in cols)])
    for event, op, old, new in (("INSERT", "c", None, "NEW"), ("UPDATE", "u", "OLD", "NEW"), ("DELETE", "d", "OLD", "OLD")):
        values = ", ".join([f"'{op}'", *(f"{old}.{q(k)}" if old else "NULL" for k in key),
                            *(f"{new}.{q(n)}" for n, _ in cols)])
        stmt = f"INSERT INTO {q(audit)}.{q(table)} ({names}) VALUES ({values});"
        if event == "UPDATE":
            stmt = f"IF NOT ({' AND '.join(f'OLD.{q(n)} <=> NEW.{q(n)}' for n, _ in cols)}) THEN {stmt} END IF;"
        cur.execute(f"CREATE TRIGGER {q(db)}.{q(f'{table}_audit_{event.lower()}')} AFTER {event} ON "
                    f"{q(db)}.{q(table)} FOR EACH ROW BEGIN {stmt} END")


def audit_changes(conn: pymysql.Connection, audit: str, table: str, key: tuple[str, ...]) -> list[Change]:
    """The audit sequence as the changes TiCDC emits: a key change becomes a delete and an insert."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {quote_mysql(audit)}.{quote_mysql(table)} ORDER BY seq")
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    out: list[Change] = []
    at = [names.index(k) for k in key]
    for row in rows:
        op, old, values = row[1], tuple(row[2:2 + len(key)]), tuple(row[2 + len(key):])
        new = tuple(row[i] for i in at)
        if op == "c":
            out.append((new, "c", values))
        elif op == "d":
            out.append((old, "d", None))
        elif old != new:
            out += [(old, "d", None), (new, "c", values)]
        else:
            out.append((new, "u", values))
    return out


@pytest.fixture(scope="module")
def tpcc_feed(lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service,
              ticdc: Service) -> Iterator[TpccFeed]:
    suffix = uuid.uuid4().hex[:6]
    db, audit = f"modes_tpcc_{suffix}", f"modes_tpcc_{suffix}_audit"
    config = parse_config({"source": {"changefeed_id": f"modes-tpcc-{suffix}"},
                           "snowflake": {"database": f"MODES_TPCC_{suffix.upper()}"},
                           "retries": {"max_retries": 0},
                           "tables": [{"db": db, "table": t, "key": list(k)} for t, k in KEYS.items()]})
    with pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn:
        tpcc.create_tables(conn, db)  # empty: the load below goes through the feed and the triggers
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {quote_mysql(audit)}")
            for table, key in KEYS.items():
                create_audit(cur, db, audit, table, key)
    start_changefeed(lab_settings, config)
    try:
        yield TpccFeed(lab_settings, config, db, audit)
    finally:
        try:
            delete_changefeed(lab_settings, config.source.changefeed_id)
        finally:
            with pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn, conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {quote_mysql(db)}")
                cur.execute(f"DROP DATABASE IF EXISTS {quote_mysql(audit)}")


def _run(feed: TpccFeed, transactions: int, seed: int) -> tpcc.RunSummary:
    # duration_s only bounds a hung run; the count ends it.
    summary = tpcc.run(mysql_kwargs(feed.settings), database=feed.db, duration_s=600, threads=2, seed=seed,
                       transactions=transactions)
    assert summary.completed + summary.errors == transactions and not summary.errors, summary.error_samples
    return summary


def _catch_up_and_merge(feed: TpccFeed, sf: Any, targets: dict[str, dict[str, Target]]) -> None:
    wait_for_checkpoint(feed.settings, feed.config.source.changefeed_id)
    for by_mode in targets.values():
        land(feed.settings, sf, by_mode[SOFT_DELETE])
        for mode, target in by_mode.items():
            merge(feed.settings, sf, target, mode=mode)


def test_soft_delete_and_history_equal_the_source_audit_after_tpcc_with_a_key_change_and_a_replay(
    tpcc_feed: TpccFeed,
) -> None:
    feed = tpcc_feed
    database = feed.config.snowflake.database
    targets: dict[str, dict[str, Target]] = {}
    for t in feed.config.tables:
        base = Target.fresh(feed.config.topic(t), database, t.table.upper())
        targets[t.table] = {SOFT_DELETE: base, HISTORY: dataclasses.replace(
            base, replica=TableRef(base.replica.schema, "HISTORY", database))}
    topics = [feed.config.topic(t) for t in feed.config.tables]
    kw = mysql_kwargs(feed.settings)
    with warehouse(feed.settings) as sf, pymysql.connect(autocommit=True, **kw) as conn:
        sf.cursor().execute(f'CREATE DATABASE IF NOT EXISTS "{database}"')
        tpcc.prepare(kw, database=feed.db, warehouses=1, scale=SCALE, seed=3)
        _run(feed, 200, seed=5)
        _catch_up_and_merge(feed, sf, targets)

        replay_from = kafka_of(feed.settings).end_offsets(topics)
        # A primary-key change: TiCDC sends a delete of the old key and an insert of the new one.
        with conn.cursor() as cur:
            changed = cur.execute(
                f"UPDATE {quote_mysql(feed.db)}.new_order SET no_o_id = no_o_id + 1000000 "
                "WHERE no_w_id = 1 AND no_d_id = 2 ORDER BY no_o_id DESC LIMIT 1")
            assert changed == 1
        _run(feed, 100, seed=6)
        wait_for_checkpoint(feed.settings, feed.config.source.changefeed_id)
        replayed = {topic: replay_records(feed.settings, topic, replay_from[topic]) for topic in topics}
        assert all(replayed.values()), replayed
        _run(feed, 30, seed=7)
        _catch_up_and_merge(feed, sf, targets)
        end = kafka_of(feed.settings).end_offsets(topics)
        for t in feed.config.tables:
            assert_landed_exactly_once(sf, targets[t.table][SOFT_DELETE].landing, end[feed.config.topic(t)])

        ops: dict[str, int] = {}
        for table, key in KEYS.items():
            columns = source_columns(feed.settings, feed.db, table)
            changes = audit_changes(conn, feed.audit, table, key)
            for _, op, _ in changes:
                ops[f"{table}:{op}"] = ops.get(f"{table}:{op}", 0) + 1
            with conn.cursor() as cur:
                cur.execute(f"SELECT * FROM {quote_mysql(feed.db)}.{quote_mysql(table)}")
                source = {tuple(r) for r in cur.fetchall()}
            cols = ", ".join(f'"{c}"' for c in columns)
            keys = ", ".join(f'"{k}"' for k in key)
            cur = sf.cursor()

            # soft_delete: every key ever written, its last values, `_DELETED` exactly for the keys gone now.
            cur.execute(f'SELECT {cols}, "_DELETED" FROM {targets[table][SOFT_DELETE].replica.sql}')
            soft = {tuple(r[columns.index(k)] for k in key): (tuple(r[:-1]), r[-1]) for r in cur.fetchall()}
            assert soft == expected_soft_delete(changes), table  # type: ignore[arg-type]
            assert {v for v, gone in soft.values() if not gone} == source, table

            # history: each key's versions in commit order are its audit sequence, each once.
            cur.execute(f'SELECT {keys}, "_OP", {cols}, "_COMMIT_TS", "_IS_CURRENT" FROM '
                        f'{targets[table][HISTORY].replica.sql} ORDER BY {keys}, "_COMMIT_TS", ("_OP" = \'d\')')
            rows = [tuple(r) for r in cur.fetchall()]
            n = len(key)
            got = [(r[:n], r[n], None if r[n] == "d" else r[n + 1:n + 1 + len(columns)]) for r in rows]
            assert got == expected_history(changes), table  # type: ignore[arg-type]
            assert len({(r[:n], r[-2], r[n]) for r in rows}) == len(rows), f"{table}: duplicate versions"
            assert {r[n + 1:n + 1 + len(columns)] for r in rows if r[-1]} == source, table
        # The run did what the test is about: Delivery deleted new_order rows (besides the key change's
        # delete), New-Order and Payment updated district rows.
        assert ops["new_order:d"] > 1 and ops["district:u"] > 10, ops
