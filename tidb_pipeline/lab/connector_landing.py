"""A stand-in for the Confluent Snowflake Sink that fills landing tables in the lab, as 3.x or 4.x writes them.

It is not the connector: no managed connector runs here, so `connector` landing mode is proven end to end
with this, which does what the connector does as far as the tables downstream can tell (spec/confluent.md,
snowflakedb/snowflake-kafka-connector 3.5.4 `RecordService`, and 4.x):
- It takes the connector's own config (what `confluent/<sink>` reconciles): `name`, `topics`,
  `snowflake.database.name`, `snowflake.schema.name`, `snowflake.topic2table.map` (an unmapped topic gets
  the connector's auto-created name), `snowflake.ingestion.method`, `behavior.on.null.values` (IGNORE drops
  tombstones, as the connector does: the deletes are lost), the `snowflake.metadata.*` switches. It refuses
  `snowflake.enable.schematization=true` (another table layout) and non-Avro formats.
- It consumes as the connector's consumer group `connect-<name>`, from the group's committed offsets, and
  commits offsets once the rows are written or, with SNOWPIPE, once the files are on the stage.
- Rows are what the connector writes, not what the built-in loader writes: `RECORD_CONTENT` is the value as
  JSON with an Avro decimal as a JSON number from Java's `BigDecimal.toString` (`0E-30`, `-1E-30`), a string
  only when it has more than 38 digits; bytes as base64; a FLOAT as Java prints it.
  - layout "3.x": `RECORD_METADATA` {topic, offset, partition, CreateTime (or LogAppendTime), schema_id, key,
    key_schema_id}; a tombstone is `RECORD_CONTENT = {}` with `"schema_id": 0`.
  - layout "4.x": {offset, topic, partition, key, CreateTime, SnowflakeConnectorPushTime, headers}; a
    tombstone has no content at all (SQL NULL). 4.x ingests with Snowpipe Streaming only.
- SNOWPIPE ingestion (3.x) writes one file per partition and flush (`file_records` bounds a file), puts it
  on the table's internal stage and COPYs it in, and is what the merge must survive: `shuffle` ingests the
  files in a random order, `duplicate_files` loads some twice, `withhold_files` leaves some staged and not
  loaded while later files of their partition land (`Delivery.withheld`; `ingest_withheld` loads them
  later, or never: the file a pipe gave up on).
  A crash after the write and before the offset commit (`crash_before_commit`) makes the next delivery
  write the same records again. SNOWPIPE_STREAMING is exactly-once and in order: none of these apply.
- It auto-creates a missing landing table (`RECORD_METADATA VARIANT, RECORD_CONTENT VARIANT`) but not the
  database or schema, which the connector also expects to exist.
- A record it cannot decode stops the delivery naming its position, as the connector's task fails with
  `errors.tolerance=none`; nothing of that delivery is committed.
Files are staged as the pipeline stages them (`engine.staging`: Parquet, PUT, one COPY with `PARSE_JSON` into
a TEMPORARY rows table, then INSERT into the landing table); on Snowflake the pipe loads the file directly.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from tidb_pipeline.config_names import connector_table_name
from tidb_pipeline.replication.avro_types import load_schema
from tidb_pipeline.replication.ddl import TableRef, create_landing_sql, quote_ident
from tidb_pipeline.replication.landing import create_load_rows_sql, land_rows_statements, stage_file_statements
from tidb_pipeline.replication.wire import LineBuilder, ParquetFiles, PoisonRecord, UnknownSchemaId, schema_id
from tidb_pipeline.resources.kafka import BelowEnds, KafkaResource

_COORDINATOR_ERRORS = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                 KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT})
_TIMESTAMP_KEYS = {1: "CreateTime", 2: "LogAppendTime"}
MAX_NUMBER_PRECISION = 38  # RecordService.MAX_SNOWFLAKE_NUMBER_PRECISION

Layout = Literal["3.x", "4.x"]


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
    ingestion_method: str = "SNOWPIPE_STREAMING"
    drop_tombstones: bool = False  # behavior.on.null.values=IGNORE
    metadata: frozenset[str] = frozenset({"all", "topic", "offset.and.partition", "createtime"})

    @property
    def group_id(self) -> str:
        return f"connect-{self.name}"

    @classmethod
    def from_connector_config(cls, config: Mapping[str, str]) -> SinkSpec:
        name = config["name"]
        for key in ("input.data.format", "input.key.format"):
            if config.get(key, "AVRO") != "AVRO":
                raise ValueError(f"connector {name!r}: {key}={config[key]!r}; the stand-in reads Avro only")
        if config.get("snowflake.enable.schematization", "false").lower() == "true":
            raise ValueError(f"connector {name!r}: snowflake.enable.schematization=true writes one column per "
                             "field and no RECORD_CONTENT; the stand-in (and the merge) read the two-VARIANT layout")
        mapping: dict[str, str] = {}
        for pair in filter(None, config.get("snowflake.topic2table.map", "").split(",")):
            topic, _, table = pair.partition(":")
            mapping[topic.strip()] = table.strip()
        database, schema = config["snowflake.database.name"], config["snowflake.schema.name"]
        routes = []
        for topic in filter(None, (t.strip() for t in config["topics"].split(","))):
            table = mapping.get(topic) or connector_table_name(topic)
            routes.append(Route(topic, TableRef(schema, table, database)))
        metadata = frozenset(g for g in ("all", "topic", "offset.and.partition", "createtime")
                             if config.get(f"snowflake.metadata.{g}", "true").lower() == "true")
        return cls(name, tuple(routes), config.get("snowflake.ingestion.method", "SNOWPIPE").upper(),
                   config.get("behavior.on.null.values", "DEFAULT").upper() == "IGNORE", metadata)


@dataclass(frozen=True)
class StagedFile:
    """A file on a landing table's internal stage, not loaded yet (a pipe that has not got to it)."""

    table: TableRef
    stage_path: str
    partition: int
    offsets: tuple[int, int]  # first and last offset in the file


@dataclass(frozen=True)
class Delivery:
    """What one delivery wrote and committed."""

    records: int
    rows_by_table: Mapping[str, int]
    committed: Mapping[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset
    seconds: float = 0.0
    withheld: tuple[StagedFile, ...] = ()  # staged, offsets committed, never loaded unless `ingest_withheld`


def _execute(cursor: Any, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    cursor.execute(sql, params or None)
    try:
        return [tuple(r) for r in cursor.fetchall()]
    except Exception:  # noqa: BLE001 - statements without a result set
        return []


# --- what the connector writes ---------------------------------------------------------------------------

_F32 = struct.Struct("<f")


def java_decimal(d: Decimal) -> str:
    """`RecordService.convertToJson` of an Avro decimal: a JSON number as `BigDecimal.toString` prints it
    (Python's `str(Decimal)` follows the same rule: scientific when the adjusted exponent is below -6), or
    that text as a JSON string when the unscaled value has more than 38 digits."""
    text = str(d)
    return json.dumps(text) if len(d.as_tuple().digits) > MAX_NUMBER_PRECISION else text


def _java_float(x: float) -> str:
    """A FLOAT as Java prints it: the shortest text that reads back as the same float32."""
    for digits in range(6, 10):
        text = f"{x:.{digits}g}"
        if _F32.unpack(_F32.pack(float(text)))[0] == x:
            return repr(float(text))
    return repr(x)


def _plain(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, Decimal):
        return java_decimal(x)
    if isinstance(x, bytes):
        return json.dumps(base64.b64encode(x).decode("ascii"))
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_plain(v)}" for k, v in x.items()) + "}"
    if isinstance(x, list):
        return "[" + ",".join(_plain(v) for v in x) + "]"
    return json.dumps(x, ensure_ascii=False)


def _writer(branch: Any) -> Callable[[Any], str]:
    avro_type = branch.get("type") if isinstance(branch, dict) else branch
    if avro_type == "float":
        return _java_float
    return _plain


class ConnectorJson:
    """Record value -> the JSON text the connector writes, from the writer schema (FLOAT needs the schema)."""

    def __init__(self, registry: SchemaRegistryClient) -> None:
        self.registry = registry
        self._writers: dict[int, list[tuple[str, Callable[[Any], str]]]] = {}

    def _fields(self, sid: int) -> list[tuple[str, Callable[[Any], str]]]:
        if sid not in self._writers:
            fields = load_schema(self.registry.get_schema(sid).schema_str)["fields"]
            out = []
            for f in fields:
                t = f["type"]
                branches = [b for b in t if b != "null"] if isinstance(t, list) else [t]
                out.append((f["name"], _writer(branches[0]) if len(branches) == 1 else _plain))
            self._writers[sid] = out
        return self._writers[sid]

    def record(self, sid: int, value: Mapping[str, Any]) -> str:
        parts = []
        for name, write in self._fields(sid):
            v = value.get(name)
            parts.append(f"{json.dumps(name, ensure_ascii=False)}:{'null' if v is None else write(v)}")
        return "{" + ",".join(parts) + "}"


def connector_row(spec: SinkSpec, layout: Layout, json_writer: ConnectorJson, msg: Any, key: Any, value: Any,
                  push_time_ms: int) -> tuple[str | None, str | None] | None:
    """(RECORD_METADATA, RECORD_CONTENT) JSON texts as connector `layout` writes record `msg` (None: SQL NULL);
    None if the record is dropped."""
    if value is None and spec.drop_tombstones:
        return None  # behavior.on.null.values=IGNORE: the delete never lands
    raw_key, raw_value = msg.key(), msg.value()
    ts_type, ts = msg.timestamp()
    meta: dict[str, str] = {}
    md = spec.metadata
    if layout == "3.x":
        if "topic" in md:
            meta["topic"] = json.dumps(msg.topic())
        if "offset.and.partition" in md:
            meta["offset"], meta["partition"] = str(msg.offset()), str(msg.partition())
        if "createtime" in md and ts_type in _TIMESTAMP_KEYS:
            meta[_TIMESTAMP_KEYS[ts_type]] = str(ts)
        meta["schema_id"] = str(schema_id(raw_value)) if raw_value is not None else "0"  # uninitialised on a tombstone
        if key is not None:
            meta["key"] = json_writer.record(schema_id(raw_key), key)
            meta["key_schema_id"] = str(schema_id(raw_key))
    else:
        if "offset.and.partition" in md:
            meta["offset"] = str(msg.offset())
        if "topic" in md:
            meta["topic"] = json.dumps(msg.topic())
        if "offset.and.partition" in md:
            meta["partition"] = str(msg.partition())
        if key is not None:
            meta["key"] = json_writer.record(schema_id(raw_key), key)
        if "createtime" in md and ts_type in _TIMESTAMP_KEYS:
            meta[_TIMESTAMP_KEYS[ts_type]] = str(ts)
        meta["SnowflakeConnectorPushTime"] = str(push_time_ms)
        meta["headers"] = "{}"
    metadata = "{" + ",".join(f'"{k}":{v}' for k, v in meta.items()) + "}" if "all" in md else None
    if value is not None:
        content: str | None = json_writer.record(schema_id(raw_value), value)
    else:
        content = "{}" if layout == "3.x" else None  # 4.x tombstone: the column is SQL NULL
    return metadata, content


# --- staging and loading --------------------------------------------------------------------------------


def _stage_name(spec: SinkSpec, table: TableRef) -> TableRef:
    # The connector's internal stage is SNOWFLAKE_KAFKA_CONNECTOR_<name>_STAGE_<table>, in the landing schema.
    safe = re.sub(r"[^A-Za-z0-9_]", "_", spec.name).upper()
    return TableRef(table.schema, f"SNOWFLAKE_KAFKA_CONNECTOR_{safe}_STAGE_{table.name}", table.database)


def _load_table(spec: SinkSpec, table: TableRef) -> TableRef:
    safe = re.sub(r"[^A-Za-z0-9_]", "_", spec.name).upper()
    return TableRef(table.schema, f"SNOWFLAKE_KAFKA_CONNECTOR_{safe}_LOAD_{table.name}", table.database)


def _use(cursor: Any, table: TableRef) -> None:
    if table.database:
        # The connector's session uses snowflake.database.name/.schema.name (fakesnow keeps COPY history there).
        _execute(cursor, f"USE SCHEMA {quote_ident(table.database)}.{quote_ident(table.schema)}")


def _stage(cursor: Any, spec: SinkSpec, table: TableRef, partition: int, offsets: tuple[int, int],
           rows: Sequence[tuple[str | None, str | None]], folder: Path) -> StagedFile:
    """Put one file on the table's stage (what the connector does before asking the pipe to load it)."""
    stage = _stage_name(spec, table)
    _use(cursor, table)
    _execute(cursor, create_landing_sql(table))
    _execute(cursor, f"CREATE STAGE IF NOT EXISTS {stage.sql}")
    batch = uuid.uuid4().hex
    # The pipeline's one staging path (engine.staging): Parquet, PUT, one COPY with PARSE_JSON.
    files = ParquetFiles(str(folder), f"{table.name}-{batch}", len(rows) + 1)
    for metadata, content in rows:
        files.add_row(metadata, content)
    files.flush()
    (path,) = files.paths
    stage_dir = f"@{stage.sql}/{batch}/"
    _execute(cursor, f"PUT 'file://{path}' {stage_dir} AUTO_COMPRESS = FALSE")
    return StagedFile(table, stage_dir + Path(path).name, partition, offsets)


def _load(cursor: Any, spec: SinkSpec, staged: StagedFile) -> int:
    """One pipe load of a staged file (its own commits, as a pipe's)."""
    _use(cursor, staged.table)
    rows_table = _load_table(spec, staged.table).sql
    _execute(cursor, create_load_rows_sql(rows_table))
    for stmt in stage_file_statements(rows_table, staged.stage_path):
        _execute(cursor, stmt.sql, stmt.params)
    insert, empty = land_rows_statements(staged.table, rows_table, {})
    result = _execute(cursor, insert.sql, insert.params)
    _execute(cursor, empty.sql, empty.params)
    return int(result[0][0]) if result else 0


def ingest_withheld(spec: SinkSpec, files: Sequence[StagedFile], connection: Any) -> int:
    """Load files a delivery left on the stage (the pipe getting to them late); returns rows loaded."""
    cursor = connection.cursor()
    return sum(_load(cursor, spec, f) for f in files)


# --- consuming ------------------------------------------------------------------------------------------


def _read(consumer: Any, ends: Mapping[tuple[str, int], int], deadline: float) -> list[Any]:
    """Every record below `ends` from the assigned positions; stops at the deadline."""
    reader = BelowEnds(ends, key=lambda msg: (msg.topic(), msg.partition()))
    out: list[Any] = []
    while reader.pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sink stand-in did not reach the end offsets of {sorted(reader.pending)} in time")
        out.extend(reader.take(consumer, 10_000, 0.5))
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


def _decode(builder: LineBuilder, registry: SchemaRegistryClient, msg: Any) -> tuple[Any, Any]:
    for _ in range(3):  # a key and a value may each bring an id not seen yet
        try:
            return builder.decode(msg.key(), msg.value())
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
    layout: Layout = "3.x",
    file_records: int | None = None,
    shuffle: random.Random | None = None,
    duplicate_files: int = 0,
    withhold_files: int = 0,
) -> Delivery:
    """Consume from the group's committed offsets to the end offsets seen now, write, then commit.

    With `crash_before_commit` the rows are written and `SimulatedCrash` is raised before the commit, so the
    next delivery writes the same records again (SNOWPIPE's at-least-once). `max_records_per_partition`
    bounds one delivery, like a buffer flush. `shuffle`, `duplicate_files` and `withhold_files` (SNOWPIPE
    only, module docstring) pick their files with `shuffle` (default: a fixed seed).
    """
    streaming = spec.ingestion_method == "SNOWPIPE_STREAMING"
    if layout == "4.x" and not streaming:
        raise ValueError("connector 4.x ingests with SNOWPIPE_STREAMING only; reconcile the sink with it")
    if streaming and (shuffle or duplicate_files or withhold_files or crash_before_commit):
        raise ValueError("SNOWPIPE_STREAMING is exactly-once and in order per partition: out-of-order, duplicate "
                         "or withheld files and redelivery after a crash are SNOWPIPE behaviours")
    rnd = shuffle or random.Random(0)
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
        json_writer = ConnectorJson(registry)
        push_time = int(time.time() * 1000)
        # Per partition, in offset order: the connector buffers and flushes each partition on its own.
        chunks: dict[tuple[str, int], list[tuple[int, tuple[str | None, str | None]]]] = {}
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            key, value = _decode(builders[msg.topic()], registry, msg)
            tp = (msg.topic(), msg.partition())
            next_offsets[tp] = max(next_offsets.get(tp, 0), msg.offset() + 1)
            line = connector_row(spec, layout, json_writer, msg, key, value, push_time)
            if line is not None:
                chunks.setdefault(tp, []).append((msg.offset(), line))
        cursor = connection.cursor()
        files: list[StagedFile] = []
        for (t, p), rows in sorted(chunks.items()):
            size = file_records or len(rows)
            for i in range(0, len(rows), size):
                part = rows[i:i + size]
                files.append(_stage(cursor, spec, tables[t], p, (part[0][0], part[-1][0]), [r for _, r in part],
                                    folder))
        order = list(files)
        if shuffle is not None:
            rnd.shuffle(order)
        # A withheld file is never a partition's last: the files after it land, so it is a hole, not a lag.
        last = {(f.table, f.partition): f for f in files}
        candidates = [f for f in order if last[(f.table, f.partition)] is not f]
        withheld = rnd.sample(candidates, k=min(withhold_files, len(candidates))) if withhold_files else []
        loads = [f for f in order if f not in withheld]
        loads += rnd.sample(loads, k=min(duplicate_files, len(loads))) if duplicate_files else []
        rows_by_table: dict[str, int] = {}
        for f in loads:
            rows_by_table[f.table.label] = rows_by_table.get(f.table.label, 0) + _load(cursor, spec, f)
        if crash_before_commit:
            raise SimulatedCrash(f"sink stand-in {spec.name!r} crashed after writing {len(messages)} records, "
                                 "before committing their offsets")
        if next_offsets:
            commit = [TopicPartition(t, p, o) for (t, p), o in sorted(next_offsets.items())]
            _retrying(lambda: consumer.commit(offsets=commit, asynchronous=False), started + timeout_s)
        return Delivery(len(messages), rows_by_table, next_offsets, time.monotonic() - started, tuple(withheld))
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
