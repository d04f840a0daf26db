"""The built-in SQL Server applier: a topic's TiCDC change records -> one SQL Server table, exactly once.

For self-managed users without the Confluent SQL Server Sink; it gives the table the connector would
(`insert.mode=UPSERT`, `pk.mode=record_key`, `delete.enabled=true`, `auto.create`, `auto.evolve`; the
SQL text and type mapping live in `tidb_pipeline.replication.sqlserver`).

One run, per batch of records:

    offsets table ──next offset per partition──▶ consumer.assign ──▶ decode (wire format + registry)
        ──▶ latest record per key ──▶ ┌ one transaction ──────────────────────────────────────────┐
                                      │ lock + re-check the stored offsets (a concurrent run stops)│
                                      │ CREATE TABLE / ALTER TABLE ADD for new value fields        │
                                      │ DELETE tombstoned keys; MERGE / upsert the rest            │
                                      │ write the next offsets                                     │
                                      └ COMMIT ────────────────────────────────────────────────────┘

Exactly once: Kafka offsets are never committed to Kafka; the next offset per partition lives in the
target database and is written in the same transaction as the rows. A crash before COMMIT leaves rows and
offsets as they were, so the rerun applies the same records once. Keeping only the latest record per key
is safe because every version of a key is in one partition (TiCDC's index-value dispatcher) and records
are read in offset order; a primary-key change arrives as a delete of the old key plus an insert of the
new one, which are different keys. A record that cannot be decoded stops the run with its position, as
the connector's task fails with `errors.tolerance=none`.

BIGINT UNSIGNED values above 2^63-1 (TiCDC's default `long` mode wraps them negative) are stored as they
arrive, as the connector stores them; SQL Server's bigint could not hold them unwrapped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import fastavro
import sqlalchemy as sa
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from tidb_pipeline.replication import sqlserver as sql
from tidb_pipeline.replication.columns import ColumnPolicyError, Policy, by_field, kept, row_transform, treatment
from tidb_pipeline.replication.sqlserver import Dialect, SqlColumn, TargetTable
from tidb_pipeline.replication.wire import PoisonRecord, decode, schema_id
from tidb_pipeline.resources.kafka import BelowEnds, KafkaResource
from tidb_pipeline.resources.schema_registry import registry_url, schema_text

DEFAULT_BATCH = 50_000
DEFAULT_DATABASE = "tidb_replica"


class ApplyError(RuntimeError):
    """The applier cannot go on; the message names the topic, partition and offset or the table."""


class ConcurrentApplyError(ApplyError):
    """Another applier moved this table's offsets while this one was reading; nothing was applied."""


@dataclass(frozen=True)
class ApplyResult:
    """What one `apply_topic` run did."""

    table: TargetTable
    topic: str
    records_read: int = 0
    keys_upserted: int = 0
    keys_deleted: int = 0
    batches: int = 0
    offsets_before: Mapping[int, int] = field(default_factory=dict)
    offsets_after: Mapping[int, int] = field(default_factory=dict)
    end_offsets: Mapping[int, int] = field(default_factory=dict)
    created: bool = False
    columns_added: tuple[str, ...] = ()
    columns: tuple[SqlColumn, ...] = ()
    row_count: int | None = None
    seconds: float = 0.0

    @property
    def backlog(self) -> int:
        return sum(max(0, end - self.offsets_after.get(p, 0)) for p, end in self.end_offsets.items())


@dataclass(frozen=True)
class _Change:
    """The latest record of one key in a batch: a value with its schema id, or a tombstone (value None)."""

    key: tuple[Any, ...]
    schema_id: int | None
    value: Mapping[str, Any] | None


@dataclass(frozen=True)
class _Plan:
    dialect: Dialect
    table: TargetTable
    offsets: TargetTable
    topic: str
    # The table's column policy (`replication.columns`, on Avro field names here); `salt` reads the hash salt.
    policy: Policy | None = None
    salt: Callable[[], str] | None = None
    source: str = ""


def _policy_columns(plan: _Plan, columns: Sequence[SqlColumn]) -> list[SqlColumn]:
    """The target's columns under the column policy: left-out fields gone, hashed ones a hex varchar(64)."""
    if plan.policy is None:
        return list(columns)
    fp = by_field(plan.policy)
    if touched := [c.name for c in columns if c.is_key and (not kept(fp, c.name) or treatment(fp, c.name))]:
        raise ColumnPolicyError(f"{plan.source or plan.table.label}: key column(s) {touched} cannot be excluded, "
                                "hashed or masked; remove them from columns in tidb_pipeline.yaml")
    return [replace(c, sql_type="varchar(64)", avro_type="string", default_sql=None)
            if treatment(fp, c.name) == "hash" else c for c in columns if kept(fp, c.name)]


class _Schemas:
    """Registry schemas by id, fetched and parsed once per run."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self._parsed: dict[int, Any] = {}
        self._text: dict[int, str] = {}

    def text(self, sid: int) -> str:
        if sid not in self._text:
            text = schema_text(self._registry, sid)
            if text is None:
                raise PoisonRecord(f"schema id {sid} is not in the schema registry {registry_url(self._registry)}")
            self._text[sid] = text
        return self._text[sid]

    def parsed(self, sid: int) -> Any:
        if sid not in self._parsed:
            self._parsed[sid] = fastavro.parse_schema(json.loads(self.text(sid)))
        return self._parsed[sid]

    def field_names(self, sid: int) -> tuple[str, ...]:
        return tuple(f["name"] for f in json.loads(self.text(sid))["fields"])


def _compiled(dialect: sa.engine.Dialect, statement: str) -> tuple[str, tuple[str, ...] | None]:
    """(driver SQL, parameter order or None for named styles) of a multi-row statement, compiled once.

    Going through `sa.text()` for every 1000-row statement cost more than the database: SQLAlchemy parses
    the text and builds a cache key over thousands of bind parameters each time.
    """
    key = (dialect.name, dialect.driver, statement)
    if key not in _COMPILED:
        compiled = sa.text(statement).compile(dialect=dialect)
        order = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup is not None else None
        if len(_COMPILED) > 256:
            _COMPILED.clear()
        _COMPILED[key] = (compiled.string, order)
    return _COMPILED[key]


_COMPILED: dict[tuple[str, str, str], tuple[str, tuple[str, ...] | None]] = {}


def _run_rows(conn: sa.Connection, statement: str, rows: Sequence[Sequence[Any]]) -> int:
    """Execute a multi-row statement built with `sql.param` names; returns the driver's row count."""
    text, order = _compiled(conn.dialect, statement)
    params = sql.row_params(rows)
    args: Any = tuple(params[name] for name in order) if order is not None else params
    return max(0, conn.exec_driver_sql(text, args).rowcount or 0)


def dialect_of(engine: sa.Engine) -> Dialect:
    return sql.check_dialect(engine.dialect.name)


# --- database side --------------------------------------------------------------------------------------
def ensure_offsets_table(engine: sa.Engine, offsets: TargetTable) -> None:
    dialect = dialect_of(engine)
    with engine.begin() as conn:
        if not sa.inspect(conn).has_table(offsets.name, schema=offsets.schema):
            conn.execute(sa.text(sql.create_offsets_sql(offsets, dialect)))


def stored_offsets(conn: sa.Connection, plan: _Plan, *, lock: bool = False) -> dict[int, int]:
    rows = conn.execute(sa.text(sql.select_offsets_sql(plan.offsets, plan.dialect, lock=lock)),
                        {"table_name": plan.table.label, "topic": plan.topic})
    return {int(p): int(o) for p, o in rows}


def _store_offsets(conn: sa.Connection, plan: _Plan, offsets: Mapping[int, int]) -> None:
    rows = [(plan.table.label, plan.topic, p, o) for p, o in sorted(offsets.items())]
    for chunk in sql.chunks(rows, sql.rows_per_statement(4, plan.dialect)):
        _run_rows(conn, sql.offsets_upsert_sql(plan.offsets, plan.dialect, rows=len(chunk)), chunk)


def _ensure_table(conn: sa.Connection, plan: _Plan, columns: Sequence[SqlColumn]) -> tuple[bool, tuple[str, ...]]:
    """Create the table or add the columns it lacks; (created, added column names)."""
    inspector = sa.inspect(conn)
    if not inspector.has_table(plan.table.name, schema=plan.table.schema):
        conn.execute(sa.text(sql.create_table_sql(plan.table, columns, plan.dialect)))
        return True, ()
    existing = [c["name"] for c in inspector.get_columns(plan.table.name, schema=plan.table.schema)]
    statements = sql.add_columns_sql(plan.table, existing, columns, plan.dialect)
    for statement in statements:
        conn.execute(sa.text(statement))
    have = {n.lower() for n in existing}
    return False, tuple(c.name for c in columns if c.name.lower() not in have)


def _table_exists(conn: sa.Connection, table: TargetTable) -> bool:
    return sa.inspect(conn).has_table(table.name, schema=table.schema)


def _merge_columns(schemas: _Schemas, value_ids: Sequence[int], key_schema: str, dialect: Dialect) -> list[SqlColumn]:
    """Columns of every value schema in the batch, first appearance first (older schema ids first)."""
    out: dict[str, SqlColumn] = {}
    for sid in sorted(value_ids):
        for col in sql.table_columns(schemas.text(sid), key_schema, dialect):
            out.setdefault(col.name, col)
    return list(out.values())


@dataclass(frozen=True)
class _BatchOutcome:
    upserted: int
    deleted: int
    created: bool
    added: tuple[str, ...]
    columns: tuple[SqlColumn, ...]


def _apply_batch(
    engine: sa.Engine, plan: _Plan, schemas: _Schemas, key_schema_id: int, changes: Sequence[_Change],
    expected: Mapping[int, int], new_offsets: Mapping[int, int],
) -> _BatchOutcome:
    key_schema = schemas.text(key_schema_id)
    key_cols = list(schemas.field_names(key_schema_id))
    upserts = [c for c in changes if c.value is not None]
    deletes = [c for c in changes if c.value is None]
    value_ids = sorted({c.schema_id for c in upserts if c.schema_id is not None})
    with engine.begin() as conn:
        current = stored_offsets(conn, plan, lock=True)
        if current != dict(expected):
            raise ConcurrentApplyError(
                f"offsets of {plan.table.label} for topic {plan.topic} moved from {dict(expected)} to {current} "
                "while this run was reading: another applier is running for the same table; this batch was not applied"
            )
        created, added, columns = False, tuple[str, ...](), tuple[SqlColumn, ...]()
        if value_ids:
            merged = _policy_columns(plan, _merge_columns(schemas, value_ids, key_schema, plan.dialect))
            created, added = _ensure_table(conn, plan, merged)
            columns = tuple(merged)
        deleted = 0
        if deletes and (value_ids or _table_exists(conn, plan.table)):
            size = sql.rows_per_statement(len(key_cols), plan.dialect)
            for chunk in sql.chunks(deletes, size):
                statement = sql.delete_sql(plan.table, key_cols, plan.dialect, rows=len(chunk))
                deleted += _run_rows(conn, statement, [c.key for c in chunk])
        # One statement shape per value schema: a record only sets the fields its schema has, as the
        # connector does (a column TiDB dropped keeps its old values).
        by_schema: dict[int, list[_Change]] = {}
        for change in upserts:
            by_schema.setdefault(change.schema_id or 0, []).append(change)
        salt = _once(plan.salt)
        for sid, group in sorted(by_schema.items()):
            keep, value = row_transform(plan.policy, schemas.text(sid), key_schema, plan.source or plan.table.label)
            names = [c.name for c in sql.table_columns(schemas.text(sid), key_schema, plan.dialect) if keep(c.name)]
            size = sql.rows_per_statement(len(names), plan.dialect)
            for chunk in sql.chunks(group, size):
                rows = [tuple(value(n, c.value[n], salt) for n in names) for c in chunk]  # type: ignore[index]
                _run_rows(conn, sql.upsert_sql(plan.table, names, key_cols, plan.dialect, rows=len(chunk)), rows)
        _store_offsets(conn, plan, new_offsets)
    return _BatchOutcome(len(upserts), deleted, created, added, columns)


def _once(read: Callable[[], str] | None) -> Callable[[], str]:
    """`read`, called at most once per batch (the salt is read only when a value is hashed)."""
    got: list[str] = []

    def salt() -> str:
        if read is None:
            raise ValueError("the column policy hashes columns but no salt reader was given (hash_salt_env)")
        if not got:
            got.append(read())
        return got[0]

    return salt


# --- Kafka side -----------------------------------------------------------------------------------------
def _decode(schemas: _Schemas, data: bytes, where: str) -> tuple[int, Any]:
    try:
        sid = schema_id(data)
        return sid, decode(data, schemas.parsed(sid))
    except PoisonRecord as exc:
        raise ApplyError(f"record {where} cannot be decoded ({exc.reason}); fix or skip it on the topic "
                         "(the SQL Server sink would fail its task here too)") from None


def _collapse(schemas: _Schemas, messages: Sequence[Any], topic: str) -> tuple[list[_Change], int]:
    """The latest change per key (first-seen key order) and the batch's key schema id."""
    latest: dict[tuple[Any, ...], _Change] = {}
    key_sid: int | None = None
    for msg in messages:
        where = f"{topic}/{msg.partition()}@{msg.offset()}"
        if msg.key() is None:
            raise ApplyError(f"record {where} has no key; pk.mode=record_key needs TiCDC's Avro key")
        sid, key = _decode(schemas, msg.key(), where + " (key)")
        if key_sid is None:
            key_sid = sid
        elif sid != key_sid and schemas.field_names(sid) != schemas.field_names(key_sid):
            raise ApplyError(
                f"record {where} has key fields {schemas.field_names(sid)}, earlier records "
                f"{schemas.field_names(key_sid)}: the table's primary key changed in TiDB; recreate the target "
                "table and replay the topic (the SQL Server sink cannot follow a key change either)"
            )
        key_tuple = tuple(key.values())  # fastavro keeps schema field order
        raw = msg.value()
        if raw is None:
            latest[key_tuple] = _Change(key_tuple, None, None)
        else:
            vid, value = _decode(schemas, raw, where + " (value)")
            latest[key_tuple] = _Change(key_tuple, vid, value)
    if key_sid is None:
        raise ValueError("_collapse needs a non-empty batch")
    return list(latest.values()), key_sid


def _batches(consumer: Any, ends: Mapping[int, int], batch_size: int, deadline: float) -> Iterator[list[Any]]:
    """Records up to `ends` (exclusive) in batches of at most `batch_size`; stops at the deadline."""
    # Past the end seen at the start is left for the next run (keeps a run's work bounded).
    reader = BelowEnds(ends, key=lambda msg: msg.partition())
    batch: list[Any] = []
    while reader.pending and time.monotonic() < deadline:
        batch.extend(reader.take(consumer, min(10_000, batch_size - len(batch)), 1.0))
        if len(batch) >= batch_size or (batch and not reader.pending):
            yield batch
            batch = []
    if batch:
        yield batch  # the deadline passed: apply what was read rather than read it again next time


def _next_offsets(batch: Sequence[Any], before: Mapping[int, int]) -> dict[int, int]:
    out = dict(before)
    for msg in batch:
        out[msg.partition()] = max(out.get(msg.partition(), 0), msg.offset() + 1)
    return out


def apply_topic(
    *,
    kafka: KafkaResource,
    registry: Any,
    engine: sa.Engine,
    topic: str,
    table: TargetTable | str,
    offsets_table: TargetTable | str = sql.OFFSETS_TABLE,
    batch_size: int = DEFAULT_BATCH,
    timeout_s: float = 300.0,
    log: logging.Logger | None = None,
    policy: Policy | None = None,
    hash_salt: Callable[[], str] | None = None,
    source: str = "",
) -> ApplyResult:
    """Apply `topic` to `table` from the stored offsets up to the topic's end offsets at the start.

    `registry` is a `SchemaRegistryClient`. Each batch is one transaction holding its rows and offsets.
    `policy` is the table's column policy (`replication.columns`); `hash_salt` reads its salt when a value is hashed.
    """
    log = log or logging.getLogger(__name__)
    started = time.monotonic()
    dialect = dialect_of(engine)
    table = TargetTable(table) if isinstance(table, str) else table
    offsets = TargetTable(offsets_table, table.schema) if isinstance(offsets_table, str) else offsets_table
    plan = _Plan(dialect, table, offsets, topic, policy, hash_salt, source)
    ensure_offsets_table(engine, offsets)
    with engine.connect() as conn:
        before = stored_offsets(conn, plan)
    ends = kafka.end_offsets([topic]).get(topic, {})
    if not ends:
        log.info("topic %s does not exist yet: nothing to apply to %s", topic, table.label)
    todo = {p: end for p, end in ends.items() if before.get(p, 0) < end}
    schemas = _Schemas(registry)
    records = upserted = deleted = batches = 0
    created, added, columns = False, list[str](), tuple[SqlColumn, ...]()
    applied = dict(before)
    if todo:
        consumer = kafka.consumer(f"tidb-pipeline-sqlserver-{table.label}", **{"enable.partition.eof": True})
        try:
            consumer.assign([TopicPartition(topic, p, before.get(p, OFFSET_BEGINNING)) for p in sorted(todo)])
            for batch in _batches(consumer, todo, batch_size, started + timeout_s):
                changes, key_sid = _collapse(schemas, batch, topic)
                after = _next_offsets(batch, applied)
                outcome = _apply_batch(engine, plan, schemas, key_sid, changes, applied, after)
                applied = after
                records += len(batch)
                upserted += outcome.upserted
                deleted += outcome.deleted
                batches += 1
                created = created or outcome.created
                added.extend(a for a in outcome.added if a not in added)
                columns = outcome.columns or columns
        finally:
            consumer.close()
        left = {p: end for p, end in todo.items() if applied.get(p, 0) < end}
        if left:
            log.warning("%s: stopped after %.0fs with records left on partitions %s", topic, timeout_s, sorted(left))
    row_count = None
    with engine.connect() as conn:
        if _table_exists(conn, table):
            row_count = int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table.sql(dialect)}")).scalar_one())
    return ApplyResult(
        table=table, topic=topic, records_read=records, keys_upserted=upserted, keys_deleted=deleted,
        batches=batches, offsets_before=before, offsets_after=applied, end_offsets=ends, created=created,
        columns_added=tuple(added), columns=columns, row_count=row_count, seconds=time.monotonic() - started,
    )
