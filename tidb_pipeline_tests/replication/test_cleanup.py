import datetime as dt

import pytest

from tidb_pipeline.replication.cleanup import cleanup_sql
from tidb_pipeline.replication.ddl import TableRef
from tidb_pipeline.replication.merge import run_merge
from tidb_pipeline_tests.replication.support import CREATE_TIME_MS, NOW, Replica, fake_snowflake, field, record

KEY = record("t", [field("id", "long", "BIGINT")])
VALUE = record("t", [field("id", "long", "BIGINT"), field("name", "string", "TEXT", nullable=True)])
HOUR_MS = 3_600_000


def cleanup(r: Replica, now: dt.datetime, retention: dt.timedelta) -> None:
    stmt = cleanup_sql(r.plan.landing, r.plan.watermarks, r.plan.replica, now, retention)
    r.conn.cursor().execute(stmt.sql, stmt.params)


def test_cleanup_deletes_only_merged_old_rows_and_keeps_each_partitions_last_row():
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE)
        old = CREATE_TIME_MS - 10 * HOUR_MS
        r.land([(0, o, {"id": o}, {"id": o, "name": "x"}) for o in range(5)], create_time_ms=old)
        r.land([(1, o, {"id": 100 + o}, {"id": 100 + o, "name": "y"}) for o in range(3)], create_time_ms=old)
        run_merge(conn, r.plan, NOW)  # watermarks: p0 -> 4, p1 -> 2
        r.land([(0, 5, {"id": 4}, None)], create_time_ms=old)  # old but not merged
        r.land([(2, 0, {"id": 200}, {"id": 200, "name": "z"})], create_time_ms=old)  # partition never merged
        cleanup(r, NOW, dt.timedelta(hours=1))
        # p0: 0-4 merged; 0-4 all go except none is p0's max (5, unmerged) -> 0..4 deleted, 5 kept.
        # p1: 0-2 merged; 2 is p1's max and stays. p2: no watermark -> untouched.
        assert r.landing_offsets() == [(0, 5), (1, 2), (2, 0)]
        run_merge(conn, r.plan, NOW)  # what cleanup kept is exactly what the next merge needs
        assert [row[0] for row in r.rows()] == [0, 1, 2, 3, 100, 101, 102, 200]


def test_cleanup_keeps_rows_younger_than_retention_and_rows_above_watermark():
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE)
        r.land([(0, o, {"id": o}, {"id": o, "name": "x"}) for o in range(3)], create_time_ms=CREATE_TIME_MS - 3 * HOUR_MS)
        r.land([(0, o, {"id": o}, {"id": o, "name": "x"}) for o in range(3, 6)], create_time_ms=CREATE_TIME_MS)
        run_merge(conn, r.plan, NOW)
        r.land([(0, 6, {"id": 6}, {"id": 6, "name": "new"})], create_time_ms=CREATE_TIME_MS - 5 * HOUR_MS)
        cleanup(r, NOW, dt.timedelta(hours=2))
        assert r.landing_offsets() == [(0, 3), (0, 4), (0, 5), (0, 6)]
        cleanup(r, NOW + dt.timedelta(days=1), dt.timedelta(hours=2))
        assert r.landing_offsets() == [(0, 6)]  # 5 is at the watermark and not the max; 6 is above it
        cleanup(r, NOW + dt.timedelta(days=1), dt.timedelta(0))
        assert r.landing_offsets() == [(0, 6)]


def test_other_replicas_watermarks_do_not_count():
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE)
        r.land([(0, o, {"id": o}, {"id": o, "name": "x"}) for o in range(4)], create_time_ms=0)
        conn.cursor().execute(
            f'INSERT INTO {r.plan.watermarks.sql} VALUES (%s, 0, 100, NULL)', (TableRef("S", "OTHER").label,)
        )
        cleanup(r, NOW, dt.timedelta(hours=1))
        assert len(r.landing_offsets()) == 4


def test_cleanup_sql_never_truncates_and_needs_an_aware_time():
    plan_tables = (TableRef("S", "L"), TableRef("S", "W"), TableRef("S", "T"))
    stmt = cleanup_sql(*plan_tables, NOW, dt.timedelta(hours=2))
    assert stmt.sql.startswith('DELETE FROM "S"."L" l USING') and "TRUNCATE" not in stmt.sql.upper()
    assert stmt.params == ("S.T", CREATE_TIME_MS - 2 * HOUR_MS)
    with pytest.raises(ValueError, match="timezone-aware"):
        cleanup_sql(*plan_tables, NOW.replace(tzinfo=None), dt.timedelta(hours=2))


def land_raw(r: Replica, rows: list[tuple[dict, dict | None]]) -> None:
    """Landing rows with exactly this RECORD_METADATA and RECORD_CONTENT (None = SQL NULL, as 4.x writes)."""
    import json

    values = ", ".join("(%s, %s)" for _ in rows)
    r.conn.cursor().execute(
        f"INSERT INTO {r.plan.landing.sql} SELECT PARSE_JSON(column1), PARSE_JSON(column2) FROM VALUES {values}",
        tuple(x for meta, content in rows for x in (json.dumps(meta), None if content is None else json.dumps(content))),
    )


def test_both_connector_generations_merge_and_clean_up_whatever_timestamp_they_carry():
    """3.x rows (CreateTime, schema_id, `{}` tombstones), 4.x rows (SnowflakeConnectorPushTime, headers, NULL
    tombstones), LogAppendTime topics, and rows with no timestamp at all: merged alike, and none kept forever."""
    old = CREATE_TIME_MS - 10 * HOUR_MS
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE)
        meta = {"topic": "tidb_test_t", "partition": 0}
        land_raw(r, [
            ({**meta, "offset": 0, "CreateTime": old, "schema_id": 3, "key": {"id": 1}, "key_schema_id": 2},
             {"id": 1, "name": "3.x"}),
            ({**meta, "offset": 1, "CreateTime": old, "schema_id": 0, "key": {"id": 2}}, {}),  # 3.x tombstone
            ({**meta, "offset": 2, "key": {"id": 3}, "LogAppendTime": old}, {"id": 3, "name": "log append"}),
            ({**meta, "offset": 3, "key": {"id": 4}, "SnowflakeConnectorPushTime": old, "headers": {}},
             {"id": 4, "name": "4.x"}),
            ({**meta, "offset": 4, "key": {"id": 1}, "SnowflakeConnectorPushTime": old, "headers": {}}, None),
            ({**meta, "offset": 5, "key": {"id": 5}}, {"id": 5, "name": "no timestamp"}),
            ({**meta, "offset": 6, "key": {"id": 6}, "CreateTime": CREATE_TIME_MS}, {"id": 6, "name": "recent"}),
            ({**meta, "offset": 7, "key": {"id": 7}, "CreateTime": old}, {"id": 7, "name": "last"}),
        ])  # fmt: skip
        land_raw(r, [({**meta, "offset": 8, "key": {"id": 2}, "CreateTime": old}, {"id": 2, "name": "back"})])
        land_raw(r, [({**meta, "offset": 9, "key": {"id": 2}, "SnowflakeConnectorPushTime": old}, None)])
        run_merge(conn, r.plan, NOW)
        # Key 1 deleted by the 4.x NULL tombstone, key 2 re-inserted and deleted again by a 4.x tombstone.
        assert [row[:2] for row in r.rows()] == [(3, "log append"), (4, "4.x"), (5, "no timestamp"),
                                                 (6, "recent"), (7, "last")]
        cleanup(r, NOW, dt.timedelta(hours=1))
        # Every old merged row goes, whichever timestamp it has or lacks; the recent one and the partition's
        # last row stay.
        assert r.landing_offsets() == [(0, 6), (0, 9)]
