"""Kafka records -> landing rows in the Snowflake Kafka connector's exact layout (spec/confluent.md).

`RECORD_METADATA` = `{"topic", "partition", "offset", "CreateTime", "key"}` with the decoded Avro key as a
JSON object; `RECORD_CONTENT` = the decoded Avro value as JSON (decimal -> JSON number with its scale kept,
`12.50` stays `12.50`; decimals wider than 38 digits -> JSON string; bytes -> base64 string; strings as-is),
and a tombstone -> `{}`.

Speed matters (the landing's target and fastavro's own cost are in BENCHMARKS.md). `json.dumps` cannot write a Decimal as a number, and a `default=` hook or a
float/int subclass does not help (the C encoder prints numbers with the base type's repr). So
`RecordEncoder` compiles, once per writer schema, a Python function that builds the JSON text with one
f-string: one small expression per field, C-accelerated string escaping, no per-value type dispatch.
`tidb_pipeline.bench.landing.bench_encode` measures it.

The built-in landing ships these rows as Parquet files with the two JSON texts as string columns and PUTs
each on a stage as soon as a reader finishes it; `stage_file_statements` then `COPY`s it, with a
`PARSE_JSON($1:...)` transformation, straight into the two landing columns of a table private to the load
while reading goes on, and `land_rows_statements` moves those rows into the landing table inside the short
exactly-once transaction. The backfill and the lab's connector stand-in stage the same Parquet files
through the same statements: there is one staging path.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from json.encoder import encode_basestring  # the C implementation when available
from typing import Any

from tidb_pipeline.replication.avro_types import MAX_NUMBER_PRECISION, load_schema
from tidb_pipeline.replication.ddl import Statement, TableRef

TOMBSTONE = "{}"
Encoder = Callable[[Mapping[str, Any]], str]


def _json_float(x: float) -> str:
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"{x!r} has no JSON representation; TiDB does not store NaN or infinity")
    return float.__repr__(float(x))


_F32 = struct.Struct("<f")


def _json_float32(x: float) -> str:
    """Shortest decimal text that reads back as the same float32, as Java's Float.toString would give.

    fastavro widens an Avro float to a Python double (1.1f -> 1.100000023841858); the connector keeps
    the float's own shortest text (1.1).
    """
    _json_float(x)
    for digits in range(6, 10):
        text = f"{x:.{digits}g}"
        if _F32.unpack(_F32.pack(float(text)))[0] == x:
            return float.__repr__(float(text))
    return float.__repr__(x)


def _json_bytes(b: bytes) -> str:
    return '"' + base64.b64encode(b).decode("ascii") + '"'


def _json_decimal(d: Decimal) -> str:
    # Plain notation: str() would give '0E-10' for a zero with scale 10, which loses the scale's look.
    return format(d, "f")


def _json_wide_decimal(d: Decimal) -> str:
    return '"' + format(d, "f") + '"'


def _json_any(x: Any) -> str:
    """Fallback for types TiCDC does not emit (nested records, maps, arrays, booleans)."""

    def default(o: Any) -> Any:
        if isinstance(o, bytes):
            return base64.b64encode(o).decode("ascii")
        if isinstance(o, Decimal):
            return float(o)
        raise TypeError(f"cannot write {type(o).__name__} into a landing row")

    return json.dumps(x, separators=(",", ":"), ensure_ascii=False, default=default)


_HELPERS: dict[str, Any] = {
    "_str": encode_basestring,
    "_int": int.__repr__,
    "_bool": lambda b: "true" if b else "false",
    "_f64": _json_float,
    "_f32": _json_float32,
    "_bytes": _json_bytes,
    "_dec": _json_decimal,
    "_wdec": _json_wide_decimal,
    "_any": _json_any,
}


def _helper_for(branch: Any) -> str:
    if isinstance(branch, str):
        avro_type, logical, precision = branch, None, None
    elif isinstance(branch, Mapping):
        avro_type, logical, precision = branch.get("type"), branch.get("logicalType"), branch.get("precision")
    else:
        return "_any"
    if logical == "decimal" and avro_type in ("bytes", "fixed"):
        return "_wdec" if precision and precision > MAX_NUMBER_PRECISION else "_dec"
    return {
        "string": "_str",
        "int": "_int",
        "long": "_int",
        "float": "_f32",
        "double": "_f64",
        "boolean": "_bool",
        "bytes": "_bytes",
    }.get(avro_type, "_any")


def compile_record_encoder(schema: str | Mapping[str, Any]) -> Encoder:
    """A function `dict -> JSON object text` specialised to one Avro record schema (field order kept)."""
    fields = load_schema(schema)["fields"]
    if not fields:
        return lambda v: "{}"
    parts: list[str] = []
    namespace = dict(_HELPERS)
    for i, field in enumerate(fields):
        ftype = field["type"]
        nullable = isinstance(ftype, list) and "null" in ftype
        branches = [b for b in ftype if b != "null"] if isinstance(ftype, list) else [ftype]
        helper = _helper_for(branches[0]) if len(branches) == 1 else "_any"
        # The JSON key text goes in as a constant of the generated module, never pasted into source code.
        namespace[f"_k{i}"] = ("{" if i == 0 else ",") + json.dumps(field["name"], ensure_ascii=False) + ":"
        namespace[f"_n{i}"] = field["name"]
        get = f"v[_n{i}]"
        # Ints and decimals are formatted by the f-string itself (`{x}` is int.__repr__ for an int, `{x:f}`
        # is format(x, "f")): no helper call, which was a tenth of a TiCDC row's encoding time.
        inline = {"_int": "{}", "_dec": "{:f}"}.get(helper)
        if inline is not None and not nullable:
            parts.append(f"{{_k{i}}}" + inline.replace("{", "{" + get, 1))
            continue
        if helper == "_int":
            value = f'("null" if (x{i} := {get}) is None else x{i})'
        elif helper == "_dec":
            value = f'("null" if (x{i} := {get}) is None else format(x{i}, "f"))'
        else:
            value = f'("null" if (x{i} := {get}) is None else {helper}(x{i}))' if nullable else f"{helper}({get})"
        parts.append(f"{{_k{i}}}{{{value}}}")
    source = "def encode(v):\n    return f'" + "".join(parts) + "}}'\n"
    exec(compile(source, f"<landing encoder {load_schema(schema).get('name')}>", "exec"), namespace)  # noqa: S102
    return namespace["encode"]


class RecordEncoder:
    """Builds landing rows for one topic's (key schema, value schema) pair; compile once, reuse per record."""

    def __init__(
        self, key_schema: str | Mapping[str, Any], value_schema: str | Mapping[str, Any] | None = None
    ) -> None:
        self.encode_key = compile_record_encoder(key_schema)
        self.encode_value = compile_record_encoder(value_schema) if value_schema is not None else None

    def metadata(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int | None,
        key: Mapping[str, Any] | None,
        timestamp_type: str = "CreateTime",
    ) -> str:
        text = '{"topic":' + encode_basestring(topic) + ',"partition":' + str(partition) + ',"offset":' + str(offset)
        if timestamp_ms is not None:
            text += "," + encode_basestring(timestamp_type) + ":" + str(timestamp_ms)
        if key is not None:
            text += ',"key":' + self.encode_key(key)
        return text + "}"

    def content(self, value: Mapping[str, Any] | None) -> str:
        if value is None:
            return TOMBSTONE
        if self.encode_value is None:
            raise ValueError("this RecordEncoder has no value schema; pass value_schema to encode non-null values")
        return self.encode_value(value)


def landing_rows(
    encoder: RecordEncoder,
    records: Sequence[tuple[str, int, int, int | None, Mapping[str, Any] | None, Mapping[str, Any] | None]],
) -> list[tuple[str, str]]:
    """(topic, partition, offset, timestamp_ms, key, value) tuples -> (RECORD_METADATA, RECORD_CONTENT) texts."""
    return [(encoder.metadata(t, p, o, ts, k), encoder.content(v)) for t, p, o, ts, k, v in records]



# --- the built-in loader's exactly-once load (tidb_pipeline.engine.landing) ---------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """A record the loader could not decode: kept raw with the reason, at its (partition, offset)."""

    topic: str
    partition: int
    offset: int
    metadata: str  # RECORD_METADATA JSON without the key (the key may be what failed)
    raw_key: bytes | None
    raw_value: bytes | None
    error: str


def create_load_lock_sql(table: TableRef) -> str:
    """One row per landing table; every load updates its row first, which serialises racing loads."""
    return f'CREATE TABLE IF NOT EXISTS {table.sql} ("LANDING_TABLE" VARCHAR NOT NULL, "LOADED_AT" TIMESTAMP_NTZ(6))'


def ensure_lock_row_sql(table: TableRef, landing: TableRef) -> Statement:
    return Statement(
        f'INSERT INTO {table.sql} ("LANDING_TABLE") SELECT %s '
        f'WHERE NOT EXISTS (SELECT 1 FROM {table.sql} WHERE "LANDING_TABLE" = %s)',
        (landing.label, landing.label),
    )


def take_load_lock_sql(table: TableRef, landing: TableRef, now: Any) -> Statement:
    """The first statement of the load transaction, so everything after it runs under the lock.

    The row lock makes a second load of the same landing table wait until the first commits (up to the
    session's LOCK_TIMEOUT), and its later statements then see the first's rows: two loads of one landing
    table never both insert the same offsets.
    """
    return Statement(
        f'UPDATE {table.sql} SET "LOADED_AT" = %s WHERE "LANDING_TABLE" = %s', (now, landing.label)
    )


def landed_offsets_sql(landing: TableRef, dead_letter: TableRef, topic: str) -> Statement:
    """Per partition, the highest offset of `topic` already landed or quarantined, scanning the landing table.

    Only for seeding the landed-offsets table once (`create_landed_offsets_sql`): a deployment from before
    it, or a table someone dropped. Every other read goes to that table.
    """
    return Statement(
        'SELECT p, MAX(o) FROM ('
        f'SELECT "RECORD_METADATA":"partition"::int AS p, "RECORD_METADATA":"offset"::int AS o FROM {landing.sql} '
        'WHERE "RECORD_METADATA":"topic"::varchar = %s '
        f'UNION ALL SELECT "PARTITION"::int AS p, "OFFSET"::int AS o FROM {dead_letter.sql} WHERE "TOPIC" = %s'
        ") GROUP BY p ORDER BY p",
        (topic, topic),
    )


# --- the landed-offsets table: "what is landed" without reading the landing table ------------------------


def create_landed_offsets_sql(table: TableRef) -> str:
    """Per landing table, topic and partition: the highest offset landed or quarantined (a tiny table).

    The built-in loader rewrites a partition's row in the same transaction as the rows it lands, under the
    landing table's lock row, so the row and the landing table always agree; loads, merges and the cleanup
    read it instead of scanning the landing table, whose size grows with retention.
    """
    return (
        f"CREATE TABLE IF NOT EXISTS {table.sql} (\n"
        '  "LANDING_TABLE" VARCHAR NOT NULL,\n'
        '  "TOPIC" VARCHAR NOT NULL,\n'
        '  "PARTITION" NUMBER(10,0) NOT NULL,\n'
        '  "LAST_OFFSET" NUMBER(19,0) NOT NULL,\n'
        '  "LOAD_ID" VARCHAR,\n'
        '  "UPDATED_AT" TIMESTAMP_NTZ(6)\n'
        ")"
    )


def read_landed_offsets_sql(table: TableRef, landing: TableRef, topic: str) -> Statement:
    """Per partition, the highest offset of `topic` landed or quarantined, from the landed-offsets table."""
    return Statement(
        f'SELECT "PARTITION", "LAST_OFFSET" FROM {table.sql} WHERE "LANDING_TABLE" = %s AND "TOPIC" = %s ORDER BY 1',
        (landing.label, topic),
    )


def write_landed_offsets_statements(
    table: TableRef, landing: TableRef, topic: str, last: Mapping[int, int], load_id: str, now: Any
) -> list[Statement]:
    """Set the partitions' highest landed offsets (run inside the load transaction, after the lock).

    Plain DELETE + INSERT of the few rows (like the merge watermarks): the lock row serialises loads of one
    landing table, so no other transaction writes these rows meanwhile.
    """
    if not last:
        return []
    in_list = ", ".join("%s" for _ in last)
    rows = ", ".join("(%s, %s, %s, %s, %s, %s)" for _ in last)
    return [
        Statement(
            f'DELETE FROM {table.sql} WHERE "LANDING_TABLE" = %s AND "TOPIC" = %s AND "PARTITION" IN ({in_list})',
            (landing.label, topic, *sorted(last)),
        ),
        Statement(
            f'INSERT INTO {table.sql} ("LANDING_TABLE", "TOPIC", "PARTITION", "LAST_OFFSET", "LOAD_ID", "UPDATED_AT") '
            f"VALUES {rows}",
            tuple(x for p, o in sorted(last.items()) for x in (landing.label, topic, p, o, load_id, now)),
        ),
    ]


def forget_landed_offsets_sql(table: TableRef, landing: TableRef) -> Statement:
    """Drop a landing table's landed offsets (it was found empty: created again, or emptied by hand); the
    next load seeds them from what the landing and dead-letter tables hold."""
    return Statement(f'DELETE FROM {table.sql} WHERE "LANDING_TABLE" = %s', (landing.label,))


# The column of a load's rows table that holds the record's value (what the backfill's INSERT reads).
LOAD_COLUMN = "RECORD_CONTENT"


def create_load_rows_sql(rows_table: str) -> str:
    """One load's own table (a quoted, qualified name) holding the two landing columns, filled file by file
    from the stage. TEMPORARY: private to the load's session and gone with it, so a crashed load leaves
    nothing behind."""
    return f'CREATE TEMPORARY TABLE IF NOT EXISTS {rows_table} ("RECORD_METADATA" VARIANT, "RECORD_CONTENT" VARIANT)'


def stage_file_statements(rows_table: str, stage_file: str) -> list[Statement]:
    """Load one staged Parquet file into the load's rows table; runs outside the landing transaction.

    The file has two string columns holding the JSON texts (`replication.wire.ParquetFiles`); a COPY with
    a transformation parses each into its VARIANT column in one pass. `FORCE` because a file name can come
    back after a retried load; exactly-once is decided by the landing table.
    """
    return [
        Statement(
            f'COPY INTO {rows_table} ("RECORD_METADATA", "RECORD_CONTENT") '
            "FROM (SELECT PARSE_JSON($1:RECORD_METADATA), PARSE_JSON($1:RECORD_CONTENT) "
            f"FROM {stage_file}) FILE_FORMAT = (TYPE = PARQUET) FORCE = TRUE"
        ),
    ]


def land_rows_statements(landing: TableRef, rows_table: str, above: Mapping[int, int]) -> list[Statement]:
    """Inside the landing transaction: insert the load's rows above `above[partition]`, then empty them.

    `above` (offsets already landed) is read in the transaction after the lock, so a batch that overlaps
    rows another load committed (a race, or a retry after a crash) inserts each (partition, offset) once;
    an empty `above` means no filter. The first statement's result is the number of rows inserted. The
    rows table is emptied in the same transaction: committed rows can never be inserted twice from it,
    rolled-back ones stay for a retry.
    """
    insert = (
        f'INSERT INTO {landing.sql} ("RECORD_METADATA", "RECORD_CONTENT") '
        f'SELECT "RECORD_METADATA", "RECORD_CONTENT" FROM {rows_table}'
    )
    params: tuple[Any, ...] = ()
    if above:
        cases = " ".join("WHEN %s THEN %s" for _ in above)
        params = tuple(x for p, o in sorted(above.items()) for x in (p, o))
        insert += (
            f' WHERE "RECORD_METADATA":"offset"::int > CASE "RECORD_METADATA":"partition"::int {cases} ELSE -1 END'
        )
    return [Statement(insert, params), Statement(f"DELETE FROM {rows_table}")]


def dead_letter_insert_sql(table: TableRef, rows: Sequence[DeadLetter], now: Any) -> Statement:
    """One INSERT for a batch of dead letters (raw bytes travel as hex text; nothing is pasted into SQL)."""
    values = ", ".join("(%s, %s, %s, %s, %s, %s, %s, %s)" for _ in rows)
    params = tuple(
        x
        for r in rows
        for x in (
            r.topic,
            r.partition,
            r.offset,
            r.metadata,
            None if r.raw_key is None else r.raw_key.hex(),
            None if r.raw_value is None else r.raw_value.hex(),
            r.error,
            now,
        )
    )
    return Statement(
        f'INSERT INTO {table.sql} ("TOPIC", "PARTITION", "OFFSET", "RECORD_METADATA", "RAW_KEY", "RAW_VALUE", '
        '"ERROR", "FAILED_AT") SELECT column1, column2, column3, PARSE_JSON(column4), '
        "TO_BINARY(column5, 'HEX'), TO_BINARY(column6, 'HEX'), column7, column8 "
        f"FROM VALUES {values}",
        params,
    )
