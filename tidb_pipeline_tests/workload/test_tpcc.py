"""TPC-C: go-tpc's schema, exact load sizes, the spec's consistency conditions after a run, summary arithmetic."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest

from tidb_pipeline.lab.mariadb import MariaDBService
from tidb_pipeline.workload import schema, tpcc
from tidb_pipeline.workload.cli import register
from tidb_pipeline_tests.workload.mariadb_fixture import private_mariadb  # noqa: F401 - fixture

SCALE = 0.01
WAREHOUSES = 2


def _kw(svc: MariaDBService) -> dict[str, Any]:
    return {k: v for k, v in svc.connect_kwargs().items() if k in ("host", "port", "user", "password")}


def _counts(conn: pymysql.Connection) -> dict[str, int]:
    out = {}
    with conn.cursor() as cur:
        for table in schema.TABLES:
            cur.execute(f"SELECT COUNT(*) FROM {schema.quote_ident(table)}")
            out[table] = cur.fetchone()[0]
    conn.commit()
    return out


@dataclass(frozen=True)
class Prepared:
    kw: dict[str, Any]
    database: str
    result: tpcc.PrepareResult
    counts_after_load: dict[str, int]
    progress_text: str


@pytest.fixture(scope="module")
def prepared(private_mariadb: MariaDBService) -> Iterator[Prepared]:  # noqa: F811
    kw = _kw(private_mariadb)
    out = io.StringIO()
    result = tpcc.prepare(kw, database="tpcc_t", warehouses=WAREHOUSES, scale=SCALE, seed=7, progress=out)
    with pymysql.connect(database="tpcc_t", **kw) as conn:
        counts = _counts(conn)
    yield Prepared(kw, "tpcc_t", result, counts, out.getvalue())


# --- no server -----------------------------------------------------------------------------------------


def test_full_scale_sizes_are_the_spec_cardinalities() -> None:
    sizes = tpcc.Sizes.of(3)
    assert sizes.expected_rows() == {
        "item": 100_000, "warehouse": 3, "stock": 300_000, "district": 30, "customer": 90_000,
        "history": 90_000, "orders": 90_000, "new_order": 27_000,
    }
    assert sizes.delivered_orders_per_district == 2_100
    assert sizes.last_names == 1000


def test_scaled_sizes_shrink_proportionally() -> None:
    sizes = tpcc.Sizes.of(2, 0.01)
    assert (sizes.items, sizes.customers_per_district, sizes.new_orders_per_district) == (1000, 30, 9)
    assert sizes.last_names == 30


@pytest.mark.parametrize("warehouses, scale", [(0, 1.0), (1, 0.0), (1, 1.5)])
def test_sizes_refuse_nonsense(warehouses: int, scale: float) -> None:
    with pytest.raises(ValueError, match="warehouses=|scale="):
        tpcc.Sizes.of(warehouses, scale)


def test_last_names_follow_the_syllable_table() -> None:
    # Clause 4.3.2.3 gives 371 -> PRICALLYOUGHT as its example.
    assert tpcc.last_name(371) == "PRICALLYOUGHT"
    assert tpcc.last_name(0) == "BARBARBAR"
    assert tpcc.last_name(999) == "EINGEINGEING"


def test_decimal_literals_are_exact() -> None:
    assert [tpcc._cents(v) for v in (0, 5, -1000, 999_999)] == ["0.00", "0.05", "-10.00", "9999.99"]
    assert tpcc._cents(2000, 4) == "0.2000"


def test_nurand_stays_in_range() -> None:
    rnd = tpcc.Rand(1, tpcc._Pools(1))
    values = [rnd.nurand(1023, 1, 30, tpcc.C_CUSTOMER_ID) for _ in range(5000)]
    assert min(values) == 1 and max(values) == 30


def test_summary_arithmetic() -> None:
    t = tpcc._Tally
    tallies = [
        {n: t() for n in tpcc.TRANSACTIONS} | {"new_order": t(ok=10, rolled_back=1, latencies_ms=[1.0] * 11)},
        {n: t() for n in tpcc.TRANSACTIONS} | {"new_order": t(ok=9, errors=2, retries=3, latencies_ms=[3.0] * 9),
                                               "payment": t(ok=5, latencies_ms=[2.0] * 5)},
    ]
    s = tpcc.summarize(tallies, 30.0, 2, 1, delivered=4, error_samples=["x"])
    no = s.of("new_order")
    assert (no.committed, no.rolled_back, no.errors, no.retries) == (19, 1, 2, 3)
    assert s.completed == 25 and s.errors == 2
    assert s.tpmc == pytest.approx(20 * 60 / 30.0)
    text = tpcc.format_summary(s)
    assert "tpmC 40.0" in text and "delivered orders 4" in text and "error: x" in text


# --- against MariaDB -----------------------------------------------------------------------------------


def _keys(conn: pymysql.Connection, database: str) -> dict[str, dict[str, list[str]]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT table_name, index_name, column_name FROM information_schema.statistics "
            "WHERE table_schema = %s ORDER BY table_name, index_name, seq_in_index",
            (database,),
        )
        out: dict[str, dict[str, list[str]]] = {t: {} for t in schema.TABLES}
        for table, index, column in cur.fetchall():
            out[table].setdefault(index, []).append(column)
    return out


def test_schema_is_go_tpcs(prepared: Prepared) -> None:
    with pymysql.connect(**prepared.kw) as conn:
        keys = _keys(conn, prepared.database)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_name, column_name, column_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = 'order_line' ORDER BY ordinal_position",
                (prepared.database,),
            )
            order_line = [tuple(r) for r in cur.fetchall()]
    assert keys == {
        "warehouse": {"PRIMARY": ["w_id"]},
        "district": {"PRIMARY": ["d_w_id", "d_id"]},
        "customer": {
            "PRIMARY": ["c_w_id", "c_d_id", "c_id"], "idx_customer": ["c_w_id", "c_d_id", "c_last", "c_first"],
        },
        "history": {"idx_h_w_id": ["h_w_id"], "idx_h_c_w_id": ["h_c_w_id"]},
        "new_order": {"PRIMARY": ["no_w_id", "no_d_id", "no_o_id"]},
        "orders": {"PRIMARY": ["o_w_id", "o_d_id", "o_id"], "idx_order": ["o_w_id", "o_d_id", "o_c_id", "o_id"]},
        "order_line": {"PRIMARY": ["ol_w_id", "ol_d_id", "ol_o_id", "ol_number"]},
        "stock": {"PRIMARY": ["s_w_id", "s_i_id"]},
        "item": {"PRIMARY": ["i_id"]},
    }
    assert schema.INELIGIBLE_FOR_CDC == {t for t, idx in keys.items() if "PRIMARY" not in idx}
    assert order_line == [
        ("order_line", "ol_o_id", "int(11)", "NO"), ("order_line", "ol_d_id", "int(11)", "NO"),
        ("order_line", "ol_w_id", "int(11)", "NO"), ("order_line", "ol_number", "int(11)", "NO"),
        ("order_line", "ol_i_id", "int(11)", "NO"), ("order_line", "ol_supply_w_id", "int(11)", "YES"),
        ("order_line", "ol_delivery_d", "datetime", "YES"), ("order_line", "ol_quantity", "int(11)", "YES"),
        ("order_line", "ol_amount", "decimal(6,2)", "YES"), ("order_line", "ol_dist_info", "char(24)", "YES"),
    ]


def test_prepare_loads_exact_row_counts(prepared: Prepared) -> None:
    sizes = tpcc.Sizes.of(WAREHOUSES, SCALE)
    counts = prepared.counts_after_load
    with pymysql.connect(database=prepared.database, **prepared.kw) as conn, conn.cursor() as cur:
        cur.execute("SELECT SUM(o_ol_cnt) FROM orders")
        ol_expected = int(cur.fetchone()[0])
    assert counts == {**sizes.expected_rows(), "order_line": ol_expected}
    assert {
        "item": 1000, "warehouse": 2, "stock": 2000, "district": 20, "customer": 600, "history": 600,
        "orders": 600, "new_order": 180,
    } == sizes.expected_rows()
    assert 5 * 600 <= ol_expected <= 15 * 600
    assert prepared.result.rows == counts
    assert "100.0%" in prepared.progress_text and "rows/s" in prepared.progress_text


def test_loaded_data_has_the_spec_shape(prepared: Prepared) -> None:
    sizes = tpcc.Sizes.of(WAREHOUSES, SCALE)
    with pymysql.connect(database=prepared.database, **prepared.kw) as conn, conn.cursor() as cur:
        # Undelivered orders are exactly the last 30 % of each district, and only they lack a carrier.
        cur.execute("SELECT no_w_id, no_d_id, MIN(no_o_id), MAX(no_o_id) FROM new_order GROUP BY no_w_id, no_d_id")
        ranges = {(w, d): (lo, hi) for w, d, lo, hi in cur.fetchall()}
        cur.execute("SELECT MAX(o_id) FROM orders WHERE o_carrier_id IS NOT NULL")
        max_delivered = cur.fetchone()[0]
        cur.execute("SELECT COUNT(DISTINCT c_last) FROM customer")
        last_names = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*) FROM item WHERE i_data LIKE %s", ("%ORIGINAL%",))
        original = cur.fetchone()[0]
    expected_range = (sizes.delivered_orders_per_district + 1, sizes.orders_per_district)
    assert ranges == {(w, d): expected_range for w in (1, 2) for d in range(1, 11)}
    assert max_delivered == sizes.delivered_orders_per_district
    assert last_names == sizes.last_names
    assert 40 <= original <= 170  # ~10 % of 1000 items


def test_loaded_data_meets_the_consistency_conditions(prepared: Prepared) -> None:
    # Runs before the mix in this module's order; the run test re-checks afterwards.
    with pymysql.connect(database=prepared.database, **prepared.kw) as conn:
        assert _counts(conn) == prepared.counts_after_load, "another test changed the data before this check"
        found = tpcc.check_consistency(conn)
    assert found == {name: [] for name in tpcc.CONSISTENCY_CHECKS}


def test_prepare_refuses_a_loaded_database(prepared: Prepared) -> None:
    with pytest.raises(RuntimeError, match="already holds TPC-C data"):
        tpcc.prepare(prepared.kw, database=prepared.database, warehouses=1, scale=SCALE)


def test_same_seed_loads_the_same_data(prepared: Prepared) -> None:
    tpcc.prepare(prepared.kw, database="tpcc_again", warehouses=WAREHOUSES, scale=SCALE, seed=7, workers=3)
    query = (
        "SELECT COUNT(*), SUM(ol_amount), SUM(ol_i_id), SUM(CRC32(ol_dist_info)) FROM order_line "
        "UNION ALL SELECT COUNT(*), SUM(c_balance), SUM(CRC32(c_last)), SUM(CRC32(c_data)) FROM customer"
    )
    fingerprints = []
    for database in (prepared.database, "tpcc_again"):
        with pymysql.connect(database=database, **prepared.kw) as conn, conn.cursor() as cur:
            cur.execute(query)
            fingerprints.append(cur.fetchall())
    assert fingerprints[0] == fingerprints[1]


def test_run_keeps_consistency_and_its_counts_add_up(prepared: Prepared) -> None:
    with pymysql.connect(database=prepared.database, **prepared.kw) as conn:
        before = _counts(conn)
    out = io.StringIO()
    summary = tpcc.run(prepared.kw, database=prepared.database, duration_s=4, threads=3, seed=3,
                       progress=out, report_every_s=1)
    with pymysql.connect(database=prepared.database, **prepared.kw) as conn:
        after = _counts(conn)
        found = tpcc.check_consistency(conn)

    assert found == {name: [] for name in tpcc.CONSISTENCY_CHECKS}
    no, pay = summary.of("new_order"), summary.of("payment")
    assert summary.errors == 0, summary.error_samples
    assert all(t.committed > 0 for t in summary.transactions), tpcc.format_summary(summary)
    assert no.rolled_back > 0
    # Every committed New-Order wrote one order; every Payment one history row; Delivery removed new_orders.
    assert after["orders"] - before["orders"] == no.committed
    assert after["history"] - before["history"] == pay.committed
    assert after["new_order"] - before["new_order"] == no.committed - summary.delivered_orders
    for unchanged in ("item", "stock", "warehouse", "district", "customer"):
        assert after[unchanged] == before[unchanged]
    assert summary.completed == sum(t.committed + t.rolled_back for t in summary.transactions)
    assert summary.tpmc == pytest.approx(no.completed * 60 / summary.seconds)
    assert 4 <= summary.seconds < 8
    text = out.getvalue()
    assert "tpmC" in text and "TPC-C summary" in text and text.count("[") >= 2


def test_a_paced_run_starts_at_most_the_rate_asked(prepared: Prepared) -> None:
    summary = tpcc.run(prepared.kw, database=prepared.database, duration_s=3, threads=2, seed=4, rate_tps=10)
    # 10 transactions/s for 3 s, spread over 2 threads: 30 starts, plus at most one per thread at the edges.
    assert 20 <= summary.completed + summary.errors <= 32, tpcc.format_summary(summary)
    assert summary.errors == 0, summary.error_samples
    with pytest.raises(ValueError, match="rate_tps=0 must be positive"):
        tpcc.run(prepared.kw, database=prepared.database, duration_s=1, rate_tps=0)


def test_a_counted_run_stops_at_the_count(prepared: Prepared) -> None:
    summary = tpcc.run(prepared.kw, database=prepared.database, duration_s=600, threads=3, seed=5, transactions=37)
    assert summary.completed + summary.errors == 37 and summary.errors == 0, tpcc.format_summary(summary)
    assert summary.seconds < 600
    with pytest.raises(ValueError, match="transactions=0 must be at least 1"):
        tpcc.run(prepared.kw, database=prepared.database, transactions=0)


def test_cli_prepare_reads_the_environment_and_hides_the_password(
    private_mariadb: MariaDBService,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kw = _kw(private_mariadb)
    monkeypatch.setenv("TIDB_HOST", kw["host"])
    monkeypatch.setenv("TIDB_PORT", str(kw["port"]))
    monkeypatch.setenv("TIDB_USER", kw["user"])
    monkeypatch.setenv("TIDB_PASSWORD", kw["password"])
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))

    args = parser.parse_args(["workload", "prepare", "--warehouses", "1", "--scale", "0.001", "--database", "tpcc_cli"])
    assert args.func(args) == 0
    args = parser.parse_args(["workload", "run", "--duration", "2s", "--threads", "2", "--database", "tpcc_cli"])
    assert args.func(args) == 0
    args = parser.parse_args(["workload", "check", "--database", "tpcc_cli"])
    assert args.func(args) == 0

    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert kw["password"] not in out
    table_lines = [line.split() for line in captured.out.splitlines()]
    loaded = dict(words for words in table_lines if len(words) == 2 and words[0] in schema.TABLES)
    assert {k: v for k, v in loaded.items() if k != "order_line"} == {
        "warehouse": "1", "district": "10", "customer": "100", "history": "100", "new_order": "30", "orders": "100",
        "stock": "100", "item": "100",
    }
    assert "history has no primary or unique key" in out
    assert "tpmC" in out and "FAIL" not in out


def test_deadlocks_are_retried_and_other_failures_counted(
    prepared: Prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}

    def flaky(cur: Any, ctx: Any) -> Any:
        calls["n"] += 1
        if calls["n"] % 2 == 1:  # first attempt of every transaction deadlocks
            raise pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
        return tpcc.stock_level(cur, ctx)

    def broken(cur: Any, ctx: Any) -> Any:
        raise pymysql.err.ProgrammingError(1146, "Table 'tpcc_t.nope' doesn't exist")

    monkeypatch.setattr(tpcc, "MIX", (0, 0, 1, 0, 1))
    monkeypatch.setitem(tpcc._TXN_FUNCS, "stock_level", flaky)
    monkeypatch.setitem(tpcc._TXN_FUNCS, "order_status", broken)
    summary = tpcc.run(prepared.kw, database=prepared.database, duration_s=1, threads=1, seed=5)

    sl, os_ = summary.of("stock_level"), summary.of("order_status")
    assert sl.committed > 0 and sl.errors == 0
    assert sl.retries == sl.committed == calls["n"] // 2
    assert os_.committed == 0 and os_.errors > 0 and os_.retries == 0
    assert summary.error_samples and "nope" in summary.error_samples[0]
    assert {t.name for t in summary.transactions if t.completed or t.errors} == {"stock_level", "order_status"}
