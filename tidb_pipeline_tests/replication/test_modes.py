"""soft_delete and history replicas (`replication.modes`) against a model computed from the source's own history.

A small simulated source (`Source`) applies statements to a keyed table and emits TiCDC's records for them
(full rows with `_tidb_commit_ts`, tombstones for deletes, a primary-key change as tombstone + insert), spread
over partitions by key; `deliver` lands them, and `replay` lands a range of them again at higher offsets with
later record timestamps, as TiCDC does after a restart. Merges run between deliveries at chosen points. The
expected tables are computed from the statements alone and compared in full. Runs on in-process fakesnow.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from tidb_pipeline.replication import schema_changes as sc
from tidb_pipeline.replication.merge import run_merge
from tidb_pipeline.replication.mode_columns import HISTORY, REPLICA, SOFT_DELETE
from tidb_pipeline.replication.modes import (
    create_mode_replica_sql,
    current_rows_sql,
    run_history_merge,
    snapshot_mode_values,
    switch_statements,
)
from tidb_pipeline.resources.warehouse import Warehouse
from tidb_pipeline_tests.replication.support import NOW, Replica, fake_snowflake
from tidb_pipeline_tests.replication.test_merge import KEY, VALUE

BASE_MS = 1_780_000_000_000  # commit times of the simulated source: BASE_MS + 10 ms per transaction
PARTITIONS = 3
DELIVERY_LAG_MS = 40  # a record's Kafka timestamp: this long after its commit (longer than a transaction gap)


@dataclass
class Event:
    """One row change as TiCDC emits it: `value` None is a delete (a tombstone)."""

    key: int
    value: tuple[str, Decimal] | None
    commit_ts: int
    op: str


@dataclass
class Source:
    """The table `id BIGINT PRIMARY KEY, name TEXT NULL, price DECIMAL(10,2)` and its change records."""

    rows: dict[int, tuple[str | None, Decimal]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    tick: int = 0

    def _commit(self) -> int:
        self.tick += 1
        return (BASE_MS + 10 * self.tick) << 18

    def insert(self, key: int, name: str | None, price: str = "1.00") -> None:
        assert key not in self.rows
        self.rows[key] = (name, Decimal(price))
        self.events.append(Event(key, self.rows[key], self._commit(), "c"))

    def update(self, key: int, name: str | None, price: str = "1.00") -> None:
        self.rows[key] = (name, Decimal(price))
        self.events.append(Event(key, self.rows[key], self._commit(), "u"))

    def delete(self, key: int) -> None:
        del self.rows[key]
        self.events.append(Event(key, None, self._commit(), "d"))

    def truncate(self) -> int:
        """TRUNCATE TABLE: no record on the topic; a `t` event per live key stands for it in the models."""
        ts = self._commit()
        self.events += [Event(k, None, ts, "t") for k in sorted(self.rows)]
        self.rows.clear()
        return ts

    def change_key(self, old: int, new: int) -> None:
        """UPDATE of the primary key: TiCDC splits it into a delete of the old key and an insert of the new."""
        ts = self._commit()
        self.rows[new] = self.rows.pop(old)
        self.events += [Event(old, None, ts, "d"), Event(new, self.rows[new], ts, "c")]


class Landing:
    """Lands records like TiCDC + the loader: per-partition offsets, a Kafka timestamp per record."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.next_offset = [0] * PARTITIONS
        # Every delivery of every event: event index -> record timestamps (ms), in delivery order.
        self.delivered: dict[int, list[int]] = {}

    def deliver(self, source: Source, start: int, end: int, *, at_ms: int | None = None) -> None:
        rows = []
        for i in range(start, end):
            e = source.events[i]
            if e.op == "t":  # a truncate sends no record (its delivery time is its own: see test_truncate_*)
                continue
            p = e.key % PARTITIONS
            create = at_ms if at_ms is not None else (e.commit_ts >> 18) + DELIVERY_LAG_MS
            self.delivered.setdefault(i, []).append(create)
            value = None if e.value is None else {
                "id": e.key, "name": e.value[0], "price": e.value[1], "_tidb_op": e.op,
                "_tidb_commit_ts": e.commit_ts, "_tidb_commit_physical_time": e.commit_ts >> 18}
            enc = self.replica.encoder
            metadata = enc.metadata("tidb_test_t", p, self.next_offset[p], create, {"id": e.key})
            rows.append((metadata, enc.content(value)))
            self.next_offset[p] += 1
        for chunk in range(0, len(rows), 500):
            part = rows[chunk:chunk + 500]
            self.replica.conn.cursor().execute(
                f"INSERT INTO {self.replica.plan.landing.sql} SELECT PARSE_JSON(column1), PARSE_JSON(column2) "
                f"FROM VALUES {', '.join('(%s, %s)' for _ in part)}", tuple(x for row in part for x in row))


def _ms(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts / 1000, dt.timezone.utc).replace(tzinfo=None)


def make_replica(conn: Any, mode: str, name: str) -> Replica:
    r = Replica(conn, KEY, VALUE, name=name)
    r.plan = dataclasses.replace(r.plan, mode=mode)
    cur = conn.cursor()
    cur.execute(f"DROP TABLE {r.plan.replica.sql}")
    cur.execute(create_mode_replica_sql(r.plan.replica, r.plan.columns, mode))
    return r


def merge(r: Replica) -> Any:
    run = run_history_merge if r.plan.mode == HISTORY else run_merge
    return run(r.conn, r.plan, NOW)


def select(r: Replica, sql: str) -> list[tuple]:
    cur = r.conn.cursor()
    cur.execute(sql)
    return [tuple(x) for x in cur.fetchall()]


# --- the models, from the statements alone -----------------------------------------------------------------


def expected_soft_delete(source: Source) -> dict[int, tuple[str | None, Decimal, bool]]:
    """Every key that ever held a row: its last values, deleted or not."""
    out: dict[int, tuple[str | None, Decimal, bool]] = {}
    for e in source.events:
        if e.value is None:
            out[e.key] = (*out[e.key][:2], True)
        else:
            out[e.key] = (*e.value, False)
    return out


@dataclass(frozen=True)
class Version:
    key: int
    commit_ts: int  # a delete: the commit ts of the version it ends
    op: str
    value: tuple[str | None, Decimal] | None
    event: int  # index in source.events


def expected_versions(source: Source) -> list[Version]:
    last: dict[int, int] = {}
    out = []
    for i, e in enumerate(source.events):
        if e.value is None:
            # A truncate's delete version carries the truncate's TSO (schema_changes.truncate_statements).
            out.append(Version(e.key, e.commit_ts if e.op == "t" else last.get(e.key, 0), "d", None, i))
        else:
            out.append(Version(e.key, e.commit_ts, e.op, e.value, i))
            last[e.key] = e.commit_ts
    return sorted(out, key=lambda v: (v.key, v.commit_ts, v.op == "d"))


def assert_history(r: Replica, source: Source, landing: Landing) -> None:
    """The whole history table against the model: the versions, their order and their validity chain."""
    rows = select(r, f'SELECT "id", "name", "price", "_OP", "_COMMIT_TS", "_VALID_FROM", "_VALID_TO", "_IS_CURRENT" '
                     f'FROM {r.plan.replica.sql} ORDER BY "id", "_COMMIT_TS", ("_OP" = \'d\')')
    want = expected_versions(source)
    got = [(int(i), int(ts), op, None if op == "d" else (n, p)) for i, n, p, op, ts, *_ in rows]
    assert got == [(v.key, v.commit_ts, v.op, v.value) for v in want]
    for j, (v, row) in enumerate(zip(want, rows)):
        valid_from, valid_to, current = row[5], row[6], row[7]
        same_key_next = j + 1 < len(want) and want[j + 1].key == v.key
        prev = rows[j - 1] if j > 0 and want[j - 1].key == v.key else None
        if v.op == "d":
            # The record timestamp of a delivery of this delete, kept between the neighbouring versions.
            lo = prev[5] if prev else dt.datetime.min
            hi = rows[j + 1][5] if same_key_next else dt.datetime.max
            assert lo <= valid_from <= hi, (v, valid_from)
            assert valid_from in {min(max(_ms(c), lo), hi) for c in landing.delivered[v.event]}, (v, valid_from)
        else:
            assert valid_from == _ms(v.commit_ts >> 18), v
        assert valid_to == (rows[j + 1][5] if same_key_next else None), v
        assert current == (not same_key_next and v.op != "d"), v
    current = current_rows_sql(r.plan.replica, HISTORY)
    current_rows = select(r, f'SELECT "id", "name", "price" FROM {current} ORDER BY 1')
    assert {int(i): (n, p) for i, n, p in current_rows} == source.rows


def assert_soft_delete(r: Replica, source: Source, landing: Landing, truncated_at: int | None = None) -> None:
    rows = select(r, f'SELECT "id", "name", "price", "_DELETED", "_DELETED_AT" FROM {r.plan.replica.sql} ORDER BY 1')
    assert {int(i): (n, p, d) for i, n, p, d, _ in rows} == expected_soft_delete(source)
    for i, _, _, deleted, at in rows:
        if not deleted:
            assert at is None
            continue
        # The record timestamp of a delivery of the key's last delete.
        last = max(j for j, e in enumerate(source.events) if e.key == i and e.value is None)
        ok = {_ms(c) for c in landing.delivered[last]}
        if truncated_at is not None and source.events[last].commit_ts <= truncated_at:
            # A delete landing after the truncate finds the row already flagged by it.
            ok.add(_ms(truncated_at >> 18))
        assert at in ok, (i, at)
    current_rows = select(r, f'SELECT "id", "name", "price" FROM {current_rows_sql(r.plan.replica, SOFT_DELETE)} '
                             "ORDER BY 1")
    assert {int(i): (n, p) for i, n, p in current_rows} == source.rows


# --- workloads -------------------------------------------------------------------------------------------


def order_workload(seed: int, transactions: int = 120, s: Source | None = None) -> Source:
    """TPC-C-like changes on a few keys: new orders, updates (delivery), deletes (new_order rows), key changes,
    and re-inserts of deleted keys (continuing `s` when given)."""
    rnd = random.Random(seed)
    s = s or Source()
    for step in range(transactions):
        roll = rnd.random()
        live = sorted(s.rows)
        if not live or roll < 0.3:
            free = [k for k in range(1, 40) if k not in s.rows]
            s.insert(rnd.choice(free), f"order {step}", f"{rnd.randint(1, 999)}.{rnd.randint(0, 99):02d}")
        elif roll < 0.65:
            s.update(rnd.choice(live), rnd.choice([f"upd {step}", None]), f"{rnd.randint(1, 999)}.50")
        elif roll < 0.9:
            s.delete(rnd.choice(live))
        else:
            free = [k for k in range(1, 40) if k not in s.rows]
            s.change_key(rnd.choice(live), rnd.choice(free))
    return s


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    with fake_snowflake() as c:
        yield c


@pytest.mark.parametrize("mode", [SOFT_DELETE, HISTORY])
@pytest.mark.parametrize("seed", [1, 2])
def test_mode_matches_model_after_deletes_replays_and_key_changes(conn: Any, mode: str, seed: int) -> None:
    """Deliveries in uneven slices, merges between them, and replays (TiCDC's at-least-once) both inside a
    batch and across batches; after each merge the whole table equals the model of what was delivered."""
    source = order_workload(seed)
    r = make_replica(conn, mode, f"M_{mode.upper()}_{seed}")
    landing = Landing(r)
    rnd = random.Random(seed * 7)
    n = len(source.events)
    done = 0
    replay_clock = BASE_MS + 10 * (source.tick + 100)
    while done < n:
        end = min(n, done + rnd.randint(1, 25))
        landing.deliver(source, done, end)
        if rnd.random() < 0.5 and done:
            # A replay from an earlier point up to what was sent, at later record timestamps.
            replay_clock += 1000
            landing.deliver(source, rnd.randint(max(0, done - 30), done), end, at_ms=replay_clock)
        done = end
        merge(r)
        model = Source(events=source.events[:done])
        model.rows = _replay_rows(model.events)
        (assert_history if mode == HISTORY else assert_soft_delete)(r, model, landing)
    # Merging again changes nothing (idempotent).
    before = select(r, f"SELECT * FROM {r.plan.replica.sql} ORDER BY 1, 2")
    assert merge(r)[1] == ()
    assert select(r, f"SELECT * FROM {r.plan.replica.sql} ORDER BY 1, 2") == before


def _replay_rows(events: list[Event]) -> dict[int, tuple[str | None, Decimal]]:
    rows: dict[int, tuple[str | None, Decimal]] = {}
    for e in events:
        if e.value is None:
            rows.pop(e.key, None)
        else:
            rows[e.key] = e.value
    return rows


def test_history_hot_key_keeps_every_version_in_commit_order(conn: Any) -> None:
    """1,000 updates of one key between two merges (plus an insert before): 1,001 versions, in commit order,
    each valid until the next, the last one current."""
    r = make_replica(conn, HISTORY, "HOT_KEY")
    landing = Landing(r)
    source = Source()
    source.insert(7, "v0")
    landing.deliver(source, 0, 1)
    merge(r)
    for i in range(1, 1001):
        source.update(7, f"v{i}", f"{i}.00")
    landing.deliver(source, 1, 1001)
    counts, _ = merge(r)
    assert (counts.inserted, counts.updated, counts.source_rows) == (0, 1000, 1000)
    # The record times of the rows read (what the cleanup gate waits on): the second delivery's only.
    times = [t for i in range(1, 1001) for t in landing.delivered[i]]
    assert (counts.landing_rows, counts.oldest_record_ms, counts.newest_record_ms) == (1000, min(times), max(times))
    assert min(times) < max(times)
    rows = select(r, f'SELECT "name", "_COMMIT_TS", "_VALID_FROM", "_VALID_TO", "_IS_CURRENT" FROM '
                     f'{r.plan.replica.sql} ORDER BY "_COMMIT_TS"')
    assert [n for n, *_ in rows] == [f"v{i}" for i in range(1001)]
    assert [int(ts) for _, ts, *_ in rows] == [e.commit_ts for e in source.events]
    assert [to for *_, to, _ in rows] == [f for _, _, f, _, _ in rows[1:]] + [None]
    assert [c for *_, c in rows] == [False] * 1000 + [True]
    assert_history(r, source, landing)


def test_history_delete_time_sits_between_its_neighbours(conn: Any) -> None:
    """A tombstone has no commit time: its record timestamp stands in, kept after the version it ends and
    before the re-insert that follows, even when the record was produced after the re-insert committed."""
    r = make_replica(conn, HISTORY, "TOMBSTONE_ORDER")
    landing = Landing(r)
    source = Source()
    source.insert(1, "a")
    source.delete(1)
    source.insert(1, "b")  # committed 10 ms after the delete, which reaches Kafka 40 ms after its commit
    landing.deliver(source, 0, 2)
    merge(r)  # the delete is the latest version: valid from its record timestamp
    (_, from_1), = select(r, f'SELECT "_OP", "_VALID_FROM" FROM {r.plan.replica.sql} WHERE "_OP" = \'d\'')
    assert from_1 == _ms((source.events[1].commit_ts >> 18) + DELIVERY_LAG_MS)
    landing.deliver(source, 2, 3)
    merge(r)  # the re-insert commits before that timestamp: the delete's time moves back to it
    rows = select(r, f'SELECT "_OP", "_VALID_FROM", "_VALID_TO" FROM {r.plan.replica.sql} '
                     'ORDER BY "_COMMIT_TS", ("_OP" = \'d\')')
    insert_a, _delete, insert_b = (_ms(e.commit_ts >> 18) for e in source.events)
    assert rows == [("c", insert_a, insert_b), ("d", insert_b, insert_b), ("c", insert_b, None)]
    assert_history(r, source, landing)


@pytest.mark.parametrize("path", [(REPLICA, SOFT_DELETE, HISTORY, REPLICA), (REPLICA, HISTORY, SOFT_DELETE, REPLICA)])
def test_switching_modes_keeps_the_current_rows_and_merging_resumes(conn: Any, path: tuple[str, ...]) -> None:
    """A replica switched through the modes (`switch_statements`) keeps what each mode keeps, and the next
    merge continues from the kept watermark in the new shape."""
    name = "SWITCH_" + "_".join(m[0].upper() for m in path)
    r = make_replica(conn, path[0], name)
    landing = Landing(r)
    source = order_workload(5, 40)
    step = len(source.events) // len(path)
    for i, mode in enumerate(path):
        if i:
            cur = conn.cursor()
            for stmt in switch_statements(r.plan.replica, r.plan.columns, path[i - 1], mode, NOW):
                cur.execute(stmt.sql, stmt.params)
            r.plan = dataclasses.replace(r.plan, mode=mode)
        end = len(source.events) if i == len(path) - 1 else (i + 1) * step
        landing.deliver(source, i * step, end)
        merge(r)
        live = _replay_rows(source.events[:end])
        rows = select(r, f'SELECT "id", "name", "price" FROM {current_rows_sql(r.plan.replica, mode)} ORDER BY 1')
        assert {int(k): (n, p) for k, n, p in rows} == live, mode
    assert select(r, f"SELECT COUNT(*) FROM {r.plan.replica.sql}") == [(len(source.rows),)]


def test_history_places_a_late_version_before_a_backfilled_one(conn: Any) -> None:
    """After a backfill at TSO T (one version `s` per row), changes committed before T can still arrive (a
    changefeed that already ran when the table was added resumes from its earlier checkpoint): they are
    placed before the snapshot's version, which stays current until a newer change."""
    r = make_replica(conn, HISTORY, "LATE_VERSION")
    landing = Landing(r)
    t_ms = BASE_MS + 1000
    names, values, params = snapshot_mode_values(HISTORY, t_ms << 18)
    conn.cursor().execute(f'INSERT INTO {r.plan.replica.sql} ("id", "name", "price", {", ".join(names)}) '
                          f"SELECT 1, 'snapshot', 5.00, {', '.join(values)}", params)
    source = Source()
    source.tick = 110  # commits after T ...
    source.update(1, "after")
    source.tick = 90  # ... and one before it, arriving later
    source.update(1, "before")
    landing.deliver(source, 0, 1)
    merge(r)
    landing.deliver(source, 1, 2)
    merge(r)
    rows = select(r, f'SELECT "name", "_OP", "_VALID_FROM", "_VALID_TO", "_IS_CURRENT" FROM {r.plan.replica.sql} '
                     'ORDER BY "_COMMIT_TS"')
    before, snapshot, after = (_ms(BASE_MS + 10 * 91), _ms(t_ms), _ms(BASE_MS + 10 * 111))
    assert rows == [("before", "u", before, snapshot, False), ("snapshot", "s", snapshot, after, False),
                    ("after", "u", after, None, True)]


@pytest.mark.parametrize("mode", [REPLICA, SOFT_DELETE, HISTORY])
def test_truncate_follows_the_mode_and_late_changes_never_come_back(conn: Any, mode: str) -> None:
    """A TRUNCATE at TSO t between merges, applied as the merge applies it (`truncate_statements` in one
    transaction, then `truncated_at`): changes committed before t that land after it (late, then replayed with
    everything after t) never bring a row back. replica: the rows go; soft_delete: the rows present at t are
    flagged at t's time; history: each current version is closed at t by a delete version, so the table still
    says what was current before t. The whole table is compared with the model after each merge."""
    source = order_workload(5, 50)
    merged = 35  # the first merge sees these; the rest of the changes before the truncate land after it
    r = make_replica(conn, mode, f"TRUNCATE_{mode.upper()}")
    landing = Landing(r)
    landing.deliver(source, 0, merged)
    merge(r)
    pre = len(source.events)
    t = source.truncate()
    post = len(source.events)
    order_workload(6, 40, source)  # after the truncate: new keys, and keys the truncate removed come back
    wh = Warehouse.of(conn)
    with wh.transaction():
        for stmt in sc.truncate_statements(r.plan.replica, mode, t, [k.name for k in r.plan.keys]):
            wh.execute(stmt)
    r.plan = dataclasses.replace(r.plan, truncated_at=t)
    for i in range(pre, post):
        landing.delivered[i] = [t >> 18]  # when the truncate's delete happened
    if mode == HISTORY:
        # The replica held what the first merge brought: the truncate closes exactly that; later changes from
        # before it are not recorded.
        events = source.events[:merged]
        closed = [Event(k, None, t, "t") for k in sorted(_replay_rows(events))]
        model = Source(events=[*events, *closed, *source.events[post:]])
        model.rows = _replay_rows(model.events)
        seen = Landing(r)
    for step, (start, at_ms) in enumerate([(merged, None), (merged - 20, BASE_MS + 10 * (source.tick + 100))]):
        landing.deliver(source, start, len(source.events), at_ms=at_ms)  # the late rows, then everything after
        merge(r)
        if mode == REPLICA:
            rows = select(r, f'SELECT "id", "name", "price" FROM {r.plan.replica.sql} ORDER BY 1')
            assert {int(i): (n, p) for i, n, p in rows} == source.rows, step
        elif mode == SOFT_DELETE:
            assert_soft_delete(r, source, landing, truncated_at=t)
        else:
            # The model's events: the source's first `merged`, the closed versions, then the source's from `post`.
            origin = [*range(merged), *([None] * len(closed)), *range(post, len(source.events))]
            seen.delivered = {i: [t >> 18] if o is None else landing.delivered.get(o, [])
                              for i, o in enumerate(origin)}
            assert_history(r, model, seen)
    assert merge(r)[1] == ()


def test_history_reads_a_renamed_columns_old_field_for_rows_landed_before_the_rename(conn: Any) -> None:
    """After `name` was renamed to `title` in TiDB, versions landed before (field `name`) and after (`title`)
    both fill the replica's `title` (`ReplicaColumn.previous_fields`, as the merge of a replica does)."""
    r = Replica(conn, KEY, VALUE, name="HISTORY_RENAMED")
    columns = tuple(dataclasses.replace(c, name="title", field="title", previous_fields=("name",))
                    if c.name == "name" else c for c in r.plan.columns)
    r.plan = dataclasses.replace(r.plan, columns=columns, mode=HISTORY)
    cur = conn.cursor()
    cur.execute(f"DROP TABLE {r.plan.replica.sql}")
    cur.execute(create_mode_replica_sql(r.plan.replica, columns, HISTORY))
    source = Source()
    source.insert(1, "before")
    source.insert(2, "before too")
    Landing(r).deliver(source, 0, 2)  # field `name`
    ts = source._commit()
    after = (f'{{"id":1,"title":"after","price":2.00,"_tidb_op":"u","_tidb_commit_ts":{ts},'
             f'"_tidb_commit_physical_time":{ts >> 18}}}')
    cur.execute(f"INSERT INTO {r.plan.landing.sql} SELECT PARSE_JSON(%s), PARSE_JSON(%s)",
                (r.encoder.metadata("tidb_test_t", 1, 1, (ts >> 18) + 40, {"id": 1}), after))
    merge(r)
    rows = select(r, f'SELECT "id", "title", "price", "_IS_CURRENT" FROM {r.plan.replica.sql} ORDER BY 1, "_COMMIT_TS"')
    assert rows == [(1, "before", Decimal("1.00"), False), (1, "after", Decimal("2.00"), True),
                    (2, "before too", Decimal("1.00"), True)]
