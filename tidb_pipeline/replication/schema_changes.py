"""Schema changes the replica follows, and the DDL TiCDC's Avro protocol never sends (issue #17).

TiCDC's Avro records carry rows only. What the replica learns about a schema change comes from two places:
- the topic's Avro value schema versions (a field appears, disappears or changes type), compared with the
  replica's own columns as Snowflake reports them (`information_schema.columns`), and
- TiDB's DDL job history, for what Avro cannot tell: a TRUNCATE (no row event at all) and a column rename
  (in Avro a drop of one field plus an add of another; only the DDL says they are one column).

TiDB's DDL history (researched in pingcap/tidb, pingcap/tiflow):
- `ADMIN SHOW DDL JOBS` and `information_schema.DDL_JOBS` show JOB_ID, DB_NAME, TABLE_NAME, JOB_TYPE,
  SCHEMA_STATE, SCHEMA_ID, TABLE_ID, ROW_COUNT, CREATE_TIME, START_TIME, END_TIME, STATE (and QUERY in
  DDL_JOBS). END_TIME is the job's finish TSO turned into a datetime truncated to whole seconds
  (`ts2Time(job.BinlogInfo.FinishedTS)` in the executor), so it cannot place a DDL between two commits.
- The exact point is `job.BinlogInfo.FinishedTS`, the TSO of the transaction that finished the job; TiCDC's
  own DDL puller orders DDL against row changes by it. Since TiDB 6.2 (concurrent DDL) finished jobs are rows
  of `mysql.tidb_ddl_history (job_id, job_meta, ...)`; `job_meta` is the job encoded as JSON: `id`, `type`
  (an ActionType number: 11 = TruncateTable), `schema_name`, `table_name`, `query`, `state`, and
  `binlog.FinishedTS`. Older versions keep history in TiDB's meta keys only (no SQL access to the TSO).
So the pipeline reads `job_id, job_meta` from the history table (`TiDBResource.ddl_jobs`, its
`ddl_history_table` setting defaults to `mysql.tidb_ddl_history`) after the last job it has seen, and decodes
`job_meta` here. The lab's MariaDB has
no such table; its change feed keeps a stand-in with the same columns and JSON (lab/ticdc/ddl_history.py).

TRUNCATE at TSO t: every replica row merged before the truncate came from a change committed at or before t
(the merge fixes its offset ranges before it reads the history, and a change committed after t lands only
after the truncate is in the history), so the replica is emptied once, in one transaction with the record of
it; from then on every merge treats a landing row whose `_tidb_commit_ts` is at or below the latest truncate
as a delete (`merge.MergePlan.truncated_at`), so a change from before the truncate that lands late (behind a
hole, or replayed by TiCDC) never brings a row back. Tombstones carry no commit ts: one counts where its
offset puts it in its partition; whatever it deletes is gone either way, since after a truncate a key exists
in the replica only if its latest version is a row image committed after t.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tidb_pipeline.replication.avro_types import ReplicaColumn
from tidb_pipeline.replication.ddl import Statement, TableRef, quote_ident

# TiDB's model.ActionType numbers that matter here (pkg/meta/model/job.go).
ACTION_TRUNCATE_TABLE = 11
SCHEMA_CHANGES_TABLE = "SCHEMA_CHANGES"

# Kinds recorded in the schema-changes table.
BASELINE, ADD, DROP_KEPT, DROP, WIDEN, RENAME, TRUNCATE, HISTORY_SEEN = (
    "baseline", "add_column", "drop_column_kept", "drop_column", "widen_type", "rename_column", "truncate",
    "history_seen")
# A merge that read this many DDL jobs records how far it has looked (`HISTORY_SEEN`), so the next reads start there.
HISTORY_STEP = 100

_RENAME_COLUMN = re.compile(r"RENAME\s+COLUMN\s+(`(?:[^`]|``)+`|\w+)\s+TO\s+(`(?:[^`]|``)+`|\w+)", re.I)
_CHANGE_COLUMN = re.compile(r"CHANGE\s+(?:COLUMN\s+)?(`(?:[^`]|``)+`|\w+)\s+(`(?:[^`]|``)+`|\w+)", re.I)
_TYPE = re.compile(r"^([A-Z_]+)(?:\((\d+)(?:,\s*(\d+))?\))?$")


class SchemaChangeError(RuntimeError):
    """A schema change the table's policy does not apply; the message names the table, column and fix."""


@dataclass(frozen=True)
class DdlJob:
    """One finished DDL job from TiDB's history (`mysql.tidb_ddl_history.job_meta`)."""

    job_id: int
    db: str
    table: str
    action: int  # TiDB's ActionType number
    query: str
    finished_ts: int  # BinlogInfo.FinishedTS: the TSO the job took effect at

    @property
    def is_truncate(self) -> bool:
        return self.action == ACTION_TRUNCATE_TABLE

    def column_renames(self) -> list[tuple[str, str]]:
        """(old, new) column names this job renamed: `RENAME COLUMN a TO b`, or `CHANGE a b <type>`."""
        out = [(_unquote(a), _unquote(b)) for a, b in _RENAME_COLUMN.findall(self.query)]
        out += [(_unquote(a), _unquote(b)) for a, b in _CHANGE_COLUMN.findall(self.query) if _unquote(a) != _unquote(b)]
        return out


def _unquote(name: str) -> str:
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


def parse_ddl_job(job_id: int, job_meta: bytes | str) -> DdlJob:
    """Decode a history row's `job_meta` (TiDB's `model.Job` as JSON)."""
    meta = json.loads(job_meta.decode() if isinstance(job_meta, (bytes, bytearray)) else job_meta)
    binlog = meta.get("binlog") or {}
    # Older TiDB versions leave the job's names empty; the table info the job finished with has them.
    table = meta.get("table_name") or ((binlog.get("TableInfo") or {}).get("name") or {}).get("O") or ""
    db = meta.get("schema_name") or ((binlog.get("DBInfo") or {}).get("db_name") or {}).get("O") or ""
    return DdlJob(int(meta.get("id") or job_id), str(db), str(table), int(meta.get("type") or 0),
                  str(meta.get("query") or ""), int(binlog.get("FinishedTS") or 0))


# --- types --------------------------------------------------------------------------------------------------

_FAMILIES = {"TEXT": "VARCHAR", "STRING": "VARCHAR", "DECIMAL": "NUMBER", "NUMERIC": "NUMBER"}


def snowflake_type(data_type: str, precision: Any = None, scale: Any = None) -> str:
    """A replica column's type as `information_schema.columns` gives it, in `avro_types`' spelling."""
    family = _FAMILIES.get(str(data_type).upper(), str(data_type).upper())
    if family == "NUMBER" and precision is not None:
        return f"NUMBER({int(precision)},{int(scale or 0)})"
    return family


def _parse(sql_type: str) -> tuple[str, int | None, int | None]:
    m = _TYPE.match(sql_type.upper().replace(" ", ""))
    if not m:
        return sql_type.upper(), None, None
    family = _FAMILIES.get(m.group(1), m.group(1))
    return family, (int(m.group(2)) if m.group(2) else None), (int(m.group(3) or 0) if m.group(2) else None)


def type_change(old: str, new: str) -> str:
    """`same`, `widen` (Snowflake's ALTER COLUMN SET DATA TYPE can do it in place), `narrow`, or `incompatible`.

    Snowflake (ALTER TABLE ... ALTER COLUMN) increases a VARCHAR's length or a NUMBER's precision in place,
    but never changes a NUMBER's scale or a column's type to another type. TIMESTAMP_NTZ(6) and its
    information_schema spelling TIMESTAMP_NTZ compare by family.
    """
    (of, op, os_), (nf, np_, ns) = _parse(old), _parse(new)
    if of != nf:
        return "incompatible"
    if of == "NUMBER":
        if op is None or np_ is None or (op, os_) == (np_, ns):
            return "same"
        if os_ != ns:
            return "incompatible"
        return "widen" if np_ > op else "narrow"
    if of == "VARCHAR" and op is not None and np_ is not None and op != np_:
        return "widen" if np_ > op else "narrow"
    return "same"


# --- what changed -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnChange:
    """One change the replica follows (or refuses): recorded in the schema-changes table and run metadata."""

    kind: str
    column: str
    old_type: str | None = None
    new_type: str | None = None
    new_name: str | None = None
    job_id: int | None = None
    ddl_tso: int | None = None
    detail: str = ""

    def describe(self) -> str:
        if self.kind == RENAME:
            return f"{self.kind} {self.column!r} -> {self.new_name!r} (DDL job {self.job_id})"
        if self.kind == TRUNCATE:
            return f"truncate at TSO {self.ddl_tso} (DDL job {self.job_id}): {self.detail}"
        types = " ".join(t for t in (self.old_type, self.new_type) if t)
        types = f" {self.old_type} -> {self.new_type}" if self.old_type and self.new_type else \
            (f" {types}" if types else "")
        return f"{self.kind} {self.column!r}{types}" + (f": {self.detail}" if self.detail else "")


def renames_from(jobs: Iterable[DdlJob], db: str, table: str) -> list[tuple[DdlJob, str, str]]:
    """(job, old, new) for the column renames of `db.table` in history order."""
    return [(j, old, new) for j in jobs if (j.db.lower(), j.table.lower()) == (db.lower(), table.lower())
            for old, new in j.column_renames()]


def rebuild_hint(replica: TableRef, db: str, table: str) -> str:
    return (f"to rebuild {replica.label} with the new type: remove {db}.{table} from the changefeed, drop the replica, "
            f"its landing rows and watermarks, then run the backfill job for it "
            f"(`dagster job launch -j backfill --config-json '{{\"ops\": {{\"backfill\": {{\"config\": "
            f"{{\"tables\": [\"{db}.{table}\"]}}}}}}}}'`)")


def type_refusal(replica: TableRef, db: str, table: str, column: str, old: str, new: str, how: str) -> str:
    return (f"{db}.{table} column {column!r} changed type {old} -> {new} ({how}); replica {replica.label} keeps {old} "
            f"and the merge stops here. Snowflake's ALTER COLUMN SET DATA TYPE only lengthens VARCHAR or raises a "
            f"NUMBER's precision at the same scale. Either set schema_changes.widen_type/incompatible_type for the "
            f"table, or {rebuild_hint(replica, db, table)}")


# --- the record ---------------------------------------------------------------------------------------------


def schema_changes_table(control: TableRef) -> TableRef:
    return TableRef(control.schema, SCHEMA_CHANGES_TABLE, control.database)


def create_schema_changes_sql(table: TableRef) -> str:
    """Every schema change applied to a replica, with the DDL job and the schema versions before and after."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table.sql} (\n"
        '  "REPLICA_TABLE" VARCHAR NOT NULL,\n'
        '  "KIND" VARCHAR NOT NULL,\n'
        '  "COLUMN_NAME" VARCHAR,\n'
        '  "OLD_TYPE" VARCHAR,\n'
        '  "NEW_TYPE" VARCHAR,\n'
        '  "NEW_NAME" VARCHAR,\n'
        '  "JOB_ID" NUMBER(19,0),\n'
        '  "DDL_TSO" NUMBER(20,0),\n'
        '  "SCHEMA_VERSION_BEFORE" NUMBER(10,0),\n'
        '  "SCHEMA_VERSION_AFTER" NUMBER(10,0),\n'
        '  "DETAIL" VARCHAR,\n'
        '  "APPLIED_AT" TIMESTAMP_NTZ(6)\n'
        ")"
    )


def read_changes_sql(table: TableRef, replica: TableRef) -> Statement:
    return Statement(
        f'SELECT "KIND", "COLUMN_NAME", "NEW_NAME", "JOB_ID", "DDL_TSO", "SCHEMA_VERSION_AFTER", "APPLIED_AT" '
        f'FROM {table.sql} WHERE "REPLICA_TABLE" = %s',
        (replica.label,),
    )


def record_change_sql(table: TableRef, replica: TableRef, change: ColumnChange, *, before: int | None,
                      after: int | None, now: dt.datetime) -> Statement:
    return Statement(
        f'INSERT INTO {table.sql} ("REPLICA_TABLE", "KIND", "COLUMN_NAME", "OLD_TYPE", "NEW_TYPE", "NEW_NAME", '
        '"JOB_ID", "DDL_TSO", "SCHEMA_VERSION_BEFORE", "SCHEMA_VERSION_AFTER", "DETAIL", "APPLIED_AT") '
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (replica.label, change.kind, change.column or None, change.old_type, change.new_type, change.new_name,
         change.job_id, change.ddl_tso, before, after, change.detail, now.replace(tzinfo=None)),
    )


@dataclass(frozen=True)
class Recorded:
    """What the schema-changes table says about one replica."""

    last_job_id: int | None  # the newest DDL job recorded (None: no baseline yet)
    baseline_job_id: int | None  # DDL history is followed after this job (baseline, or how far it was read)
    last_truncate_job_id: int | None
    job_ids: frozenset[int]  # jobs applied
    truncated_at: int | None  # TSO of the latest truncate applied
    version: int | None  # schema version after the last recorded change
    renames: tuple[tuple[str, str], ...]  # (old, new) column names, oldest first
    drops: Mapping[str, dt.datetime]  # column -> when its drop was first seen (kept or dropped)
    dropped: frozenset[str]  # columns actually dropped from the replica


def parse_recorded(rows: Sequence[Sequence[Any]]) -> Recorded:
    jobs = [int(r[3]) for r in rows if r[3] is not None]
    truncates = [int(r[4]) for r in rows if r[0] == TRUNCATE and r[4] is not None]
    versions = [int(r[5]) for r in rows if r[5] is not None]
    ordered = sorted((r for r in rows if r[0] == RENAME), key=lambda r: (r[3] or 0, r[6]))
    baselines = [int(r[3]) for r in rows if r[0] in (BASELINE, HISTORY_SEEN) and r[3] is not None]
    truncate_jobs = [int(r[3]) for r in rows if r[0] == TRUNCATE and r[3] is not None]
    return Recorded(
        max(jobs) if jobs else None, max(baselines) if baselines else None,
        max(truncate_jobs) if truncate_jobs else None, frozenset(int(r[3]) for r in rows if r[0] not in (BASELINE, HISTORY_SEEN) and r[3] is not None),
        max(truncates) if truncates else None, max(versions) if versions else None,
        tuple((str(r[1]), str(r[2])) for r in ordered),
        {str(r[1]): r[6] for r in rows if r[0] == DROP_KEPT},
        frozenset(str(r[1]) for r in rows if r[0] == DROP),
    )


def alter_type_sql(replica: TableRef, column: str, sql_type: str) -> str:
    return f"ALTER TABLE {replica.sql} ALTER COLUMN {quote_ident(column)} SET DATA TYPE {sql_type}"


def rename_column_sql(replica: TableRef, old: str, new: str) -> str:
    return f"ALTER TABLE {replica.sql} RENAME COLUMN {quote_ident(old)} TO {quote_ident(new)}"


def drop_column_sql(replica: TableRef, column: str) -> str:
    return f"ALTER TABLE {replica.sql} DROP COLUMN {quote_ident(column)}"


def truncate_replica_sql(replica: TableRef) -> str:
    # DELETE, not TRUNCATE TABLE: it runs in the transaction that records the truncate.
    return f"DELETE FROM {replica.sql}"


def replica_types_sql(replica: TableRef) -> Statement:
    info = f"{quote_ident(replica.database)}.information_schema.columns" if replica.database else "information_schema.columns"
    return Statement(
        f"SELECT column_name, data_type, numeric_precision, numeric_scale FROM {info} "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (replica.schema, replica.name),
    )


def with_previous_fields(columns: Sequence[ReplicaColumn], renames: Sequence[tuple[str, str]],
                         sanitize: Callable[[str], str]) -> tuple[ReplicaColumn, ...]:
    """Columns whose Avro field was renamed read the old field too, for rows landed before the rename."""
    previous: dict[str, list[str]] = {}
    for old, new in renames:
        previous.setdefault(new, []).extend([sanitize(old), *previous.get(old, [])])
    return tuple(replace(c, previous_fields=tuple(f for f in previous.get(c.name, []) if f != c.field))
                 if previous.get(c.name) else c for c in columns)
