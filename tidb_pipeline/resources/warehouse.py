"""The warehouse seam: one Snowflake session object for landing, merge, cleanup, checks and backfill.

Every statement the pipeline sends to Snowflake goes through a `Warehouse`, and every statement is plain,
documented Snowflake SQL that names its database and schema: nothing depends on the session's current
database or schema, so the seam never selects one. What it owns:
- `execute` (the rows, or [] for a statement without a result set) and `transaction` (`BEGIN` ... `COMMIT`,
  `ROLLBACK` on any error; the session stays in autocommit mode, as Snowflake's explicit transactions expect).
- Session parameters (`tidb_pipeline.config.SnowflakeSessionConfig`): one `ALTER SESSION SET` before the
  session's first statement, so an account's defaults or a user's settings never change what a load, merge
  or check does.
- Missing-object detection (`is_missing_object`): Snowflake's error 002003, "... does not exist or not
  authorized", read from the connector's error number, never from message text.
- The "DDL already ran" memo (`ensured`): a process remembers, per server, session database and object set,
  that it has created the objects a job needs (and for which version of their definition), and skips those
  `IF NOT EXISTS` statements on the next run. When the job then fails because an object is missing
  (someone dropped it), the memo entry is dropped, the DDL runs again and the job is retried once.
- Private temporary tables (`temporary_table`): created for one job, dropped when it ends (Snowflake drops
  them with the session anyway).
- How many tables one run may work on at once (`parallel_tables`, `SNOWFLAKE_PARALLEL_TABLES`).
- Statements binding a secret (`execute_secret`, e.g. the column policy's hash salt): the Python connector's
  default `pyformat` binding interpolates values into the SQL text client-side, and its DEBUG log prints that
  text, so the secret values are redacted from the connector's log records (`****`). Snowflake's own query
  history still shows the statement as run; keep such statements few (one `SET` per session).

`Warehouse.of(x)` takes a `Warehouse` or a DB-API connection (`snowflake.connector`); a connection is wrapped
once, so its session parameters are sent once however many jobs use it. `warehouse_session(resource,
session_config)` opens one from the `snowflake` resource.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from tidb_pipeline.config import SnowflakeSessionConfig

T = TypeVar("T")

# Snowflake's "SQL compilation error: <Object|Schema|Database|Stage> '...' does not exist or not authorized."
MISSING_OBJECT_ERRNO = 2003
# A Snowflake warehouse runs up to 8 queries at once by default (MAX_CONCURRENCY_LEVEL); beyond that they queue.
DEFAULT_PARALLEL_TABLES = 8
MAX_PARALLEL_TABLES = 64
PARALLEL_TABLES_VAR = "SNOWFLAKE_PARALLEL_TABLES"

_log = logging.getLogger(__name__)


class _RedactSecrets(logging.Filter):
    """Replaces registered secret values in log records by `****` (on the connector loggers that print SQL)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(s in message for s in self.secrets):
                for s in self.secrets:
                    message = message.replace(s, "****")
                record.msg, record.args = message, None
        return True


_REDACT = _RedactSecrets()
# The Snowflake connector's loggers that print statement text (a filter applies only at its own logger).
for _name in ("snowflake.connector.connection", "snowflake.connector.cursor"):
    logging.getLogger(_name).addFilter(_REDACT)


class SqlStatement(Protocol):
    """SQL text plus bound parameters (`tidb_pipeline.replication.ddl.Statement`)."""

    # Read-only members, so a frozen dataclass matches.
    @property
    def sql(self) -> str: ...

    @property
    def params(self) -> tuple[Any, ...]: ...


def is_missing_object(exc: BaseException) -> bool:
    """True when Snowflake says a table, schema, database or stage does not exist (error 002003)."""
    return getattr(exc, "errno", None) == MISSING_OBJECT_ERRNO


def alter_session_sql(parameters: Mapping[str, int | str]) -> str:
    """One `ALTER SESSION SET` for every parameter (Snowflake takes several, separated by spaces).

    Values are validated config (numbers, time zone names and format elements without quotes).
    """
    def literal(value: int | str) -> str:
        return str(value) if isinstance(value, int) else "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"

    return "ALTER SESSION SET " + " ".join(f"{name} = {literal(value)}" for name, value in parameters.items())


def parallel_tables(env: Mapping[str, str] | None = None) -> int:
    """Tables one run lands and merges at once (one session each), from `SNOWFLAKE_PARALLEL_TABLES`."""
    env = os.environ if env is None else env
    raw = env.get(PARALLEL_TABLES_VAR, "").strip()
    if not raw:
        return DEFAULT_PARALLEL_TABLES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PARALLEL_TABLES:
        raise ValueError(f"{PARALLEL_TABLES_VAR}={raw!r} must be a whole number from 1 to {MAX_PARALLEL_TABLES} "
                         f"(tables landed and merged at once); unset it for {DEFAULT_PARALLEL_TABLES}")
    return value


class DdlMemo:
    """What DDL this process has already run: memo key -> the version of the definitions it ran for, and
    what that DDL found (a note, such as the columns a table ended up with)."""

    def __init__(self) -> None:
        self._done: dict[Hashable, tuple[Hashable, Any]] = {}
        self._lock = threading.Lock()

    def holds(self, key: Hashable, version: Hashable = None) -> bool:
        with self._lock:
            entry = self._done.get(key)
            return entry is not None and entry[0] == version

    def remember(self, key: Hashable, version: Hashable = None, note: Any = None) -> None:
        with self._lock:
            self._done[key] = (version, note)

    def recall(self, key: Hashable, version: Hashable = None) -> Any:
        """The note the DDL of `key` left when it last ran for `version`; None when it has not."""
        with self._lock:
            entry = self._done.get(key)
            return entry[1] if entry is not None and entry[0] == version else None

    def forget(self, key: Hashable | None = None) -> None:
        """Drop one entry, or every entry when `key` is None."""
        with self._lock:
            if key is None:
                self._done.clear()
            else:
                self._done.pop(key, None)


DDL_MEMO = DdlMemo()

_WRAPPED: weakref.WeakKeyDictionary[Any, Warehouse] = weakref.WeakKeyDictionary()
_WRAPPED_LOCK = threading.Lock()


class Warehouse:
    """One Snowflake session: a DB-API connection plus the session parameters it runs under."""

    def __init__(self, connection: Any, session: SnowflakeSessionConfig | None = None, *,
                 memo: DdlMemo = DDL_MEMO) -> None:
        self.connection = connection
        self.session = session or SnowflakeSessionConfig()
        self.memo = memo
        self.rowcount: int | None = None  # rows the last statement changed, as the connector reports them
        self._pinned = False
        self._pin_lock = threading.Lock()
        self._skipped_ddl = False  # `ensure_once` skipped a statement since `ensured` last began an ensure

    @classmethod
    def of(cls, session: Warehouse | Any, config: SnowflakeSessionConfig | None = None) -> Warehouse:
        """`session` itself when it is a Warehouse, else the one Warehouse of that connection."""
        if isinstance(session, Warehouse):
            return session
        with _WRAPPED_LOCK:
            try:
                found = _WRAPPED.get(session)
            except TypeError:  # not weak-referenceable: wrap it for this call only
                return cls(session, config)
            if found is None or (config is not None and found.session != config):
                found = cls(session, config)
                _WRAPPED[session] = found
            return found

    # --- statements ----------------------------------------------------------------------------------

    def execute(self, stmt: SqlStatement | str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows, or [] when it has no result set."""
        if not self._pinned:
            self._pin()
        sql, bound = (stmt, tuple(params)) if isinstance(stmt, str) else (stmt.sql, tuple(stmt.params))
        return self._run(sql, bound)

    def execute_secret(self, stmt: SqlStatement) -> list[tuple[Any, ...]]:
        """`execute` for a statement whose bound string parameters are secrets: they are redacted from the
        connector's log records (module docstring)."""
        _REDACT.secrets.update(p for p in stmt.params if isinstance(p, str) and p)
        return self.execute(stmt)

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cursor = self.connection.cursor()
        cursor.execute(sql, params or None)
        self.rowcount = getattr(cursor, "rowcount", None)
        try:
            return [tuple(r) for r in cursor.fetchall()]
        except Exception:  # noqa: BLE001 - a DB-API cursor raises on fetch when the statement had no result set
            return []

    def _pin(self) -> None:
        with self._pin_lock:
            if not self._pinned:
                self._run(alter_session_sql(self.session.parameters()))
                self._pinned = True

    def ensure_once(self, sql: str) -> None:
        """Run `sql`, an idempotent `CREATE ... IF NOT EXISTS`, unless this process already ran it on this server
        and session database (the DDL memo). The objects several tables share (database, schemas, control
        tables) were created again for every table of every run; a missing-object error later in `ensured`
        forgets the memo and runs them again."""
        key = self.memo_key(("ensure", sql))
        if self.memo.holds(key):
            self._skipped_ddl = True
            return
        self.execute(sql)
        self.memo.remember(key)

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """`BEGIN`, the block, `COMMIT`; `ROLLBACK` and re-raise when anything in it fails, BEGIN included (an
        error after BEGIN was sent may leave it open on the session; ROLLBACK without a transaction is a no-op)."""
        try:
            self.execute("BEGIN")
            yield
            self.commit()
        except BaseException:
            try:
                self.rollback()
            except Exception as exc:  # noqa: BLE001 - the block's error says what went wrong; a session that
                # cannot roll back is gone, and Snowflake rolls back a transaction whose session ends.
                _log.warning("rollback failed after an error in the transaction: %s", exc)
            raise

    # --- the DDL memo ----------------------------------------------------------------------------------

    def memo_key(self, key: Hashable) -> tuple[Hashable, ...]:
        """`key` on this server, account and session database (unqualified names resolve against it)."""
        where = tuple(str(getattr(self.connection, a, "") or "") for a in ("host", "port", "account", "database"))
        return (*where, key)

    def ensured(self, key: Hashable, ensure: Callable[[], Any], work: Callable[[], T], *,
                version: Hashable = None, what: str = "", log: logging.Logger | Any = _log) -> T:
        """`ensure()` (the IF NOT EXISTS DDL of `key`) unless this process already ran it for `version`, then
        `work()`. When `work` fails on a missing object after the DDL was skipped, forget, ensure, and run
        `work` once more: `work` must be safe to repeat after a failure (it rolls back what it began).
        What `ensure()` returns is kept next to `version` (`DdlMemo.recall`), for runs that skip it."""
        full = self.memo_key(key)
        skipped = self.memo.holds(full, version)
        if not skipped:
            self._skipped_ddl = False
            self.memo.remember(full, version, ensure())
            skipped = self._skipped_ddl  # part of it was remembered from another table's ensure
        try:
            return work()
        except Exception as exc:
            if not is_missing_object(exc):
                raise
            # Something this process created is gone: forget all of it (`ensure_once` entries too).
            self.memo.forget()
            if not skipped:
                raise
            log.warning("%s failed with its DDL skipped (%s: %s); creating its objects again and retrying once",
                        what or str(key), type(exc).__name__, exc)
            self.memo.remember(full, version, ensure())
            return work()

    # --- private temporary tables ------------------------------------------------------------------------

    @contextmanager
    def temporary_table(self, create_sql: str, name: str, log: logging.Logger | Any = _log) -> Iterator[str]:
        """Create a TEMPORARY table with `create_sql`, yield its (quoted, qualified) `name`, drop it at the end.

        Private to this session, and gone with it if the process dies; dropped here so a long session does
        not collect them.
        """
        self.execute(create_sql)
        try:
            yield name
        finally:
            try:
                self.execute(f"DROP TABLE IF EXISTS {name}")
            except Exception as exc:  # noqa: BLE001 - housekeeping only; the session's end drops it anyway
                log.debug("could not drop the temporary table %s: %s", name, exc)


class _ConnectionSource(Protocol):
    def get_connection(self) -> Any: ...


@contextmanager
def warehouse_session(resource: _ConnectionSource, session: SnowflakeSessionConfig | None = None) -> Iterator[Warehouse]:
    """A new session from the `snowflake` resource (`SnowflakeResource.get_connection`), closed at the end."""
    with resource.get_connection() as connection:
        yield Warehouse(connection, session)
