"""The lab change feed's durable changefeed table (SQLite in WAL mode).

The HTTP API writes definitions and states; the capture threads write progress. One connection guarded by a
lock keeps every read and write atomic across those threads; each write commits before returning, so a
killed server loses nothing it acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

STATES = ("normal", "pending", "warning", "failed", "stopped", "removed", "finished")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changefeeds (
    id TEXT PRIMARY KEY,
    sink_uri TEXT NOT NULL,
    replica_config TEXT NOT NULL,
    start_ts INTEGER NOT NULL,
    state TEXT NOT NULL,
    checkpoint_ts INTEGER NOT NULL,
    binlog_file TEXT,
    binlog_pos INTEGER,
    error TEXT,
    created_at REAL NOT NULL
)
"""

_COLUMNS = (
    "id, sink_uri, replica_config, start_ts, state, checkpoint_ts, binlog_file, binlog_pos, error, created_at"
)


@dataclass
class Changefeed:
    """One changefeed: its definition, state and replication progress."""

    id: str
    sink_uri: str
    replica_config: dict
    start_ts: int
    state: str
    checkpoint_ts: int
    binlog_file: str | None
    binlog_pos: int | None
    error: dict | None
    created_at: float


def running_error(code: str, message: str, *, addr: str = "") -> dict:
    """The `error` a changefeed carries, in TiCDC's RunningError shape (`code` like "CDC:ErrKafkaNewProducer")."""
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "addr": addr,
        "code": code,
        "message": message,
    }


def _row_to_changefeed(row: tuple) -> Changefeed:
    id_, sink_uri, config, start_ts, state, checkpoint_ts, binlog_file, binlog_pos, error, created_at = row
    return Changefeed(
        id=id_,
        sink_uri=sink_uri,
        replica_config=json.loads(config),
        start_ts=start_ts,
        state=state,
        checkpoint_ts=checkpoint_ts,
        binlog_file=binlog_file,
        binlog_pos=binlog_pos,
        error=json.loads(error) if error is not None else None,
        created_at=created_at,
    )


class ChangefeedStore:
    """Durable, thread-safe changefeed table."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, every statement is its own durable transaction.
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def list(self) -> list[Changefeed]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM changefeeds ORDER BY created_at, id").fetchall()
        return [_row_to_changefeed(r) for r in rows]

    def get(self, id: str) -> Changefeed | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM changefeeds WHERE id = ?", (id,)).fetchone()
        return _row_to_changefeed(row) if row is not None else None

    def put(self, cf: Changefeed) -> None:
        """Insert or replace the whole changefeed."""
        with self._lock:
            self._conn.execute(
                f"INSERT OR REPLACE INTO changefeeds ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cf.id,
                    cf.sink_uri,
                    json.dumps(cf.replica_config),
                    cf.start_ts,
                    cf.state,
                    cf.checkpoint_ts,
                    cf.binlog_file,
                    cf.binlog_pos,
                    json.dumps(cf.error) if cf.error is not None else None,
                    cf.created_at,
                ),
            )

    def delete(self, id: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM changefeeds WHERE id = ?", (id,))

    def update_progress(self, id: str, *, checkpoint_ts: int, binlog_file: str, binlog_pos: int) -> None:
        """Record how far capture has got; never moves the checkpoint backwards."""
        with self._lock:
            self._conn.execute(
                "UPDATE changefeeds SET checkpoint_ts = MAX(checkpoint_ts, ?), binlog_file = ?, binlog_pos = ? "
                "WHERE id = ?",
                (checkpoint_ts, binlog_file, binlog_pos, id),
            )

    def set_state(self, id: str, state: str, error: dict | None = None) -> None:
        """Set the state and replace the error (None clears it)."""
        if state not in STATES:
            raise ValueError(f"changefeed state {state!r} is not one of {', '.join(STATES)}")
        with self._lock:
            self._conn.execute(
                "UPDATE changefeeds SET state = ?, error = ? WHERE id = ?",
                (state, json.dumps(error) if error is not None else None, id),
            )
