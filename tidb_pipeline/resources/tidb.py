"""The `tidb` resource: a MySQL-protocol connection to TiDB (the lab's MariaDB speaks the same protocol)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import pymysql
from pydantic import Field


# TiCDC never replicates a virtual generated column (TiDB and MariaDB both mark one so in EXTRA).
_NO_SUCH_TABLE = 1146  # MySQL's ER_NO_SUCH_TABLE, which TiDB returns too
_NOT_VIRTUAL = "UPPER(EXTRA) NOT LIKE '%%VIRTUAL GENERATED%%'"


@dataclass(frozen=True)
class SourceColumn:
    name: str
    data_type: str
    column_type: str
    nullable: bool


class TiDBResource(dg.ConfigurableResource):
    """TiDB over the MySQL protocol, with connect/read timeouts."""

    host: str = "127.0.0.1"
    port: int = 4000
    user: str = "root"
    password: str | None = Field(default=None, description="from TIDB_PASSWORD")
    connect_timeout_s: int = 10
    read_timeout_s: int = 300
    # Where finished DDL jobs are (replication.schema_changes): TiDB's own table; the lab names its stand-in.
    ddl_history_table: str = "mysql.tidb_ddl_history"

    @contextmanager
    def get_connection(self, database: str | None = None) -> Iterator[pymysql.connections.Connection]:
        conn = pymysql.connect(
            host=self.host, port=self.port, user=self.user, password=self.password or "",
            database=database, charset="utf8mb4", autocommit=True,
            connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s,
        )
        try:
            yield conn
        finally:
            conn.close()

    def count_rows(self, db: str, table: str) -> int:
        with self.get_connection() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {quote_mysql(db)}.{quote_mysql(table)}")
            return int(cur.fetchone()[0])

    def columns(self, db: str, table: str) -> list[SourceColumn]:
        """The columns TiCDC replicates, in table order: every column but the virtual generated ones."""
        with self.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
                f"WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND {_NOT_VIRTUAL} ORDER BY ORDINAL_POSITION",
                (db, table),
            )
            return [SourceColumn(r[0], r[1].lower(), r[2].lower(), r[3] == "YES") for r in cur.fetchall()]

    def ddl_jobs(self, after_job_id: int) -> list[tuple[int, bytes | str]]:
        """(job_id, job_meta) of the finished DDL jobs after `after_job_id`, oldest first."""
        with self.get_connection() as conn, conn.cursor() as cur:
            self._read_history(cur, ddl_history_sql(self.ddl_history_table), after_job_id)
            return [(int(r[0]), r[1]) for r in cur.fetchall()]

    def last_ddl_job_id(self) -> int:
        """The newest finished DDL job's id (0 when there is none)."""
        with self.get_connection() as conn, conn.cursor() as cur:
            self._read_history(cur, ddl_history_sql(self.ddl_history_table, newest=True), 0)
            row = cur.fetchone()
        return int(row[0] or 0) if row else 0

    def _read_history(self, cur: pymysql.cursors.Cursor, sql: str, after: int) -> None:
        try:
            cur.execute(sql, (after,))
        except pymysql.err.ProgrammingError as exc:
            if exc.args and exc.args[0] == _NO_SUCH_TABLE:
                raise RuntimeError(
                    f"TiDB's DDL job history {self.ddl_history_table} does not exist (TiDB keeps it in "
                    "mysql.tidb_ddl_history since v6.2): set TIDB_DDL_HISTORY_TABLE to where it is") from None
            raise

    def handle_key(self, db: str, table: str) -> tuple[str, ...]:
        """TiCDC's handle key: the primary key, else the NOT NULL unique index with the fewest columns.

        An index on a virtual generated column never qualifies (TiCDC's `IsIndexUnique`).
        """
        with self.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT s.INDEX_NAME, s.COLUMN_NAME, c.IS_NULLABLE = 'YES' OR NOT {_NOT_VIRTUAL} "
                "FROM information_schema.STATISTICS s "
                "JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = s.TABLE_SCHEMA "
                "AND c.TABLE_NAME = s.TABLE_NAME AND c.COLUMN_NAME = s.COLUMN_NAME "
                "WHERE s.TABLE_SCHEMA = %s AND s.TABLE_NAME = %s AND s.NON_UNIQUE = 0 "
                "ORDER BY s.INDEX_NAME, s.SEQ_IN_INDEX",
                (db, table),
            )
            indexes: dict[str, Sequence[tuple[str, bool]]] = {}
            for index, column, unfit in cur.fetchall():
                indexes[index] = [*indexes.get(index, ()), (column, bool(unfit))]
        return pick_handle_key(indexes)


def pick_handle_key(indexes: dict[str, Sequence[tuple[str, bool]]]) -> tuple[str, ...]:
    if "PRIMARY" in indexes:
        return tuple(c for c, _ in indexes["PRIMARY"])
    candidates = [cols for cols in indexes.values() if not any(nullable for _, nullable in cols)]
    if not candidates:
        return ()
    best = min(candidates, key=len)
    return tuple(c for c, _ in best)


def ddl_history_sql(history_table: str, *, newest: bool = False) -> str:
    """TiDB's finished DDL jobs after a job id, oldest first (`history_table` is `db.table`; see
    `replication.schema_changes` for what the rows hold); `newest`: the highest job id after it instead."""
    db, _, table = history_table.partition(".")
    if not db or not table:
        raise ValueError(f"ddl_history_table {history_table!r} must be <database>.<table>")
    name = ".".join("`" + p.replace("`", "``") + "`" for p in (db, table))
    if newest:
        return f"SELECT MAX(job_id) FROM {name} WHERE job_id > %s"
    return f"SELECT job_id, job_meta FROM {name} WHERE job_id > %s ORDER BY job_id"


def quote_mysql(name: str) -> str:
    """A back-quoted MySQL/TiDB identifier (a back-quote inside is doubled); an empty name is refused."""
    if not name:
        raise ValueError("empty identifier; every table and column needs a name")
    return "`" + name.replace("`", "``") + "`"
