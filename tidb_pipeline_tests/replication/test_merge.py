import datetime as dt
import json
import re
from decimal import Decimal

import pytest

from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns
from tidb_pipeline.replication.ddl import add_columns_sql, quote_ident
from tidb_pipeline.replication.merge import (
    MergePlan,
    MergeRange,
    batch_stats_sql,
    counts_sql,
    json_to_sql,
    key_range_sql,
    max_rows_per_key_sql,
    merge_sql,
    merge_transaction,
    parse_ranges,
    pending_ranges_sql,
    run_merge,
    source_sql,
    watermark_statements,
)
from tidb_pipeline_tests.replication.support import (
    ALL_TYPES_KEY,
    ALL_TYPES_VALUE,
    CREATE_TIME_MS,
    KEY,
    NOW,
    Replica,
    avro_round_trip,
    decimal_type,
    fake_snowflake,
    field,
    record,
    small_value,
    with_extension,
)

VALUE = small_value()
RANGES = (MergeRange(0, -1, 9), MergeRange(2, 4, 7))


def v(i: int, name: str | None, price: str = "1.00", commit_ts: int = 1) -> dict:
    value = {"id": i, "name": name, "price": Decimal(price), "_tidb_op": "c", "_tidb_commit_ts": commit_ts}
    return {**value, "_tidb_commit_physical_time": commit_ts}


def k(i: int) -> dict:
    return {"id": i}


@pytest.fixture
def replica():
    with fake_snowflake() as conn:
        yield Replica(conn, KEY, VALUE)


def merge(r: Replica, **kwargs):
    counts, _ = run_merge(r.conn, r.plan, NOW, **kwargs)
    return counts


def counts_of(c) -> tuple[int, int, int]:
    return (c.inserted, c.updated, c.deleted)


# --- SQL shape -------------------------------------------------------------------------------------------


def _plan() -> MergePlan:
    from tidb_pipeline.replication.ddl import TableRef

    return MergePlan(TableRef("S", "T"), TableRef("S", "L"), TableRef("S", "W"), replica_columns(VALUE, KEY))


def test_every_statement_binds_exactly_its_placeholders():
    plan = _plan()
    statements = [
        pending_ranges_sql(plan),
        pending_ranges_sql(plan, 100),
        source_sql(plan, RANGES),
        max_rows_per_key_sql(plan, RANGES),
        key_range_sql(plan, RANGES),
        counts_sql(plan, RANGES),
        batch_stats_sql(plan, RANGES),
        merge_sql(plan, RANGES),
        merge_sql(plan, RANGES, (1, 9)),
        *watermark_statements(plan, RANGES, NOW),
    ]
    for stmt in statements:
        assert stmt.sql.count("%s") == len(stmt.params), stmt.sql


def test_merge_casts_only_inside_using_and_keeps_latest_per_key():
    sql = merge_sql(_plan(), RANGES, (1, 9)).sql
    using, clauses = sql.rsplit(") s ON ", 1)
    assert "::" not in clauses  # fakesnow quirk: plain s."col" in SET / VALUES
    assert clauses.splitlines()[0] == 't."id" = s."id" AND t."id" >= %s AND t."id" <= %s'
    assert clauses.splitlines()[1:] == [
        'WHEN MATCHED AND s."__TP_DELETE" THEN DELETE',
        'WHEN MATCHED THEN UPDATE SET "name" = s."name", "price" = s."price"',
        'WHEN NOT MATCHED AND NOT s."__TP_DELETE" THEN INSERT ("id", "name", "price") '
        'VALUES (s."id", s."name", s."price")',
    ]
    assert 'QUALIFY ROW_NUMBER() OVER (PARTITION BY "id" ORDER BY b."__TP_OFFSET" DESC' in using
    assert 'STRIP_NULL_VALUE(l."RECORD_METADATA":"key":"id")::NUMBER(19,0) AS "id"' in using


def test_key_only_table_has_no_update_clause():
    from tidb_pipeline.replication.ddl import TableRef

    columns = replica_columns(record("t", [field("a", "int", "INT"), field("b", "string", "TEXT")]), record("t", [field("a", "int", "INT"), field("b", "string", "TEXT")]))
    sql = merge_sql(MergePlan(TableRef("S", "T"), TableRef("S", "L"), TableRef("S", "W"), columns), RANGES).sql
    assert "UPDATE" not in sql and 'PARTITION BY "a", "b"' in sql


def test_json_conversions_per_type():
    got = {c.name: json_to_sql(c, "v") for c in replica_columns(ALL_TYPES_VALUE, ALL_TYPES_KEY)}
    x = "STRIP_NULL_VALUE(v)"  # JSON null -> SQL NULL before every cast
    ts = (f"IFF(CONTAINS({x}::VARCHAR, '.'), TRY_TO_TIMESTAMP_NTZ({x}::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF'), "
          f"TRY_TO_TIMESTAMP_NTZ({x}::VARCHAR, 'YYYY-MM-DD HH24:MI:SS'))")
    assert got == {
        "id": f"{x}::NUMBER(19,0)",
        "c_int": f"{x}::NUMBER(10,0)",
        "c_int_unsigned": f"{x}::NUMBER(10,0)",
        "c_int_unsigned_long": f"{x}::NUMBER(10,0)",
        "c_bigint": f"{x}::NUMBER(19,0)",
        "c_bigint_unsigned": f"IFF({x}::NUMBER(20,0) < 0, {x}::NUMBER(20,0) + 18446744073709551616, {x}::NUMBER(20,0))::NUMBER(20,0)",
        "c_bigint_unsigned_str": f"{x}::NUMBER(20,0)",
        "c_float": f"{x}::FLOAT",
        "c_double": f"{x}::FLOAT",
        "c_decimal": f"{x}::NUMBER(10,2)",
        "c_decimal_wide": f"{x}::VARCHAR",
        "c_decimal_str": f"{x}::VARCHAR",
        "c_text": f"{x}::VARCHAR",
        "c_blob": f"BASE64_DECODE_BINARY({x}::VARCHAR)",
        "c_bit": f"BASE64_DECODE_BINARY({x}::VARCHAR)",
        "c_enum": f"{x}::VARCHAR",
        "c_set": f"{x}::VARCHAR",
        "c_json": f"TRY_PARSE_JSON({x}::VARCHAR)",
        "c_date": f"TRY_TO_DATE({x}::VARCHAR, 'YYYY-MM-DD')",
        "c_datetime": ts,
        "c_timestamp": ts,
        "c_time": f"{x}::VARCHAR",
        "c_year": f"{x}::NUMBER(4,0)",
    }


def test_internal_column_names_cannot_be_shadowed():
    from tidb_pipeline.replication.ddl import TableRef

    cols = (ReplicaColumn("id", "NUMBER(19,0)", False, "BIGINT", True, "long"), ReplicaColumn("__TP_DELETE", "VARCHAR", True, "TEXT", False, "string"))
    with pytest.raises(ValueError, match="reserved by the merge"):
        MergePlan(TableRef("S", "T"), TableRef("S", "L"), TableRef("S", "W"), cols)


# --- execution on fakesnow -------------------------------------------------------------------------------


def test_many_updates_between_merges_end_at_the_latest_value(replica):
    replica.land([(0, o, k(1), v(1, f"n{o}", f"{o}.25")) for o in range(10)] + [(1, 0, k(2), v(2, None))])
    assert counts_of(merge(replica)) == (2, 0, 0)
    assert replica.rows() == [(1, "n9", Decimal("9.25")), (2, None, Decimal("1.00"))]
    assert replica.watermarks() == [(0, 9), (1, 0)]
    replica.land([(0, 10 + o, k(1), v(1, f"m{o}")) for o in range(5)])
    c = merge(replica)
    assert (counts_of(c), c.source_rows, c.landing_rows) == ((0, 1, 0), 1, 5)
    assert replica.rows() == [(1, "m4", Decimal("1.00")), (2, None, Decimal("1.00"))]


def test_insert_then_delete_in_one_batch_ends_absent(replica):
    replica.land([(0, 0, k(1), v(1, "a")), (0, 1, k(1), v(1, "b")), (0, 2, k(1), None), (0, 3, k(2), v(2, "x"))])
    assert counts_of(merge(replica)) == (1, 0, 0)
    assert replica.rows() == [(2, "x", Decimal("1.00"))]


def test_delete_then_reinsert_in_one_batch_ends_present(replica):
    replica.land([(0, 0, k(1), v(1, "a"))])
    merge(replica)
    replica.land([(0, 1, k(1), None), (0, 2, k(1), v(1, "again", "2.00"))])
    assert counts_of(merge(replica)) == (0, 1, 0)
    assert replica.rows() == [(1, "again", Decimal("2.00"))]


def test_delete_across_merges_and_primary_key_change_across_partitions(replica):
    replica.land([(0, 0, k(1), v(1, "a")), (1, 0, k(2), v(2, "b"))])
    merge(replica)
    # UPDATE t SET id = 11 WHERE id = 1 -> delete(1) in partition 0 + insert(11) in partition 2.
    replica.land([(0, 1, k(1), None), (2, 0, k(11), v(11, "a")), (1, 1, k(2), None)])
    assert counts_of(merge(replica)) == (1, 0, 2)
    assert replica.rows() == [(11, "a", Decimal("1.00"))]


def test_replays_converge(replica):
    log = [(0, 0, k(1), v(1, "a", commit_ts=10)), (0, 1, k(1), v(1, "b", commit_ts=20)), (0, 2, k(2), v(2, "c", commit_ts=30))]
    replica.land(log)
    merge(replica)
    expected = [(1, "b", Decimal("1.00")), (2, "c", Decimal("1.00"))]
    # The connector's at-least-once delivery: the same (partition, offset) rows land again.
    replica.land(log)
    assert counts_of(merge(replica)) == (0, 0, 0)
    assert replica.rows() == expected
    # TiCDC restarts from an old checkpoint: old changes re-sent at higher offsets with older commit ts,
    # followed by everything after them; some are merged in the middle of the replay.
    replica.land([(0, 3, k(1), v(1, "a", commit_ts=10)), (0, 4, k(1), v(1, "b", commit_ts=20))])
    merge(replica)
    replica.land([(0, 5, k(2), v(2, "c", commit_ts=30)), (0, 6, k(2), None)])
    merge(replica)
    assert replica.rows() == [(1, "b", Decimal("1.00"))]


def test_rerunning_a_merge_changes_nothing(replica):
    replica.land([(0, 0, k(1), v(1, "a")), (0, 1, k(2), v(2, "b")), (0, 2, k(2), None), (1, 0, k(3), v(3, None))])
    merge(replica)
    rows, marks = replica.rows(), replica.watermarks()
    for _ in range(2):
        assert counts_of(merge(replica)) == (0, 0, 0)
        assert (replica.rows(), replica.watermarks()) == (rows, marks)


def test_merge_source_has_exactly_one_row_per_key(replica):
    versions = [(0, o, k(o % 3), None if o in (4, 9) else v(o % 3, f"n{o}")) for o in range(12)]
    replica.land(versions + versions[5:])  # duplicates of the same (partition, offset) too
    cur = replica.conn.cursor()
    ranges = (MergeRange(0, -1, 11),)
    stmt = source_sql(replica.plan, ranges)
    cur.execute(stmt.sql, stmt.params)
    rows = sorted(tuple(r) for r in cur.fetchall())
    # Latest per key: key 0 at offset 9 (a delete), key 1 at 10, key 2 at 11 (with key text, partition, offset).
    assert rows == [(0, None, None, True, '{"id":0}', 0, 9), (1, "n10", Decimal("1.00"), False, '{"id":1}', 0, 10),
                    (2, "n11", Decimal("1.00"), False, '{"id":2}', 0, 11)]
    stmt = max_rows_per_key_sql(replica.plan, ranges)
    cur.execute(stmt.sql, stmt.params)
    assert cur.fetchall() == [(1,)]


def test_batch_stats_equal_the_separate_queries(replica):
    # run_merge reads counts, the one-row-per-key proof and the prune's key range in one statement.
    replica.land([(0, 0, k(5), v(5, "a")), (0, 1, k(7), v(7, "b"))])
    merge(replica)
    replica.land([(0, 2, k(5), v(5, "a2")), (0, 3, k(5), None), (0, 4, k(7), v(7, "b2"))],
                 create_time_ms=CREATE_TIME_MS + 1000)
    replica.land([(1, 0, k(3), v(3, "c")), (1, 1, k(9), v(9, "d")), (1, 2, k(9), None), (0, 4, k(7), v(7, "b2"))],
                 create_time_ms=CREATE_TIME_MS + 5000)
    cur = replica.conn.cursor()
    ranges = (MergeRange(0, 1, 4), MergeRange(1, -1, 2))

    def one(stmt):
        cur.execute(stmt.sql, stmt.params)
        return tuple(cur.fetchall()[0])

    stats = one(batch_stats_sql(replica.plan, ranges))
    separate = (*one(counts_sql(replica.plan, ranges)), *one(max_rows_per_key_sql(replica.plan, ranges)),
                *one(key_range_sql(replica.plan, ranges)))
    # Inserted 3, updated 7, deleted 5; keys 3, 5, 7, 9 from 7 landing rows (one a duplicate delivery).
    # Then: no unconverted-value records for the replica (this table has no column that can fail), and the
    # oldest and newest record time of the landing rows read (what the cleanup gate waits on).
    assert stats[:8] == separate == (1, 1, 1, 4, 7, 1, 3, 9)
    assert stats[8:] == (0, CREATE_TIME_MS + 1000, CREATE_TIME_MS + 5000)  # the merged rows at offsets 0, 1 excluded


def test_rows_landing_during_a_merge_are_left_for_the_next_one(replica):
    replica.land([(0, 0, k(1), v(1, "a"))])
    cur = replica.conn.cursor()
    stmt = pending_ranges_sql(replica.plan)
    cur.execute(stmt.sql, stmt.params)
    ranges = parse_ranges(cur.fetchall())
    assert ranges == (MergeRange(0, -1, 0),)
    replica.land([(0, 1, k(1), v(1, "late")), (0, 2, k(2), v(2, "late"))])  # lands after the ranges were fixed
    replica.conn.autocommit(False)
    for stmt in merge_transaction(replica.plan, ranges, NOW).statements:
        cur.execute(stmt.sql, stmt.params or None)
    replica.conn.autocommit(True)
    assert replica.rows() == [(1, "a", Decimal("1.00"))]
    assert replica.watermarks() == [(0, 0)]
    merge(replica)
    assert replica.rows() == [(1, "late", Decimal("1.00")), (2, "late", Decimal("1.00"))]


@pytest.mark.parametrize("kwargs", [{"prune": False}, {"prune": True}, {"max_offsets_per_partition": 2}])
def test_pruned_unpruned_and_capped_merges_agree(replica, kwargs):
    replica.land([(p, o, k(10 * o + p), v(10 * o + p, f"{p}/{o}")) for p in range(3) for o in range(5)])
    replica.land([(0, 5, k(0), None), (1, 5, k(41), v(41, "changed"))])
    rounds = 0
    while merge(replica, **kwargs).landing_rows:
        rounds += 1
    assert rounds == (3 if "max_offsets_per_partition" in kwargs else 1)
    expected = sorted(
        [(10 * o + p, f"{p}/{o}", Decimal("1.00")) for p in range(3) for o in range(5) if (p, o) not in ((0, 0), (1, 4))]
        + [(41, "changed", Decimal("1.00"))]
    )
    assert replica.rows() == expected


def test_every_type_round_trips_into_the_typed_replica():
    full = {
        "id": 1,
        "c_int": -5,
        "c_int_unsigned": 16777215,
        "c_int_unsigned_long": 4294967295,
        "c_bigint": -(2**63),
        "c_bigint_unsigned": -1,
        "c_bigint_unsigned_str": "18446744073709551615",
        "c_float": 1.1,
        "c_double": 0.1 + 0.2,
        "c_decimal": Decimal("-12345678.90"),
        "c_decimal_wide": Decimal("12345678901234567890123456789012345.123456789012345678901234567890"),
        "c_decimal_str": "123456789012345678901234567890.1234",
        "c_text": 'é "q"\n\\ 日本',
        "c_blob": bytes(range(256)),
        "c_bit": b"\x02\x01",
        "c_enum": "b",
        "c_set": "a,c",
        "c_json": '{"k": [1, null, "x"], "n": 1.5}',
        "c_date": "2024-02-29",
        "c_datetime": "2024-02-29 23:59:59.123456",
        "c_timestamp": "1970-01-01 00:00:01",
        "c_time": "-838:59:59",
        "c_year": 2155,
    }
    small = {**{name: None for name in full}, "id": 2, "c_bigint_unsigned": 5, "c_bigint_unsigned_str": "5", "c_json": "null"}
    nulls = {**{name: None for name in full}, "id": 3}
    ext = {"_tidb_op": "c", "_tidb_commit_ts": 1, "_tidb_commit_physical_time": 1}
    with fake_snowflake() as conn:
        r = Replica(conn, ALL_TYPES_KEY, ALL_TYPES_VALUE)
        r.land([(0, i, {"id": row["id"]}, avro_round_trip(ALL_TYPES_VALUE, {**row, **ext})) for i, row in enumerate((full, small, nulls))])
        assert counts_of(merge(r)) == (3, 0, 0)
        cur = conn.cursor()
        cur.execute(f'SELECT * FROM {r.plan.replica.sql} ORDER BY "id"')
        names = [d.name for d in cur.description]
        got = [dict(zip(names, row)) for row in cur.fetchall()]
    for row in got:  # fakesnow hands VARIANT back as JSON text
        row["c_json"] = None if row["c_json"] is None else json.loads(row["c_json"])
    assert got == [
        {
            **full,
            "c_bigint_unsigned": 2**64 - 1,
            "c_bigint_unsigned_str": 2**64 - 1,
            "c_json": {"k": [1, None, "x"], "n": 1.5},
            "c_decimal_wide": "12345678901234567890123456789012345.123456789012345678901234567890",
            "c_date": dt.date(2024, 2, 29),
            "c_datetime": dt.datetime(2024, 2, 29, 23, 59, 59, 123456),
            "c_timestamp": dt.datetime(1970, 1, 1, 0, 0, 1),
        },
        # JSON text `null` -> a VARIANT null in Snowflake; fakesnow hands it back as None.
        {**small, "c_bigint_unsigned_str": 5, "c_json": None},
        nulls,
    ]
    assert [type(got[0][c]) for c in ("c_decimal", "c_blob", "c_float")] == [Decimal, bytes, float]


def test_new_column_in_newer_schema_is_added_before_the_merge(replica):
    replica.land([(0, 0, k(1), v(1, "a"))])
    merge(replica)
    newer = with_extension(
        record("t", [*VALUE["fields"][:3], field("Added Col", decimal_type(8, 3), "DECIMAL", nullable=True)])
    )
    wider = Replica(replica.conn, KEY, newer)  # same tables; CREATE ... IF NOT EXISTS is a no-op
    cur = replica.conn.cursor()
    for sql in add_columns_sql(wider.plan.replica, ["id", "name", "price"], wider.plan.columns):
        cur.execute(sql)
    wider.land([(0, 1, k(2), {**v(2, "b"), "Added Col": Decimal("1.250")}), (0, 2, k(1), {**v(1, "a2"), "Added Col": None})])
    assert counts_of(merge(wider)) == (1, 1, 0)
    assert wider.rows() == [(1, "a2", Decimal("1.00"), None), (2, "b", Decimal("1.00"), Decimal("1.250"))]


def test_sql_injection_shaped_text_is_data(replica):
    evil = "x'); DROP TABLE \"S\".\"T\"; --"
    replica.land([(0, 0, k(1), v(1, evil))])
    merge(replica)
    assert replica.rows() == [(1, evil, Decimal("1.00"))]
    assert re.search(r"DROP", merge_sql(replica.plan, RANGES).sql) is None


def _unconverted(conn, plan) -> list[tuple]:
    cur = conn.cursor()
    cur.execute(f'SELECT "COLUMN_NAME", "KEY", "RAW_VALUE", "PARTITION", "OFFSET" FROM {plan.unconverted.sql} '
                'WHERE "REPLICA_TABLE" = %s ORDER BY 1, 2', (plan.replica.label,))
    return [tuple(r) for r in cur.fetchall()]


def test_values_that_do_not_convert_become_null_and_are_recorded_per_key():
    """TiDB zero dates (and any text that does not convert) never fail the MERGE: NULL, counted and recorded."""
    ext = {"_tidb_op": "c", "_tidb_commit_ts": 1, "_tidb_commit_physical_time": 1}
    nulls = {f["name"]: None for f in ALL_TYPES_VALUE["fields"] if f["name"] not in ext}

    def row(i: int, **values) -> dict:
        return avro_round_trip(ALL_TYPES_VALUE, {**nulls, "id": i, **values, **ext})

    zero = {"c_date": "0000-00-00", "c_datetime": "0000-00-00 00:00:00", "c_timestamp": "2024-00-10 00:00:00.123",
            "c_json": "{not json"}
    good = {"c_date": "2024-02-29", "c_datetime": "2024-02-29 23:59:59.5", "c_timestamp": "9999-12-31 23:59:59",
            "c_json": "null"}
    with fake_snowflake() as conn:
        r = Replica(conn, ALL_TYPES_KEY, ALL_TYPES_VALUE)
        r.land([(0, 0, {"id": 1}, row(1, **zero)), (0, 1, {"id": 2}, row(2, **good))])
        counts, _ = run_merge(conn, r.plan, NOW)
        assert counts.unconverted == (("c_json", 1), ("c_date", 1), ("c_datetime", 1), ("c_timestamp", 1))
        cur = conn.cursor()
        cur.execute(f'SELECT "id", "c_date", "c_datetime", "c_timestamp", "c_json" FROM {r.plan.replica.sql} ORDER BY 1')
        assert [tuple(x) for x in cur.fetchall()] == [
            (1, None, None, None, None),
            # JSON text `null` is a VARIANT null (read back as the text 'null', as Snowflake does), not unconverted.
            (2, dt.date(2024, 2, 29), dt.datetime(2024, 2, 29, 23, 59, 59, 500000), dt.datetime(9999, 12, 31, 23, 59, 59),
             "null"),
        ]
        assert _unconverted(conn, r.plan) == [
            ("c_date", '{"id":1}', "0000-00-00", 0, 0),
            ("c_datetime", '{"id":1}', "0000-00-00 00:00:00", 0, 0),
            ("c_json", '{"id":1}', "{not json", 0, 0),
            ("c_timestamp", '{"id":1}', "2024-00-10 00:00:00.123", 0, 0),
        ]
        # A later version of the key replaces its records: only what still does not convert stays listed.
        r.land([(0, 2, {"id": 1}, row(1, **{**good, "c_datetime": zero["c_datetime"]})),
                (0, 3, {"id": 2}, row(2, **good))])
        counts, _ = run_merge(conn, r.plan, NOW)
        assert counts.unconverted == (("c_datetime", 1),)
        assert _unconverted(conn, r.plan) == [("c_datetime", '{"id":1}', "0000-00-00 00:00:00", 0, 2)]
        # A batch that does not touch the key leaves its record; deleting the key forgets it.
        r.land([(0, 4, {"id": 3}, row(3, **good))])
        assert run_merge(conn, r.plan, NOW)[0].unconverted == ()
        assert len(_unconverted(conn, r.plan)) == 1
        r.land([(0, 5, {"id": 1}, None)])
        run_merge(conn, r.plan, NOW)
        assert _unconverted(conn, r.plan) == []
        assert [x[0] for x in r.rows()] == [2, 3]


def test_json_null_is_sql_null_in_every_type():
    """A JSON `null` in the landing content becomes SQL NULL in every column type (no epoch, no text 'null')."""
    ext = {"_tidb_op": "c", "_tidb_commit_ts": 1, "_tidb_commit_physical_time": 1}
    names = [f["name"] for f in ALL_TYPES_VALUE["fields"] if f["name"] not in ext and f["name"] != "id"]
    with fake_snowflake() as conn:
        r = Replica(conn, ALL_TYPES_KEY, ALL_TYPES_VALUE)
        r.land([(0, 0, {"id": 1}, avro_round_trip(ALL_TYPES_VALUE, {**{n: None for n in names}, "id": 1, **ext}))])
        assert run_merge(conn, r.plan, NOW)[0].unconverted == ()
        cur = conn.cursor()
        cur.execute(f"SELECT {', '.join(f'{quote_ident(n)} IS NULL' for n in names)} FROM {r.plan.replica.sql}")
        assert dict(zip(names, cur.fetchone())) == {n: True for n in names}
        assert _unconverted(conn, r.plan) == []
