"""Figures 2 and 3: merge scaling, and PingCAP's recipe MERGE side by side with ours.

Both run against any Snowflake-protocol connection (the lab's fakesnow server) on generated landing rows
in the connector's layout, for TPC-C's `item` table (the table the recipe itself uses):

- `merge_scaling`: one 10k-change batch (inserts, updates, `{}` tombstones, keys changing several times)
  merged by `run_merge` into replicas of 10k / 100k / 1M rows, built with one `INSERT ... SELECT` from
  `GENERATOR`, with and without the key-range prune. Both replicas of a size must end equal, and their row
  count must match the count the batch implies.
- `recipe_comparison`: rounds of changes against a Python model of the source table; after each round our
  merge and the recipe's MERGE consume the rows landed since their last run, and at the end each replica
  is compared with the model, key by key.

The recipe, from PingCAP's "Integrate Data with Confluent Cloud and Snowflake" (section "Create data
replicas of TiDB tables in Snowflake"), is a task running every minute over an append-only stream on the
landing table:

    merge into TEST_ITEM n
      using (select RECORD_METADATA:key as k, RECORD_CONTENT:val as v from TEST_ITEM_STREAM) stm
      on k:i_id = n.i_id
      when matched and IS_NULL_VALUE(v) = true then delete
      when matched and IS_NULL_VALUE(v) = false then
        update set n.i_data = v:i_data, n.i_im_id = v:i_im_id, n.i_name = v:i_name, n.i_price = v:i_price
      when not matched then
        insert (i_data, i_id, i_im_id, i_name, i_price) values (v:i_data, v:i_id, v:i_im_id, v:i_name, v:i_price);

What `recipe_merge_sql` had to approximate (see BENCHMARKS.md): the stream is "landing rows above the
recipe's own offset per partition" (fakesnow has no streams); `v` is `RECORD_CONTENT` itself (the
connector layout of spec/confluent.md has no `val` wrapper); the JSON-to-column casts sit in the USING
subquery (fakesnow applies casts in SET/VALUES unreliably); the recipe's replica has no enforced primary
key, as in Snowflake. `IS_NULL_VALUE({})` is FALSE in Snowflake and in fakesnow, so the published delete
branch never fires on the connector's `{}` tombstones; variant "deletes fixed" replaces that test with
"content has no key field" to isolate the second flaw, the missing per-key dedup.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns
from tidb_pipeline.replication.ddl import (
    Statement,
    TableRef,
    create_landing_sql,
    create_replica_sql,
    create_unconverted_sql,
    create_watermark_sql,
    quote_ident,
)
from tidb_pipeline.replication.merge import MergePlan, json_to_sql, run_merge, unconverted_table

TOPIC = "tidb_bench_item"
PARTITIONS = 3
_INT = {"type": "int", "connect.parameters": {"tidb_type": "INT"}}
_TEXT = {"type": "string", "connect.parameters": {"tidb_type": "TEXT"}}
_PRICE = {"type": "bytes", "connect.parameters": {"tidb_type": "DECIMAL"}, "logicalType": "decimal",
          "precision": 5, "scale": 2}
ITEM_KEY_SCHEMA = {"type": "record", "name": "item", "namespace": "default.bench",
                   "fields": [{"name": "i_id", "type": _INT}]}
ITEM_VALUE_SCHEMA = {
    "type": "record", "name": "item", "namespace": "default.bench",
    "fields": [
        {"name": "i_id", "type": _INT},
        {"default": None, "name": "i_im_id", "type": ["null", _INT]},
        {"default": None, "name": "i_name", "type": ["null", _TEXT]},
        {"default": None, "name": "i_price", "type": ["null", _PRICE]},
        {"default": None, "name": "i_data", "type": ["null", _TEXT]},
        {"default": "", "name": "_tidb_op", "type": "string"},
        {"default": 0, "name": "_tidb_commit_ts", "type": "long"},
        {"default": 0, "name": "_tidb_commit_physical_time", "type": "long"},
    ],
}
ITEM_COLUMNS: tuple[ReplicaColumn, ...] = replica_columns(ITEM_VALUE_SCHEMA, ITEM_KEY_SCHEMA)
_NAMES = tuple(c.name for c in ITEM_COLUMNS)
_DEL = quote_ident("__RECIPE_DELETE")

Row = tuple[Any, ...]  # (i_id, i_im_id, i_name, i_price, i_data) as the replica returns them


# --- generating changes (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One source change: the row after it, or None for a delete."""

    key: int
    row: Row | None


def item_row(key: int, version: int) -> Row:
    """A deterministic `item` row; `version` makes each update visible in every column."""
    return (key, (key * 31 + version) % 10_000, f"item-{key}-v{version}",
            Decimal(((key + version * 7) % 9_999) + 1) / 100, f"data-{key}-{version:04d}")


def change_rounds(
    *, seed: int, initial: int, rounds: int, changes: int, repeat_share: float = 0.3
) -> list[list[Change]]:
    """Round 0 inserts keys 1..initial; each later round makes `changes` changes, many to keys it touched already.

    Keys changing several times within one round (update-update, insert-delete, delete-reinsert) are the
    case the recipe gets wrong; `repeat_share` of the changes go to a key already touched in that round.
    """
    rnd = random.Random(seed)
    live: dict[int, int] = {}
    out: list[list[Change]] = [[Change(k, item_row(k, 0)) for k in range(1, initial + 1)]]
    live.update(dict.fromkeys(range(1, initial + 1), 0))
    space = max(2, int(initial * 1.2))
    for _ in range(rounds):
        touched: list[int] = []
        batch: list[Change] = []
        for _ in range(changes):
            key = rnd.choice(touched) if touched and rnd.random() < repeat_share else rnd.randint(1, space)
            touched.append(key)
            if key in live and rnd.random() < 0.3:
                del live[key]
                batch.append(Change(key, None))
            else:
                live[key] = live.get(key, 0) + 1
                batch.append(Change(key, item_row(key, live[key])))
        out.append(batch)
    return out


def apply_changes(model: dict[int, Row], changes: Iterable[Change]) -> None:
    for c in changes:
        if c.row is None:
            model.pop(c.key, None)
        else:
            model[c.key] = c.row


def landing_lines(
    changes: Sequence[Change], next_offsets: dict[int, int], *, topic: str = TOPIC, commit_ms: int | None = None
) -> list[tuple[str, str]]:
    """(RECORD_METADATA, RECORD_CONTENT) JSON texts as the connector writes them; advances `next_offsets`."""
    now = commit_ms if commit_ms is not None else int(time.time() * 1000)
    lines = []
    for i, c in enumerate(changes):
        p = c.key % PARTITIONS
        offset = next_offsets.get(p, 0)
        next_offsets[p] = offset + 1
        meta = {"topic": topic, "partition": p, "offset": offset, "CreateTime": now, "key": {"i_id": c.key}}
        if c.row is None:
            content = "{}"  # the connector's tombstone
        else:
            values = dict(zip(_NAMES, c.row))
            values["i_price"] = float(values["i_price"])  # a JSON number, scale kept (spec/confluent.md)
            values.update(_tidb_op="u", _tidb_commit_ts=(now << 18) + i, _tidb_commit_physical_time=now)
            content = json.dumps(values, separators=(",", ":"))
        lines.append((json.dumps(meta, separators=(",", ":")), content))
    return lines


# --- SQL ----------------------------------------------------------------------------------------------


def _execute(cursor: Any, stmt: Statement | str) -> list[tuple[Any, ...]]:
    stmt = Statement(stmt) if isinstance(stmt, str) else stmt
    cursor.execute(stmt.sql, stmt.params or None)
    try:
        return [tuple(r) for r in cursor.fetchall()]
    except Exception:  # noqa: BLE001 - statements without a result set
        return []


def insert_landing_statements(landing: TableRef, lines: Sequence[tuple[str, str]], chunk: int = 2_000) -> list[Statement]:
    """Multi-row INSERT ... SELECT PARSE_JSON statements (the connector's executemany is row by row)."""
    out = []
    for i in range(0, len(lines), chunk):
        part = lines[i : i + chunk]
        values = ", ".join("(%s, %s)" for _ in part)
        out.append(Statement(
            f'INSERT INTO {landing.sql} ("RECORD_METADATA", "RECORD_CONTENT") '
            f"SELECT PARSE_JSON(column1), PARSE_JSON(column2) FROM VALUES {values}",
            tuple(x for line in part for x in line),
        ))
    return out


def create_recipe_replica_sql(table: TableRef, columns: Sequence[ReplicaColumn]) -> str:
    """The recipe's replica: same columns, no enforced key (Snowflake does not enforce PRIMARY KEY)."""
    cols = ", ".join(f"{quote_ident(c.name)} {c.sql_type}" for c in columns)
    return f"CREATE TABLE IF NOT EXISTS {table.sql} ({cols})"


def _ranges_filter(positions: Mapping[int, tuple[int, int]]) -> tuple[str, tuple[Any, ...]]:
    """WHERE text selecting landing rows with offsets in (after, through] per partition."""
    parts = ' OR '.join(
        '(l."RECORD_METADATA":"partition"::int = %s AND l."RECORD_METADATA":"offset"::int > %s '
        'AND l."RECORD_METADATA":"offset"::int <= %s)' for _ in positions
    )
    params = tuple(x for p, (lo, hi) in sorted(positions.items()) for x in (p, lo, hi))
    return f"({parts})", params


def recipe_merge_sql(
    replica: TableRef,
    landing: TableRef,
    columns: Sequence[ReplicaColumn],
    positions: Mapping[int, tuple[int, int]],
    *,
    fix_deletes: bool = False,
) -> Statement:
    """PingCAP's MERGE over the landing rows in `positions` (the emulated stream); see the module docstring."""
    keys = [c for c in columns if c.is_key]
    values = [c for c in columns if not c.is_key]
    where, params = _ranges_filter(positions)
    key_json, content = 'l."RECORD_METADATA":"key":', 'l."RECORD_CONTENT":'
    k = [f"{json_to_sql(c, key_json + quote_ident(c.name))} AS {quote_ident('K_' + c.name)}" for c in keys]
    v = [f"{json_to_sql(c, content + quote_ident(c.name))} AS {quote_ident(c.name)}" for c in columns]
    if fix_deletes:
        deleted = f'(l."RECORD_CONTENT" IS NULL OR l."RECORD_CONTENT":{quote_ident(keys[0].name)} IS NULL)'
    else:
        deleted = 'IS_NULL_VALUE(l."RECORD_CONTENT")'
    on = " AND ".join(f"stm.{quote_ident('K_' + c.name)} = n.{quote_ident(c.name)}" for c in keys)
    sets = ", ".join(f"{quote_ident(c.name)} = stm.{quote_ident(c.name)}" for c in values)
    names = ", ".join(quote_ident(c.name) for c in columns)
    insert_when = f"WHEN NOT MATCHED AND NOT stm.{_DEL}" if fix_deletes else "WHEN NOT MATCHED"
    sql = (
        f"MERGE INTO {replica.sql} n USING (\n"
        f"  SELECT {', '.join(k + v)}, {deleted} AS {_DEL}\n"
        f"  FROM {landing.sql} l WHERE {where}\n"
        f") stm ON {on}\n"
        f"WHEN MATCHED AND stm.{_DEL} = true THEN DELETE\n"
        f"WHEN MATCHED AND stm.{_DEL} = false THEN UPDATE SET {sets}\n"
        f"{insert_when} THEN INSERT ({names}) VALUES ({', '.join('stm.' + quote_ident(c.name) for c in columns)})"
    )
    return Statement(sql, params)


def recipe_max_rows_per_key_sql(landing: TableRef, positions: Mapping[int, tuple[int, int]]) -> Statement:
    """Most landing rows one key has in the recipe's batch: above 1, Snowflake's MERGE is nondeterministic."""
    where, params = _ranges_filter(positions)
    return Statement(
        f'SELECT MAX("N") FROM (SELECT COUNT(*) AS "N" FROM {landing.sql} l WHERE {where} '
        f'GROUP BY l."RECORD_METADATA":"key":"i_id"::int)',
        params,
    )


def run_in_transaction(connection: Any, stmt: Statement) -> None:
    """One MERGE in its own transaction (fakesnow wants it as the first write after BEGIN)."""
    cursor = connection.cursor()
    connection.autocommit(False)
    try:
        _execute(cursor, "BEGIN")
        _execute(cursor, stmt)
        _execute(cursor, "COMMIT")
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.autocommit(True)


# --- comparing a replica with the model ---------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaDiff:
    """How a replica differs from the source model; every tuple holds keys (None = a row with a NULL key)."""

    source_rows: int
    replica_rows: int
    missing: tuple[int, ...] = ()  # in the source, not in the replica
    extra: tuple[int | None, ...] = ()  # in the replica, not in the source (deleted there, or a NULL key)
    different: tuple[int, ...] = ()  # on both sides, different values
    duplicated: tuple[int | None, ...] = ()  # more than one replica row

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different or self.duplicated) and \
            self.source_rows == self.replica_rows

    def summary(self, limit: int = 5) -> str:
        if self.equal:
            return "equal"
        parts = []
        for name, keys in (("missing", self.missing), ("extra", self.extra), ("different", self.different),
                           ("duplicated", self.duplicated)):
            if keys:
                shown = ", ".join(str(k) for k in keys[:limit]) + (", ..." if len(keys) > limit else "")
                parts.append(f"{len(keys)} {name} (keys {shown})")
        return "; ".join(parts)


def _canonical(row: Sequence[Any]) -> Row:
    key, im_id, name, price, data = row
    return (None if key is None else int(key), None if im_id is None else int(im_id), name,
            None if price is None else Decimal(str(price)).quantize(Decimal("0.01")), data)


def diff_rows(model: Mapping[int, Row], rows: Iterable[Sequence[Any]]) -> ReplicaDiff:
    """Compare replica rows with the model, key by key."""
    got = [_canonical(r) for r in rows]
    counts = Counter(r[0] for r in got)
    by_key = {r[0]: r for r in got}
    want = {k: _canonical(r) for k, r in model.items()}
    sort = lambda keys: tuple(sorted(keys, key=lambda k: (k is None, k or 0)))  # noqa: E731
    return ReplicaDiff(
        source_rows=len(want),
        replica_rows=len(got),
        missing=sort(k for k in want if k not in by_key),
        extra=sort(k for k in by_key if k not in want),
        different=sort(k for k in want if k in by_key and by_key[k] != want[k]),
        duplicated=sort(k for k, n in counts.items() if n > 1),
    )


def replica_rows(cursor: Any, replica: TableRef) -> list[tuple[Any, ...]]:
    return _execute(cursor, f"SELECT {', '.join(quote_ident(n) for n in _NAMES)} FROM {replica.sql}")


# --- figure 3 -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparisonResult:
    ours_seconds: float
    recipe_seconds: float
    fixed_seconds: float
    ours: ReplicaDiff
    recipe: ReplicaDiff
    fixed: ReplicaDiff
    landing_rows: int
    rounds: int
    max_versions_per_key: int  # in one recipe batch; Snowflake's MERGE errors on > 1 matched row
    per_round: tuple[tuple[float, float, float], ...] = field(default_factory=tuple)


def recipe_comparison(
    connection: Any, schema: TableRef, *, initial: int, rounds: int, changes: int, seed: int = 8
) -> ComparisonResult:
    """Figure 3 on the connection, in `schema` (a TableRef whose name is ignored); see the module docstring."""
    return compare_merges(connection, schema, change_rounds(seed=seed, initial=initial, rounds=rounds, changes=changes))


def compare_merges(connection: Any, schema: TableRef, batches: Sequence[Sequence[Change]]) -> ComparisonResult:
    """Land each batch, run our merge and both recipe variants after each, then diff every replica with the model."""
    cursor = connection.cursor()
    ref = lambda name: TableRef(schema.schema, name, schema.database)  # noqa: E731
    landing, watermarks = ref("LANDING_ITEM"), ref("MERGE_WATERMARKS")
    ours, recipe, fixed = ref("ITEM_OURS"), ref("ITEM_RECIPE"), ref("ITEM_RECIPE_FIXED_DELETES")
    for sql in (create_landing_sql(landing), create_watermark_sql(watermarks), create_unconverted_sql(
                    unconverted_table(watermarks)), create_replica_sql(ours, ITEM_COLUMNS),
                create_recipe_replica_sql(recipe, ITEM_COLUMNS), create_recipe_replica_sql(fixed, ITEM_COLUMNS)):
        _execute(cursor, sql)
    plan = MergePlan(ours, landing, watermarks, ITEM_COLUMNS)
    model: dict[int, Row] = {}
    offsets: dict[int, int] = {}
    consumed: dict[int, int] = {}
    totals = [0.0, 0.0, 0.0]
    per_round = []
    max_versions = 0
    landed = 0
    for batch in batches:
        apply_changes(model, batch)
        for stmt in insert_landing_statements(landing, landing_lines(batch, offsets)):
            _execute(cursor, stmt)
        landed += len(batch)
        # The emulated stream: what landed since the recipe's last run.
        positions = {p: (consumed.get(p, -1), end - 1) for p, end in offsets.items() if end - 1 > consumed.get(p, -1)}
        (versions,) = _execute(cursor, recipe_max_rows_per_key_sql(landing, positions))[0]
        max_versions = max(max_versions, int(versions or 0))
        t0 = time.perf_counter()
        run_merge(connection, plan, dt.datetime.now(dt.timezone.utc))
        t1 = time.perf_counter()
        run_in_transaction(connection, recipe_merge_sql(recipe, landing, ITEM_COLUMNS, positions))
        t2 = time.perf_counter()
        run_in_transaction(connection, recipe_merge_sql(fixed, landing, ITEM_COLUMNS, positions, fix_deletes=True))
        t3 = time.perf_counter()
        consumed.update({p: hi for p, (_, hi) in positions.items()})
        per_round.append((t1 - t0, t2 - t1, t3 - t2))
        for i, s in enumerate((t1 - t0, t2 - t1, t3 - t2)):
            totals[i] += s
    return ComparisonResult(
        ours_seconds=totals[0], recipe_seconds=totals[1], fixed_seconds=totals[2],
        ours=diff_rows(model, replica_rows(cursor, ours)),
        recipe=diff_rows(model, replica_rows(cursor, recipe)),
        fixed=diff_rows(model, replica_rows(cursor, fixed)),
        landing_rows=landed, rounds=len(per_round), max_versions_per_key=max_versions, per_round=tuple(per_round),
    )


# --- figure 2 -----------------------------------------------------------------------------------------


def scaling_batch(size: int, changes: int, seed: int = 2) -> tuple[list[Change], int]:
    """`changes` changes near the end of a table of keys 1..size (recent keys, as TPC-C's new orders are),
    about one in three to a key changed earlier in the batch; returns them and the row count after them."""
    rnd = random.Random(seed)
    span = max(changes, 10)
    lo = max(1, size - int(span * 0.7))
    hi = size + int(span * 0.3)
    exists = lambda k: k <= size  # noqa: E731
    state: dict[int, bool] = {}
    version: dict[int, int] = {}
    out = []
    for _ in range(changes):
        key = rnd.randint(lo, hi)
        alive = state.get(key, exists(key))
        if alive and rnd.random() < 0.2:
            state[key] = False
            out.append(Change(key, None))
        else:
            state[key] = True
            version[key] = version.get(key, 0) + 1
            out.append(Change(key, item_row(key, version[key])))
    rows = size + sum(1 for k, alive in state.items() if alive and not exists(k)) \
        - sum(1 for k, alive in state.items() if not alive and exists(k))
    return out, rows


def fill_replica_sql(replica: TableRef, size: int) -> str:
    """Bulk-build a replica of keys 1..size in one statement (never row by row)."""
    return (
        f"INSERT INTO {replica.sql} ({', '.join(quote_ident(n) for n in _NAMES)}) "
        f"SELECT seq4() + 1, (seq4() * 31) % 10000, 'item-' || (seq4() + 1) || '-v0', "
        f"((seq4() % 9999) + 1) / 100, 'data-' || (seq4() + 1) || '-0000' "
        f"FROM TABLE(GENERATOR(ROWCOUNT => {int(size)}))"
    )


@dataclass(frozen=True)
class ScalingPoint:
    size: int
    prune: bool
    seconds: float
    build_seconds: float
    inserted: int
    updated: int
    deleted: int
    landing_rows: int
    keys: int
    rows_after: int


def merge_scaling(
    connection: Any, schema: TableRef, *, sizes: Sequence[int], changes: int, repeat: int = 1
) -> list[ScalingPoint]:
    """Figure 2: per size, the same batch merged into a fresh replica with and without the prune.

    Raises if the two replicas of a size differ or the row count is not what the batch implies.
    """
    cursor = connection.cursor()
    ref = lambda name: TableRef(schema.schema, name, schema.database)  # noqa: E731
    watermarks = ref("MERGE_WATERMARKS")
    _execute(cursor, create_watermark_sql(watermarks))
    _execute(cursor, create_unconverted_sql(unconverted_table(watermarks)))
    points = []
    for size in sizes:
        batch, expected_rows = scaling_batch(size, changes)
        landing = ref(f"LANDING_ITEM_{size}")
        _execute(cursor, create_landing_sql(landing))
        for stmt in insert_landing_statements(landing, landing_lines(batch, {})):
            _execute(cursor, stmt)
        replicas = {}
        for prune in (False, True):
            best: ScalingPoint | None = None
            for attempt in range(repeat):
                replica = ref(f"ITEM_{size}_{'PRUNE' if prune else 'FULL'}_{attempt}")
                _execute(cursor, f"DROP TABLE IF EXISTS {replica.sql}")
                _execute(cursor, create_replica_sql(replica, ITEM_COLUMNS))
                t0 = time.perf_counter()
                _execute(cursor, fill_replica_sql(replica, size))
                built = time.perf_counter() - t0
                plan = MergePlan(replica, landing, watermarks, ITEM_COLUMNS)
                t0 = time.perf_counter()
                counts, _ = run_merge(connection, plan, dt.datetime.now(dt.timezone.utc), prune=prune)
                seconds = time.perf_counter() - t0
                (rows,) = _execute(cursor, f"SELECT COUNT(*) FROM {replica.sql}")[0]
                if rows != expected_rows:
                    raise RuntimeError(f"merge into {replica.label} left {rows} rows, the batch implies {expected_rows}")
                point = ScalingPoint(size, prune, seconds, built, counts.inserted, counts.updated, counts.deleted,
                                     counts.landing_rows, counts.source_rows, int(rows))
                if best is None or point.seconds < best.seconds:
                    best = point
                replicas[prune] = replica
            assert best is not None
            points.append(best)
        a, b = replicas[False].sql, replicas[True].sql
        diff = sum(int(n) for (n,) in _execute(
            cursor, f"SELECT COUNT(*) FROM (SELECT * FROM {a} EXCEPT SELECT * FROM {b}) "
                    f"UNION ALL SELECT COUNT(*) FROM (SELECT * FROM {b} EXCEPT SELECT * FROM {a})"))
        if diff:
            raise RuntimeError(f"pruned and unpruned merges of size {size} disagree on {diff} rows")
    return points
