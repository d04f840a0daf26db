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

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LabSession:
    """Per-session state the rewrites keep (one per fakesnow connection)."""

    temporary_tables: set[str] = field(default_factory=set)
    parameters: dict[str, str] = field(default_factory=dict)


Rewrite = Callable[[str, LabSession], str]


def _closing_paren(sql: str, open_at: int) -> int | None:
    """Index of the `)` closing the `(` at `open_at`, skipping quoted text; None when unbalanced."""
    depth, i, n = 0, open_at, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            i += 1
            while i < n:
                if ch == "'" and sql[i] == "\\":  # Snowflake's backslash escape (the connector binds with it)
                    i += 2
                    continue
                if sql[i] == ch:
                    if i + 1 < n and sql[i + 1] == ch:  # a doubled quote inside the text
                        i += 2
                        continue
                    break
                i += 1
            if i >= n:
                return None
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _in_quotes(sql: str) -> list[bool]:
    """Per character of `sql`: True inside a string literal or a quoted identifier."""
    inside, quote, i, n = [False] * len(sql), "", 0, len(sql)
    while i < n:
        ch = sql[i]
        if quote:
            inside[i] = True
            if quote == "'" and ch == "\\":
                if i + 1 < n:
                    inside[i + 1] = True
                i += 2
                continue
            if ch == quote:
                if i + 1 < n and sql[i + 1] == quote:
                    inside[i + 1] = True
                    i += 2
                    continue
                quote = ""
        elif ch in "'\"":
            quote, inside[i] = ch, True
        i += 1
    return inside


_STRIP_NULL_VALUE = re.compile(r"\bSTRIP_NULL_VALUE\(", re.IGNORECASE)
_TO_VARCHAR = re.compile(r"\s*::\s*VARCHAR\b", re.IGNORECASE)


def strip_null_value_as_varchar(sql: str, _session: LabSession) -> str:
    """`STRIP_NULL_VALUE(e)::VARCHAR` -> `IFF(IS_NULL_VALUE(e), NULL, e::VARCHAR)`.

    fakesnow casts the VARIANT that STRIP_NULL_VALUE returns to its JSON text (`'"2024-02-29"'`, quotes kept),
    where Snowflake gives the string itself; its cast of a path (`e::VARCHAR`) is right. Same meaning: JSON null
    -> NULL, a string -> its text. `e` is a path in every statement the pipeline sends.
    """
    out, pos, quoted = [], 0, _in_quotes(sql)
    for m in _STRIP_NULL_VALUE.finditer(sql):
        if m.start() < pos or quoted[m.start()]:
            continue
        close = _closing_paren(sql, m.end() - 1)
        if close is None:
            break
        cast = _TO_VARCHAR.match(sql, close + 1)
        if cast is None:
            continue
        inner = strip_null_value_as_varchar(sql[m.end():close], _session)
        out.append(sql[pos:m.start()])
        out.append(f"IFF(IS_NULL_VALUE({inner}), NULL, {inner}::VARCHAR)")
        pos = cast.end()
    out.append(sql[pos:])
    return "".join(out)


_TRY_PARSE_JSON = re.compile(r"\bTRY_PARSE_JSON\(", re.IGNORECASE)


def try_parse_json_as_try_cast(sql: str, _session: LabSession) -> str:
    """`TRY_PARSE_JSON(e)` -> DuckDB's `TRY_CAST(e AS JSON)` (fakesnow passes it through).

    fakesnow turns TRY_PARSE_JSON into `CASE WHEN JSON_VALID(e) THEN CAST(e AS JSON) END`, and inside its MERGE
    DuckDB evaluates that CAST for every row: invalid JSON fails the statement instead of giving NULL. Same
    meaning: invalid text -> NULL, `null` -> a JSON null, anything else -> the parsed value.
    """
    out, pos, quoted = [], 0, _in_quotes(sql)
    for m in _TRY_PARSE_JSON.finditer(sql):
        if m.start() < pos or quoted[m.start()]:
            continue
        close = _closing_paren(sql, m.end() - 1)
        if close is None:
            break
        inner = try_parse_json_as_try_cast(sql[m.end():close], _session)
        out.append(sql[pos:m.start()])
        out.append(f"TRY_CAST({inner} AS JSON)")
        pos = close + 1
    out.append(sql[pos:])
    return "".join(out)


_TRY_TEMPORAL = re.compile(r"\bTRY_TO_(DATE|TIMESTAMP_NTZ)\(", re.IGNORECASE)
# Snowflake format elements -> DuckDB strptime, longest first. `FF` (1 to 9 digits) -> `%f` (1 to 6): TiDB's
# fsp is at most 6, so every value TiCDC writes keeps its meaning.
_FORMAT_ELEMENTS = (("YYYY", "%Y"), ("HH24", "%H"), ("FF9", "%f"), ("FF6", "%f"), ("FF", "%f"), ("MM", "%m"),
                    ("DD", "%d"), ("MI", "%M"), ("SS", "%S"))
_FORMAT_LITERAL = re.compile(r"^(.*),\s*'([A-Z0-9:. -]+)'\s*$", re.DOTALL)


def _strptime_format(snowflake_format: str) -> str | None:
    out, i = [], 0
    while i < len(snowflake_format):
        for element, directive in _FORMAT_ELEMENTS:
            if snowflake_format.startswith(element, i):
                out.append(directive)
                i += len(element)
                break
        else:
            if snowflake_format[i] not in ":.- ":
                return None  # an element this rewrite does not know: leave the call to fakesnow
            out.append(snowflake_format[i])
            i += 1
    return "".join(out)


def try_temporal_as_try_strptime(sql: str, _session: LabSession) -> str:
    """`TRY_TO_DATE(e, 'fmt')` / `TRY_TO_TIMESTAMP_NTZ(e, 'fmt')` -> DuckDB's `TRY_STRPTIME(e, '%...')`.

    fakesnow turns them into TRY_STRPTIME, but its MERGE copies the expression without the TRY: a zero date
    (`0000-00-00`) then fails the statement instead of giving NULL. fakesnow also reads `FF` as nanoseconds,
    which overflow after 2262. Same meaning for the formats TiCDC writes: text in the format -> the value,
    anything else -> NULL.
    """
    out, pos, quoted = [], 0, _in_quotes(sql)
    for m in _TRY_TEMPORAL.finditer(sql):
        if m.start() < pos or quoted[m.start()]:
            continue
        close = _closing_paren(sql, m.end() - 1)
        if close is None:
            break
        args = _FORMAT_LITERAL.match(sql[m.end():close])
        fmt = _strptime_format(args.group(2)) if args else None
        if args is None or fmt is None:
            continue
        inner = try_temporal_as_try_strptime(args.group(1), _session)
        call = f"TRY_STRPTIME({inner}, '{fmt}')"
        out.append(sql[pos:m.start()])
        out.append(f"TRY_CAST({call} AS DATE)" if m.group(1).upper() == "DATE" else call)
        pos = close + 1
    out.append(sql[pos:])
    return "".join(out)


# Applied in order to every statement a client sends.
REWRITES: list[Rewrite] = [strip_null_value_as_varchar, try_parse_json_as_try_cast, try_temporal_as_try_strptime]

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


def _null_timestamps_stay_null() -> None:
    """A NULL TIMESTAMP_NTZ reaches the client as NULL, not as 1970-01-01 00:00:00.

    fakesnow's server builds Snowflake's (epoch, fraction) struct for timestamp columns without the column's
    validity, so the connector reads every NULL as epoch 0 (the value stored is NULL: `IS NULL` is true).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from fakesnow import arrow

    to_struct = arrow.timestamp_to_sf_struct

    def with_nulls(ts: Any) -> Any:
        struct = to_struct(ts)
        if isinstance(ts, pa.ChunkedArray):
            ts = ts.combine_chunks()
        if not ts.null_count:
            return struct
        fields = [struct.type.field(i) for i in range(struct.type.num_fields)]
        return pa.StructArray.from_arrays(struct.flatten(), fields=fields, mask=pc.is_null(ts))

    arrow.timestamp_to_sf_struct = with_nulls


def install() -> None:
    """Route every statement of fakesnow's sessions through `rewrite` (call once per process: the lab server,
    or a test using fakesnow in process)."""
    from fakesnow.cursor import FakeSnowflakeCursor

    if getattr(FakeSnowflakeCursor, "_tidb_pipeline_adapted", False):
        return
    _null_timestamps_stay_null()
    execute = FakeSnowflakeCursor.execute
    describe_only = FakeSnowflakeCursor._describe_only  # noqa: SLF001

    def adapted_execute(self: Any, command: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        if params and not kwargs.get("binding_params"):
            # In process, bind first as the connector does before sending (rewrites may add a literal `%`).
            command, params = self._rewrite_with_params(command, params)  # noqa: SLF001
        return execute(self, rewrite(command, session_of(self._conn)), params, *args, **kwargs)  # noqa: SLF001

    def adapted_describe_only(self: Any, command: str) -> Any:
        return describe_only(self, rewrite(command, session_of(self._conn)))  # noqa: SLF001

    FakeSnowflakeCursor.execute = adapted_execute  # type: ignore[method-assign]
    FakeSnowflakeCursor._describe_only = adapted_describe_only  # type: ignore[method-assign]  # noqa: SLF001
    FakeSnowflakeCursor._tidb_pipeline_adapted = True  # type: ignore[attr-defined]  # noqa: SLF001
