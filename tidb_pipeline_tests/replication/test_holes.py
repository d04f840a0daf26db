"""The merge never passes a hole: out-of-order landing (Snowpipe), holes filled late, holes Kafka never had.

On the in-process engine (fakesnow); the lab tests with real Kafka are in tidb_pipeline_tests/defs/test_holes_lab.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidb_pipeline.engine.holes import overdue, resolve_holes
from tidb_pipeline.replication.ddl import Statement, TableRef, create_dead_letter_sql
from tidb_pipeline.replication.holes import (
    ABSENT,
    LOST,
    WAITING,
    Gap,
    Hole,
    KafkaProbe,
    above_sql,
    carry_seen_at,
    classify,
    create_offset_gaps_sql,
    holes_sql,
    parse_holes,
    unmerged_tops_sql,
)
from tidb_pipeline.replication.merge import Held, MergeRange, parse_pending, pending_ranges_sql, run_merge
from tidb_pipeline_tests.replication.support import NOW, Replica, decimal_type, fake_snowflake, field, record, with_extension
from tidb_pipeline_tests.tiers import examples

KEY = record("t", [field("id", "long", "BIGINT")])
VALUE = with_extension(record("t", [field("id", "long", "BIGINT"), field("name", "string", "TEXT", nullable=True),
                                    field("price", decimal_type(10, 2), "DECIMAL")]))  # fmt: skip
TOPIC = "tidb_test_t"
T0 = dt.datetime(2026, 11, 25, 12, 0)


def v(i: int, name: str) -> dict[str, Any]:
    return {"id": i, "name": name, "price": Decimal("1.00"), "_tidb_op": "c", "_tidb_commit_ts": 1,
            "_tidb_commit_physical_time": 1}


def rec(p: int, o: int, key: int | None = None, name: str | None = None) -> tuple[int, int, dict, dict | None]:
    """Record at (p, o) for key `key` (default o); name None makes it a tombstone."""
    key = o if key is None else key
    return (p, o, {"id": key}, None if name is None else v(key, name))


def make(conn: Any) -> Replica:
    r = Replica(conn, KEY, VALUE)
    gaps, dead = TableRef("S", "LANDING_OFFSET_GAPS"), TableRef("S", "LANDING_DEAD_LETTER")
    cur = conn.cursor()
    cur.execute(create_offset_gaps_sql(gaps))
    cur.execute(create_dead_letter_sql(dead))
    r.plan = dataclasses.replace(r.plan, topic=TOPIC, dead_letters=dead, offset_gaps=gaps)
    return r


def pending(r: Replica) -> Any:
    stmt = pending_ranges_sql(r.plan)
    cur = r.conn.cursor()
    cur.execute(stmt.sql, stmt.params)
    return parse_pending(cur.fetchall())


def names(r: Replica) -> list[tuple[int, str]]:
    return [(row[0], row[1]) for row in r.rows()]


class FakeKafka:
    """`KafkaResource.first_offsets` over an in-memory partition: the offsets that hold records."""

    def __init__(self, offsets: dict[int, Sequence[int]], log_start: dict[int, int] | None = None) -> None:
        self.offsets = {p: sorted(o) for p, o in offsets.items()}
        self.log_start = log_start or {}
        self.calls: list[tuple[int, int]] = []

    def first_offsets(self, topic: str, starts: Sequence[tuple[int, int]]) -> list[tuple[int, int | None]]:
        assert topic == TOPIC
        out = []
        for p, start in starts:
            self.calls.append((p, start))
            low = self.log_start.get(p, 0)
            found = [o for o in self.offsets[p] if o >= max(start, low)]
            out.append((low, found[0] if found else None))
        return out


def test_the_issue_repro_a_hole_filled_after_a_merge_is_merged() -> None:
    """Offsets 0-4 and 8-9 visible, merge, then 5-7 land: every row reaches the replica (was 7 of 10)."""
    with fake_snowflake() as conn:
        r = make(conn)
        r.land([rec(0, o, name=f"v{o}") for o in (*range(5), 8, 9)])
        counts, ranges = run_merge(conn, r.plan, NOW)
        assert ranges == (MergeRange(0, -1, 4),) and counts.landing_rows == 5
        assert names(r) == [(o, f"v{o}") for o in range(5)]
        assert r.watermarks() == [(0, 4)]
        assert pending(r).held == (Held(0, 4, 5, 7, 9),)
        assert str(pending(r).held[0]) == "partition 0: offsets 5..7 missing; offsets up to 9 held back above them"
        # Held right at the watermark: nothing to merge, nothing claimed.
        assert pending(r).ranges == () and run_merge(conn, r.plan, NOW)[1] == ()
        r.land([rec(0, o, name=f"v{o}") for o in (5, 6, 7)])
        assert run_merge(conn, r.plan, NOW)[1] == (MergeRange(0, 4, 9),)
        assert names(r) == [(o, f"v{o}") for o in range(10)]
        assert len(r.landing_offsets()) == 10 and r.watermarks() == [(0, 9)]


def test_latest_version_wins_across_a_late_file_and_partitions_are_independent() -> None:
    with fake_snowflake() as conn:
        r = make(conn)
        # p0: key 1 updated at 1, 3 (late) and 5; key 2 deleted at 4 (late). p1 lands in order.
        r.land([rec(0, 0, 1, "a"), rec(0, 1, 1, "b"), rec(0, 2, 2, "x"), rec(0, 5, 1, "e"),
                rec(1, 0, 10, "p"), rec(1, 1, 11, "q")])  # fmt: skip
        run_merge(conn, r.plan, NOW)
        assert names(r) == [(1, "b"), (2, "x"), (10, "p"), (11, "q")]
        assert r.watermarks() == [(0, 2), (1, 1)]
        r.land([rec(0, 3, 1, "c"), rec(0, 4, 2), rec(0, 3, 1, "c")])  # the late file, delivered twice
        run_merge(conn, r.plan, NOW)
        assert names(r) == [(1, "e"), (10, "p"), (11, "q")]
        assert r.watermarks() == [(0, 5), (1, 1)]


def test_a_hole_below_the_first_landed_offset_and_a_cap_stop_the_range() -> None:
    with fake_snowflake() as conn:
        r = make(conn)
        r.land([rec(0, o, name="x") for o in (2, 3)])
        assert pending(r).ranges == () and pending(r).held == (Held(0, -1, 0, 1, 3),)
        r.land([rec(0, o, name="x") for o in (0, 1, 5, 6, 7)])
        stmt = pending_ranges_sql(r.plan, 2)
        cur = conn.cursor()
        cur.execute(stmt.sql, stmt.params)
        assert parse_pending(cur.fetchall()).ranges == (MergeRange(0, -1, 1),)
        run_merge(conn, r.plan, NOW, max_offsets_per_partition=2)
        run_merge(conn, r.plan, NOW, max_offsets_per_partition=2)
        assert r.watermarks() == [(0, 3)]  # the cap reached the hole at 4
        assert pending(r).held == (Held(0, 3, 4, 4, 7),)


def test_dead_letters_and_offsets_kafka_never_had_count_as_present() -> None:
    with fake_snowflake() as conn:
        r = make(conn)
        r.land([rec(0, o, name="x") for o in (0, 1, 4, 9)])
        cur = conn.cursor()
        cur.execute(f'INSERT INTO {r.plan.dead_letters.sql} ("TOPIC", "PARTITION", "OFFSET", "ERROR") '
                    "VALUES (%s, 0, 2, 'bad'), ('other_topic', 0, 3, 'bad')", (TOPIC,))
        assert pending(r).held == (Held(0, 2, 3, 3, 9),)  # another topic's dead letter does not count
        cur.execute(f'INSERT INTO {r.plan.offset_gaps.sql} VALUES (%s, 0, 3, 3, %s, %s, NULL), '
                    "(%s, 0, 5, 8, %s, 'waiting', NULL)", (TOPIC, ABSENT, "marker", TOPIC, WAITING))
        # ABSENT counts as present; WAITING does not.
        assert pending(r).ranges == (MergeRange(0, -1, 4),) and pending(r).held == (Held(0, 4, 5, 8, 9),)
        stmt = holes_sql(r.plan.offsets)
        cur.execute(stmt.sql, stmt.params)
        assert parse_holes(cur.fetchall()) == [Hole(0, 5, 8)]


def test_above_the_watermarks_only_unmerged_rows_are_read_and_the_holes_are_the_same() -> None:
    """What `landing_continuity` reads where no landed-offsets table bounds the landing table (connector mode)."""
    with fake_snowflake() as conn:
        r = make(conn)
        # Odd partitions merge up to their hole at 3; even ones miss offset 0, so they hold with no watermark.
        landed = [(p, o) for p in range(5) for o in range(6) if o != 3 and not (o == 0 and p % 2 == 0)]
        r.land([rec(p, o, key=10 * o + p, name="x") for p, o in landed])
        run_merge(conn, r.plan, NOW)
        assert r.watermarks() == [(1, 2), (3, 2)]
        r.land([rec(1, 7, key=71, name="y")])
        landed.append((1, 7))
        above = dict(r.watermarks())
        cur = conn.cursor()

        def rows(stmt: Any) -> list[tuple]:
            cur.execute(stmt.sql, stmt.params)
            return [tuple(x) for x in cur.fetchall()]

        expected = [Hole(0, 0, 0), Hole(0, 3, 3), Hole(1, 3, 3), Hole(1, 6, 6), Hole(2, 0, 0), Hole(2, 3, 3),
                    Hole(3, 3, 3), Hole(4, 0, 0), Hole(4, 3, 3)]
        assert parse_holes(rows(holes_sql(r.plan.offsets, above=above))) == parse_holes(
            rows(holes_sql(r.plan.offsets))) == expected
        where = above_sql(above)
        read = rows(Statement(f'SELECT "RECORD_METADATA":"partition"::int, "RECORD_METADATA":"offset"::int FROM '
                                f"{r.plan.landing.sql} WHERE {where.sql} ORDER BY 1, 2", where.params))
        assert read == sorted((p, o) for p, o in landed if o > above.get(p, -1))  # partitions 0, 2, 4 whole
        assert rows(unmerged_tops_sql(r.plan.landing, above)) == [(0, 5), (1, 7), (2, 5), (3, 5), (4, 5)]
        assert rows(unmerged_tops_sql(r.plan.landing, {})) == [(0, 5), (1, 7), (2, 5), (3, 5), (4, 5)]


def test_resolving_holes_with_kafka_skips_markers_and_waits_for_real_records() -> None:
    with fake_snowflake() as conn:
        r = make(conn)
        # Kafka: a transactional producer's records at 0-2 (marker 3), 4-6 (marker 7), 8; 5 not landed yet.
        kafka = FakeKafka({0: [0, 1, 2, 4, 5, 6, 8]})
        r.land([rec(0, o, name=f"v{o}") for o in (0, 1, 2, 4, 6, 8)])
        gaps = resolve_holes(conn, kafka, r.plan.offsets, T0)
        assert [(g.first, g.last, g.status) for g in gaps] == [(3, 3, ABSENT), (5, 5, WAITING), (7, 7, ABSENT)]
        run_merge(conn, r.plan, NOW)
        assert r.watermarks() == [(0, 4)] and [n for n, _ in names(r)] == [0, 1, 2, 4]
        assert pending(r).held == (Held(0, 4, 5, 5, 8),)
        # Seen again later: the clock of the waiting hole keeps its first sighting; over the grace it is due.
        later = T0 + dt.timedelta(minutes=10)
        again = resolve_holes(conn, kafka, r.plan.offsets, later)
        waiting = [g for g in again if g.status == WAITING]
        assert [(g.first, g.seen_at) for g in waiting] == [(5, T0)]
        assert overdue(again, later, 300) == waiting and overdue(again, T0 + dt.timedelta(minutes=4), 300) == []
        assert waiting[0].describe(TOPIC) == (f"topic {TOPIC} partition 0: offsets 5..5 are in Kafka but have not "
                                              "landed since 2026-11-25 12:00:00")
        # The late record lands: the hole closes, its record disappears, the merge takes everything.
        r.land([rec(0, 5, name="v5")])
        assert resolve_holes(conn, kafka, r.plan.offsets, later) == []
        run_merge(conn, r.plan, NOW)
        assert [n for n, _ in names(r)] == [0, 1, 2, 4, 5, 6, 8] and r.watermarks() == [(0, 8)]
        cur = conn.cursor()
        recorded = f'SELECT "FIRST_OFFSET", "STATUS" FROM {r.plan.offset_gaps.sql} ORDER BY 1'
        cur.execute(recorded)
        assert cur.fetchall() == [(7, ABSENT)]  # 3 was below the watermark when resolving; 7 is now
        assert resolve_holes(conn, kafka, r.plan.offsets, later) == []
        cur.execute(recorded)
        assert cur.fetchall() == []


def test_without_kafka_every_hole_waits() -> None:
    with fake_snowflake() as conn:
        r = make(conn)
        r.land([rec(0, o, name="x") for o in (0, 2)])
        gaps = resolve_holes(conn, None, r.plan.offsets, T0)
        assert [(g.first, g.last, g.status) for g in gaps] == [(1, 1, WAITING)]
        run_merge(conn, r.plan, NOW)
        assert r.watermarks() == [(0, 0)]


def test_classify() -> None:
    hole = Hole(2, 10, 19)
    assert classify(hole, KafkaProbe(0, 10), watermark=5, now=T0) == [Gap(2, 10, 19, WAITING, "Kafka has offset 10", T0)]
    got = classify(hole, KafkaProbe(0, 15), watermark=5, now=T0)
    assert [(g.first, g.last, g.status) for g in got] == [(10, 14, ABSENT), (15, 19, WAITING)]
    assert [(g.first, g.last, g.status) for g in classify(hole, KafkaProbe(0, 20), watermark=5, now=T0)] == [
        (10, 19, ABSENT)]
    # Nothing read (end of partition or timeout): nothing can be skipped.
    assert [g.status for g in classify(hole, KafkaProbe(0, None), watermark=5, now=T0)] == [WAITING]
    # Deleted by retention before landing: lost for good; and the part above the log start still decided.
    got = classify(hole, KafkaProbe(13, 13), watermark=5, now=T0)
    assert [(g.first, g.last, g.status) for g in got] == [(10, 12, LOST), (13, 19, WAITING)]
    assert got[0].describe("t").endswith("were deleted from Kafka before they landed (log start offset is now 13); "
                                         "they will never land")
    # Before the first merge, offsets below the log start are the topic's history before the pipeline.
    got = classify(Hole(0, 0, 99), KafkaProbe(100, None), watermark=-1, now=T0)
    assert [(g.first, g.last, g.status) for g in got] == [(0, 99, ABSENT)]


def test_carry_seen_at_keeps_the_first_sighting_of_a_shrinking_hole() -> None:
    old = [Gap(0, 5, 9, WAITING, "", T0), Gap(1, 5, 9, WAITING, "", T0)]
    later = T0 + dt.timedelta(minutes=3)
    new = carry_seen_at([Gap(0, 7, 9, WAITING, "", later), Gap(0, 20, 21, WAITING, "", later),
                         Gap(1, 10, 12, WAITING, "", later)], old)  # fmt: skip
    assert [g.seen_at for g in new] == [T0, later, later]


# --- property: any landing order, any merge points ---------------------------------------------------------

PARTITIONS = 2


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 7), min_size=2, max_size=24), st.randoms(use_true_random=False),
       st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_replica_never_passes_a_hole_and_ends_equal_whatever_the_landing_order(
    keys: list[int], rnd: random.Random, cuts: list[int]
) -> None:
    # The topic: upserts and deletes of a few keys; each key in one partition (index-value dispatch).
    topic: list[list[tuple[int, str | None]]] = [[] for _ in range(PARTITIONS)]
    alive: set[int] = set()
    for i, key in enumerate(keys):
        name: str | None = f"n{i}"
        if key in alive and i % 3 == 0:
            name = None
            alive.discard(key)
        else:
            alive.add(key)
        topic[key % PARTITIONS].append((key, name))
    # Files of a few records each, delivered in a random order, some twice (Snowpipe: any order, at least once).
    files = [[(p, o) for o in range(start, min(start + 2, len(topic[p])))]
             for p in range(PARTITIONS) for start in range(0, len(topic[p]), 2)]
    order = files + rnd.sample(files, k=min(2, len(files)))
    rnd.shuffle(order)

    def state(prefix: dict[int, int]) -> list[tuple[int, str]]:
        rows: dict[int, str | None] = {}
        for p in range(PARTITIONS):
            for key, name in topic[p][: prefix.get(p, 0)]:
                rows[key] = name
        return sorted((k, n) for k, n in rows.items() if n is not None)

    with fake_snowflake() as conn:
        r = make(conn)
        landed: set[tuple[int, int]] = set()
        position = 0
        for cut in [*cuts, len(order)]:
            batch, position = order[position:position + cut], position + cut
            for f in batch:
                r.land([rec(p, o, topic[p][o][0], topic[p][o][1]) for p, o in f])
                landed.update(f)
            run_merge(conn, r.plan, NOW)
            # The replica holds exactly each partition's contiguous landed prefix: never a row past a hole.
            prefix = {p: next(o for o in range(len(topic[p]) + 1) if (p, o) not in landed) for p in range(PARTITIONS)}
            assert names(r) == state(prefix)
            assert dict(r.watermarks()) == {p: n - 1 for p, n in prefix.items() if n > 0}
            if position >= len(order):
                break
        assert names(r) == state({p: len(topic[p]) for p in range(PARTITIONS)})
