"""The nine TPC-C tables exactly as go-tpc (`tiup bench tpcc prepare`) creates them in TiDB.

Copied column for column from pingcap/go-tpc `tpcc/ddl.go` (mysql driver, clustered index on, the
default since go-tpc #134/#197, no partitions, no foreign keys). The `/*T![clustered_index] CLUSTERED */`
annotations are TiDB feature comments: TiDB honours them, MySQL and MariaDB read them as plain comments,
so the same DDL runs on both.

`history` has no primary key and no unique key in go-tpc (TiDB gives it a hidden `_tidb_rowid` handle).
We keep it that way on purpose: a real TiCDC refuses such a table (`CDC:ErrTableIneligible`), and the
pipeline has to cope with a database that holds one. `INELIGIBLE_FOR_CDC` names it for callers.
"""

from __future__ import annotations

import re

# Creation order of go-tpc; drop order is irrelevant without foreign keys.
TABLES: tuple[str, ...] = (
    "warehouse",
    "district",
    "customer",
    "history",
    "new_order",
    "orders",
    "order_line",
    "stock",
    "item",
)

# Tables without a primary key or NOT NULL unique key: TiCDC cannot replicate them.
INELIGIBLE_FOR_CDC: frozenset[str] = frozenset({"history"})

_CLUSTERED = "/*T![clustered_index] CLUSTERED */"

DDL: dict[str, str] = {
    "warehouse": f"""
CREATE TABLE IF NOT EXISTS warehouse (
	w_id INT NOT NULL,
	w_name VARCHAR(10),
	w_street_1 VARCHAR(20),
	w_street_2 VARCHAR(20),
	w_city VARCHAR(20),
	w_state CHAR(2),
	w_zip CHAR(9),
	w_tax DECIMAL(4, 4),
	w_ytd DECIMAL(12, 2),
	PRIMARY KEY (w_id) {_CLUSTERED}
)""",
    "district": f"""
CREATE TABLE IF NOT EXISTS district (
	d_id INT NOT NULL,
	d_w_id INT NOT NULL,
	d_name VARCHAR(10),
	d_street_1 VARCHAR(20),
	d_street_2 VARCHAR(20),
	d_city VARCHAR(20),
	d_state CHAR(2),
	d_zip CHAR(9),
	d_tax DECIMAL(4, 4),
	d_ytd DECIMAL(12, 2),
	d_next_o_id INT,
	PRIMARY KEY (d_w_id, d_id) {_CLUSTERED}
)""",
    "customer": f"""
CREATE TABLE IF NOT EXISTS customer (
	c_id INT NOT NULL,
	c_d_id INT NOT NULL,
	c_w_id INT NOT NULL,
	c_first VARCHAR(16),
	c_middle CHAR(2),
	c_last VARCHAR(16),
	c_street_1 VARCHAR(20),
	c_street_2 VARCHAR(20),
	c_city VARCHAR(20),
	c_state CHAR(2),
	c_zip CHAR(9),
	c_phone CHAR(16),
	c_since DATETIME,
	c_credit CHAR(2),
	c_credit_lim DECIMAL(12, 2),
	c_discount DECIMAL(4,4),
	c_balance DECIMAL(12,2),
	c_ytd_payment DECIMAL(12,2),
	c_payment_cnt INT,
	c_delivery_cnt INT,
	c_data VARCHAR(500),
	PRIMARY KEY(c_w_id, c_d_id, c_id) {_CLUSTERED},
	INDEX idx_customer (c_w_id, c_d_id, c_last, c_first)
)""",
    "history": """
CREATE TABLE IF NOT EXISTS history (
	h_c_id INT NOT NULL,
	h_c_d_id INT NOT NULL,
	h_c_w_id INT NOT NULL,
	h_d_id INT NOT NULL,
	h_w_id INT NOT NULL,
	h_date DATETIME,
	h_amount DECIMAL(6, 2),
	h_data VARCHAR(24),
	INDEX idx_h_w_id (h_w_id),
	INDEX idx_h_c_w_id (h_c_w_id)
)""",
    "new_order": f"""
CREATE TABLE IF NOT EXISTS new_order (
	no_o_id INT NOT NULL,
	no_d_id INT NOT NULL,
	no_w_id INT NOT NULL,
	PRIMARY KEY(no_w_id, no_d_id, no_o_id) {_CLUSTERED}
)""",
    "orders": f"""
CREATE TABLE IF NOT EXISTS orders (
	o_id INT NOT NULL,
	o_d_id INT NOT NULL,
	o_w_id INT NOT NULL,
	o_c_id INT,
	o_entry_d DATETIME,
	o_carrier_id INT,
	o_ol_cnt INT,
	o_all_local INT,
	PRIMARY KEY(o_w_id, o_d_id, o_id) {_CLUSTERED},
	INDEX idx_order (o_w_id, o_d_id, o_c_id, o_id)
)""",
    "order_line": f"""
CREATE TABLE IF NOT EXISTS order_line (
	ol_o_id INT NOT NULL,
	ol_d_id INT NOT NULL,
	ol_w_id INT NOT NULL,
	ol_number INT NOT NULL,
	ol_i_id INT NOT NULL,
	ol_supply_w_id INT,
	ol_delivery_d DATETIME,
	ol_quantity INT,
	ol_amount DECIMAL(6, 2),
	ol_dist_info CHAR(24),
	PRIMARY KEY(ol_w_id, ol_d_id, ol_o_id, ol_number) {_CLUSTERED}
)""",
    "stock": f"""
CREATE TABLE IF NOT EXISTS stock (
	s_i_id INT NOT NULL,
	s_w_id INT NOT NULL,
	s_quantity INT,
	s_dist_01 CHAR(24),
	s_dist_02 CHAR(24),
	s_dist_03 CHAR(24),
	s_dist_04 CHAR(24),
	s_dist_05 CHAR(24),
	s_dist_06 CHAR(24),
	s_dist_07 CHAR(24),
	s_dist_08 CHAR(24),
	s_dist_09 CHAR(24),
	s_dist_10 CHAR(24),
	s_ytd INT,
	s_order_cnt INT,
	s_remote_cnt INT,
	s_data VARCHAR(50),
	PRIMARY KEY(s_w_id, s_i_id) {_CLUSTERED}
)""",
    "item": f"""
CREATE TABLE IF NOT EXISTS item (
	i_id INT NOT NULL,
	i_im_id INT,
	i_name VARCHAR(24),
	i_price DECIMAL(5, 2),
	i_data VARCHAR(50),
	PRIMARY KEY(i_id) {_CLUSTERED}
)""",
}

# Column order of the loaders' INSERTs (= table column order).
COLUMNS: dict[str, tuple[str, ...]] = {
    "warehouse": ("w_id", "w_name", "w_street_1", "w_street_2", "w_city", "w_state", "w_zip", "w_tax", "w_ytd"),
    "district": (
        "d_id", "d_w_id", "d_name", "d_street_1", "d_street_2", "d_city", "d_state", "d_zip", "d_tax", "d_ytd",
        "d_next_o_id",
    ),
    "customer": (
        "c_id", "c_d_id", "c_w_id", "c_first", "c_middle", "c_last", "c_street_1", "c_street_2", "c_city",
        "c_state", "c_zip", "c_phone", "c_since", "c_credit", "c_credit_lim", "c_discount", "c_balance",
        "c_ytd_payment", "c_payment_cnt", "c_delivery_cnt", "c_data",
    ),
    "history": ("h_c_id", "h_c_d_id", "h_c_w_id", "h_d_id", "h_w_id", "h_date", "h_amount", "h_data"),
    "new_order": ("no_o_id", "no_d_id", "no_w_id"),
    "orders": ("o_id", "o_d_id", "o_w_id", "o_c_id", "o_entry_d", "o_carrier_id", "o_ol_cnt", "o_all_local"),
    "order_line": (
        "ol_o_id", "ol_d_id", "ol_w_id", "ol_number", "ol_i_id", "ol_supply_w_id", "ol_delivery_d", "ol_quantity",
        "ol_amount", "ol_dist_info",
    ),
    "stock": (
        "s_i_id", "s_w_id", "s_quantity", "s_dist_01", "s_dist_02", "s_dist_03", "s_dist_04", "s_dist_05",
        "s_dist_06", "s_dist_07", "s_dist_08", "s_dist_09", "s_dist_10", "s_ytd", "s_order_cnt", "s_remote_cnt",
        "s_data",
    ),
    "item": ("i_id", "i_im_id", "i_name", "i_price", "i_data"),
}


def _primary_key(ddl: str) -> tuple[str, ...]:
    found = re.search(r"PRIMARY KEY\s*\(([^)]*)\)", ddl)
    return tuple(c.strip() for c in found.group(1).split(",")) if found else ()


# The key TiCDC replicates each eligible table by (its primary key), read from the DDL above.
CDC_KEYS: dict[str, tuple[str, ...]] = {t: _primary_key(DDL[t]) for t in TABLES if t not in INELIGIBLE_FOR_CDC}


def quote_ident(name: str) -> str:
    """A MySQL identifier in backquotes (backquotes inside doubled)."""
    return "`" + name.replace("`", "``") + "`"


def insert_sql(table: str) -> str:
    """`INSERT INTO t (cols) VALUES (%s, ...)`, the shape PyMySQL's executemany turns into multi-row INSERTs."""
    cols = COLUMNS[table]
    return (
        f"INSERT INTO {quote_ident(table)} ({', '.join(quote_ident(c) for c in cols)}) "
        f"VALUES ({', '.join(['%s'] * len(cols))})"
    )


def create_database_sql(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote_ident(database)} DEFAULT CHARACTER SET utf8mb4"
