"""A stand-in for the Confluent Snowflake Sink (3.x, SNOWPIPE ingestion) that fills landing tables in the lab.

It is not the connector: no managed connector runs here, so `connector` landing mode is proven end to end
with this, which does what the connector does as far as the tables downstream can tell (spec/confluent.md):
- It takes the connector's own config (what `confluent/<sink>` reconciles): `name`, `topics`,
  `snowflake.database.name`, `snowflake.schema.name`, `snowflake.topic2table.map`; an unmapped topic gets
  the connector's auto-created name. Avro keys and values only (`input.data.format=AVRO`).
- It consumes as the connector's consumer group `connect-<name>`, from the group's committed offsets, and
  commits offsets only after the rows are written.
- Rows are in the connector's layout, built by the same encoder the built-in landing uses
  (`replication.wire.LineBuilder` over `replication.landing.RecordEncoder`): `RECORD_METADATA` {topic,
  partition, offset, CreateTime, key}, `RECORD_CONTENT` the value as JSON, a tombstone as `{}`.
- Like SNOWPIPE it writes files to an internal stage and COPYs them in, and it is at-least-once: a crash
  after the write and before the offset commit makes the next delivery write the same (partition, offset)
  again. `deliver(..., crash_before_commit=True)` is that crash, to inject duplicates on purpose.
- It auto-creates a missing landing table (`RECORD_METADATA VARIANT, RECORD_CONTENT VARIANT`) but not the
  database or schema, which the connector also expects to exist.
- A record it cannot decode stops the delivery naming its position, as the connector's task fails with
  `errors.tolerance=none`; nothing of that delivery is committed.
The COPY goes through a one-column load table because fakesnow cannot COPY JSON into two columns
(`replication.landing.copy_statements`); on Snowflake the pipe loads the file directly.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from tidb_pipeline.config import connector_table_name
from tidb_pipeline.replication.ddl import TableRef, create_landing_sql, quote_ident
from tidb_pipeline.replication.landing import copy_statements, create_load_table_sql
from tidb_pipeline.replication.wire import LineBuilder, PoisonRecord, UnknownSchemaId
from tidb_pipeline.resources.kafka import KafkaResource

_COORDINATOR_ERRORS = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                 KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT})


class SinkTaskFailed(RuntimeError):
    """The stand-in stopped as the connector's task would; nothing of this delivery was committed."""


class SimulatedCrash(RuntimeError):
    """Raised by `deliver(crash_before_commit=True)` after writing, before committing offsets."""


@dataclass(frozen=True)
class Route:
    topic: str
    table: TableRef


@dataclass(frozen=True)
class SinkSpec:
    """What the stand-in needs from a Snowflake Sink config."""

    name: str
    routes: tuple[Route, ...]

    @property
    def group_id(self) -> str:
        return f"connect-{self.name}"

    @classmethod
    def from_connector_config(cls, config: Mapping[str, str]) -> SinkSpec:
        name = config["name"]
        for key in ("input.data.format", "input.key.format"):
            if config.get(key, "AVRO") != "AVRO":
                raise ValueError(f"connector {name!r}: {key}={config[key]!r}; the stand-in reads Avro only")
        mapping: dict[str, str] = {}
        for pair in filter(None, config.get("snowflake.topic2table.map", "").split(",")):
            topic, _, table = pair.partition(":")
            mapping[topic.strip()] = table.strip()
        database, schema = config["snowflake.database.name"], config["snowflake.schema.name"]
        routes = []
        for topic in filter(None, (t.strip() for t in config["topics"].split(","))):
            table = mapping.get(topic) or connector_table_name(topic)
            routes.append(Route(topic, TableRef(schema, table, database)))
        return cls(name, tuple(routes))


@dataclass(frozen=True)
class Delivery:
    """What one delivery wrote and committed."""

    records: int
    rows_by_table: Mapping[str, int]
    committed: Mapping[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset
    seconds: float = 0.0


def _execute(cursor: Any, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    cursor.execute(sql, params or None)
    try:
        return [tuple(r) for r in cursor.fetchall()]
    except Exception:  # noqa: BLE001 - statements without a result set
        return []


def _stage_name(spec: SinkSpec, table: TableRef) -> TableRef:
    # The connector's internal stage is SNOWFLAKE_KAFKA_CONNECTOR_<name>_STAGE_<table>, in the landing schema.
    safe = re.sub(r"[^A-Za-z0-9_]", "_", spec.name).upper()
    return TableRef(table.schema, f"SNOWFLAKE_KAFKA_CONNECTOR_{safe}_STAGE_{table.name}", table.database)


def _load_table(spec: SinkSpec, table: TableRef) -> TableRef:
    safe = re.sub(r"[^A-Za-z0-9_]", "_", spec.name).upper()
    return TableRef(table.schema, f"SNOWFLAKE_KAFKA_CONNECTOR_{safe}_LOAD_{table.name}", table.database)


def _write(cursor: Any, spec: SinkSpec, table: TableRef, lines: Sequence[str], folder: Path) -> int:
    """One SNOWPIPE-like ingestion: a file on the table's stage, COPYed in (its own commits, as a pipe's)."""
    stage, load = _stage_name(spec, table), _load_table(spec, table)
    if table.database:
        # The connector's session uses snowflake.database.name/.schema.name (fakesnow keeps COPY history there).
        _execute(cursor, f"USE SCHEMA {quote_ident(table.database)}.{quote_ident(table.schema)}")
    _execute(cursor, create_landing_sql(table))
    _execute(cursor, create_load_table_sql(load))
    _execute(cursor, f"CREATE STAGE IF NOT EXISTS {stage.sql}")
    batch = uuid.uuid4().hex
    path = folder / f"{table.name}-{batch}.json"
    path.write_text("".join(lines))
    stage_path = f"@{stage.sql}/{batch}/"
    _execute(cursor, f"PUT 'file://{path}' {stage_path} AUTO_COMPRESS = FALSE")
    inserted = 0
    for i, stmt in enumerate(copy_statements(table, load, stage_path)):
        result = _execute(cursor, stmt.sql, stmt.params)
        if i == 2 and result:
            inserted = int(result[0][0])
    return inserted


def _read(consumer: Any, ends: Mapping[tuple[str, int], int], deadline: float) -> list[Any]:
    """Every record below `ends` from the assigned positions; stops at the deadline."""
    pending = set(ends)
    out: list[Any] = []
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sink stand-in did not reach the end offsets of {sorted(pending)} in time")
        for msg in consumer.consume(num_messages=10_000, timeout=0.5):
            err = msg.error()
            tp = (msg.topic(), msg.partition())
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(tp)
                    continue
                raise KafkaException(err)
            if tp not in pending or msg.offset() >= ends[tp]:
                pending.discard(tp)
                continue
            out.append(msg)
            if msg.offset() + 1 >= ends[tp]:
                pending.discard(tp)
    return out


def _retrying(call: Any, deadline: float) -> Any:
    """Run a group-coordinator call, retrying the errors Kafka marks retriable (a coordinator still loading
    `__consumer_offsets` on a fresh cluster answers NOT_COORDINATOR), as a Connect worker does."""
    while True:
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            transient = isinstance(err, KafkaError) and (err.retriable() or err.code() in _COORDINATOR_ERRORS)
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _line(builder: LineBuilder, registry: SchemaRegistryClient, msg: Any) -> str:
    ts_type, ts = msg.timestamp()
    args = (msg.partition(), msg.offset(), ts_type, ts, msg.key(), msg.value())
    for _ in range(3):  # a key and a value may each bring an id not seen yet
        try:
            return builder.line(*args)
        except UnknownSchemaId as exc:
            builder.add_schemas({exc.schema_id: registry.get_schema(exc.schema_id).schema_str})
        except PoisonRecord as exc:
            raise SinkTaskFailed(f"record {msg.topic()}/{msg.partition()}@{msg.offset()} cannot be converted "
                                 f"({exc.reason}); the connector's task would fail here") from None
    raise SinkTaskFailed(f"record {msg.topic()}/{msg.partition()}@{msg.offset()}: schema ids keep changing")


def deliver(
    spec: SinkSpec,
    *,
    kafka: KafkaResource,
    registry: SchemaRegistryClient,
    connection: Any,
    max_records_per_partition: int | None = None,
    crash_before_commit: bool = False,
    timeout_s: float = 120.0,
) -> Delivery:
    """Consume from the group's committed offsets to the end offsets seen now, write, then commit.

    With `crash_before_commit` the rows are written and `SimulatedCrash` is raised before the commit, so the
    next delivery writes the same records again (SNOWPIPE's at-least-once). `max_records_per_partition`
    bounds one delivery, like a buffer flush.
    """
    started = time.monotonic()
    topics = [r.topic for r in spec.routes]
    tables = {r.topic: r.table for r in spec.routes}
    end_offsets = kafka.end_offsets(topics)
    consumer = kafka.consumer(spec.group_id, **{"enable.partition.eof": True})
    folder = Path(tempfile.mkdtemp(prefix=f"sink-{spec.name}-"))
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(end_offsets.get(t, {}))]
        starts: dict[tuple[str, int], int] = {}
        for tp in _retrying(lambda: consumer.committed(tps, timeout=30), started + timeout_s) if tps else []:
            # Nothing committed yet: the group starts at the partition's first offset (auto.offset.reset=earliest).
            low = tp.offset if tp.offset >= 0 else consumer.get_watermark_offsets(tp, timeout=30)[0]
            starts[(tp.topic, tp.partition)] = int(low)
        ends: dict[tuple[str, int], int] = {}
        for (t, p), start in starts.items():
            end = end_offsets[t][p]
            if max_records_per_partition is not None:
                end = min(end, start + max_records_per_partition)
            if start < end:
                ends[(t, p)] = end
        messages: list[Any] = []
        if ends:
            consumer.assign([TopicPartition(t, p, starts[(t, p)]) for (t, p) in sorted(ends)])
            messages = _read(consumer, ends, started + timeout_s)
        builders = {t: LineBuilder(t, {}) for t in topics}
        lines: dict[str, list[str]] = {}
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            lines.setdefault(msg.topic(), []).append(_line(builders[msg.topic()], registry, msg))
            tp = (msg.topic(), msg.partition())
            next_offsets[tp] = max(next_offsets.get(tp, 0), msg.offset() + 1)
        cursor = connection.cursor()
        rows = {tables[t].label: _write(cursor, spec, tables[t], ls, folder) for t, ls in sorted(lines.items())}
        if crash_before_commit:
            raise SimulatedCrash(f"sink stand-in {spec.name!r} crashed after writing {len(messages)} records, "
                                 "before committing their offsets")
        if next_offsets:
            commit = [TopicPartition(t, p, o) for (t, p), o in sorted(next_offsets.items())]
            _retrying(lambda: consumer.commit(offsets=commit, asynchronous=False), started + timeout_s)
        return Delivery(len(messages), rows, next_offsets, time.monotonic() - started)
    finally:
        consumer.close()
        shutil.rmtree(folder, ignore_errors=True)


def landing_duplicates(connection: Any, table: TableRef) -> tuple[int, int]:
    """(rows, distinct (topic, partition, offset)) of a landing table: rows > distinct means duplicates."""
    rows = _execute(
        connection.cursor(),
        f"SELECT (SELECT COUNT(*) FROM {table.sql}), (SELECT COUNT(*) FROM (SELECT DISTINCT "
        '"RECORD_METADATA":"topic"::varchar AS t, "RECORD_METADATA":"partition"::int AS p, '
        f'"RECORD_METADATA":"offset"::int AS o FROM {table.sql}) AS d)',
    )
    return int(rows[0][0]), int(rows[0][1])
