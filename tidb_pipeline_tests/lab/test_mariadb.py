"""The lab's MariaDB writes a ROW binlog with column names, readable by mysql-replication."""

from __future__ import annotations

import uuid

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from tidb_pipeline.lab.mariadb import MariaDBService


def test_binlog_row_events_carry_column_names(mariadb: MariaDBService) -> None:
    kwargs = mariadb.connect_kwargs()
    db = f"binlog_{uuid.uuid4().hex[:8]}"
    conn = pymysql.connect(autocommit=True, **kwargs)  # type: ignore[arg-type]
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        log_file, log_pos = cur.fetchone()[:2]
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY, name VARCHAR(20), price DECIMAL(10,2))")
        cur.execute(f"INSERT INTO {db}.t VALUES (1, 'a', 1.50), (2, 'b', 2.25)")
        cur.execute(f"UPDATE {db}.t SET name = 'c' WHERE id = 2")
        cur.execute(f"DELETE FROM {db}.t WHERE id = 1")
    conn.close()

    stream = BinLogStreamReader(
        connection_settings={k: kwargs[k] for k in ("host", "port", "user", "password")},
        server_id=4242, log_file=log_file, log_pos=log_pos, blocking=False, resume_stream=True,
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent], only_schemas=[db],
    )
    events: list[tuple[str, dict]] = []
    try:
        for event in stream:
            for row in event.rows:
                if isinstance(event, WriteRowsEvent):
                    events.append(("insert", row["values"]))
                elif isinstance(event, UpdateRowsEvent):
                    events.append(("update", row["after_values"]))
                else:
                    events.append(("delete", row["values"]))
    finally:
        stream.close()
    from decimal import Decimal

    assert events == [
        ("insert", {"id": 1, "name": "a", "price": Decimal("1.50")}),
        ("insert", {"id": 2, "name": "b", "price": Decimal("2.25")}),
        ("update", {"id": 2, "name": "c", "price": Decimal("2.25")}),
        ("delete", {"id": 1, "name": "a", "price": Decimal("1.50")}),
    ]
