"""Replica modes (`mode:` per table): the DDL of each shape, the rows the checks compare, the history merge and
the statements that switch a replica from one mode to another. Pure SQL builders, plus `run_history_merge`
next to `merge.run_merge`.

`replica` and `soft_delete` share `merge.merge_sql` (soft_delete's WHEN clauses flag a delete instead of
removing the row). `history` appends versions instead of merging, one transaction per batch:

1. `history_versions_sql`: every landing row of the batch's fixed ranges (`merge.MergeRange`), not only the
   latest per key. A version is identified by (key, `_COMMIT_TS`, delete or not). A value row's `_COMMIT_TS`
   is TiDB's commit TSO (`_tidb_commit_ts`); a tombstone carries none, so it takes the TSO of the version it
   ends: the nearest earlier value row of its key in offset order (in the batch, else the replica's latest).
   Rows whose identity is already in the replica or earlier in the batch are replays and are dropped (TiCDC
   replays at higher offsets: the offset tells the first arrival, the commit TSO the version). A tombstone
   followed in the batch by a value row no newer than the version it would end opened a replay run: it is a
   replay of a delete already recorded, and is dropped too.
2. One INSERT of the new versions: `_VALID_FROM` is the commit time (`_tidb_commit_physical_time`); for a
   delete the Kafka record's timestamp (`CreateTime`, set when TiCDC produced it just after the commit), the
   best evidence there is, kept between the neighbouring versions' commit times in step 3.
3. One UPDATE re-links the touched keys' versions in commit order (`_COMMIT_TS`, a delete after the version
   it ends): `_VALID_TO` = the next version's `_VALID_FROM`, `_IS_CURRENT` = last version and not a delete.
   This closes the previous batch's current version when the next one arrives later, and places a late
   version (older TSO) where it belongs.
4. The watermark rows, in the same transaction (`merge.merge_in_transaction`, as in every mode): a crash before
   COMMIT leaves nothing, a re-run finds the same versions present and adds none.

Switching modes (`switch_statements`): a new table in the target shape is filled from the old one, then takes
its name; the merge watermarks are kept, so merging resumes where it stopped. replica/soft_delete -> history:
each row becomes one version valid from the switch (`_OP` 's', `_COMMIT_TS` 0: changes committed before the
switch may still wait to be merged, and sort after it; its `_VALID_FROM` is kept at or before theirs), a soft-deleted
row a delete version (`_OP` 'd') keeping its last values, valid from its `_DELETED_AT`; history -> replica
keeps the current versions, history -> soft_delete also each deleted key's last values, flagged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from tidb_pipeline.replication.avro_types import ReplicaColumn, key_columns
from tidb_pipeline.replication.ddl import Statement, TableRef, quote_ident
from tidb_pipeline.replication.merge import (
    _MD_OFFSET,
    _MD_PARTITION,
    MergeCounts,
    MergePlan,
    MergeRange,
    _ranges_table,
    _value_path,
    json_to_sql,
    merge_in_transaction,
    record_times_sql,
)
from tidb_pipeline.replication.mode_columns import (
    COMMIT_TS,
    DELETED,
    DELETED_AT,
    HISTORY,
    IS_CURRENT,
    KAFKA_OFFSET,
    KAFKA_PARTITION,
    MODE_COLUMNS,
    OP,
    REPLICA,
    SOFT_DELETE,
    VALID_FROM,
    VALID_TO,
    mode_column_names,
)
from tidb_pipeline.resources.warehouse import Warehouse

SWITCH_OP = "s"  # `_OP` of the version a switch to history makes from each existing row
# The mode columns, quoted once.
_COMMIT_TS_Q = quote_ident(COMMIT_TS)
_DELETED_AT_Q = quote_ident(DELETED_AT)
_DELETED_Q = quote_ident(DELETED)
_IS_CURRENT_Q = quote_ident(IS_CURRENT)
_OP_Q = quote_ident(OP)
_VALID_FROM_Q = quote_ident(VALID_FROM)
_VALID_TO_Q = quote_ident(VALID_TO)
_KAFKA_PARTITION_Q = quote_ident(KAFKA_PARTITION)
_KAFKA_OFFSET_Q = quote_ident(KAFKA_OFFSET)


def create_mode_replica_sql(table: TableRef, columns: Sequence[ReplicaColumn], mode: str) -> str:
    """CREATE TABLE for a replica in `mode`: TiDB's columns, then the mode's (`mode_columns`).

    The primary key (informational in Snowflake, enforced by the lab's engine) is TiDB's key, and for history
    the version's identity (key, `_COMMIT_TS`, `_OP`).
    """
    keys = key_columns(columns)
    if not keys:
        raise ValueError(f"replica {table.label} has no key columns; TiCDC only replicates tables with a handle key")
    lines = [f"{quote_ident(c.name)} {c.sql_type}{' NOT NULL' if c.is_key else ''}" for c in columns]
    lines += [f"{quote_ident(n)} {t}" for n, t in MODE_COLUMNS[mode]]
    pk = [c.name for c in keys] + ([COMMIT_TS, OP] if mode == HISTORY else [])
    lines.append(f"PRIMARY KEY ({', '.join(quote_ident(n) for n in pk)})")
    return f"CREATE TABLE IF NOT EXISTS {table.sql} (\n  " + ",\n  ".join(lines) + "\n)"


def current_rows_sql(replica: TableRef, mode: str) -> str:
    """A FROM item holding the replica's rows that stand for the source's current rows (what the checks compare)."""
    if mode == SOFT_DELETE:
        return f"(SELECT * FROM {replica.sql} WHERE NOT {_DELETED_Q}) r"
    if mode == HISTORY:
        return f"(SELECT * FROM {replica.sql} WHERE {_IS_CURRENT_Q}) r"
    return replica.sql


def mode_counts_sql(replica: TableRef, mode: str) -> Statement | None:
    """Rows the checks leave out, for their metadata: soft-deleted rows; for history, all and current versions."""
    if mode == SOFT_DELETE:
        return Statement(f"SELECT COUNT_IF({_DELETED_Q}) FROM {replica.sql}")
    if mode == HISTORY:
        return Statement(f"SELECT COUNT(*), COUNT_IF({_IS_CURRENT_Q}) FROM {replica.sql}")
    return None


def snapshot_mode_values(mode: str, tso: int, valid_from_ms: int | None = None,
                         ) -> tuple[list[str], list[str], tuple[Any, ...]]:
    """(quoted mode column names, SQL values, params) for a row taken from a snapshot at TiDB TSO `tso` (a
    backfill): not deleted; for history one current version `_OP` 's' valid from the snapshot's time (or
    `valid_from_ms`)."""
    names = [quote_ident(n) for n in mode_column_names(mode)]
    if mode == SOFT_DELETE:
        return names, ["FALSE", "NULL"], ()
    if mode == HISTORY:
        return names, [f"'{SWITCH_OP}'", "%s", "TO_TIMESTAMP_NTZ(%s, 3)", "NULL", "TRUE", "NULL", "NULL"], (
            tso, tso >> 18 if valid_from_ms is None else valid_from_ms)
    return [], [], ()


# --- history ---------------------------------------------------------------------------------------------

_TS, _PT, _CT, _D, _PREV, _NEXT, _VTS, _RN = (
    quote_ident(f"__TP_{n}") for n in ("TS", "PT", "CT", "D", "PREV_TS", "NEXT_TS", "VTS", "RN"))
_C, _P, _O = quote_ident("__TP_CONTENT"), quote_ident("__TP_PARTITION"), quote_ident("__TP_OFFSET")


def history_versions_sql(plan: MergePlan, ranges: Sequence[MergeRange]) -> Statement:
    """The batch's new versions, in step 1's terms: typed keys, content, partition, offset, delete flag,
    version TSO (`__TP_VTS`), commit physical ms and record timestamp ms; at most one row per identity."""
    r = _ranges_table(ranges)
    keys = plan.keys
    key_json = 'l."RECORD_METADATA":"key":'
    typed_keys = ", ".join(f"{json_to_sql(k, key_json + quote_ident(k.field))} AS {quote_ident(k.name)}" for k in keys)
    by_key = ", ".join(quote_ident(k.name) for k in keys)
    first = quote_ident(keys[0].field)
    content = 'l."RECORD_CONTENT"'
    deleted = f"({content} IS NULL OR {content}:{first} IS NULL)"
    ext = {n: f"{content}:{quote_ident(f)}::NUMBER(20,0)" for n, f in (("ts", "_tidb_commit_ts"),
                                                               ("pt", "_tidb_commit_physical_time"))}
    rows = (
        f"SELECT {typed_keys}, {content} AS {_C}, {_MD_PARTITION} AS {_P}, {_MD_OFFSET} AS {_O}, {deleted} AS {_D}, "
        f"IFF({deleted}, NULL, {ext['ts']}) AS {_TS}, {ext['pt']} AS {_PT}, "
        f'l."RECORD_METADATA":"CreateTime"::NUMBER(20,0) AS {_CT}\n'
        f"    FROM {plan.landing.sql} l JOIN ({r.sql}) r\n"
        f'      ON {_MD_PARTITION} = r."P" AND {_MD_OFFSET} > r."LO" AND {_MD_OFFSET} <= r."HI"'
    )
    # Offset order is delivery order per key (every version of a key is in one partition).
    order = f"PARTITION BY {by_key} ORDER BY {_O}, {_P}"
    linked = (
        f"SELECT b.*, LAG(b.{_TS}) IGNORE NULLS OVER ({order}) AS {_PREV}, "
        f"LEAD(b.{_TS}) IGNORE NULLS OVER ({order}) AS {_NEXT}\n"
        f"  FROM (\n    {rows}\n  ) b"
    )
    on_key = " AND ".join(f"t.{quote_ident(k.name)} = v.{quote_ident(k.name)}" for k in keys)
    latest = (f"SELECT {by_key}, MAX({_COMMIT_TS_Q}) AS {quote_ident('__TP_MTS')} FROM {plan.replica.sql} "
              f"GROUP BY {by_key}")
    versions = (
        f"SELECT v.*, IFF(v.{_D}, COALESCE(v.{_PREV}, t.{quote_ident('__TP_MTS')}, 0), v.{_TS}) AS {_VTS}\n"
        f"  FROM (\n  {linked}\n  ) v LEFT JOIN ({latest}) t ON {on_key}"
    )
    # The truncate closed every version current at it (`schema_changes.truncate_statements`): a change committed
    # at or before it that lands late is not recorded, so it cannot become current again.
    truncated = "" if plan.truncated_at is None else f" AND n.{_VTS} > {int(plan.truncated_at)}"
    on_identity = (f"{on_key.replace('v.', 'n.')} AND t.{_COMMIT_TS_Q} = n.{_VTS} "
                   f"AND (t.{_OP_Q} = 'd') = n.{_D}")
    sql = (
        f"SELECT n.* FROM (\n"
        f"  SELECT w.*, ROW_NUMBER() OVER (PARTITION BY {', '.join('w.' + quote_ident(k.name) for k in keys)}, "
        f"w.{_VTS}, "
        f"w.{_D} ORDER BY w.{_O}, w.{_P}) AS {_RN}\n"
        f"  FROM ({versions}) w\n"
        # A tombstone followed by a value row no newer than what it would end opened a replay run.
        f"  WHERE NOT (w.{_D} AND w.{_NEXT} IS NOT NULL AND w.{_NEXT} <= w.{_VTS})\n"
        f") n LEFT JOIN {plan.replica.sql} t ON {on_identity}\n"
        f"WHERE n.{_RN} = 1 AND t.{quote_ident(keys[0].name)} IS NULL{truncated}"
    )
    return Statement(sql, r.params)


def _history_names(plan: MergePlan) -> list[str]:
    return [quote_ident(c.name) for c in plan.columns] + [quote_ident(n) for n in mode_column_names(HISTORY)]


def history_insert_sql(plan: MergePlan, ranges: Sequence[MergeRange]) -> Statement:
    """INSERT the batch's new versions (step 2); `_VALID_TO` and `_IS_CURRENT` are set by the re-link."""
    v = history_versions_sql(plan, ranges)
    cols = [f"n.{quote_ident(k.name)}" for k in plan.keys]
    cols += [json_to_sql(c, _value_path(c, _C, "n")) for c in plan.values]  # old field too, after a rename
    op = f"IFF(n.{_D}, 'd', COALESCE(n.{_C}:\"_tidb_op\"::VARCHAR, 'u'))"
    # A delete has no commit time: the record's timestamp stands in (re-link keeps it between its neighbours).
    cols += [op, f"n.{_VTS}", f"TO_TIMESTAMP_NTZ(IFF(n.{_D}, n.{_CT}, n.{_PT}), 3)", "NULL", "FALSE",
             f"n.{_P}", f"n.{_O}"]
    names = _history_names(plan)
    return Statement(
        f"INSERT INTO {plan.replica.sql} ({', '.join(names)})\n"
        f"SELECT {', '.join(cols)}\nFROM ({v.sql}) n",
        v.params,
    )


def history_counts_sql(plan: MergePlan, ranges: Sequence[MergeRange]) -> Statement:
    """New versions by kind (inserts, updates, deletes), all new versions, landing rows read, and the oldest and
    newest record time of those rows (`merge.record_times_sql`)."""
    v = history_versions_sql(plan, ranges)
    r = _ranges_table(ranges)
    in_ranges = (f'JOIN ({r.sql}) r ON {_MD_PARTITION} = r."P" AND {_MD_OFFSET} > r."LO" '
                 f'AND {_MD_OFFSET} <= r."HI"')
    landing_rows = f"(SELECT COUNT(*) FROM {plan.landing.sql} l {in_ranges})"
    op = f"n.{_C}:\"_tidb_op\"::VARCHAR"
    return Statement(
        f"SELECT COUNT_IF(NOT n.{_D} AND {op} = 'c'), COUNT_IF(NOT n.{_D} AND {op} <> 'c'), COUNT_IF(n.{_D}), "
        f"COUNT(*), {landing_rows}, {record_times_sql(plan.landing, in_ranges)}\nFROM ({v.sql}) n",
        r.params * 3 + v.params,
    )


def history_relink_sql(plan: MergePlan, ranges: Sequence[MergeRange]) -> Statement:
    """UPDATE `_VALID_FROM` (deletes only), `_VALID_TO` and `_IS_CURRENT` around the batch's new versions (step 3,
    after the INSERT); rows already right are not written.

    Per key with new versions (those that first landed in the ranges), only the versions from the one before
    the earliest new version on are read: the last versions (`_VALID_TO` NULL), and those valid until at least
    the earliest new `_VALID_FROM` or with a `_COMMIT_TS` at least the earliest new one. A key's long history
    is not re-read by every merge that adds a version to it.
    """
    r = _ranges_table(ranges)
    keys = [quote_ident(k.name) for k in plan.keys]
    new_keys = ", ".join(f"n.{k}" for k in keys)
    min_ts, min_from = quote_ident("MIN_TS"), quote_ident("MIN_FROM")
    touched = (f"SELECT {new_keys}, MIN(n.{_COMMIT_TS_Q}) AS {min_ts}, MIN(n.{_VALID_FROM_Q}) AS {min_from} "
               f"FROM {plan.replica.sql} n JOIN ({r.sql}) r ON n.{_KAFKA_PARTITION_Q} = r.\"P\" "
               f'AND n.{_KAFKA_OFFSET_Q} > r."LO" AND n.{_KAFKA_OFFSET_Q} <= r."HI" GROUP BY {new_keys}')
    by_key = ", ".join(f"x.{k}" for k in keys)
    is_del = f"(x.{_OP_Q} = 'd')"
    order = f"PARTITION BY {by_key} ORDER BY x.{_COMMIT_TS_Q}, {is_del}"
    vf = f"x.{_VALID_FROM_Q}"
    # The time of a delete (or of a switch's version) is evidence, not a commit time: keep it within its
    # neighbours' commit times.
    clamped = (f"IFF(x.{_OP_Q} IN ('d', '{SWITCH_OP}'), "
               f"LEAST(GREATEST({vf}, COALESCE(LAG({vf}) OVER ({order}), {vf})), "
               f"COALESCE(LEAD({vf}) OVER ({order}), {vf})), {vf})")
    on_touched = " AND ".join(f"x.{k} = k.{k}" for k in keys)
    placed = (
        f"SELECT {by_key}, x.{_COMMIT_TS_Q}, x.{_OP_Q}, {clamped} AS {quote_ident('F')}, "
        f"ROW_NUMBER() OVER (PARTITION BY {by_key} ORDER BY x.{_COMMIT_TS_Q} DESC, {is_del} DESC) "
        f"AS {quote_ident('LAST')}\n"
        f"    FROM {plan.replica.sql} x JOIN ({touched}) k ON {on_touched}\n"
        f"    WHERE x.{_VALID_TO_Q} IS NULL OR x.{_VALID_TO_Q} >= k.{min_from} OR x.{_COMMIT_TS_Q} >= k.{min_ts}"
    )
    linked = (
        f'SELECT y.*, LEAD(y."F") OVER (PARTITION BY {", ".join(f"y.{k}" for k in keys)} '
        f"ORDER BY y.{_COMMIT_TS_Q}, (y.{_OP_Q} = 'd')) AS {quote_ident('T')}, "
        f"(y.{quote_ident('LAST')} = 1 AND y.{_OP_Q} <> 'd') AS {quote_ident('CUR')}\n"
        f"  FROM (\n    {placed}\n  ) y"
    )
    on = " AND ".join(f"h.{k} = s.{k}" for k in keys)
    return Statement(
        f"UPDATE {plan.replica.sql} h SET {_VALID_FROM_Q} = s.\"F\", {_VALID_TO_Q} = s.\"T\", "
        f"{_IS_CURRENT_Q} = s.\"CUR\"\n"
        f"FROM (\n  {linked}\n) s\n"
        f"WHERE {on} AND h.{_COMMIT_TS_Q} = s.{_COMMIT_TS_Q} AND h.{_OP_Q} = s.{_OP_Q}\n"
        f"  AND (h.{_VALID_FROM_Q} IS DISTINCT FROM s.\"F\" OR h.{_VALID_TO_Q} IS DISTINCT FROM s.\"T\" "
        f"OR h.{_IS_CURRENT_Q} IS DISTINCT FROM s.\"CUR\")",
        r.params,
    )


def run_history_merge(
    session: Warehouse | Any, plan: MergePlan, now: dt.datetime, *, ranges: Sequence[MergeRange] | None = None,
    max_offsets_per_partition: int | None = None,
) -> tuple[MergeCounts, tuple[MergeRange, ...]]:
    """Append the pending landing rows to a history replica as versions (module docstring); idempotent.

    Round trips: the pending ranges, then BEGIN, the counts, the INSERT, the re-link, the watermark and COMMIT.
    """
    if plan.mode != HISTORY:
        raise ValueError(f"replica {plan.replica.label} is in mode {plan.mode}; run_history_merge is for history")

    def apply(wh: Warehouse, ranges: tuple[MergeRange, ...]) -> MergeCounts:
        row = wh.execute(history_counts_sql(plan, ranges))[0]
        inserted, updated, deleted, versions, landing_rows = (int(x or 0) for x in row[:5])
        oldest, newest = (None if x is None else int(x) for x in row[5:7])
        counts = MergeCounts(inserted, updated, deleted, versions, landing_rows, oldest_record_ms=oldest,
                             newest_record_ms=newest)
        if counts.source_rows:
            wh.execute(history_insert_sql(plan, ranges))
            wh.execute(history_relink_sql(plan, ranges))
        return counts

    return merge_in_transaction(session, plan, now, ranges, max_offsets_per_partition, apply)


# --- switching modes -------------------------------------------------------------------------------------


def switch_table(replica: TableRef) -> TableRef:
    """The table a switch builds before it takes the replica's name."""
    return TableRef(replica.schema, f"{replica.name}__SWITCH", replica.database)


def switch_statements(
    replica: TableRef, columns: Sequence[ReplicaColumn], old: str, new: str, now: dt.datetime
) -> list[Statement]:
    """Statements turning `replica` (in mode `old`) into mode `new`; `columns` are its TiDB columns.

    Re-runnable from the top if interrupted: the work table is dropped first, and the old table is dropped
    only after the new one holds its rows. Pause the table's merges while it runs (the merge job).
    """
    if old == new:
        return []
    work = switch_table(replica)
    tidb = [quote_ident(c.name) for c in columns]
    if old == HISTORY:
        # The current versions, and for soft_delete each deleted key's last values (the latest row per key).
        where = f"WHERE {_IS_CURRENT_Q}" if new == REPLICA else ""
        keep = ", ".join(quote_ident(k.name) for k in key_columns(columns))
        last = ("" if new == REPLICA else
                f" QUALIFY ROW_NUMBER() OVER (PARTITION BY {keep} ORDER BY {_COMMIT_TS_Q} DESC, "
                f"({_OP_Q} = 'd') DESC) = 1")
        rows = f"SELECT * FROM {replica.sql} {where}{last}"
    elif old == SOFT_DELETE and new == REPLICA:
        rows = f"SELECT * FROM {replica.sql} WHERE NOT {_DELETED_Q}"
    else:
        rows = f"SELECT * FROM {replica.sql}"
    if new == REPLICA:
        select, params = tidb, ()
    elif new == SOFT_DELETE:
        if old == HISTORY:
            # A deleted key keeps its last values: those of the version the delete ended.
            ended = (f"(SELECT p.* FROM {replica.sql} p WHERE p.{_OP_Q} <> 'd' QUALIFY ROW_NUMBER() OVER "
                     f"(PARTITION BY {', '.join('p.' + quote_ident(k.name) for k in key_columns(columns))} "
                     f"ORDER BY p.{_COMMIT_TS_Q} DESC) = 1)")
            on = " AND ".join(f"o.{quote_ident(k.name)} = e.{quote_ident(k.name)}" for k in key_columns(columns))
            select = [f"o.{n}" if c.is_key else f"e.{n}" for c, n in zip(columns, tidb)]
            select += [f"(o.{_OP_Q} = 'd')", f"IFF(o.{_OP_Q} = 'd', o.{_VALID_FROM_Q}, NULL)"]
            return _switch(replica, columns, new, work, select, f"({rows}) o JOIN {ended} e ON {on}", ())
        select, params = [*tidb, "FALSE", "NULL"], ()
    else:
        # Each row becomes one version, valid from the switch. Its `_COMMIT_TS` is 0, not the switch's TSO:
        # changes committed before the switch may still wait in the landing table, and must sort after it.
        _, values, params = snapshot_mode_values(HISTORY, 0, int(now.timestamp() * 1000))
        if old == SOFT_DELETE:
            # A soft-deleted row becomes a delete version that keeps its last values, valid from _DELETED_AT.
            gone = f"o.{_DELETED_Q}"
            values[0] = f"IFF({gone}, 'd', {values[0]})"
            values[2] = f"IFF({gone}, o.{_DELETED_AT_Q}, {values[2]})"
            values[4] = f"NOT {gone}"
        select = [*tidb, *values]
    return _switch(replica, columns, new, work, select, f"({rows}) o", params)


def _switch(replica: TableRef, columns: Sequence[ReplicaColumn], new: str, work: TableRef, select: Sequence[str],
            source: str, params: tuple[Any, ...]) -> list[Statement]:
    names = [quote_ident(c.name) for c in columns] + [quote_ident(n) for n in mode_column_names(new)]
    # SWAP WITH exchanges the two names in one step: at every moment the replica's name holds a whole table.
    return [
        Statement(f"DROP TABLE IF EXISTS {work.sql}"),
        Statement(create_mode_replica_sql(work, columns, new)),
        Statement(f"INSERT INTO {work.sql} ({', '.join(names)}) SELECT {', '.join(select)} FROM {source}", params),
        Statement(f"ALTER TABLE {replica.sql} SWAP WITH {work.sql}"),
        Statement(f"DROP TABLE {work.sql}"),
    ]
