"""Kafka records in the Confluent wire format -> landing rows, and the reader that writes them in bulk.

A serialized key or value is `0x00` (magic byte), a 4-byte big-endian schema id, then the Avro binary body
with no framing (spec/ticdc-avro.md). Anything else on the topic (another producer's JSON, a truncated
write, a body written with a different schema than its id says) is a `PoisonRecord`: the landing loader
quarantines it with its reason instead of stopping the stream. fastavro reports a short body as EOFError
or IndexError (other errors for random bytes) and stops silently before trailing bytes; all of those mean
"this body does not fit its schema", so all become `PoisonRecord`, and leftover bytes are rejected too.

`LineBuilder` turns one raw record into the two landing columns' JSON texts (`row`), caching a parsed schema per wire header and a compiled `RecordEncoder` per (key schema, value
schema). The key is always decoded, although TiCDC's key fields are value fields too: taking them from the
value would be cheaper (BENCHMARKS.md), but a record whose key body is corrupt would then be landed instead
of quarantined, as the connector (which decodes the key) would. It never talks to the registry: an id it
was not given raises `UnknownSchemaId` and the caller resolves it.

`read_ranges` is the worker of the built-in landing (tidb_pipeline.engine.landing): it consumes fixed offset
ranges, builds rows and writes them as Parquet files (`ParquetFiles`, two string columns) of
`rows_per_file` rows, handing each finished file to `on_file` at once so
the loader can stage and COPY it while the worker reads on. It lives
here, in a module that imports only confluent_kafka, fastavro and the encoder, because the loader runs it
in fresh Python processes to use every core, and a worker that imported `tidb_pipeline.defs` (Dagster, the
Snowflake connector) would spend seconds starting.
`python -c "from tidb_pipeline.replication.wire import worker_main; worker_main()"` reads a pickled
`RangeJob` on stdin and writes pickled messages on stdout: `("file", path, rows)` for each finished file
as soon as it is on disk, then `("ok", RangeResult)` or `("error", traceback)`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring  # the C implementation when available
from typing import Any

from fastavro import parse_schema, schemaless_reader

from tidb_pipeline.replication.landing import TOMBSTONE, RecordEncoder

MAGIC_BYTE = 0
HEADER_SIZE = 5
# Kafka timestamp types (confluent_kafka.TIMESTAMP_*) -> the RECORD_METADATA key the connector writes.
TIMESTAMP_KEYS = {1: "CreateTime", 2: "LogAppendTime"}
# The columns of a Parquet stage file (ParquetFiles), named like the landing columns they fill.
PARQUET_COLUMNS = ("RECORD_METADATA", "RECORD_CONTENT")
# Stands in for the key schema of records that have no key (TiCDC always sends one; other producers may not).
_NO_KEY_SCHEMA = {"type": "record", "name": "no_key", "fields": []}


RowFunction = Callable[[int, int, int, int, "bytes | None", "bytes | None"], tuple[str, str]]


class PoisonRecord(ValueError):
    """A key or value that cannot be decoded; `reason` says why (safe to store: no record content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownSchemaId(LookupError):
    """A wire header names a schema id the builder was not given; look it up and retry, or quarantine."""

    def __init__(self, schema_id: int) -> None:
        super().__init__(f"schema id {schema_id} is not among the schemas given to the line builder")
        self.schema_id = schema_id


def schema_id(data: bytes) -> int:
    """The schema id in a wire-format header; PoisonRecord when there is no valid header."""
    if len(data) < HEADER_SIZE:
        raise PoisonRecord(f"{len(data)} bytes is too short for the Confluent wire format (5-byte header)")
    if data[0] != MAGIC_BYTE:
        raise PoisonRecord(f"magic byte is 0x{data[0]:02x}, not 0x00: not in the Confluent wire format")
    return int.from_bytes(data[1:HEADER_SIZE], "big")


def split(data: bytes) -> tuple[int, bytes]:
    """(schema id, Avro body) of a wire-format key or value."""
    return schema_id(data), data[HEADER_SIZE:]


def decode(data: bytes, schema: Any) -> Any:
    """Decode a whole wire-format message with the `fastavro.parse_schema` result for its schema id.

    The caller has read the id with `schema_id` and looked the schema up; the header is skipped, not copied.
    """
    if len(data) < HEADER_SIZE:
        schema_id(data)  # raises with the reason
    stream = io.BytesIO(data)
    stream.seek(HEADER_SIZE)
    try:
        value = schemaless_reader(stream, schema, None)
    except Exception as exc:  # noqa: BLE001 - any failure on untrusted bytes means the body does not fit
        raise PoisonRecord(f"Avro body does not match its schema ({type(exc).__name__}: {exc})") from None
    if stream.tell() != len(data):
        raise PoisonRecord(f"Avro body has {len(data) - stream.tell()} bytes left over after decoding")
    return value


def _field_names(schema: str | Mapping[str, Any]) -> set[str]:
    loaded = json.loads(schema) if isinstance(schema, str) else schema
    return {f["name"] for f in loaded.get("fields", [])} if isinstance(loaded, Mapping) else set()


def _parse(schema: str | Mapping[str, Any]) -> Any:
    return parse_schema(json.loads(schema) if isinstance(schema, str) else dict(schema))


class LineBuilder:
    """Raw Kafka record -> the two landing columns' JSON texts for one topic, given the schemas (by id) it may meet."""

    def __init__(self, topic: str, schemas: Mapping[int, str]) -> None:
        self.topic = topic
        self._schemas = dict(schemas)
        self._parsed: dict[bytes, Any] = {}  # keyed by the 5-byte wire header: one slice + one dict lookup
        self._encoders: dict[tuple[bytes | None, bytes | None], RecordEncoder] = {}
        # (key header, value header) -> a row function with everything per pair resolved (see `_row_for`)
        # Row function per (key, value) schema-header pair, made once (`row_function`); `read_ranges` reads it too.
        self.rows_by_pair: dict[tuple[bytes | None, bytes | None], RowFunction] = {}

    def add_schemas(self, schemas: Mapping[int, str]) -> None:
        self._schemas.update(schemas)

    def _schema_for(self, data: bytes) -> Any:
        parsed = self._parsed.get(data[:HEADER_SIZE])
        if parsed is None:
            sid = schema_id(data)
            text = self._schemas.get(sid)
            if text is None:
                raise UnknownSchemaId(sid)
            try:
                parsed = _parse(text)
            except Exception as exc:  # noqa: BLE001 - a registry schema fastavro cannot read
                raise PoisonRecord(f"schema id {sid} is not a valid Avro schema ({exc})") from None
            self._parsed[data[:HEADER_SIZE]] = parsed
        return parsed

    def _encoder(self, key: bytes | None, value: bytes | None) -> RecordEncoder:
        cache_key = (None if key is None else key[:HEADER_SIZE], None if value is None else value[:HEADER_SIZE])
        encoder = self._encoders.get(cache_key)
        if encoder is None:
            key_schema = _NO_KEY_SCHEMA if key is None else self._schemas[schema_id(key)]
            value_schema = None if value is None else self._schemas[schema_id(value)]
            try:
                encoder = RecordEncoder(key_schema, value_schema)
            except Exception as exc:  # noqa: BLE001 - e.g. a non-record key schema from another producer
                raise PoisonRecord(f"no landing encoder for these schemas ({type(exc).__name__}: {exc})") from None
            if value_schema is not None:
                # The merge reads a value without its key field as a delete, so such a record would
                # silently remove the row: it is poison, not a change.
                missing = _field_names(key_schema) - _field_names(value_schema)
                if missing:
                    raise PoisonRecord(f"value schema lacks key column(s) {', '.join(sorted(missing))}")
            self._encoders[cache_key] = encoder
        return encoder

    def decode(self, key: bytes | None, value: bytes | None) -> tuple[Any, Any]:
        """(key, value) as fastavro gives them; a tombstone's value is None."""
        k = None if key is None else decode(key, self._schema_for(key))
        v = None if value is None else decode(value, self._schema_for(value))
        return k, v

    def row(
        self, partition: int, offset: int, timestamp_type: int, timestamp: int, key: bytes | None, value: bytes | None
    ) -> tuple[str, str]:
        """(RECORD_METADATA, RECORD_CONTENT) JSON texts of one record."""
        pair = (None if key is None else key[:HEADER_SIZE], None if value is None else value[:HEADER_SIZE])
        build = self.rows_by_pair.get(pair)
        if build is None:
            build = self.rows_by_pair[pair] = self.row_function(key, value)
        return build(partition, offset, timestamp_type, timestamp, key, value)

    def row_function(self, key: bytes | None, value: bytes | None) -> RowFunction:
        """The row function of this record's (key, value) schema pair; `row` and `read_ranges` keep it in
        `rows_by_pair`.

        Everything that depends only on the pair (parsed schemas, compiled encoders, the key-columns check,
        the metadata's fixed text) is resolved here, so a record costs its decoding, its two JSON texts and
        nothing else: the per-record lookups and calls were about a third of the non-decoding work. The
        texts are exactly `RecordEncoder.metadata` / `content`'s (a test holds them equal).
        """
        key_schema = None if key is None else self._schema_for(key)
        value_schema = None if value is None else self._schema_for(value)
        encoder = self._encoder(key, value)  # raises PoisonRecord for a pair that cannot be landed
        encode_key, encode_value = encoder.encode_key, encoder.encode_value
        head = '{"topic":' + encode_basestring(self.topic) + ',"partition":'
        ts_heads = {t: "," + encode_basestring(name) + ":" for t, name in TIMESTAMP_KEYS.items()}

        def build(
            partition: int, offset: int, timestamp_type: int, timestamp: int, key: bytes | None, value: bytes | None
        ) -> tuple[str, str]:
            k = None if key_schema is None else decode(key, key_schema)  # type: ignore[arg-type]
            if value_schema is None:
                content = TOMBSTONE
            else:
                v = decode(value, value_schema)  # type: ignore[arg-type]
                try:
                    content = encode_value(v)  # type: ignore[misc]
                except ValueError as exc:  # e.g. NaN, which has no JSON form
                    raise PoisonRecord(f"value cannot be written as JSON ({exc})") from None
            ts_head = ts_heads.get(timestamp_type)
            if ts_head is not None and k is not None:  # TiCDC's records: one f-string, no intermediate text
                return f'{head}{partition},"offset":{offset}{ts_head}{timestamp},"key":{encode_key(k)}}}', content
            metadata = f"{head}{partition},\"offset\":{offset}"
            if ts_head is not None:
                metadata = f"{metadata}{ts_head}{timestamp}"
            if k is not None:
                return f'{metadata},"key":{encode_key(k)}}}', content
            return metadata + "}", content

        return build


def poison_metadata(topic: str, partition: int, offset: int, timestamp_type: int, timestamp: int) -> str:
    """RECORD_METADATA of a dead letter: where the record was, without the key (which may be what failed)."""
    meta: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset}
    if ts_key := TIMESTAMP_KEYS.get(timestamp_type):
        meta[ts_key] = timestamp
    return json.dumps(meta, separators=(",", ":"))


# --- the worker -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawRecord:
    """A record kept undecoded: poison, or waiting for a schema the worker was not given."""

    partition: int
    offset: int
    timestamp_type: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class RangeJob:
    """What one worker reads: at most one [start, stop) range per partition, and where its files go."""

    consumer_config: dict[str, Any]
    topic: str
    ranges: tuple[tuple[int, int, int], ...]  # (partition, start, stop)
    schemas: dict[int, str]
    folder: str
    file_prefix: str
    rows_per_file: int = 250_000
    batch_size: int = 10_000
    idle_timeout_s: float = 60.0
    decode_only: bool = False  # the benchmark's raw limit: consume + Avro decode, no JSON, no files


@dataclass(frozen=True)
class RangeResult:
    files: tuple[str, ...]
    rows: int
    poison: tuple[tuple[RawRecord, str], ...]
    unknown: tuple[RawRecord, ...]
    next_offsets: dict[int, int] = field(default_factory=dict)  # one past the last offset read, per partition
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time while reading (librdkafka threads included)


FileSink = Callable[[str, int], None]  # (path of a finished file, its line count)


class ParquetFiles:
    """Collects rows and writes them as Parquet files of `rows_per_file` rows: two string columns,
    `RECORD_METADATA` and `RECORD_CONTENT` (the JSON texts), Snappy-compressed (cheaper than gzip; BENCHMARKS.md). `on_file(path, rows)` is called for each file once it is complete on disk.

    Rows are turned into Arrow arrays every `CHUNK_ROWS` rows (`take`), while their texts are still in the
    CPU's cache: converting a whole file's texts at once cost about twice as much.
    """

    CHUNK_ROWS = 5_000

    def __init__(self, folder: str, prefix: str, rows_per_file: int, on_file: FileSink | None = None) -> None:
        self.folder, self.prefix, self.rows_per_file, self.on_file = folder, prefix, rows_per_file, on_file
        self.metadata: list[str | None] = []
        self.content: list[str | None] = []
        self.paths: list[str] = []
        self.rows = 0
        self._chunks: list[tuple[Any, Any]] = []  # (metadata, content) Arrow arrays of the file being built
        self._chunked = 0  # rows in `_chunks`
        self.room = min(self.CHUNK_ROWS, rows_per_file)  # rows to collect before the next `take`

    def add_row(self, metadata: str | None, content: str | None) -> None:
        """One row; None is SQL NULL after the COPY (the connector's 4.x tombstone has no RECORD_CONTENT)."""
        self.metadata.append(metadata)
        self.content.append(content)
        if len(self.metadata) >= self.room:
            self.take()

    def take(self) -> None:
        """Move the collected rows into Arrow arrays; write the file once it has `rows_per_file` rows."""
        import pyarrow as pa

        if self.metadata:
            self._chunks.append((pa.array(self.metadata, pa.string()), pa.array(self.content, pa.string())))
            self._chunked += len(self.metadata)
            # Emptied in place: `read_ranges` appends to these very lists (pa.array copied the texts).
            self.metadata.clear()
            self.content.clear()
        if self._chunked >= self.rows_per_file:
            self._write()
        self.room = min(self.CHUNK_ROWS, self.rows_per_file - self._chunked)

    def flush(self) -> None:
        """Write what is collected as a file (the last one, smaller)."""
        self.take()
        if self._chunked:
            self._write()

    def _write(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            PARQUET_COLUMNS[0]: pa.chunked_array([m for m, _ in self._chunks], pa.string()),
            PARQUET_COLUMNS[1]: pa.chunked_array([c for _, c in self._chunks], pa.string()),
        })
        path = os.path.join(self.folder, f"{self.prefix}-{len(self.paths):05d}.parquet")
        pq.write_table(table, path, compression="snappy", use_dictionary=False, write_statistics=False)
        rows = self._chunked
        self.paths.append(path)
        self.rows += rows
        self._chunks, self._chunked = [], 0
        self.room = min(self.CHUNK_ROWS, self.rows_per_file)
        if self.on_file is not None:
            self.on_file(path, rows)


def read_ranges(job: RangeJob, on_file: FileSink | None = None) -> RangeResult:
    """Consume `job.ranges` (explicit offsets, never committed), build lines, write files (each to `on_file`)."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    started, cpu_started = time.perf_counter(), time.process_time()
    topic = job.topic
    builder = LineBuilder(topic, job.schemas)
    files = ParquetFiles(job.folder, job.file_prefix, job.rows_per_file, on_file)
    poison: list[tuple[RawRecord, str]] = []
    unknown: list[RawRecord] = []
    next_offsets: dict[int, int] = {}
    stops = {p: stop for p, start, stop in job.ranges if stop > start}
    starts = {p: start for p, start, stop in job.ranges if stop > start}
    decode_only = job.decode_only
    # The per-record path appends straight to the file's columns, with the row function of the record's
    # (key, value) schema pair looked up here: no per-record call of `row` / `add_row` (BENCHMARKS.md).
    rows_for = builder.rows_by_pair
    row_function = builder.row_function
    add_metadata, add_content, metadata = files.metadata.append, files.content.append, files.metadata
    take = files.take
    decoded = 0
    consumer = Consumer(job.consumer_config)
    try:
        consumer.assign([TopicPartition(topic, p, start) for p, start, stop in job.ranges if stop > start])

        def finish(partition: int) -> None:
            del stops[partition]
            consumer.pause([TopicPartition(topic, partition)])

        idle_since = time.monotonic()
        while stops:
            # Ask for no more than what is left: `consume` waits its whole timeout for a batch it cannot
            # fill, which cost every small load (a sensor-triggered run's usual size) a second per call.
            left = sum(stop - next_offsets.get(p, starts[p]) for p, stop in stops.items())
            messages = consumer.consume(max(1, min(job.batch_size, left)), 1.0)
            if not messages:
                if time.monotonic() - idle_since > job.idle_timeout_s:
                    raise TimeoutError(
                        f"topic {topic}: no records for {job.idle_timeout_s:.0f}s from partitions {sorted(stops)} "
                        "below the end offsets read at the start; check that the brokers are reachable"
                    )
                continue
            idle_since = time.monotonic()
            for m in messages:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if m.partition() in stops:
                            finish(m.partition())
                        continue
                    raise KafkaException(err)
                p = m.partition()
                stop = stops.get(p)
                if stop is None:
                    continue  # fetched before the pause took effect
                o = m.offset()
                if o >= stop:
                    finish(p)
                    continue
                key = m.key()
                value = m.value()
                ts_type, ts = m.timestamp()
                try:
                    if decode_only:
                        builder.decode(key, value)
                        decoded += 1
                    else:
                        pair = (None if key is None else key[:HEADER_SIZE],
                                None if value is None else value[:HEADER_SIZE])
                        build = rows_for.get(pair)
                        if build is None:
                            build = rows_for[pair] = row_function(key, value)
                        meta_text, content_text = build(p, o, ts_type, ts, key, value)
                        add_metadata(meta_text)
                        add_content(content_text)
                        if len(metadata) >= files.room:
                            take()
                except PoisonRecord as exc:
                    poison.append((RawRecord(p, o, ts_type, ts, key, value), exc.reason))
                except UnknownSchemaId:
                    unknown.append(RawRecord(p, o, ts_type, ts, key, value))
                next_offsets[p] = o + 1
                if o + 1 >= stop:
                    finish(p)
        files.flush()
    finally:
        consumer.close()
    return RangeResult(
        files=tuple(files.paths),
        rows=decoded if job.decode_only else files.rows,
        poison=tuple(poison),
        unknown=tuple(unknown),
        next_offsets=next_offsets,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
    )


def worker_main() -> None:
    """Entry of a worker process: pickled RangeJob on stdin -> pickled messages on stdout.

    `("file", path, rows)` for every finished file, then `("ok", RangeResult)`; a failure is sent back as
    `("error", text)` so the parent can raise it with the worker's traceback.
    """
    job = pickle.load(sys.stdin.buffer)
    out = sys.stdout.buffer

    def announce(path: str, rows: int) -> None:
        pickle.dump(("file", path, rows), out)
        out.flush()

    try:
        reply: tuple[str, Any] = ("ok", read_ranges(job, announce))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent, which raises it
        reply = ("error", traceback.format_exc())
    pickle.dump(reply, out)
    out.flush()
