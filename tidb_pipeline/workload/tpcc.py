"""TPC-C against any MySQL-protocol server (TiDB, MySQL, MariaDB), after PingCAP's go-tpc.

`prepare` creates go-tpc's nine tables (see `schema.py`) and loads them per the TPC-C spec (clause 4.3.3):
per warehouse 100k stock, 10 districts, 30k customers, 30k history, 30k orders, ~300k order lines
(5..15 per order), 9k new orders; plus 100k items. Rows go in through PyMySQL `executemany`, which
rewrites `INSERT ... VALUES (%s, ...)` into multi-row INSERTs of up to ~1 MB, on a few connections at once
so that generating rows in Python overlaps with the server inserting them.

`scale` (non-standard, for tests and demos) shrinks items, stock and customers/orders per district by
the same factor; districts stay 10 per warehouse. `run` reads the sizes back from the data, so it needs
no scale argument.

`run` drives the standard mix (New-Order 45 %, Payment 43 %, Order-Status 4 %, Delivery 4 %,
Stock-Level 4 %) from `threads` threads with one connection each, using go-tpc's statements. 1 % of
New-Orders name an unused item and roll back, as the spec demands. Deadlocks, lock wait timeouts and
TiDB write conflicts are retried. Random strings come from a pre-drawn pool sliced at random offsets:
uniform enough for a workload and many times faster than drawing each character.
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any

import pymysql

from tidb_pipeline.workload import schema

# TPC-C cardinalities at scale 1 (clause 1.2 / 4.3.3.1).
ITEMS = 100_000
DISTRICTS_PER_WAREHOUSE = 10
CUSTOMERS_PER_DISTRICT = 3_000
NEW_ORDERS_PER_DISTRICT = 900

# NURand constants (clause 2.1.6). The run's C for C_LAST differs from the load's by 66, inside the
# range the spec allows (65..119 excluding 96 and 112).
C_LAST_LOAD = 157
C_LAST_RUN = 223
C_CUSTOMER_ID = 259
C_ITEM_ID = 7911

CLAST_SYLLABLES = ("BAR", "OUGHT", "ABLE", "PRI", "PRES", "ESE", "ANTI", "CALLY", "ATION", "EING")

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ1234567890"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS = "1234567890"

# Server errors after which the whole transaction is simply retried: deadlock, lock wait timeout,
# TiDB write conflict / "can not retry select for update" / schema changed / txn too old.
RETRYABLE_ERRORS = frozenset({1213, 1205, 9007, 8002, 8022, 8028, 9006})
MAX_RETRIES = 10

TRANSACTIONS = ("new_order", "payment", "order_status", "delivery", "stock_level")
MIX = (45, 43, 4, 4, 4)


# --- sizes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Row counts of one TPC-C database; `scale` < 1 is non-standard and only for tests."""

    warehouses: int
    items: int = ITEMS
    customers_per_district: int = CUSTOMERS_PER_DISTRICT
    new_orders_per_district: int = NEW_ORDERS_PER_DISTRICT

    @classmethod
    def of(cls, warehouses: int, scale: float = 1.0) -> Sizes:
        if warehouses < 1:
            raise ValueError(f"warehouses={warehouses}: need at least 1 warehouse")
        if not 0 < scale <= 1:
            raise ValueError(f"scale={scale}: use a factor in (0, 1]; 1 is the standard TPC-C size")
        # New-Order picks up to 15 distinct items, so never fewer than 15.
        items = max(15, round(ITEMS * scale))
        customers = max(10, round(CUSTOMERS_PER_DISTRICT * scale))
        new_orders = max(1, round(customers * NEW_ORDERS_PER_DISTRICT / CUSTOMERS_PER_DISTRICT))
        return cls(warehouses, items, customers, new_orders)

    @property
    def orders_per_district(self) -> int:
        return self.customers_per_district

    @property
    def delivered_orders_per_district(self) -> int:
        """Orders loaded with a carrier (o_id below this + 1); the rest are in new_order."""
        return self.orders_per_district - self.new_orders_per_district

    @property
    def last_names(self) -> int:
        """How many distinct C_LAST values exist (1000 at full size)."""
        return min(1000, self.customers_per_district)

    def expected_rows(self) -> dict[str, int]:
        """Exact row counts after `prepare`, except order_line (5..15 per order, random)."""
        w, d = self.warehouses, self.warehouses * DISTRICTS_PER_WAREHOUSE
        return {
            "item": self.items,
            "warehouse": w,
            "stock": w * self.items,
            "district": d,
            "customer": d * self.customers_per_district,
            "history": d * self.customers_per_district,
            "orders": d * self.orders_per_district,
            "new_order": d * self.new_orders_per_district,
        }

    def estimated_total_rows(self) -> int:
        d = self.warehouses * DISTRICTS_PER_WAREHOUSE
        return sum(self.expected_rows().values()) + d * self.orders_per_district * 10


# --- random values (clause 4.3.2) --------------------------------------------------------------------


class _Pools:
    """Long random strings over the spec's alphabets; `Rand` slices them."""

    SIZE = 1 << 18

    def __init__(self, seed: int) -> None:
        r = random.Random(seed)
        self.alnum = "".join(r.choices(_ALNUM, k=self.SIZE))
        self.letters = "".join(r.choices(_LETTERS, k=self.SIZE))
        self.digits = "".join(r.choices(_DIGITS, k=self.SIZE))


class Rand:
    """The spec's random helpers over a seeded `random.Random`."""

    def __init__(self, seed: int, pools: _Pools) -> None:
        self.r = random.Random(seed)
        self.p = pools
        self._limit = pools.SIZE - 600

    def int(self, lo: int, hi: int) -> int:
        return lo + int(self.r.random() * (hi - lo + 1))

    def _slice(self, pool: str, lo: int, hi: int) -> str:
        n = lo if lo == hi else lo + int(self.r.random() * (hi - lo + 1))
        o = int(self.r.random() * self._limit)
        return pool[o : o + n]

    def astring(self, lo: int, hi: int) -> str:
        return self._slice(self.p.alnum, lo, hi)

    def letters(self, lo: int, hi: int) -> str:
        return self._slice(self.p.letters, lo, hi)

    def nstring(self, lo: int, hi: int) -> str:
        return self._slice(self.p.digits, lo, hi)

    def zip(self) -> str:
        return self.nstring(4, 4) + "11111"

    def state(self) -> str:
        return self.letters(2, 2)

    def tax(self) -> str:
        return _cents(self.int(0, 2000), 4)

    def original(self) -> str:
        """a-string[26..50] holding "ORIGINAL" in 10 % of the rows (clause 4.3.3.1)."""
        s = self.astring(26, 50)
        if self.r.random() < 0.1:
            i = self.int(0, len(s) - 8)
            s = s[:i] + "ORIGINAL" + s[i + 8 :]
        return s

    def nurand(self, a: int, lo: int, hi: int, c: int) -> int:
        return ((self.int(0, a) | self.int(lo, hi)) + c) % (hi - lo + 1) + lo


def last_name(n: int) -> str:
    """C_LAST from a number 0..999 (clause 4.3.2.3)."""
    return CLAST_SYLLABLES[n // 100] + CLAST_SYLLABLES[(n // 10) % 10] + CLAST_SYLLABLES[n % 10]


def _cents(value: int, places: int = 2) -> str:
    """An exact decimal literal for value / 10**places, bound as a string (no float rounding)."""
    sign = "-" if value < 0 else ""
    s = str(abs(value)).rjust(places + 1, "0")
    return f"{sign}{s[:-places]}.{s[-places:]}"


# --- loading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """One independent piece of the load: its own connection and its own seeded random stream."""

    kind: str
    warehouse: int = 0
    district: int = 0
    first: int = 0
    last: int = 0

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.warehouse}:{self.district}:{self.first}"


def _units(sizes: Sizes, chunk: int = 25_000) -> list[_Unit]:
    units: list[_Unit] = []
    for lo in range(1, sizes.items + 1, chunk):
        units.append(_Unit("item", first=lo, last=min(sizes.items, lo + chunk - 1)))
    for w in range(1, sizes.warehouses + 1):
        units.append(_Unit("warehouse", w))
        for lo in range(1, sizes.items + 1, chunk):
            units.append(_Unit("stock", w, first=lo, last=min(sizes.items, lo + chunk - 1)))
        for d in range(1, DISTRICTS_PER_WAREHOUSE + 1):
            units.append(_Unit("district", w, d))
    return units


def _rows(unit: _Unit, sizes: Sizes, rnd: Rand, load_time: str) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table, rows) batches of one unit, following go-tpc's loader value for value."""
    if unit.kind == "item":
        yield "item", [
            (i, rnd.int(1, 10_000), rnd.astring(14, 24), _cents(rnd.int(100, 10_000)), rnd.original())
            for i in range(unit.first, unit.last + 1)
        ]
    elif unit.kind == "stock":
        w = unit.warehouse
        step = 2_000
        for lo in range(unit.first, unit.last + 1, step):
            yield "stock", [
                (i, w, rnd.int(10, 100), *(rnd.letters(24, 24) for _ in range(10)), 0, 0, 0, rnd.original())
                for i in range(lo, min(unit.last, lo + step - 1) + 1)
            ]
    elif unit.kind == "warehouse":
        # W_YTD = sum(D_YTD) = sum(H_AMOUNT) at any scale (300000.00 at scale 1, as in go-tpc).
        ytd = _cents(1000 * DISTRICTS_PER_WAREHOUSE * sizes.customers_per_district)
        yield "warehouse", [
            (unit.warehouse, rnd.astring(6, 10), rnd.astring(10, 20), rnd.astring(10, 20), rnd.astring(10, 20),
             rnd.state(), rnd.zip(), rnd.tax(), ytd)
        ]
    else:
        yield from _district_rows(unit.warehouse, unit.district, sizes, rnd, load_time)


def _district_rows(
    w: int, d: int, sizes: Sizes, rnd: Rand, load_time: str
) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    n = sizes.customers_per_district
    yield "district", [
        (d, w, rnd.astring(6, 10), rnd.astring(10, 20), rnd.astring(10, 20), rnd.astring(10, 20), rnd.state(),
         rnd.zip(), rnd.tax(), _cents(1000 * n), n + 1)
    ]
    customers = []
    for c in range(1, n + 1):
        if c <= sizes.last_names:
            last = last_name(c - 1)
        else:
            last = last_name(rnd.nurand(255, 0, sizes.last_names - 1, C_LAST_LOAD))
        credit = "BC" if rnd.r.random() < 0.1 else "GC"
        customers.append(
            (c, d, w, rnd.astring(8, 16), "OE", last, rnd.astring(10, 20), rnd.astring(10, 20),
             rnd.astring(10, 20), rnd.state(), rnd.zip(), rnd.nstring(16, 16), load_time, credit, "50000.00",
             _cents(rnd.int(0, 5000), 4), "-10.00", "10.00", 1, 0, rnd.astring(300, 500))
        )
    yield "customer", customers
    yield "history", [(c, d, w, d, w, load_time, "10.00", rnd.astring(12, 24)) for c in range(1, n + 1)]

    c_ids = list(range(1, n + 1))
    rnd.r.shuffle(c_ids)
    delivered = sizes.delivered_orders_per_district
    orders, lines = [], []
    for o in range(1, n + 1):
        ol_cnt = rnd.int(5, 15)
        carrier = rnd.int(1, 10) if o <= delivered else None
        orders.append((o, d, w, c_ids[o - 1], load_time, carrier, ol_cnt, 1))
        for number in range(1, ol_cnt + 1):
            if o <= delivered:
                delivery_d, amount = load_time, "0.00"
            else:
                delivery_d, amount = None, _cents(rnd.int(1, 999_999))
            lines.append(
                (o, d, w, number, rnd.int(1, sizes.items), w, delivery_d, 5, amount, rnd.astring(24, 24))
            )
    yield "orders", orders
    yield "new_order", [(o, d, w) for o in range(delivered + 1, n + 1)]
    for i in range(0, len(lines), 5_000):
        yield "order_line", lines[i : i + 5_000]


class _Progress:
    """A one-line progress display on a text stream, safe to call from several threads."""

    def __init__(self, out: IO[str] | None, total: int, label: str) -> None:
        self.out, self.total, self.label = out, max(total, 1), label
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_draw = 0.0

    def add(self, rows: int) -> None:
        with self._lock:
            self.done += rows
            now = time.monotonic()
            if self.out is not None and now - self._last_draw >= 0.5:
                self._last_draw = now
                self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        assert self.out is not None
        elapsed = max(now - self.started, 1e-9)
        pct = min(100.0, 100.0 * self.done / self.total)
        self.out.write(
            f"\r{self.label}: {pct:5.1f}% {self.done:,}/~{self.total:,} rows, {self.done / elapsed:,.0f} rows/s{end}"
        )
        self.out.flush()

    def finish(self) -> None:
        if self.out is not None:
            self.total = self.done
            self._draw(time.monotonic(), end="\n")


@dataclass(frozen=True)
class PrepareResult:
    database: str
    sizes: Sizes
    rows: dict[str, int]
    seconds: float

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else 0.0


def _connect(conn_kwargs: dict[str, Any], database: str | None = None, **extra: Any) -> pymysql.Connection:
    kwargs = {"charset": "utf8mb4", "connect_timeout": 10, **conn_kwargs, **extra}
    if database is not None:
        kwargs["database"] = database
    return pymysql.connect(**kwargs)


def create_tables(conn: pymysql.Connection, database: str) -> None:
    """Create the database (utf8mb4) and go-tpc's nine tables in it, if missing."""
    with conn.cursor() as cur:
        cur.execute(schema.create_database_sql(database))
        cur.execute(f"USE {schema.quote_ident(database)}")
        for table in schema.TABLES:
            cur.execute(schema.DDL[table])


def prepare(
    conn_kwargs: dict[str, Any],
    *,
    database: str = "tpcc",
    warehouses: int = 1,
    scale: float = 1.0,
    seed: int = 1,
    workers: int = 2,
    progress: IO[str] | None = None,
) -> PrepareResult:
    """Create go-tpc's schema in `database` and load it; refuses a database that already holds data."""
    sizes = Sizes.of(warehouses, scale)
    started = time.monotonic()
    with _connect(conn_kwargs, autocommit=True) as conn:
        create_tables(conn, database)
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM (SELECT 1 FROM item LIMIT 1) t")
            if cur.fetchone()[0]:
                raise RuntimeError(
                    f"database {database!r} already holds TPC-C data; drop it first "
                    f"(DROP DATABASE {schema.quote_ident(database)}) or choose another with --database"
                )
    pools = _Pools(seed)
    load_time = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    bar = _Progress(progress, sizes.estimated_total_rows(), f"prepare {database}")
    counts: dict[str, int] = {t: 0 for t in schema.TABLES}
    counts_lock = threading.Lock()
    local = threading.local()
    connections: list[pymysql.Connection] = []

    def load(unit: _Unit) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = _connect(conn_kwargs, database, autocommit=True)
            connections.append(conn)
        # crc32, not hash(): str hashes change per process, and a seed must give the same data every time.
        rnd = Rand(zlib.crc32(f"{seed}:{unit.key}".encode()), pools)
        with conn.cursor() as cur:
            for table, rows in _rows(unit, sizes, rnd, load_time):
                cur.executemany(schema.insert_sql(table), rows)
                with counts_lock:
                    counts[table] += len(rows)
                bar.add(len(rows))

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tpcc-load") as pool:
            for f in [pool.submit(load, u) for u in _units(sizes)]:
                f.result()
    finally:
        for c in connections:
            c.close()
    bar.finish()
    return PrepareResult(database, sizes, counts, time.monotonic() - started)


def read_sizes(conn: pymysql.Connection) -> Sizes:
    """The sizes of a prepared TPC-C database (the connection's current database)."""
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM warehouse")
        warehouses = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*) FROM item")
        items = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*) FROM customer WHERE c_w_id = 1 AND c_d_id = 1")
        customers = cur.fetchone()[0]
    conn.commit()
    if not warehouses or not items or not customers:
        raise RuntimeError("no TPC-C data found (warehouse, item or customer is empty); run `workload prepare` first")
    new_orders = max(1, round(customers * NEW_ORDERS_PER_DISTRICT / CUSTOMERS_PER_DISTRICT))
    return Sizes(warehouses, items, customers, new_orders)


# --- the five transactions (clause 2, statements as in go-tpc) ----------------------------------------


@dataclass
class _Ctx:
    """What one worker thread needs to draw inputs."""

    rnd: Rand
    sizes: Sizes

    def warehouse(self) -> int:
        return self.rnd.int(1, self.sizes.warehouses)

    def other_warehouse(self, w: int) -> int:
        if self.sizes.warehouses == 1:
            return w
        while True:
            o = self.rnd.int(1, self.sizes.warehouses)
            if o != w:
                return o

    def customer_id(self) -> int:
        return self.rnd.nurand(1023, 1, self.sizes.customers_per_district, C_CUSTOMER_ID)

    def item_id(self) -> int:
        return self.rnd.nurand(8191, 1, self.sizes.items, C_ITEM_ID)

    def last_name(self) -> str:
        return last_name(self.rnd.nurand(255, 0, self.sizes.last_names - 1, C_LAST_RUN))


@dataclass
class _Outcome:
    rolled_back: bool = False
    delivered: int = 0


def _now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _in_params(n: int, width: int) -> str:
    one = "(" + ",".join(["%s"] * width) + ")" if width > 1 else "%s"
    return ",".join([one] * n)


def new_order(cur: pymysql.cursors.Cursor, ctx: _Ctx) -> _Outcome:
    r = ctx.rnd
    w, d, c = ctx.warehouse(), r.int(1, DISTRICTS_PER_WAREHOUSE), ctx.customer_id()
    ol_cnt = r.int(5, 15)
    rollback = r.int(1, 100) == 1
    items: list[dict[str, Any]] = []
    seen: set[int] = set()
    all_local = 1
    for number in range(1, ol_cnt + 1):
        if number == ol_cnt and rollback:
            i_id = -1  # an unused item: the spec's 1 % user-data error
        else:
            i_id = ctx.item_id()
            while i_id in seen:
                i_id = ctx.item_id()
            seen.add(i_id)
        supply_w = w
        if ctx.sizes.warehouses > 1 and r.int(1, 100) == 1:
            supply_w = ctx.other_warehouse(w)
            all_local = 0
        items.append({"number": number, "i_id": i_id, "supply_w": supply_w, "qty": r.int(1, 10)})

    cur.execute(
        "SELECT c_discount, c_last, c_credit, w_tax FROM customer, warehouse "
        "WHERE w_id = %s AND c_w_id = w_id AND c_d_id = %s AND c_id = %s",
        (w, d, c),
    )
    c_discount, _c_last, _c_credit, w_tax = cur.fetchone()
    cur.execute("SELECT d_next_o_id, d_tax FROM district WHERE d_id = %s AND d_w_id = %s FOR UPDATE", (d, w))
    o_id, d_tax = cur.fetchone()
    cur.execute("UPDATE district SET d_next_o_id = %s + 1 WHERE d_id = %s AND d_w_id = %s", (o_id, d, w))
    cur.execute(
        "INSERT INTO orders (o_id, o_d_id, o_w_id, o_c_id, o_entry_d, o_ol_cnt, o_all_local) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (o_id, d, w, c, _now(), ol_cnt, all_local),
    )
    cur.execute("INSERT INTO new_order (no_o_id, no_d_id, no_w_id) VALUES (%s, %s, %s)", (o_id, d, w))

    cur.execute(
        f"SELECT i_price, i_name, i_data, i_id FROM item WHERE i_id IN ({_in_params(ol_cnt, 1)})",
        [it["i_id"] for it in items],
    )
    prices = {row[3]: row[0] for row in cur.fetchall()}
    if any(it["i_id"] not in prices for it in items):
        if rollback:
            return _Outcome(rolled_back=True)
        missing = [it["i_id"] for it in items if it["i_id"] not in prices]
        raise RuntimeError(f"items {missing} not found; is the item table fully loaded?")

    cur.execute(
        "SELECT s_i_id, s_quantity, s_data, s_dist_01, s_dist_02, s_dist_03, s_dist_04, s_dist_05, s_dist_06, "
        "s_dist_07, s_dist_08, s_dist_09, s_dist_10 FROM stock WHERE (s_w_id, s_i_id) IN "
        f"({_in_params(ol_cnt, 2)}) FOR UPDATE",
        [v for it in items for v in (w, it["i_id"])],
    )
    stock = {row[0]: row for row in cur.fetchall()}
    factor = (1 + w_tax + d_tax) * (1 - c_discount)
    line_values: list[Any] = []
    for it in items:
        row = stock.get(it["i_id"])
        if row is None:
            raise RuntimeError(f"stock ({w}, {it['i_id']}) not found; is the stock table fully loaded?")
        quantity = row[1] - it["qty"]
        if quantity < 10:
            quantity += 91
        amount = (it["qty"] * prices[it["i_id"]] * factor).quantize(Decimal("0.01"))
        cur.execute(
            "UPDATE stock SET s_quantity = %s, s_ytd = s_ytd + %s, s_order_cnt = s_order_cnt + 1, "
            "s_remote_cnt = s_remote_cnt + %s WHERE s_i_id = %s AND s_w_id = %s",
            (quantity, it["qty"], int(it["supply_w"] != w), it["i_id"], w),
        )
        line_values += [o_id, d, w, it["number"], it["i_id"], it["supply_w"], it["qty"], amount, row[2 + d]]
    cur.execute(
        "INSERT INTO order_line (ol_o_id, ol_d_id, ol_w_id, ol_number, ol_i_id, ol_supply_w_id, ol_quantity, "
        f"ol_amount, ol_dist_info) VALUES {_in_params(ol_cnt, 9)}",
        line_values,
    )
    return _Outcome()


def payment(cur: pymysql.cursors.Cursor, ctx: _Ctx) -> _Outcome:
    r = ctx.rnd
    w, d = ctx.warehouse(), r.int(1, DISTRICTS_PER_WAREHOUSE)
    amount = Decimal(_cents(r.int(100, 500_000)))
    by_name = r.int(1, 100) <= 60
    c_last = ctx.last_name() if by_name else None
    c_id = None if by_name else ctx.customer_id()
    if ctx.sizes.warehouses == 1 or r.int(1, 100) <= 85:
        c_w, c_d = w, d
    else:
        c_w, c_d = ctx.other_warehouse(w), r.int(1, DISTRICTS_PER_WAREHOUSE)

    cur.execute("UPDATE district SET d_ytd = d_ytd + %s WHERE d_w_id = %s AND d_id = %s", (amount, w, d))
    cur.execute(
        "SELECT d_street_1, d_street_2, d_city, d_state, d_zip, d_name FROM district WHERE d_w_id = %s AND d_id = %s",
        (w, d),
    )
    d_name = cur.fetchone()[5]
    cur.execute("UPDATE warehouse SET w_ytd = w_ytd + %s WHERE w_id = %s", (amount, w))
    cur.execute("SELECT w_street_1, w_street_2, w_city, w_state, w_zip, w_name FROM warehouse WHERE w_id = %s", (w,))
    w_name = cur.fetchone()[5]
    if c_id is None:
        cur.execute(
            "SELECT c_id FROM customer WHERE c_w_id = %s AND c_d_id = %s AND c_last = %s ORDER BY c_first",
            (c_w, c_d, c_last),
        )
        ids = [row[0] for row in cur.fetchall()]
        if not ids:
            raise RuntimeError(f"no customer named {c_last!r} in warehouse {c_w} district {c_d}")
        c_id = ids[(len(ids) + 1) // 2 - 1]
    cur.execute(
        "SELECT c_first, c_middle, c_last, c_street_1, c_street_2, c_city, c_state, c_zip, c_phone, c_credit, "
        "c_credit_lim, c_discount, c_balance, c_since FROM customer WHERE c_w_id = %s AND c_d_id = %s "
        "AND c_id = %s FOR UPDATE",
        (c_w, c_d, c_id),
    )
    c_credit = cur.fetchone()[9]
    if c_credit == "BC":
        cur.execute("SELECT c_data FROM customer WHERE c_w_id = %s AND c_d_id = %s AND c_id = %s", (c_w, c_d, c_id))
        c_data = cur.fetchone()[0] or ""
        new_data = f"| {c_id:4d} {c_d:2d} {c_w:4d} {d:2d} {w:4d} ${amount:7.2f} {_now():>12s} {c_data:>24s}"
        new_data = (new_data + c_data)[:500]
        cur.execute(
            "UPDATE customer SET c_balance = c_balance - %s, c_ytd_payment = c_ytd_payment + %s, "
            "c_payment_cnt = c_payment_cnt + 1, c_data = %s WHERE c_w_id = %s AND c_d_id = %s AND c_id = %s",
            (amount, amount, new_data, c_w, c_d, c_id),
        )
    else:
        cur.execute(
            "UPDATE customer SET c_balance = c_balance - %s, c_ytd_payment = c_ytd_payment + %s, "
            "c_payment_cnt = c_payment_cnt + 1 WHERE c_w_id = %s AND c_d_id = %s AND c_id = %s",
            (amount, amount, c_w, c_d, c_id),
        )
    cur.execute(
        "INSERT INTO history (h_c_d_id, h_c_w_id, h_c_id, h_d_id, h_w_id, h_date, h_amount, h_data) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (c_d, c_w, c_id, d, w, _now(), amount, f"{w_name:>10s}    {d_name:>10s}"),
    )
    return _Outcome()


def order_status(cur: pymysql.cursors.Cursor, ctx: _Ctx) -> _Outcome:
    r = ctx.rnd
    w, d = ctx.warehouse(), r.int(1, DISTRICTS_PER_WAREHOUSE)
    if r.int(1, 100) <= 60:
        c_last = ctx.last_name()
        cur.execute(
            "SELECT count(c_id) namecnt FROM customer WHERE c_w_id = %s AND c_d_id = %s AND c_last = %s",
            (w, d, c_last),
        )
        name_cnt = cur.fetchone()[0]
        cur.execute(
            "SELECT c_balance, c_first, c_middle, c_id FROM customer WHERE c_w_id = %s AND c_d_id = %s "
            "AND c_last = %s ORDER BY c_first",
            (w, d, c_last),
        )
        rows = cur.fetchall()
        if not rows:
            raise RuntimeError(f"no customer named {c_last!r} in warehouse {w} district {d}")
        c_id = rows[min(len(rows), (name_cnt + 1) // 2) - 1][3]
    else:
        c_id = ctx.customer_id()
        cur.execute(
            "SELECT c_balance, c_first, c_middle, c_last FROM customer WHERE c_w_id = %s AND c_d_id = %s "
            "AND c_id = %s",
            (w, d, c_id),
        )
        cur.fetchone()
    cur.execute(
        "SELECT o_id, o_carrier_id, o_entry_d FROM orders WHERE o_w_id = %s AND o_d_id = %s AND o_c_id = %s "
        "ORDER BY o_id DESC LIMIT 1",
        (w, d, c_id),
    )
    latest = cur.fetchone()
    if latest is not None:
        cur.execute(
            "SELECT ol_i_id, ol_supply_w_id, ol_quantity, ol_amount, ol_delivery_d FROM order_line "
            "WHERE ol_w_id = %s AND ol_d_id = %s AND ol_o_id = %s",
            (w, d, latest[0]),
        )
        cur.fetchall()
    return _Outcome()


def delivery(cur: pymysql.cursors.Cursor, ctx: _Ctx) -> _Outcome:
    r = ctx.rnd
    w, carrier = ctx.warehouse(), r.int(1, 10)
    oldest: dict[int, int] = {}
    for d in range(1, DISTRICTS_PER_WAREHOUSE + 1):
        cur.execute(
            "SELECT no_o_id FROM new_order WHERE no_w_id = %s AND no_d_id = %s ORDER BY no_o_id ASC LIMIT 1 "
            "FOR UPDATE",
            (w, d),
        )
        row = cur.fetchone()
        if row is not None:
            oldest[d] = row[0]
    if not oldest:
        return _Outcome()
    keys = [v for d, o in oldest.items() for v in (w, d, o)]
    n = len(oldest)
    cur.execute(f"DELETE FROM new_order WHERE (no_w_id, no_d_id, no_o_id) IN ({_in_params(n, 3)})", keys)
    cur.execute(f"UPDATE orders SET o_carrier_id = %s WHERE (o_w_id, o_d_id, o_id) IN ({_in_params(n, 3)})",
                [carrier, *keys])
    cur.execute(f"SELECT o_d_id, o_c_id FROM orders WHERE (o_w_id, o_d_id, o_id) IN ({_in_params(n, 3)})", keys)
    customer_of = {row[0]: row[1] for row in cur.fetchall()}
    cur.execute(
        f"UPDATE order_line SET ol_delivery_d = %s WHERE (ol_w_id, ol_d_id, ol_o_id) IN ({_in_params(n, 3)})",
        [_now(), *keys],
    )
    cur.execute(
        "SELECT ol_d_id, SUM(ol_amount) FROM order_line WHERE (ol_w_id, ol_d_id, ol_o_id) IN "
        f"({_in_params(n, 3)}) GROUP BY ol_d_id",
        keys,
    )
    amount_of = {row[0]: row[1] for row in cur.fetchall()}
    for d in oldest:
        cur.execute(
            "UPDATE customer SET c_balance = c_balance + %s, c_delivery_cnt = c_delivery_cnt + 1 "
            "WHERE c_w_id = %s AND c_d_id = %s AND c_id = %s",
            (amount_of.get(d, Decimal(0)), w, d, customer_of[d]),
        )
    return _Outcome(delivered=n)


def stock_level(cur: pymysql.cursors.Cursor, ctx: _Ctx) -> _Outcome:
    r = ctx.rnd
    w, d, threshold = ctx.warehouse(), r.int(1, DISTRICTS_PER_WAREHOUSE), r.int(10, 20)
    cur.execute("SELECT d_next_o_id FROM district WHERE d_w_id = %s AND d_id = %s", (w, d))
    o_id = cur.fetchone()[0]
    cur.execute(
        "SELECT /*+ TIDB_INLJ(order_line,stock) */ COUNT(DISTINCT (s_i_id)) stock_count FROM order_line, stock "
        "WHERE ol_w_id = %s AND ol_d_id = %s AND ol_o_id < %s AND ol_o_id >= %s - 20 AND s_w_id = %s "
        "AND s_i_id = ol_i_id AND s_quantity < %s",
        (w, d, o_id, o_id, w, threshold),
    )
    cur.fetchone()
    return _Outcome()


_TXN_FUNCS: dict[str, Callable[[pymysql.cursors.Cursor, _Ctx], _Outcome]] = {
    "new_order": new_order,
    "payment": payment,
    "order_status": order_status,
    "delivery": delivery,
    "stock_level": stock_level,
}


# --- running and reporting ----------------------------------------------------------------------------


@dataclass
class _Tally:
    """Counters of one transaction type in one thread (merged at the end; no locking needed)."""

    ok: int = 0
    rolled_back: int = 0
    errors: int = 0
    retries: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TxnSummary:
    name: str
    committed: int
    rolled_back: int
    errors: int
    retries: int
    p50_ms: float
    p95_ms: float

    @property
    def completed(self) -> int:
        return self.committed + self.rolled_back


@dataclass(frozen=True)
class RunSummary:
    seconds: float
    threads: int
    warehouses: int
    transactions: tuple[TxnSummary, ...]
    delivered_orders: int
    error_samples: tuple[str, ...]

    def of(self, name: str) -> TxnSummary:
        return next(t for t in self.transactions if t.name == name)

    @property
    def completed(self) -> int:
        return sum(t.completed for t in self.transactions)

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.transactions)

    @property
    def tpmc(self) -> float:
        """Completed New-Orders per minute; like go-tpc, the spec's 1 % rollbacks count as completed."""
        return self.of("new_order").completed * 60.0 / self.seconds if self.seconds > 0 else 0.0


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


def summarize(tallies: Sequence[dict[str, _Tally]], seconds: float, threads: int, warehouses: int,
              delivered: int, error_samples: Sequence[str]) -> RunSummary:
    out = []
    for name in TRANSACTIONS:
        parts = [t[name] for t in tallies]
        lat = sorted(v for p in parts for v in p.latencies_ms)
        out.append(
            TxnSummary(name, sum(p.ok for p in parts), sum(p.rolled_back for p in parts),
                       sum(p.errors for p in parts), sum(p.retries for p in parts),
                       _percentile(lat, 50), _percentile(lat, 95))
        )
    return RunSummary(seconds, threads, warehouses, tuple(out), delivered, tuple(error_samples[:5]))


def format_summary(s: RunSummary) -> str:
    lines = [
        f"TPC-C summary: {s.seconds:.1f}s, {s.threads} threads, {s.warehouses} warehouses",
        f"{'transaction':<14}{'committed':>10}{'rolled back':>12}{'errors':>8}{'retries':>9}"
        f"{'p50 ms':>9}{'p95 ms':>9}",
    ]
    for t in s.transactions:
        lines.append(
            f"{t.name:<14}{t.committed:>10}{t.rolled_back:>12}{t.errors:>8}{t.retries:>9}"
            f"{t.p50_ms:>9.1f}{t.p95_ms:>9.1f}"
        )
    lines.append(f"total completed {s.completed}, errors {s.errors}, delivered orders {s.delivered_orders}")
    lines.append(f"tpmC {s.tpmc:,.1f}")
    lines += [f"error: {e}" for e in s.error_samples]
    return "\n".join(lines)


def _error_code(exc: BaseException) -> int | None:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def run(
    conn_kwargs: dict[str, Any],
    *,
    database: str = "tpcc",
    warehouses: int | None = None,
    duration_s: float = 60.0,
    threads: int = 4,
    seed: int = 1,
    progress: IO[str] | None = None,
    report_every_s: float = 10.0,
    rate_tps: float | None = None,
    transactions: int | None = None,
) -> RunSummary:
    """Run the TPC-C mix for `duration_s` seconds and return the summary (also drawn on `progress`).

    `transactions` ends the run after that many transactions in all (each counted once, however many
    retries it took; rolled back and failed ones count), or at `duration_s` if that comes first: a test
    that needs a bounded amount of change stops on the count, whatever the machine's speed.

    `rate_tps` paces the run at that many transactions per second in all (open loop: each thread starts a
    transaction every `threads / rate_tps` seconds, and one that falls behind does not sleep); None runs
    flat out, as go-tpc does without think times.
    """
    if rate_tps is not None and rate_tps <= 0:
        raise ValueError(f"rate_tps={rate_tps} must be positive (or None for no pacing)")
    if transactions is not None and transactions < 1:
        raise ValueError(f"transactions={transactions} must be at least 1 (or None to run for duration_s)")
    with _connect(conn_kwargs, database) as conn:
        sizes = read_sizes(conn)
    if warehouses is not None:
        if not 1 <= warehouses <= sizes.warehouses:
            raise ValueError(
                f"warehouses={warehouses} but database {database!r} holds {sizes.warehouses}; "
                f"use at most {sizes.warehouses} or prepare more"
            )
        sizes = Sizes(warehouses, sizes.items, sizes.customers_per_district, sizes.new_orders_per_district)

    pools = _Pools(seed)
    tallies = [{name: _Tally() for name in TRANSACTIONS} for _ in range(threads)]
    delivered = [0] * threads
    error_samples: list[str] = []
    stop = threading.Event()
    started = time.monotonic()
    deadline = started + duration_s
    started_txns = [0]  # transactions started so far, against `transactions`
    budget_lock = threading.Lock()

    def claim() -> bool:
        with budget_lock:
            if transactions is not None and started_txns[0] >= transactions:
                return False
            started_txns[0] += 1
            return True

    def worker(i: int) -> None:
        ctx = _Ctx(Rand(seed * 1_000 + i, pools), sizes)
        mine = tallies[i]
        conn = _connect(conn_kwargs, database, autocommit=False)
        interval = threads / rate_tps if rate_tps else 0.0
        next_start = started + interval * i / threads  # threads spread over one interval
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                if interval:
                    wait = next_start - time.monotonic()
                    if wait > 0 and stop.wait(min(wait, max(0.0, deadline - time.monotonic()))):
                        break
                    if time.monotonic() >= deadline:
                        break
                    next_start += interval
                if not claim():
                    break
                name = ctx.rnd.r.choices(TRANSACTIONS, weights=MIX)[0]
                tally = mine[name]
                state = ctx.rnd.r.getstate()
                t0 = time.perf_counter()
                for attempt in range(MAX_RETRIES + 1):
                    # A retry replays the same inputs, as a terminal would resubmit the same screen.
                    ctx.rnd.r.setstate(state)
                    try:
                        conn.begin()
                        with conn.cursor() as cur:
                            outcome = _TXN_FUNCS[name](cur, ctx)
                        if outcome.rolled_back:
                            conn.rollback()
                            tally.rolled_back += 1
                        else:
                            conn.commit()
                            tally.ok += 1
                            delivered[i] += outcome.delivered
                        tally.latencies_ms.append((time.perf_counter() - t0) * 1000)
                        break
                    except Exception as exc:  # noqa: BLE001 - every failure is counted, the run goes on
                        try:
                            conn.rollback()
                        except pymysql.err.MySQLError:
                            # The connection died (server restart, kill): reconnect, or pause and try later.
                            try:
                                conn.ping(reconnect=True)
                            except pymysql.err.MySQLError:
                                time.sleep(0.5)
                        if _error_code(exc) in RETRYABLE_ERRORS and attempt < MAX_RETRIES:
                            tally.retries += 1
                            time.sleep(0.001 * (attempt + 1))
                            continue
                        tally.errors += 1
                        if len(error_samples) < 20:
                            error_samples.append(f"{name}: {exc}")
                        break
        finally:
            conn.close()

    pool = [threading.Thread(target=worker, args=(i,), name=f"tpcc-{i}", daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    try:
        next_report = started + report_every_s
        while any(t.is_alive() for t in pool):
            for t in pool:
                t.join(timeout=0.2)
            now = time.monotonic()
            if progress is not None and now >= next_report:
                next_report += report_every_s
                elapsed = now - started
                counts = {n: sum(t[n].ok + t[n].rolled_back for t in tallies) for n in TRANSACTIONS}
                errors = sum(t[n].errors for t in tallies for n in TRANSACTIONS)
                progress.write(
                    f"[{elapsed:5.0f}s] tpmC {counts['new_order'] * 60 / elapsed:,.0f} "
                    + " ".join(f"{n} {c}" for n, c in counts.items())
                    + f" errors {errors}\n"
                )
                progress.flush()
    except KeyboardInterrupt:
        stop.set()
        for t in pool:
            t.join()
    elapsed = time.monotonic() - started
    summary = summarize(tallies, elapsed, threads, sizes.warehouses, sum(delivered), error_samples)
    if progress is not None:
        progress.write(format_summary(summary) + "\n")
        progress.flush()
    return summary


# --- consistency (clause 3.3.2) -----------------------------------------------------------------------

# Each query returns the districts (or warehouses) that break the condition; empty means it holds.
CONSISTENCY_CHECKS: dict[str, str] = {
    "3.3.2.1 W_YTD = sum(D_YTD)": (
        "SELECT w_id FROM warehouse JOIN district ON d_w_id = w_id GROUP BY w_id, w_ytd HAVING w_ytd <> SUM(d_ytd)"
    ),
    "3.3.2.2 D_NEXT_O_ID - 1 = max(O_ID) = max(NO_O_ID)": (
        "SELECT d_w_id, d_id FROM district "
        "JOIN (SELECT o_w_id, o_d_id, MAX(o_id) mo FROM orders GROUP BY o_w_id, o_d_id) o "
        "ON o.o_w_id = d_w_id AND o.o_d_id = d_id "
        "LEFT JOIN (SELECT no_w_id, no_d_id, MAX(no_o_id) mno FROM new_order GROUP BY no_w_id, no_d_id) n "
        "ON n.no_w_id = d_w_id AND n.no_d_id = d_id "
        "WHERE d_next_o_id - 1 <> o.mo OR (n.mno IS NOT NULL AND d_next_o_id - 1 <> n.mno)"
    ),
    "3.3.2.3 max(NO_O_ID) - min(NO_O_ID) + 1 = count(new_order)": (
        "SELECT no_w_id, no_d_id FROM new_order GROUP BY no_w_id, no_d_id "
        "HAVING MAX(no_o_id) - MIN(no_o_id) + 1 <> COUNT(*)"
    ),
    "3.3.2.4 sum(O_OL_CNT) = count(order_line)": (
        "SELECT o.o_w_id, o.o_d_id FROM (SELECT o_w_id, o_d_id, SUM(o_ol_cnt) s FROM orders GROUP BY o_w_id, o_d_id) o "
        "LEFT JOIN (SELECT ol_w_id, ol_d_id, COUNT(*) c FROM order_line GROUP BY ol_w_id, ol_d_id) l "
        "ON l.ol_w_id = o.o_w_id AND l.ol_d_id = o.o_d_id WHERE l.c IS NULL OR l.c <> o.s"
    ),
    "3.3.2.5 O_CARRIER_ID is NULL iff a NEW-ORDER row exists": (
        "SELECT o_w_id, o_d_id, o_id FROM orders LEFT JOIN new_order "
        "ON no_w_id = o_w_id AND no_d_id = o_d_id AND no_o_id = o_id "
        "WHERE (o_carrier_id IS NULL) <> (no_o_id IS NOT NULL) LIMIT 10"
    ),
    "3.3.2.8 W_YTD = sum(H_AMOUNT)": (
        "SELECT w_id FROM warehouse LEFT JOIN (SELECT h_w_id, SUM(h_amount) s FROM history GROUP BY h_w_id) h "
        "ON h.h_w_id = w_id WHERE h.s IS NULL OR w_ytd <> h.s"
    ),
    "3.3.2.9 D_YTD = sum(H_AMOUNT)": (
        "SELECT d_w_id, d_id FROM district LEFT JOIN "
        "(SELECT h_w_id, h_d_id, SUM(h_amount) s FROM history GROUP BY h_w_id, h_d_id) h "
        "ON h.h_w_id = d_w_id AND h.h_d_id = d_id WHERE h.s IS NULL OR d_ytd <> h.s"
    ),
}


def check_consistency(conn: pymysql.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Run the spec's consistency conditions; returns the violating rows per condition (empty = all hold)."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    with conn.cursor() as cur:
        for name, sql in CONSISTENCY_CHECKS.items():
            cur.execute(sql)
            found[name] = [tuple(r) for r in cur.fetchall()]
    conn.commit()
    return found
