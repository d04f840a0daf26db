"""The lab's adapter between Snowflake's SQL and fakesnow, inside the lab's Snowflake server process.

Production code sends Snowflake's documented SQL and nothing else. Where fakesnow 0.12.1 cannot run a
correct Snowflake statement, the lab rewrites it here, on the server side, before fakesnow parses it: the
client (the real `snowflake-connector-python` behind `dagster_snowflake.SnowflakeResource`) and every
production module stay unaware of the lab. Each rewrite is a small function `(sql, session) -> sql` in
`REWRITES`, with a comment naming the fakesnow gap it covers; a rewrite must keep Snowflake's meaning.

`session` is the fakesnow connection the statement runs on, so a rewrite can keep per-session state
(e.g. the names of the session's temporary tables) as attributes of `LabSession`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LabSession:
    """Per-session state the rewrites keep (one per fakesnow connection)."""

    temporary_tables: set[str] = field(default_factory=set)
    parameters: dict[str, str] = field(default_factory=dict)


Rewrite = Callable[[str, LabSession], str]

# Applied in order to every statement a client sends.
REWRITES: list[Rewrite] = []

_SESSION_ATTR = "_tidb_pipeline_lab_session"


def session_of(connection: Any) -> LabSession:
    """The `LabSession` of a fakesnow connection, created on first use."""
    state = getattr(connection, _SESSION_ATTR, None)
    if state is None:
        state = LabSession()
        setattr(connection, _SESSION_ATTR, state)
    return state


def rewrite(sql: str, session: LabSession) -> str:
    """The statement fakesnow is given for the Snowflake statement `sql`."""
    for step in REWRITES:
        sql = step(sql, session)
    return sql


def install() -> None:
    """Route every statement of the server's sessions through `rewrite` (call once, in the server process)."""
    from fakesnow.cursor import FakeSnowflakeCursor

    if getattr(FakeSnowflakeCursor, "_tidb_pipeline_adapted", False):
        return
    execute = FakeSnowflakeCursor.execute
    describe_only = FakeSnowflakeCursor._describe_only  # noqa: SLF001

    def adapted_execute(self: Any, command: str, *args: Any, **kwargs: Any) -> Any:
        return execute(self, rewrite(command, session_of(self._conn)), *args, **kwargs)  # noqa: SLF001

    def adapted_describe_only(self: Any, command: str) -> Any:
        return describe_only(self, rewrite(command, session_of(self._conn)))  # noqa: SLF001

    FakeSnowflakeCursor.execute = adapted_execute  # type: ignore[method-assign]
    FakeSnowflakeCursor._describe_only = adapted_describe_only  # type: ignore[method-assign]  # noqa: SLF001
    FakeSnowflakeCursor._tidb_pipeline_adapted = True  # type: ignore[attr-defined]  # noqa: SLF001
