"""The merge and the cleanup of a built-in landing read the landed-offsets table, not the whole landing table.

In-process fakesnow with the lab's adapter. Each statement the merge sends is recorded at the warehouse seam,
so the tests can say which ones read the landing table and with which constant offset ranges (what Snowflake
prunes micro-partitions on); results are compared with a merge of the same rows without the table.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tidb_pipeline.replication.cleanup import cleanup_sql
from tidb_pipeline.replication.merge import MergeRange, read_pending, run_merge
from tidb_pipeline.resources.warehouse import Warehouse
from tidb_pipeline_tests.replication.support import CREATE_TIME_MS, NOW, Replica, fake_snowflake, field, record

KEY = record("t", [field("id", "long", "BIGINT")])
VALUE = record("t", [field("id", "long", "BIGINT"), field("name", "string", "TEXT", nullable=True)])
HOUR_MS = 3_600_000


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    seen: list[tuple[str, tuple[Any, ...]]] = []
    real = Warehouse.execute

    def execute(wh: Warehouse, stmt: Any, params: Any = ()) -> Any:
        seen.append((stmt, tuple(params)) if isinstance(stmt, str) else (stmt.sql, tuple(stmt.params)))
        return real(wh, stmt, params)

    monkeypatch.setattr(Warehouse, "execute", execute)
    return seen


def _landing_reads(r: Replica, seen: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...]]]:
    return [(sql, params) for sql, params in seen if r.plan.landing.sql in sql]


def _batch(p: int, offsets: range, ids: range, name: str) -> list[tuple[int, int, dict, dict | None]]:
    return [(p, o, {"id": i}, {"id": i, "name": name}) for o, i in zip(offsets, ids)]


def test_the_merge_reads_only_the_pending_range_and_merges_what_a_full_scan_merges(monkeypatch: pytest.MonkeyPatch):
    with fake_snowflake() as conn:
        builtin, scanned = Replica(conn, KEY, VALUE, "B", landed=True), Replica(conn, KEY, VALUE, "C")
        first = _batch(0, range(0, 50), range(0, 50), "a") + _batch(1, range(0, 30), range(100, 130), "a")
        for r in (builtin, scanned):
            r.land(first)
            run_merge(conn, r.plan, NOW)
        second = (_batch(0, range(50, 55), range(3, 8), "b") + [(0, 55, {"id": 9}, None)]
                  + _batch(1, range(30, 32), range(200, 202), "b"))
        for r in (builtin, scanned):
            r.land(second)
        seen = _recording(monkeypatch)
        counts, ranges = run_merge(conn, builtin.plan, NOW)
        assert ranges == (MergeRange(0, 49, 55), MergeRange(1, 29, 31))
        assert (counts.inserted, counts.updated, counts.deleted, counts.landing_rows) == (2, 5, 1, 8)
        # Every statement that touches the landing table names the pending range as constants.
        reads = _landing_reads(builtin, seen)
        assert reads
        for sql, params in reads:
            assert '"RECORD_METADATA":"partition"::int = %s AND' in sql and '"RECORD_METADATA":"offset"::int > %s' in sql
            assert "JOIN (SELECT column1" not in sql  # not a join to a ranges table: nothing to prune on
        pending_read = reads[0][1]
        assert pending_read[:6] == (0, 49, 55, 1, 29, 31)  # (partition, merged, highest landed) per partition
        run_merge(conn, scanned.plan, NOW)
        assert builtin.rows() == scanned.rows()
        assert builtin.watermarks() == scanned.watermarks() == [(0, 55), (1, 31)]


def test_with_nothing_landed_since_the_merge_the_landing_table_is_not_read(monkeypatch: pytest.MonkeyPatch):
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE, landed=True)
        r.land(_batch(0, range(0, 10), range(0, 10), "a"))
        run_merge(conn, r.plan, NOW)
        seen = _recording(monkeypatch)
        assert run_merge(conn, r.plan, NOW)[1] == ()
        assert len(seen) == 1 and _landing_reads(r, seen) == []  # one read of the two tiny tables


def test_rows_above_the_landed_offsets_wait_for_the_next_merge():
    """The table moves in the load's transaction; rows it does not cover yet are not merged."""
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE, landed=True)
        r.land(_batch(0, range(0, 5), range(0, 5), "a"))
        r.set_landed_offsets({0: 2})
        assert run_merge(conn, r.plan, NOW)[1] == (MergeRange(0, -1, 2),)
        assert [row[0] for row in r.rows()] == [0, 1, 2]
        r.set_landed_offsets({0: 4})
        assert run_merge(conn, r.plan, NOW)[1] == (MergeRange(0, 2, 4),)
        assert [row[0] for row in r.rows()] == [0, 1, 2, 3, 4]


def test_a_hole_below_the_landed_offset_still_holds_the_partition():
    """A Kafka offset with no record (a transaction marker) is a hole until decided, as without the table."""
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE, landed=True)
        r.land(_batch(0, range(0, 3), range(0, 3), "a") + _batch(0, range(4, 6), range(4, 6), "a"))
        pending = read_pending(Warehouse.of(conn), r.plan)
        assert pending.ranges == (MergeRange(0, -1, 2),)
        assert [(h.first_missing, h.last_missing, h.highest_landed) for h in pending.held] == [(3, 3, 5)]


def test_a_topic_with_no_landed_offsets_row_is_merged_from_a_scan():
    """Not seeded yet (the first load after an upgrade seeds it): the merge reads the landing table as before."""
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE, landed=True)
        r.land(_batch(0, range(0, 4), range(0, 4), "a"))
        conn.cursor().execute(f"DELETE FROM {r.plan.landed.sql}")
        assert run_merge(conn, r.plan, NOW)[1] == (MergeRange(0, -1, 3),)
        assert [row[0] for row in r.rows()] == [0, 1, 2, 3]


def test_cleanup_keeps_the_highest_landed_offset_read_from_the_table():
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE, landed=True)
        old = CREATE_TIME_MS - 10 * HOUR_MS
        r.land(_batch(0, range(0, 5), range(0, 5), "a") + _batch(1, range(0, 3), range(100, 103), "a"),
               create_time_ms=old)
        run_merge(conn, r.plan, NOW)
        r.set_landed_offsets({0: 6, 1: 2})  # partition 0's last two offsets went to the dead-letter table
        stmt = cleanup_sql(r.plan.landing, r.plan.watermarks, r.plan.replica, NOW, dt.timedelta(hours=1),
                           r.plan.landed, r.plan.topic)
        conn.cursor().execute(stmt.sql, stmt.params)
        # p0: merged through 4, highest landed 6 -> 0..4 go; p1: 2 is the highest landed offset and stays.
        assert r.landing_offsets() == [(1, 2)]


def test_holes_are_found_in_the_pending_range_only(monkeypatch: pytest.MonkeyPatch):
    from tidb_pipeline.engine.holes import resolve_holes
    from tidb_pipeline.replication.holes import OFFSET_GAPS_TABLE, WAITING, create_offset_gaps_sql
    from tidb_pipeline.replication.ddl import TableRef
    from tidb_pipeline.replication.merge import parse_bounds, pending_bounds_sql

    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE, landed=True)
        gaps_table = TableRef("S", OFFSET_GAPS_TABLE)
        conn.cursor().execute(create_offset_gaps_sql(gaps_table))
        r.land(_batch(0, range(0, 3), range(0, 3), "a"))
        run_merge(conn, r.plan, NOW)
        r.land(_batch(0, range(4, 6), range(4, 6), "a"))
        wh = Warehouse.of(conn)
        bounds = parse_bounds(wh.execute(pending_bounds_sql(r.plan)))
        assert bounds == {0: (2, 5)}
        src = r.plan.offsets.__class__(**{**r.plan.offsets.__dict__, "offset_gaps": gaps_table})
        seen = _recording(monkeypatch)
        gaps = resolve_holes(wh, None, src, NOW, bounds)
        assert [(g.partition, g.first, g.last, g.status) for g in gaps] == [(0, 3, 3, WAITING)]
        hole_query = next(params for sql, params in _landing_reads(r, seen))
        assert hole_query[:3] == (0, 2, 5)  # the landing rows of (merged, highest landed] only
