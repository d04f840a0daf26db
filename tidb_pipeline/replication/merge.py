"""The MERGE from a landing table into its typed replica (DESIGN.md, "The merge contract").

One merge, step by step:
1. `pending_ranges_sql` reads, per partition, the merged watermark and the last offset before the first
   hole above it (never past a hole: the connector's Snowpipe lands files in any order, see
   `replication.holes`; dead-lettered offsets and offsets Kafka never had count as present). These become
   fixed `MergeRange`s (bound values), so rows that land while the merge runs are left for the next one
   instead of being skipped: every later statement reads exactly `(after_offset, through_offset]`. A
   partition held at a hole comes back as a `Held` with the missing offsets, for the run's metadata.
2. `source_sql` picks from those rows the latest version of each key: key from `RECORD_METADATA:key`
   (present on tombstones too), `ROW_NUMBER() ... ORDER BY offset DESC` per key. Every version of one key
   sits in one partition (TiCDC's index-value dispatcher), so offset order is change order; a primary-key
   change is a delete of the old key plus an insert of the new one, two different keys. A row whose content
   has no key field (`{}` tombstone or NULL) is a delete. Casts from JSON to the column types happen here
   (`json_to_sql`, see "Conversions" below).
3. One MERGE applies delete / update / insert from that source, which has exactly one row per key
   (`max_rows_per_key_sql` lets callers and tests prove it), and the watermark rows are rewritten to
   `through_offset` in the same transaction. Re-running finds no rows above the watermark and changes
   nothing; a replay (same rows again, or old changes re-sent at higher offsets) ends at the last version
   sent, which is the source's current state. The watermark is set, not maximised: if two merges ever
   overlap, the later commit can only move it back, and the next merge re-applies the newer rows.
4. Optionally the ON clause bounds the target by the batch's first-key-column range (`key_range_sql`), so
   Snowflake prunes micro-partitions and the cost follows the batch, not the table.

Conversions (`json_to_sql`): every value first goes through `STRIP_NULL_VALUE`, so a JSON `null` is SQL NULL
before any cast, never a text `'null'` or an epoch. Text that TiCDC writes in a fixed format is parsed with that
format, never with the session's `DATE_INPUT_FORMAT` / `TIMESTAMP_INPUT_FORMAT`: DATE `YYYY-MM-DD`, DATETIME and
TIMESTAMP `YYYY-MM-DD HH24:MI:SS[.FF]` (spec/ticdc-avro.md), JSON by `TRY_PARSE_JSON`. These are the
conversions that can meet a value Snowflake cannot hold (TiDB's zero dates `0000-00-00`, `2024-00-10`, ...);
they use the `TRY_` functions, so such a value becomes NULL instead of failing the MERGE on every retry.
The merge counts them per column (`BatchStats.unconverted`) and, in its transaction, records each one (replica,
column, key, raw text, partition, offset) in `UNCONVERTED_VALUES` next to the watermarks; a key's records are
replaced whenever a later batch touches that key, so the table lists exactly the replica rows that hold such a
NULL, and the `no_unconverted_values` check fails while it lists any. Numbers, binaries and text come from
typed Avro fields whose Snowflake type is chosen to hold every value (`avro_types`), so their casts cannot fail.

The statements are Snowflake's own. Where the lab's stand-in runs one differently, the lab adapts
(`tidb_pipeline/lab/snowflake_adapter.py`, which also lists the differences the SQL here is written around:
casts only in the USING subquery, ranges as `FROM VALUES` without an alias, VARIANT numbers cast before they
are compared, no trailing cast after TO_TIMESTAMP_NTZ). Duplicate keys in a MERGE source are checked here
(`max_rows_per_key_sql`) rather than left to the warehouse's nondeterministic-merge error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tidb_pipeline.replication.avro_types import UNSIGNED_WRAP, ReplicaColumn, key_columns, sql_type_of
from tidb_pipeline.replication.cleanup import RECORD_TIME_SQL
from tidb_pipeline.replication.columns import hash_sql
from tidb_pipeline.replication.ddl import Statement, TableRef, quote_ident
from tidb_pipeline.replication.holes import OffsetSources
from tidb_pipeline.replication.mode_columns import DELETED, DELETED_AT, SOFT_DELETE, mode_column_names
from tidb_pipeline.replication.pending import (  # noqa: F401 - MergeRange, Held, Pending, watermark_statements: the merge's interface
    Held,
    MergeRange,
    Pending,
    _ranges_table,
    in_ranges_sql,
    parse_bounds,
    parse_pending,
    parse_ranges,
    pending_bounds_sql,
    pending_ranges_sql,
    watermark_statements,
)
from tidb_pipeline.resources.warehouse import Warehouse

# Internal column names of the source subquery (letters and `_` only: `$name` reads as a session variable).
_INTERNAL = ("__TP_CONTENT", "__TP_PARTITION", "__TP_OFFSET", "__TP_DELETE", "__TP_VERSIONS", "__TP_KEY")
_C, _P, _O, _DEL, _N, _K = (quote_ident(n) for n in _INTERNAL)
_DELETED_AT_SRC = quote_ident("__TP_DELETED_AT")  # soft_delete: when a tombstone says the row went
_LAST_VALUES = quote_ident("__TP_LAST_VALUES")  # soft_delete: the batch's last value row of the key (or NULL)
_MD_CREATE_TIME = 'l."RECORD_METADATA":"CreateTime"::NUMBER(20,0)'
_RESERVED_PREFIX = "__TP_"  # also the per-column unconverted flags and raw texts (`__TP_UNCONVERTED_<i>`, ...)
_MD_PARTITION = 'l."RECORD_METADATA":"partition"::int'
_MD_OFFSET = 'l."RECORD_METADATA":"offset"::int'
# Types whose MIN/MAX order matches the target's, so an ON-clause range prune is exact.
_PRUNABLE = ("NUMBER", "VARCHAR", "DATE", "TIMESTAMP_NTZ")

# The formats TiCDC writes (spec/ticdc-avro.md). `FF` reads 1 to 9 fraction digits; TiDB's fsp is at most 6.
DATE_FORMAT = "YYYY-MM-DD"
DATETIME_FORMAT = "YYYY-MM-DD HH24:MI:SS"
DATETIME_FRACTION_FORMAT = "YYYY-MM-DD HH24:MI:SS.FF"
# Values that did not convert, next to the watermark table (same schema); see "Conversions" above.
UNCONVERTED_TABLE = "UNCONVERTED_VALUES"


def unconverted_table(control: TableRef) -> TableRef:
    """The unconverted-values table of the control schema `control` lives in (its `name` is not used)."""
    return TableRef(control.schema, UNCONVERTED_TABLE, control.database)


@dataclass(frozen=True)
class MergePlan:
    """Everything a merge needs to know about one replica."""

    replica: TableRef
    landing: TableRef
    watermarks: TableRef
    columns: tuple[ReplicaColumn, ...]
    # Offsets that count as present besides landing rows (see `replication.holes`); none when unset.
    topic: str = ""
    dead_letters: TableRef | None = None
    offset_gaps: TableRef | None = None
    # The built-in loader's landed-offsets table (`replication.landing.create_landed_offsets_sql`): where
    # pending work ends, so the landing table is read only in the pending range. None in connector mode.
    landed: TableRef | None = None
    # TSO of the latest TRUNCATE applied to the replica (replication.schema_changes): a landing row committed
    # at or before it is a delete, so a change from before the truncate that lands late brings nothing back.
    truncated_at: int | None = None
    # `replica`, `soft_delete` or `history` (`replication.modes`); history merges run `modes.run_history_merge`.
    mode: str = "replica"

    def __post_init__(self) -> None:
        if not key_columns(self.columns):
            raise ValueError(f"replica {self.replica.label} has no key columns; pass columns from replica_columns()")
        if clash := {c.name for c in self.columns} & set(mode_column_names(self.mode)):
            raise ValueError(f"replica {self.replica.label} in mode {self.mode} has column(s) {sorted(clash)} that the "
                             "mode adds itself; rename them in TiDB or keep the table in mode replica")
        if clash := {c.name for c in self.columns if c.name.upper().startswith(_RESERVED_PREFIX)}:
            raise ValueError(f"replica {self.replica.label} has column(s) {sorted(clash)} reserved by the merge "
                             f"(names starting with {_RESERVED_PREFIX})")

    @property
    def keys(self) -> tuple[ReplicaColumn, ...]:
        return key_columns(self.columns)

    @property
    def values(self) -> tuple[ReplicaColumn, ...]:
        return tuple(c for c in self.columns if not c.is_key)

    @property
    def offsets(self) -> OffsetSources:
        return OffsetSources(self.landing, self.watermarks, self.replica, self.topic, self.dead_letters,
                             self.offset_gaps)

    @property
    def checked(self) -> tuple[ReplicaColumn, ...]:
        """Value columns whose conversion may meet a value Snowflake cannot hold (`may_not_convert`)."""
        return tuple(c for c in self.values if may_not_convert(c))

    @property
    def unconverted(self) -> TableRef:
        return unconverted_table(self.watermarks)


@dataclass(frozen=True)
class MergeCounts:
    inserted: int
    updated: int
    deleted: int
    source_rows: int  # keys in the batch (after keeping the latest version of each)
    landing_rows: int  # landing rows read (all versions, duplicates included)
    unconverted: tuple[tuple[str, int], ...] = ()  # (column, values that became NULL) for columns with any
    # Oldest / newest record time (`cleanup.RECORD_TIME_SQL`, epoch ms) of the landing rows read; None: none read.
    oldest_record_ms: int | None = None
    newest_record_ms: int | None = None


def record_times_sql(landing: TableRef, where: str) -> str:
    """Two scalar subqueries: MIN and MAX record time (the cleanup's notion of age) of the landing rows `where`
    selects (alias `l`); each takes the where clause's parameters once."""
    return ", ".join(f"(SELECT {fn}({RECORD_TIME_SQL}) FROM {landing.sql} l {where})" for fn in ("MIN", "MAX"))


def _ms(value: Any) -> int | None:
    return None if value is None else int(value)


def json_to_sql(column: ReplicaColumn, v: str) -> str:
    """SQL converting the VARIANT expression `v` (the column's JSON value) to the column's type.

    JSON `null` becomes SQL NULL first (`STRIP_NULL_VALUE`); text is parsed in TiCDC's own formats with the
    `TRY_` functions, so a value Snowflake cannot hold becomes NULL (see `unconverted_sql`).
    """
    t = column.sql_type
    x = f"STRIP_NULL_VALUE({v})"
    text = f"{x}::VARCHAR"
    if column.policy:  # the column policy (`replication.columns`)
        return f"NULL::{t}" if column.policy == "mask" else hash_sql(_hash_text_sql(column, v))
    if column.wraps_unsigned:
        n = f"{x}::NUMBER(20,0)"
        return f"IFF({n} < 0, {n} + {UNSIGNED_WRAP}, {n})::NUMBER(20,0)"
    if t.startswith("NUMBER") or t == "FLOAT" or t == "BOOLEAN":
        return f"{x}::{t}"
    if t == "VARCHAR":
        return text
    if t == "BINARY":
        return f"BASE64_DECODE_BINARY({text})"
    if t == "VARIANT":
        # TiDB JSON arrives as JSON text inside a JSON string; parse it into a real VARIANT.
        return f"TRY_PARSE_JSON({text})" if column.tidb_type == "JSON" else x
    if t == "DATE":
        return f"TRY_TO_DATE({text}, '{DATE_FORMAT}')"
    if t.startswith("TIMESTAMP_NTZ"):
        # TiCDC writes the fraction only for a column with fsp > 0; each shape gets its exact format.
        return (f"IFF(CONTAINS({text}, '.'), TRY_TO_TIMESTAMP_NTZ({text}, '{DATETIME_FRACTION_FORMAT}'), "
                f"TRY_TO_TIMESTAMP_NTZ({text}, '{DATETIME_FORMAT}'))")
    raise ValueError(f"column {column.name!r}: no JSON conversion for Snowflake type {t}")


def _hash_text_sql(column: ReplicaColumn, v: str) -> str:
    """The text a hashed column's value is hashed as: MySQL's `CAST(c AS CHAR)` (`replication.columns`).

    Numbers go through their column type, so a wrapped BIGINT UNSIGNED is unwrapped and a DECIMAL shows its
    scale's digits; every other hashable type arrives as TiCDC's text, which is already MySQL's.
    """
    plain = replace(column, policy="", sql_type=sql_type_of(column.tidb_type, column.avro_type, column.precision,
                                                             column.scale))
    if plain.sql_type.startswith("NUMBER"):
        return f"({json_to_sql(plain, v)})::VARCHAR"
    return f"STRIP_NULL_VALUE({v})::VARCHAR"


def may_not_convert(column: ReplicaColumn) -> bool:
    """True for conversions from text that a value can fail (dates, datetimes, JSON): see `unconverted_sql`."""
    t = column.sql_type
    if column.policy:  # hashed from the text, or NULL: nothing to convert
        return False
    return t == "DATE" or t.startswith("TIMESTAMP_NTZ") or (t == "VARIANT" and column.tidb_type == "JSON")


def raw_text_sql(v: str) -> str:
    """The JSON value `v` as text, as it arrived (NULL for JSON null): what an unconverted value is shown as."""
    return f"STRIP_NULL_VALUE({v})::VARCHAR"


def unconverted_sql(column: ReplicaColumn, v: str) -> str:
    """TRUE when `v` holds a value (not NULL, not JSON null) that `json_to_sql` turned into NULL."""
    return f"({raw_text_sql(v)} IS NOT NULL AND {json_to_sql(column, v)} IS NULL)"


def key_text_sql(keys: Sequence[ReplicaColumn], key_json: str) -> Statement:
    """The key as JSON text (`{"id":4}`), from a VARIANT object `key_json` holding the key fields.

    Built field by field with `OBJECT_CONSTRUCT` (names bound as parameters), so the landing's key object and
    a backfill's value object give the same text for the same key.
    """
    pairs = ", ".join(f"%s, {key_json}:{quote_ident(k.field)}" for k in keys)
    return Statement(f"TO_JSON(OBJECT_CONSTRUCT({pairs}))", tuple(k.name for k in keys))


def _batch_sql(plan: MergePlan, ranges: Sequence[MergeRange]) -> Statement:
    """Latest landing row per key within the ranges: typed keys, key text + raw content, one row per key."""
    r = in_ranges_sql(ranges)
    keys = plan.keys
    key_json = 'l."RECORD_METADATA":"key":'
    # JSON paths use the Avro field name TiCDC wrote; the typed columns take the replica's (TiDB's) name.
    typed_keys = ", ".join(f"{json_to_sql(k, key_json + quote_ident(k.field))} AS {quote_ident(k.name)}" for k in keys)
    key_text = key_text_sql(keys, 'l."RECORD_METADATA":"key"')
    partition_by = ", ".join(quote_ident(k.name) for k in keys)
    last_values = ""
    if plan.mode == SOFT_DELETE:
        # A deleted row keeps its last values: a key inserted or updated and then deleted within one batch
        # keeps those of its last value row here (a tombstone carries only the key).
        tombstone = f"(b.{_C} IS NULL OR b.{_C}:{quote_ident(plan.keys[0].field)} IS NULL)"
        last_values = (f", LAST_VALUE(IFF({tombstone}, NULL, b.{_C})) IGNORE NULLS OVER (PARTITION BY {partition_by} "
                       f"ORDER BY b.{_O}, b.{_P} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) "
                       f"AS {_LAST_VALUES}")
    sql = (
        f"SELECT *{last_values} FROM (\n"
        f'  SELECT {typed_keys}, {key_text.sql} AS {_K}, l."RECORD_CONTENT" AS {_C}, {_MD_PARTITION} AS {_P}, '
        f"{_MD_OFFSET} AS {_O}{_created(plan)}\n"
        f"  FROM {plan.landing.sql} l\n"
        f"  WHERE {r.sql}\n"
        f") b\n"
        f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {partition_by} ORDER BY b.{_O} DESC, b.{_P} DESC) = 1"
    )
    return Statement(sql, key_text.params + r.params)


def _created(plan: MergePlan) -> str:
    # A tombstone has no commit time; the Kafka record's timestamp (when TiCDC produced it, just after the
    # commit) is the best evidence of when the row went. Only soft_delete reads it.
    if plan.mode != SOFT_DELETE:
        return ""
    created = f"TO_TIMESTAMP_NTZ({_MD_CREATE_TIME}, 3)"
    if plan.truncated_at is not None:
        # A change committed at or before the truncate is deleted by it: at the truncate's physical time.
        t = int(plan.truncated_at)
        created = (f'IFF(l."RECORD_CONTENT":"_tidb_commit_ts"::NUMBER(20,0) <= {t}, '
                   f"TO_TIMESTAMP_NTZ({t >> 18}, 3), {created})")
    return f", {created} AS {_DELETED_AT_SRC}"


def _flag(i: int) -> str:
    return quote_ident(f"{_RESERVED_PREFIX}UNCONVERTED_{i}")


def _raw(i: int) -> str:
    return quote_ident(f"{_RESERVED_PREFIX}RAW_{i}")


def source_sql(plan: MergePlan, ranges: Sequence[MergeRange], *, unconverted: bool = False) -> Statement:
    """The MERGE source: one typed row per key plus a delete flag; every cast is done here.

    `unconverted` adds, per `plan.checked` column i, a flag `__TP_UNCONVERTED_<i>` (the value became NULL)
    and its raw text `__TP_RAW_<i>`; the MERGE itself does not need them.
    """
    batch = _batch_sql(plan, ranges)
    first_key = quote_ident(plan.keys[0].field)
    cols = [f"x.{quote_ident(k.name)}" for k in plan.keys]
    content = _LAST_VALUES if plan.mode == SOFT_DELETE else _C  # the same row's, unless it is a tombstone
    cols += [f"{json_to_sql(c, _value_path(c, content))} AS {quote_ident(c.name)}" for c in plan.values]
    # A value record always carries its NOT NULL key columns; `{}` (tombstone) and NULL content do not.
    # Testing the key field avoids comparing VARIANT objects, which engines treat differently.
    truncated = ("" if plan.truncated_at is None else
                 f' OR x.{_C}:"_tidb_commit_ts"::NUMBER(20,0) <= {int(plan.truncated_at)}')
    cols.append(f"(x.{_C} IS NULL OR x.{_C}:{first_key} IS NULL{truncated}) AS {_DEL}")
    cols += [f"x.{_K}", f"x.{_P}", f"x.{_O}"]
    if plan.mode == SOFT_DELETE:
        cols += [f"x.{_DELETED_AT_SRC}", f"x.{_LAST_VALUES}"]
    if unconverted:
        for i, c in enumerate(plan.checked):
            value = _value_path(c)
            cols += [f"{unconverted_sql(c, value)} AS {_flag(i)}", f"{raw_text_sql(value)} AS {_raw(i)}"]
    return Statement(f"SELECT {', '.join(cols)}\nFROM (\n{batch.sql}\n) x", batch.params)


def _value_path(c: ReplicaColumn, content: str = _C, row: str = "x") -> str:
    """The column's JSON value in a batch row; after a rename, the old field for rows landed before it."""
    paths = [f"{row}.{content}:{quote_ident(f)}" for f in (c.field, *c.previous_fields)]
    # A missing field is SQL NULL, a JSON null is a VARIANT null: COALESCE falls back only on a missing one.
    return paths[0] if len(paths) == 1 else f"COALESCE({', '.join(paths)})"


def max_rows_per_key_sql(plan: MergePlan, ranges: Sequence[MergeRange]) -> Statement:
    """Largest number of source rows sharing one key (must be 1; 0 rows -> NULL)."""
    src = source_sql(plan, ranges)
    keys = ", ".join(quote_ident(k.name) for k in plan.keys)
    return Statement(f'SELECT MAX("N") FROM (SELECT COUNT(*) AS "N" FROM ({src.sql}) s GROUP BY {keys})', src.params)


def key_range_sql(plan: MergePlan, ranges: Sequence[MergeRange]) -> Statement | None:
    """MIN/MAX of the first key column over the batch, for `merge_sql(key_range=...)`; None if not prunable."""
    first = plan.keys[0]
    if not first.sql_type.startswith(_PRUNABLE):
        return None
    batch = _batch_sql(plan, ranges)
    name = quote_ident(first.name)
    return Statement(f"SELECT MIN(b.{name}), MAX(b.{name}) FROM ({batch.sql}) b", batch.params)


def _on(plan: MergePlan, key_range: tuple[Any, Any] | None) -> tuple[str, tuple[Any, ...]]:
    on = " AND ".join(f"t.{quote_ident(k.name)} = s.{quote_ident(k.name)}" for k in plan.keys)
    if key_range is None or key_range[0] is None:
        return on, ()
    first = quote_ident(plan.keys[0].name)
    return f"{on} AND t.{first} >= %s AND t.{first} <= %s", (key_range[0], key_range[1])


def counts_sql(plan: MergePlan, ranges: Sequence[MergeRange]) -> Statement:
    """What the MERGE will do, computed from source vs target; run it in the transaction before the MERGE."""
    src = source_sql(plan, ranges)
    on = " AND ".join(f"t.{quote_ident(k.name)} = s.{quote_ident(k.name)}" for k in plan.keys)
    found = f"t.{quote_ident(plan.keys[0].name)} IS NOT NULL"
    r = in_ranges_sql(ranges)
    landing_rows = f"(SELECT COUNT(*) FROM {plan.landing.sql} l WHERE {r.sql})"
    return Statement(
        f"SELECT COUNT_IF(NOT s.{_DEL} AND NOT ({found})), COUNT_IF(NOT s.{_DEL} AND {found}), "
        f"COUNT_IF(s.{_DEL} AND {found}), COUNT(*), {landing_rows}\n"
        f"FROM ({src.sql}) s LEFT JOIN {plan.replica.sql} t ON {on}",
        r.params + src.params,  # text order: the landing-rows subquery comes before FROM
    )


@dataclass(frozen=True)
class BatchStats:
    """What `batch_stats_sql` reads in one pass over the source, inside the merge's transaction."""

    counts: MergeCounts  # `counts.unconverted`: per checked column, the batch's values that became NULL
    max_rows_per_key: int | None  # must be 1 (None: no rows)
    key_range: tuple[Any, Any] | None  # MIN/MAX of the first key column; None when not prunable
    recorded_unconverted: int = 0  # rows of this replica in the unconverted-values table before the merge


def batch_stats_sql(plan: MergePlan, ranges: Sequence[MergeRange]) -> Statement:
    """`counts_sql`, `max_rows_per_key_sql` and `key_range_sql` in one statement (one evaluation of the source).

    Columns: inserted, updated, deleted, source rows, landing rows, max rows per key, min key, max key, rows of
    the replica in the unconverted-values table, the oldest and newest record time of the landing rows read
    (`record_times_sql`), then per `plan.checked` column the values that became NULL.
    """
    src = source_sql(plan, ranges, unconverted=True)
    keys = [quote_ident(k.name) for k in plan.keys]
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    found = f"t.{keys[0]} IS NOT NULL"
    r = in_ranges_sql(ranges)
    landing_rows = f"(SELECT COUNT(*) FROM {plan.landing.sql} l WHERE {r.sql})"
    recorded = f'(SELECT COUNT(*) FROM {plan.unconverted.sql} WHERE "REPLICA_TABLE" = %s)'
    times = record_times_sql(plan.landing, f"WHERE {r.sql}")
    # Same min/max as key_range_sql: the source has the batch's keys, typed the same way.
    key_range = f"MIN(s.{keys[0]}), MAX(s.{keys[0]})" if plan.keys[0].sql_type.startswith(_PRUNABLE) \
        else "NULL, NULL"
    flags = "".join(f", COUNT_IF(NOT s.{_DEL} AND s.{_flag(i)})" for i in range(len(plan.checked)))
    partition_by = ", ".join(f"x.{k}" for k in keys)
    return Statement(
        f"SELECT COUNT_IF(NOT s.{_DEL} AND NOT ({found})), COUNT_IF(NOT s.{_DEL} AND {found}), "
        f"COUNT_IF(s.{_DEL} AND {found}), COUNT(*), {landing_rows}, MAX(s.{_N}), {key_range}, {recorded}, {times}{flags}\n"
        f"FROM (SELECT x.*, COUNT(*) OVER (PARTITION BY {partition_by}) AS {_N} "
        f"FROM ({src.sql}) x) s LEFT JOIN {plan.replica.sql} t ON {on}",
        # text order: the SELECT list's subqueries, then FROM
        r.params + (plan.replica.label,) + r.params + r.params + src.params,
    )


def parse_batch_stats(row: Sequence[Any], plan: MergePlan) -> BatchStats:
    unconverted = tuple((c.name, int(n or 0)) for c, n in zip(plan.checked, row[11:]) if n)
    counts = MergeCounts(*(int(x) for x in row[:5]), unconverted=unconverted,  # type: ignore[misc,arg-type]  # starred: 5 ints
                         oldest_record_ms=_ms(row[9]), newest_record_ms=_ms(row[10]))
    dupes = None if row[5] is None else int(row[5])
    prunable = plan.keys[0].sql_type.startswith(_PRUNABLE)
    return BatchStats(counts, dupes, (row[6], row[7]) if prunable else None, int(row[8] or 0))


def unconverted_statements(
    plan: MergePlan, ranges: Sequence[MergeRange], now: dt.datetime, stats: BatchStats
) -> list[Statement]:
    """Replace the unconverted-value records of the batch's keys (run in the merge's transaction).

    The batch rewrites every key it holds, so their old records go; its values that became NULL are recorded.
    Nothing runs when there is nothing to forget and nothing to record (the usual case).
    """
    out: list[Statement] = []
    table, label = plan.unconverted.sql, plan.replica.label
    if stats.recorded_unconverted:
        batch = _batch_sql(plan, ranges)
        out.append(Statement(
            f'DELETE FROM {table} WHERE "REPLICA_TABLE" = %s AND "KEY" IN (SELECT b.{_K} FROM ({batch.sql}) b)',
            (label, *batch.params),
        ))
    if stats.counts.unconverted:
        src = source_sql(plan, ranges, unconverted=True)
        out.append(_record_unconverted_sql(
            plan.unconverted, label, plan.checked, f"({src.sql}) s", src.params, "s.", now,
            where=f"NOT s.{_DEL}",
        ))
    return out


def record_unconverted_from_load_sql(
    unconverted: TableRef, replica: TableRef, load: TableRef, columns: Sequence[ReplicaColumn], now: dt.datetime,
) -> Statement | None:
    """The backfill's records of values that did not convert, from its load table (the value in `RECORD_CONTENT`).

    The same flags as the merge's, over the same conversions (`json_to_sql`); a backfilled row has no landing
    partition/offset (NULL). None when no column can fail to convert.
    """
    checked = [c for c in columns if not c.is_key and may_not_convert(c)]
    if not checked:
        return None
    keys = [c for c in columns if c.is_key]
    key_text = key_text_sql(keys, 'l."RECORD_CONTENT"')
    cols = [f"{key_text.sql} AS {_K}", f"NULL AS {_P}", f"NULL AS {_O}"]
    for i, c in enumerate(checked):
        value = f'l."RECORD_CONTENT":{quote_ident(c.field)}'
        cols += [f"{unconverted_sql(c, value)} AS {_flag(i)}", f"{raw_text_sql(value)} AS {_raw(i)}"]
    source = f"(SELECT {', '.join(cols)} FROM {load.sql} l) s"
    return _record_unconverted_sql(unconverted, replica.label, checked, source, key_text.params, "s.", now)


def _record_unconverted_sql(
    table: TableRef, replica_label: str, checked: Sequence[ReplicaColumn], source: str, source_params: tuple[Any, ...],
    prefix: str, now: dt.datetime, *, where: str = "TRUE",
) -> Statement:
    """INSERT one record per (row, checked column) flagged in `source` (a FROM item exposing the key text,
    partition, offset and the `unconverted=True` flag/raw columns, referenced through `prefix`)."""
    columns = ", ".join(f"(%s, {i})" for i in range(len(checked)))
    flag = " ".join(f"WHEN {i} THEN {prefix}{_flag(i)}" for i in range(len(checked)))
    raw = " ".join(f"WHEN {i} THEN {prefix}{_raw(i)}" for i in range(len(checked)))
    return Statement(
        f'INSERT INTO {table.sql} ("REPLICA_TABLE", "COLUMN_NAME", "KEY", "RAW_VALUE", "PARTITION", "OFFSET", '
        f'"FOUND_AT")\n'
        f'SELECT %s, n."N", {prefix}{_K}, CASE n."I" {raw} END, {prefix}{_P}, {prefix}{_O}, %s\n'
        f"FROM {source}\n"
        f'JOIN (SELECT column1 AS "N", column2 AS "I" FROM VALUES {columns}) n ON CASE n."I" {flag} END\n'
        f"WHERE {where}",
        (replica_label, now.replace(tzinfo=None), *source_params, *(c.name for c in checked)),
    )


def merge_sql(plan: MergePlan, ranges: Sequence[MergeRange], key_range: tuple[Any, Any] | None = None) -> Statement:
    src = source_sql(plan, ranges)
    on, on_params = _on(plan, key_range)
    names = [quote_ident(c.name) for c in plan.columns]
    sets = [f"{quote_ident(c.name)} = s.{quote_ident(c.name)}" for c in plan.values]
    values = ["s." + n for n in names]
    if plan.mode == SOFT_DELETE:
        # A delete keeps the row (its last values) and flags it; a replayed delete keeps the first time seen.
        # A re-insert or update clears the flag. A delete of a key never seen has no values to keep: skipped.
        deleted, deleted_at = quote_ident(DELETED), quote_ident(DELETED_AT)
        flag = [f"{deleted} = TRUE", f"{deleted_at} = s.{_DELETED_AT_SRC}"]
        has_values = f"s.{_LAST_VALUES} IS NOT NULL"
        whens = [f"WHEN MATCHED AND s.{_DEL} AND {has_values} THEN UPDATE SET {', '.join([*sets, *flag])}",
                 f"WHEN MATCHED AND s.{_DEL} AND NOT t.{deleted} THEN UPDATE SET {', '.join(flag)}",
                 f"WHEN MATCHED AND NOT s.{_DEL} THEN UPDATE SET "
                 f"{', '.join([*sets, f'{deleted} = FALSE', f'{deleted_at} = NULL'])}",
                 f"WHEN NOT MATCHED AND s.{_DEL} AND {has_values} THEN INSERT ({', '.join([*names, deleted, deleted_at])}) "
                 f"VALUES ({', '.join([*values, 'TRUE', f's.{_DELETED_AT_SRC}'])})"]
        names += [deleted, deleted_at]
        values += ["FALSE", "NULL"]
    else:
        whens = [f"WHEN MATCHED AND s.{_DEL} THEN DELETE"]
        if plan.values:
            whens.append(f"WHEN MATCHED THEN UPDATE SET {', '.join(sets)}")
    whens.append(
        f"WHEN NOT MATCHED AND NOT s.{_DEL} THEN INSERT ({', '.join(names)}) "
        f"VALUES ({', '.join(values)})"
    )
    return Statement(
        f"MERGE INTO {plan.replica.sql} t USING (\n{src.sql}\n) s ON {on}\n" + "\n".join(whens),
        src.params + on_params,
    )


@dataclass(frozen=True)
class MergeTransaction:
    """Statements of one merge, in order. Run `counts` right after BEGIN (it is a SELECT), then the rest."""

    begin: Statement
    counts: Statement
    merge: Statement
    watermark: tuple[Statement, ...]
    commit: Statement

    @property
    def statements(self) -> list[Statement]:
        return [self.begin, self.counts, self.merge, *self.watermark, self.commit]


def merge_transaction(
    plan: MergePlan,
    ranges: Sequence[MergeRange],
    now: dt.datetime,
    key_range: tuple[Any, Any] | None = None,
) -> MergeTransaction:
    return MergeTransaction(
        begin=Statement("BEGIN"),
        counts=counts_sql(plan, ranges),
        merge=merge_sql(plan, ranges, key_range),
        watermark=tuple(watermark_statements(plan, ranges, now)),
        commit=Statement("COMMIT"),
    )


def read_pending(wh: Warehouse, plan: MergePlan, max_offsets_per_partition: int | None = None) -> Pending:
    """What the next merge may take. With a landed-offsets table: its bounds first (two tiny tables), then
    the landing rows of the pending range only, or nothing at all when no partition moved."""
    bounds = parse_bounds(wh.execute(pending_bounds_sql(plan))) if plan.landed is not None else None
    if bounds == {}:
        return Pending(())
    return parse_pending(wh.execute(pending_ranges_sql(plan, max_offsets_per_partition, bounds)))


def run_merge(
    session: Warehouse | Any,
    plan: MergePlan,
    now: dt.datetime,
    *,
    max_offsets_per_partition: int | None = None,
    prune: bool = True,
    ranges: Sequence[MergeRange] | None = None,
) -> tuple[MergeCounts, tuple[MergeRange, ...]]:
    """Run one merge in a warehouse session (a `Warehouse`, or a connection it wraps); idempotent.

    `ranges` are the ones to merge when the caller has read them already (`pending_ranges_sql`).
    Returns the counts and the ranges merged (empty when nothing was pending). Raises, after rolling back,
    when the source has more than one row for a key, which would make the MERGE nondeterministic.
    Round trips: the pending ranges, then BEGIN, one statistics query (counts, the one-row-per-key proof, the
    prune's key range and the unconverted values together), the MERGE, the unconverted-value records (only
    when there are any), the watermark and COMMIT.
    """
    def apply(wh: Warehouse, ranges: tuple[MergeRange, ...]) -> MergeCounts:
        stats = parse_batch_stats(wh.execute(batch_stats_sql(plan, ranges))[0], plan)
        if stats.max_rows_per_key is not None and stats.max_rows_per_key > 1:
            raise RuntimeError(
                f"merge source for {plan.replica.label} has {stats.max_rows_per_key} rows for one key; the landing "
                "rows or the key schema are inconsistent, so the merge was rolled back"
            )
        wh.execute(merge_sql(plan, ranges, stats.key_range if prune else None))
        for stmt in unconverted_statements(plan, ranges, now, stats):
            wh.execute(stmt)
        return stats.counts

    return merge_in_transaction(session, plan, now, ranges, max_offsets_per_partition, apply)


def merge_in_transaction(
    session: Warehouse | Any, plan: MergePlan, now: dt.datetime, ranges: Sequence[MergeRange] | None,
    max_offsets_per_partition: int | None, apply: Callable[[Warehouse, tuple[MergeRange, ...]], MergeCounts],
) -> tuple[MergeCounts, tuple[MergeRange, ...]]:
    """What every mode's merge does around its own statements (`apply`): the pending ranges (unless given),
    then, when there are any, one transaction of `apply` and the watermark rows. Returns counts and ranges."""
    wh = Warehouse.of(session)
    if ranges is None:
        ranges = read_pending(wh, plan, max_offsets_per_partition).ranges
    if not (ranges := tuple(ranges)):
        return MergeCounts(0, 0, 0, 0, 0), ()
    with wh.transaction():
        counts = apply(wh, ranges)
        for stmt in watermark_statements(plan, ranges, now):
            wh.execute(stmt)
    return counts, ranges
