"""The lab's adapter between Snowflake's SQL and fakesnow, inside the lab's Snowflake server process.

Production code sends Snowflake's documented SQL and nothing else. Where fakesnow 0.12.1 cannot run a
correct Snowflake statement, the lab rewrites it here, on the server side, before fakesnow parses it: the
client (the real `snowflake-connector-python` behind `dagster_snowflake.SnowflakeResource`) and every
production module stay unaware of the lab. Each rewrite is a small function `(sql, session) -> sql` in
`REWRITES`, with a comment naming the fakesnow gap it covers; a rewrite must keep Snowflake's meaning.

`session` is the fakesnow connection the statement runs on, so a rewrite can keep per-session state
(e.g. the names of the session's temporary tables) as attributes of `LabSession`.

The session seam's needs (`tidb_pipeline.resources.warehouse`), met here instead of in production code:
- `session_parameters`: fakesnow implements `ALTER SESSION SET` only for AUTOCOMMIT. The pins the pipeline
  sets (LOCK_TIMEOUT, STATEMENT_TIMEOUT_IN_SECONDS, TIMEZONE, the output formats) are recorded on the session
  and answered like Snowflake answers them. The lab cannot honour them: DuckDB does not wait for locks (a
  conflicting write fails at once, as HTTP 500, and the connector retries it until its network timeout),
  a statement is bounded by the client's socket timeout, the server runs in UTC, and results travel as typed
  Arrow values (the output formats only reach text the SQL builds with explicit formats anyway).
- `remove_staged_files`: fakesnow has no `REMOVE`; the files under the stage path are deleted here.
- `current_database`: fakesnow resolves its helper macros (e.g. `_fs_to_timestamp` behind TO_TIMESTAMP_NTZ),
  a `COPY ... FROM (SELECT ... FROM @stage)` transformation and bare temporary tables against the session's
  current database and schema, where Snowflake needs none for fully qualified names. A session without a
  current database gets the database and schema of the first fully qualified name it uses made current,
  as if it had logged in with them. (The pipeline never reads the current database or schema.)
- `temporary_tables`: DuckDB keeps temporary tables in its own "temp" catalog, so fakesnow refuses a
  qualified `CREATE TEMPORARY TABLE "DB"."SCHEMA"."T"`. The table is created under its bare name and every
  later statement of the session names it bare. Limit: two temporary tables of one session whose last name
  parts are equal would collide (the pipeline's are unique per load).
- `explicit_transactions`: fakesnow runs a MERGE as `CREATE TEMPORARY TABLE merge_candidates` plus
  DELETE/UPDATE/INSERT, and DuckDB refuses one transaction that writes both that DDL's catalog rows and the
  target ("a single transaction can only write to a single attached database"). Inside `BEGIN` ... `COMMIT`
  the session is switched to fakesnow's autocommit-off mode, where DDL commits what ran before it and DML
  opens a new transaction (Snowflake's rule for real DDL). So a MERGE keeps its own writes and everything
  after it atomic, while DML *before* a MERGE in the same transaction would be committed early: the
  pipeline's merge transaction reads before its MERGE and writes only from it on, and a MERGE after other
  writes of its transaction is refused here with an error, never run half-atomic.

fakesnow 0.12.1 differences the pipeline's SQL is written around (valid Snowflake either way; not rewritten):
- Casts in SET / VALUES of a MERGE are not applied reliably: the merge keeps all casts in the USING subquery
  and its clauses use plain `s."col"`.
- Duplicate keys in a MERGE source do not raise (Snowflake raises for a multi-row update): the merge proves
  one row per key itself (`replication.merge.max_rows_per_key_sql`).
- PARSE_JSON re-encodes numbers as doubles: a decimal with more than ~15 significant digits loaded through
  a JSON *number* loses digits here (Snowflake keeps 38). String-mode decimals are exact in both.
- `TO_TIMESTAMP_NTZ(x)::TIMESTAMP_NTZ(6)` fails ("to_timestamp_ntz does not exist"), so no trailing cast is
  added after a timestamp conversion (the column type does the rounding).
- `(VALUES ...) AS r` with an alias loses the `column1..n` names; `FROM VALUES ...` without parentheses
  and without an alias keeps them, so ranges are given as `SELECT column1 AS .. FROM VALUES ...`.
- VARIANT numbers must be cast (`::int`) before ordering or comparing.
- A `NUMBER(38,0)` column (Snowflake's INT) is a BIGINT here, so a TiDB DECIMAL(38,0) value wider than 19
  digits overflows (Snowflake holds 38 digits). `TO_NUMBER` is no way out: fakesnow computes it through a
  double. NUMBER(20..37,0) columns are exact.
- A VARIANT holding JSON `null` from PARSE_JSON comes back as Python None (Snowflake returns the text `null`;
  so does the TRY_PARSE_JSON rewrite below).

The merge's conversions (`replication.merge.json_to_sql`), rewritten here: `STRIP_NULL_VALUE(e)::VARCHAR`
(fakesnow keeps the JSON quotes), `TRY_PARSE_JSON` and `TRY_TO_DATE` / `TRY_TO_TIMESTAMP_NTZ` with a format
(fakesnow's MERGE drops their TRY and fails on a zero date or bad JSON; it also reads `FF` as nanoseconds,
which overflow after 2262). And the server sends a NULL TIMESTAMP_NTZ as NULL, not as 1970-01-01.
- `$name` is read as a session variable even inside a quoted identifier: internal column names avoid `$`.
- `COPY INTO` a two-column table from JSON files fails; Parquet with a `$1:<column>` transformation works
  (the built-in landing stages Parquet).
- Two loads racing for the landing lock row: Snowflake makes the second wait; DuckDB fails it with a write
  conflict (HTTP 500), which the connector retries until its network timeout.
- A PRIMARY KEY is informational on Snowflake and enforced here.
- Checksums (`replication.checksum`): `HASH`/`HASH_AGG` differ from Snowflake's and `TO_NUMBER(x, 'XXX')` is
  missing, so hex digits are summed by position; an integer product is summed as a double unless cast to
  NUMBER(38,0); string literals have no backslash escapes, so special characters are built from codes;
  `TO_CHAR` ignores `FF6` and drops trailing zeros, so timestamps are formatted from parts;
  `DATE_PART(NANOSECOND)` overflows past 2262, so fractions come from `DATEDIFF(MICROSECOND, ...)`; NUMBER(p,p)
  prints without its leading zero ('.0277'); and a long expression repeated in one statement costs the
  transpiler seconds per repeat, so the checksum SQL is layered.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LabSession:
    """Per-session state the rewrites keep (one per fakesnow connection)."""

    temporary_tables: set[str] = field(default_factory=set)
    parameters: dict[str, str] = field(default_factory=dict)
    # The fakesnow connection, for rewrites that change its state. A weak reference: the server ends a
    # session (and with it an open transaction, e.g. a killed client's) by dropping its last reference.
    connection_ref: Callable[[], Any] | None = None
    explicit_transaction: bool = False  # inside BEGIN ... COMMIT/ROLLBACK, switched to autocommit off
    wrote_in_transaction: bool = False  # DML ran since BEGIN (a MERGE now could not stay atomic)

    @property
    def connection(self) -> Any:
        return None if self.connection_ref is None else self.connection_ref()


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


def _rewrite_calls(sql: str, call: re.Pattern[str], rewrite: Callable[[re.Match[str], str], str | None], *,
                   then: re.Pattern[str] | None = None) -> str:
    """Each call outside quotes (`call` matches the function's name and its `(`), and the `then` right after it
    when given, replaced by `rewrite(the name's match, the text between its parentheses)`.

    A call inside a string or quoted identifier, one without `then`, or one `rewrite` returns None for is kept.
    """
    out, pos, quoted = [], 0, _in_quotes(sql)
    for m in call.finditer(sql):
        if m.start() < pos or quoted[m.start()]:
            continue
        close = _closing_paren(sql, m.end() - 1)
        if close is None:
            break
        end = close + 1
        if then is not None:
            follows = then.match(sql, end)
            if follows is None:
                continue
            end = follows.end()
        replaced = rewrite(m, sql[m.end():close])
        if replaced is None:
            continue
        out.append(sql[pos:m.start()])
        out.append(replaced)
        pos = end
    out.append(sql[pos:])
    return "".join(out)

def strip_null_value_as_varchar(sql: str, _session: LabSession) -> str:
    """`STRIP_NULL_VALUE(e)::VARCHAR` -> `IFF(IS_NULL_VALUE(e), NULL, e::VARCHAR)`.

    fakesnow casts the VARIANT that STRIP_NULL_VALUE returns to its JSON text (`'"2024-02-29"'`, quotes kept),
    where Snowflake gives the string itself; its cast of a path (`e::VARCHAR`) is right. Same meaning: JSON null
    -> NULL, a string -> its text. `e` is a path in every statement the pipeline sends.
    """

    def iff(_name: re.Match[str], argument: str) -> str:
        inner = strip_null_value_as_varchar(argument, _session)  # a STRIP_NULL_VALUE(...)::VARCHAR nested in it
        return f"IFF(IS_NULL_VALUE({inner}), NULL, {inner}::VARCHAR)"

    return _rewrite_calls(sql, _STRIP_NULL_VALUE, iff, then=_TO_VARCHAR)


_COALESCE = re.compile(r"\bCOALESCE\(", re.IGNORECASE)


def _top_level_args(text: str) -> list[str]:
    """`text` split at the commas outside parentheses and quotes."""
    quoted, depth, start, out = _in_quotes(text), 0, 0, []
    for i, ch in enumerate(text):
        if quoted[i]:
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    out.append(text[start:].strip())
    return out


def coalesce_as_varchar(sql: str, _session: LabSession) -> str:
    """`COALESCE(a, b)::VARCHAR` -> `CASE WHEN a IS NOT NULL THEN a::VARCHAR WHEN b IS NOT NULL THEN b::VARCHAR END`.

    fakesnow casts a VARIANT that is not a plain path to its JSON text (quotes kept), as with STRIP_NULL_VALUE
    above; the merge reads a renamed column as `COALESCE(new path, old path)`. Same meaning: COALESCE returns
    its first argument that is not SQL NULL, and that one is cast.
    """

    def case(_name: re.Match[str], arguments: str) -> str:
        return "CASE " + " ".join(f"WHEN {a} IS NOT NULL THEN {a}::VARCHAR" for a in _top_level_args(arguments)) + " END"

    return _rewrite_calls(sql, _COALESCE, case, then=_TO_VARCHAR)


_TRY_PARSE_JSON = re.compile(r"\bTRY_PARSE_JSON\(", re.IGNORECASE)


def try_parse_json_as_try_cast(sql: str, _session: LabSession) -> str:
    """`TRY_PARSE_JSON(e)` -> DuckDB's `TRY_CAST(e AS JSON)` (fakesnow passes it through).

    fakesnow turns TRY_PARSE_JSON into `CASE WHEN JSON_VALID(e) THEN CAST(e AS JSON) END`, and inside its MERGE
    DuckDB evaluates that CAST for every row: invalid JSON fails the statement instead of giving NULL. Same
    meaning: invalid text -> NULL, `null` -> a JSON null, anything else -> the parsed value.
    """
    def try_cast(_name: re.Match[str], argument: str) -> str:
        return f"TRY_CAST({try_parse_json_as_try_cast(argument, _session)} AS JSON)"

    return _rewrite_calls(sql, _TRY_PARSE_JSON, try_cast)

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
    def strptime(name: re.Match[str], arguments: str) -> str | None:
        args = _FORMAT_LITERAL.match(arguments)
        fmt = _strptime_format(args.group(2)) if args else None
        if args is None or fmt is None:
            return None
        call = f"TRY_STRPTIME({try_temporal_as_try_strptime(args.group(1), _session)}, '{fmt}')"
        return f"TRY_CAST({call} AS DATE)" if name.group(1).upper() == "DATE" else call

    return _rewrite_calls(sql, _TRY_TEMPORAL, strptime)

_SWAP = re.compile(r'^\s*ALTER\s+TABLE\s+((?:"[^"]+"\.)*"[^"]+")\s+SWAP\s+WITH\s+((?:"[^"]+"\.)*"[^"]+")\s*;?\s*$',
                   re.IGNORECASE)


def swap_as_renames(sql: str) -> list[str] | None:
    """`ALTER TABLE a SWAP WITH b` (Snowflake: exchanges the two tables' contents and metadata in one step) ->
    three renames through a free name, or None for any other statement.

    fakesnow has no SWAP WITH. The renames run one after another in the lab's single server process, where
    nothing else touches the two tables during a mode switch (its merges are paused, as on Snowflake).
    Only fully quoted names, as the pipeline writes them.
    """
    m = _SWAP.match(sql)
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    free = a[:-1] + '__SWAP_TMP"'
    return [f"ALTER TABLE {a} RENAME TO {free}", f"ALTER TABLE {b} RENAME TO {a}", f"ALTER TABLE {free} RENAME TO {b}"]


# Applied in order to every statement a client sends.
REWRITES: list[Rewrite] = [strip_null_value_as_varchar, coalesce_as_varchar, try_parse_json_as_try_cast,
                           try_temporal_as_try_strptime]

_SESSION_ATTR = "_tidb_pipeline_lab_session"


def session_of(connection: Any) -> LabSession:
    """The `LabSession` of a fakesnow connection, created on first use."""
    state = getattr(connection, _SESSION_ATTR, None)
    if state is None:
        state = LabSession(connection_ref=weakref.ref(connection))
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
        if (steps := swap_as_renames(command)) is not None:
            for step in steps:
                execute(self, step)
            return self
        if params and not kwargs.get("binding_params"):
            # In process, bind first as the connector does before sending (rewrites may add a literal `%`).
            command, params = self._rewrite_with_params(command, params)  # noqa: SLF001
        return execute(self, rewrite(command, session_of(self._conn)), params, *args, **kwargs)  # noqa: SLF001

    def adapted_describe_only(self: Any, command: str) -> Any:
        return describe_only(self, rewrite(command, session_of(self._conn)))  # noqa: SLF001

    FakeSnowflakeCursor.execute = adapted_execute  # type: ignore[method-assign]
    FakeSnowflakeCursor._describe_only = adapted_describe_only  # type: ignore[method-assign]  # noqa: SLF001
    FakeSnowflakeCursor._tidb_pipeline_adapted = True  # type: ignore[attr-defined]  # noqa: SLF001


# --- the session seam's rewrites (see the module docstring) ------------------------------------------------

_NOP = "SELECT 'Statement executed successfully.' AS \"status\""
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED3 = re.compile(r'(?<![\w"$.])("(?:[^"]|"")+")\.("(?:[^"]|"")+")\.("(?:[^"]|"")+")')
# Parameters the pipeline pins (`SnowflakeSessionConfig`); AUTOCOMMIT stays fakesnow's own.
PINNED_PARAMETERS = frozenset({
    "LOCK_TIMEOUT", "STATEMENT_TIMEOUT_IN_SECONDS", "TIMEZONE", "TIMESTAMP_NTZ_OUTPUT_FORMAT",
    "DATE_OUTPUT_FORMAT", "TIME_OUTPUT_FORMAT",
})
_ALTER_SESSION = re.compile(r"^\s*ALTER\s+SESSION\s+SET\s+(?P<items>.+?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_SETTING = re.compile(r"\s*,?\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>'(?:[^'\\]|''|\\.)*'|[^\s,']+)")
_REMOVE = re.compile(r"^\s*(?:REMOVE|RM)\s+@(?P<stage>" + _IDENT + r"(?:\." + _IDENT + r"){0,2})(?P<path>/\S*)?\s*;?\s*$",
                     re.IGNORECASE)
_CREATE_TEMPORARY = re.compile(
    r'^(?P<head>\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:LOCAL\s+|GLOBAL\s+)?TEMP(?:ORARY)?\s+TABLE\s+'
    r'(?:IF\s+NOT\s+EXISTS\s+)?)(?P<name>"(?:[^"]|"")+"\."(?:[^"]|"")+"\."(?:[^"]|"")+")', re.IGNORECASE)
_DROP_TABLE = re.compile(r'^\s*DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?P<name>"(?:[^"]|"")+")\s*;?\s*$', re.IGNORECASE)
_BEGIN = re.compile(r"^\s*(?:BEGIN|START)(?:\s+(?:TRANSACTION|WORK))?\s*;?\s*$", re.IGNORECASE)
_END = re.compile(r"^\s*(?:COMMIT|ROLLBACK)(?:\s+WORK)?\s*;?\s*$", re.IGNORECASE)
_DML = re.compile(r"^\s*(?:INSERT|UPDATE|DELETE|COPY)\b", re.IGNORECASE)
_MERGE = re.compile(r"^\s*MERGE\b", re.IGNORECASE)


def _unquote(ident: str) -> str:
    """The name an identifier stands for: a quoted one as written, an unquoted one upper-cased."""
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident.upper()


def _split_identifiers(text: str) -> list[str]:
    return [_unquote(m.group(0)) for m in re.finditer(_IDENT, text)]


def session_parameters(sql: str, session: LabSession) -> str:
    """`ALTER SESSION SET` of the pinned parameters: recorded on the session, answered as Snowflake does."""
    match = _ALTER_SESSION.match(sql)
    if not match:
        return sql
    items = match.group("items")
    settings = {}
    pos = 0
    while pos < len(items):
        got = _SETTING.match(items, pos)
        if not got:
            return sql  # not a plain list of settings: leave it to fakesnow
        settings[got.group("name").upper()] = got.group("value")
        pos = got.end()
        while pos < len(items) and items[pos] in " ,\n\t":
            pos += 1
    if not settings or not set(settings) <= PINNED_PARAMETERS:
        return sql
    for name, value in settings.items():
        session.parameters[name] = value[1:-1].replace("''", "'") if value.startswith("'") else value
    return _NOP


def remove_staged_files(sql: str, session: LabSession) -> str:
    """`REMOVE @stage/path`: delete the stage's files whose path starts with `path` (Snowflake's rule)."""
    match = _REMOVE.match(sql)
    if not match:
        return sql
    from fakesnow.transforms import stage

    parts = _split_identifiers(match.group("stage"))
    conn = session.connection
    current = [getattr(conn, "database", None), getattr(conn, "schema", None)]
    parts = [p for p in current[: 3 - len(parts)] if p] + parts
    if len(parts) != 3:
        return sql  # let fakesnow say what is missing
    root = Path(stage.internal_dir(".".join(parts)))
    prefix = (match.group("path") or "/").lstrip("/")
    if root.is_dir():
        for path in sorted(root.rglob("*"), reverse=True):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and relative.startswith(prefix):
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return _NOP


def current_database(sql: str, session: LabSession) -> str:
    """Make the database (and schema) of the statement's first qualified name current, when none is."""
    conn = session.connection
    if conn is None or getattr(conn, "database_set", True):
        return sql
    match = _QUALIFIED3.search(sql)
    if match:
        database, schema = match.group(1), match.group(2)
        for use in (f"USE SCHEMA {database}.{schema}", f"USE DATABASE {database}"):
            try:
                conn.cursor().execute(use)
                break
            except Exception:  # noqa: BLE001 - not there (yet): the statement itself will say so
                continue
    return sql


def temporary_tables(sql: str, session: LabSession) -> str:
    """Qualified temporary tables become bare names in fakesnow, at creation and in every later statement."""
    created = _CREATE_TEMPORARY.match(sql)
    if created:
        qualified = created.group("name")
        session.temporary_tables.add(qualified)
    for qualified in sorted(session.temporary_tables, key=len, reverse=True):
        if qualified in sql:
            sql = sql.replace(qualified, _QUALIFIED3.fullmatch(qualified).group(3))  # type: ignore[union-attr]
    dropped = _DROP_TABLE.match(sql)
    if dropped:
        session.temporary_tables -= {q for q in session.temporary_tables if q.endswith("." + dropped.group("name"))}
    return sql


def explicit_transactions(sql: str, session: LabSession) -> str:
    """Run `BEGIN` ... `COMMIT`/`ROLLBACK` in fakesnow's autocommit-off mode (see the module docstring)."""
    conn = session.connection
    if conn is None:
        return sql
    if _BEGIN.match(sql):
        if getattr(conn, "_autocommit", False) and not session.explicit_transaction:
            conn._autocommit = False  # noqa: SLF001 - what `ALTER SESSION SET AUTOCOMMIT = FALSE` sets
            session.explicit_transaction = True
            session.wrote_in_transaction = False
    elif session.explicit_transaction and _DML.match(sql):
        session.wrote_in_transaction = True
    elif session.explicit_transaction and _MERGE.match(sql) and session.wrote_in_transaction:
        import snowflake.connector.errors

        raise snowflake.connector.errors.ProgrammingError(
            msg="lab adapter: a MERGE after other writes of its transaction would commit those writes early on "
                "the lab's engine (see tidb_pipeline/lab/snowflake_adapter.py); run the MERGE first",
            errno=9999, sqlstate="0A000",
        )
    elif _END.match(sql) and session.explicit_transaction:
        # Back to autocommit before the statement runs: it then ends DuckDB's open transaction itself
        # (fakesnow's own switch would commit it first, which a ROLLBACK must not).
        conn._autocommit = True  # noqa: SLF001
        conn._in_transaction = False  # noqa: SLF001
        session.explicit_transaction = False
    return sql


REWRITES.extend([session_parameters, remove_staged_files, current_database, temporary_tables, explicit_transactions])
