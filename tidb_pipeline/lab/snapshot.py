"""The lab's snapshot source for backfills: MariaDB read in a consistent snapshot, named by a TSO.

MariaDB has no TSO, so `capture.snapshot_position` opens `START TRANSACTION WITH CONSISTENT SNAPSHOT`, reads
the binlog position that matches it exactly and records it under a fresh TSO; a lab changefeed created with
that `start_ts` starts reading the binlog at that position, so it carries exactly the commits after the
snapshot, as TiCDC does after a TiDB `tidb_snapshot` read. InnoDB serves the snapshot by MVCC: writers are
never blocked. Table metadata comes from the lab change feed's own reader (`capture.load_table`), so MariaDB's
JSON alias (LONGTEXT + `json_valid` check) is typed as the feed types it.

    build_backfill_job(config=config, snapshot_source=MariaDBSnapshotSource.from_tidb)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import pymysql

from tidb_pipeline.engine.backfill import DEFAULT_TIME_ZONE, MySQLSnapshot
from tidb_pipeline.lab.ticdc import capture
from tidb_pipeline.replication.ticdc_schema import TableInfo
from tidb_pipeline.resources.tidb import TiDBResource


class MariaDBSnapshot(MySQLSnapshot):
    def table_info(self, db: str, table: str) -> TableInfo:
        return capture.load_table(self.connection, db, table)


class MariaDBSnapshotSource:
    """Consistent-snapshot reads of the lab's MariaDB (PyMySQL connection keyword arguments)."""

    def __init__(self, conn_kwargs: Mapping[str, Any], *, time_zone: str = DEFAULT_TIME_ZONE) -> None:
        self.conn_kwargs = dict(conn_kwargs)
        self.time_zone = time_zone

    @classmethod
    def from_tidb(cls, tidb: TiDBResource) -> MariaDBSnapshotSource:
        return cls({"host": tidb.host, "port": tidb.port, "user": tidb.user, "password": tidb.password or "",
                    "charset": "utf8mb4"})  # fmt: skip

    @contextlib.contextmanager
    def open(self) -> Iterator[MariaDBSnapshot]:
        conn = pymysql.connect(autocommit=True, **self.conn_kwargs)
        try:
            with conn.cursor() as cur:
                # The lab change feed renders TIMESTAMP in UTC by default, as TiCDC in its server's zone.
                cur.execute("SET time_zone = %s", (self.time_zone,))
            _file, _pos, tso = capture.snapshot_position(conn)
            try:
                yield MariaDBSnapshot(conn, tso)
            finally:
                conn.rollback()  # read-only: ends the snapshot transaction
        finally:
            conn.close()
