"""TiCDC's Avro codec, rebuilt in Python for the lab change feed (spec/ticdc-avro.md).

Pure functions only: table metadata -> key/value Avro schemas (byte-for-byte what tiflow's
`pkg/sink/codec/avro/avro.go` emits, which is Go's `encoding/json` over maps, hence sorted keys), binlog row
values (as mysql-replication 1.0.17 yields them from MariaDB) -> Avro datums, Confluent wire framing, the
topic expression and the `index-value` partition dispatcher (`cdc/sink/dmlsink/mq/dispatcher/partition`).
The schema half (TSO helpers, codec config, table metadata, key/value schemas) lives in
`tidb_pipeline.replication.ticdc_schema`, which production code also uses; it is re-exported here.

Two layers of values exist, as in TiCDC: the *internal* value (what TiCDC's mounter holds: ints, strings for
decimals and temporal types, enum/set/bit numbers) drives the partition hash; the *Avro* value goes on the wire.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re
import struct
import zlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import fastavro

from tidb_pipeline.replication.ticdc_schema import (  # noqa: F401 - re-exported for the lab and its tests
    _BLOB_TYPES,
    _CURRENT_TS,
    _EXTENSION_FIELDS,
    _INT_TYPES,
    _LOGICAL_BITS,
    _TEMPORAL,
    _TEXT_TYPES,
    BIGINT_UNSIGNED_LONG,
    BIGINT_UNSIGNED_STRING,
    DECIMAL_PRECISE,
    DECIMAL_STRING,
    CodecConfig,
    Column,
    FieldNameCollisionError,
    TableIneligibleError,
    TableInfo,
    _avro_type,
    _default_datum,
    _escape_member,
    _fields,
    _go_number,
    _record,
    avro_namespace,
    choose_handle_key,
    column_from_information_schema,
    format_datetime,
    format_time,
    go_json,
    key_schema,
    ms_from_tso,
    parse_default,
    parse_members,
    sanitize_name,
    tso_from_ms,
    value_schema,
    zone,
)
from tidb_pipeline.config_names import topic_name  # noqa: F401 - TiCDC's topic substitution, one implementation
from tidb_pipeline.resources.schema_registry import subject_names  # noqa: F401 - TiCDC's subjects, one implementation
from tidb_pipeline.replication.ticdc_schema import bit_bytes as _bit_bytes
from tidb_pipeline.replication.ticdc_schema import decimal_at_scale as _decimal_at_scale
from tidb_pipeline.replication.ticdc_schema import float32 as _float32
from tidb_pipeline.replication.ticdc_schema import fraction as _frac


# --- topics ----------------------------------------------------------------------------------------------------

_AVRO_TOPIC_EXPR = re.compile(r"^[A-Za-z0-9._\-]*\{schema\}[A-Za-z0-9._\-]*\{table\}[A-Za-z0-9._\-]*$")


def validate_topic_expression(expr: str) -> None:
    """Avro needs one topic per table: the expression must hold `{schema}` and then `{table}`."""
    if not _AVRO_TOPIC_EXPR.match(expr):
        raise ValueError(
            f"topic expression {expr!r} is invalid for Avro: it must contain {{schema}} and {{table}} "
            "and otherwise only [A-Za-z0-9._-] (CDC:ErrKafkaInvalidTopicExpression)"
        )


_STATIC_TOPIC = re.compile(r"^[A-Za-z0-9._\-]+$")


def is_static_topic(expr: str) -> bool:
    """A topic rule without placeholders names one topic for every table it matches (tiflow `IsHardCode`)."""
    return bool(_STATIC_TOPIC.match(expr))


# --- values ----------------------------------------------------------------------------------------------------

EMPTY_SET = "empty set"  # mysql-replication's NONE_SOURCE for a SET holding no members
_EPOCH = dt.datetime(1970, 1, 1)
_ZERO_DATE_SOURCES = {"out of date range", "out of datetime range", "out of datetime2 range"}


def _bit_int(value: Any) -> int:
    if isinstance(value, str):  # mysql-replication yields BIT as a string of '0'/'1'
        return int(value or "0", 2)
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(value, "big")
    return int(value)


def fix_negative_time(value: dt.timedelta) -> dt.timedelta:
    """Undo mysql-replication 1.0.17's misreading of negative TIME2 with a fraction.

    It returns -(s + (1 - f)) for -(s + f) (measured on MariaDB 10.11), so flip the fraction back.
    """
    if value >= dt.timedelta(0):
        return value
    mag = -value
    us = mag.microseconds
    if us == 0:
        return value
    return -(dt.timedelta(days=mag.days, seconds=mag.seconds) + dt.timedelta(microseconds=1_000_000 - us))


def mysql_json_text(value: Any) -> str:
    """JSON text the way TiDB prints it (`{"a": 1, "b": [1, 2]}`, keys sorted); MariaDB stores JSON as text."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    if isinstance(value, str):
        value = json.loads(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)


def internal_value(col: Column, value: Any, *, none_source: str | None = None, tz: str = "UTC") -> Any:
    """Normalise a binlog value into TiCDC's internal representation.

    Returns int for integer/enum(index)/set(mask)/bit/year, float, str for decimal/temporal/json/text,
    bytes for binary; None for SQL NULL.
    """
    tt = col.tidb_type
    if value is None:
        if none_source == EMPTY_SET and tt == "SET":
            return 0
        if none_source in _ZERO_DATE_SOURCES and tt in ("DATE", "DATETIME", "TIMESTAMP"):
            return "0000-00-00" if tt == "DATE" else "0000-00-00 00:00:00" + _frac(0, col.scale or 0)
        return None
    if tt in ("INT", "INT UNSIGNED", "BIGINT", "BIGINT UNSIGNED"):
        return int(value)
    if tt == "YEAR":
        year = int(value)
        return 0 if year == 1900 else year  # YEAR 0000 arrives as 0 + 1900
    if tt == "FLOAT":
        return _float32(float(value))
    if tt == "DOUBLE":
        return float(value)
    if tt == "DECIMAL":
        return format(_decimal_at_scale(value, col.scale), "f")
    if tt == "BIT":
        return _bit_int(value)
    if tt == "ENUM":
        if isinstance(value, int):
            return value
        return col.members.index(value) + 1 if value in col.members else 0
    if tt == "SET":
        if isinstance(value, int):
            return value
        names = value.split(",") if isinstance(value, str) else value
        return sum(1 << i for i, m in enumerate(col.members) if m in set(names))
    if tt == "JSON":
        return mysql_json_text(value)
    if tt == "DATE":
        return value if isinstance(value, str) else value.isoformat()
    if tt == "DATETIME":
        return value if isinstance(value, str) else format_datetime(value, col.scale or 0)
    if tt == "TIMESTAMP":
        if isinstance(value, str):
            return value
        if value == _EPOCH:
            # The zero TIMESTAMP is stored as 0 seconds (the type starts at 1970-01-01 00:00:01 UTC), and
            # mysql-replication reads it as the epoch; TiDB prints it, and TiCDC sends it, as the zero datetime.
            return "0000-00-00 00:00:00" + _frac(0, col.scale or 0)
        # mysql-replication gives naive UTC; TiCDC renders TIMESTAMP in the changefeed's zone.
        local = value.replace(tzinfo=dt.timezone.utc).astimezone(zone(tz))
        return format_datetime(local.replace(tzinfo=None), col.scale or 0)
    if tt == "TIME":
        return value if isinstance(value, str) else format_time(fix_negative_time(value), col.scale or 0)
    if tt == "BLOB":
        data = value.encode() if isinstance(value, str) else bytes(value)
        if col.data_type == "binary" and col.precision:
            data = data.ljust(col.precision, b"\x00")  # the binlog drops BINARY(n)'s zero padding
        return data
    # TEXT
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode()
    if isinstance(value, (set, frozenset)):
        return ",".join(sorted(value))
    return str(value)


def avro_value(col: Column, internal: Any, cfg: CodecConfig) -> Any:
    """TiCDC's columnToAvroData: an internal value -> the Avro datum for this column's type."""
    if internal is None:
        return None
    tt = col.tidb_type
    if tt == "BIGINT UNSIGNED":
        if cfg.bigint_unsigned_handling_mode == BIGINT_UNSIGNED_STRING:
            return str(internal)
        return internal - (1 << 64) if internal >= 1 << 63 else internal  # Go's int64(uint64) wraps
    if tt == "DECIMAL":
        return Decimal(internal) if cfg.decimal_handling_mode == DECIMAL_PRECISE else internal
    if tt == "BIT":
        return _bit_bytes(internal)
    if tt == "ENUM":
        return col.members[internal - 1] if 0 < internal <= len(col.members) else ""
    if tt == "SET":
        return ",".join(m for i, m in enumerate(col.members) if internal & (1 << i))
    return internal


def row_internal(
    info: TableInfo, values: Mapping[str, Any], none_sources: Mapping[str, str] | None = None, *, tz: str = "UTC"
) -> dict[str, Any]:
    """A binlog row (name -> value) -> internal values for every column of the table version."""
    ns = none_sources or {}
    return {c.name: internal_value(c, values.get(c.name), none_source=ns.get(c.name), tz=tz) for c in info.columns}


def key_datum(info: TableInfo, row: Mapping[str, Any], cfg: CodecConfig) -> dict[str, Any]:
    return {sanitize_name(c.name): avro_value(c, row[c.name], cfg) for c in info.key_columns}


def value_datum(
    info: TableInfo, row: Mapping[str, Any], cfg: CodecConfig, *, op: str = "", commit_ts: int = 0
) -> dict[str, Any]:
    datum = {sanitize_name(c.name): avro_value(c, row[c.name], cfg) for c in info.columns}
    if cfg.enable_tidb_extension:
        datum["_tidb_op"] = op
        datum["_tidb_commit_ts"] = commit_ts
        datum["_tidb_commit_physical_time"] = ms_from_tso(commit_ts)
    return datum


# --- framing ---------------------------------------------------------------------------------------------------


def parse_schema(schema_json: str) -> Any:
    """fastavro's parsed form of a schema string (parse once per table version, then reuse)."""
    # Keep fastavro's write hint: without it schemaless_writer re-parses the schema on every record
    # (measured: 26k -> 36k TPC-C order_line values/s).
    return fastavro.parse_schema(json.loads(schema_json))


def confluent_frame(schema_id: int, parsed_schema: Any, datum: Mapping[str, Any]) -> bytes:
    """Confluent wire format: magic 0x00, 4-byte big-endian schema id, Avro binary body."""
    buf = io.BytesIO()
    buf.write(b"\x00")
    buf.write(struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, parsed_schema, datum)
    return buf.getvalue()


# --- partition dispatch ----------------------------------------------------------------------------------------


def go_float_string(x: float, bits: int = 64) -> str:
    """strconv.FormatFloat(x, 'f', -1, bits): shortest round-trip digits, never an exponent."""
    if bits == 32:
        for p in range(1, 10):
            s = f"{x:.{p}g}"
            if _float32(float(s)) == x:
                break
    else:
        s = repr(x)
    if not math.isfinite(x):
        return {"inf": "+Inf", "-inf": "-Inf"}.get(s, "NaN")
    d = Decimal(s)
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") and x == 0 and math.copysign(1, x) > 0 else text


def value_string(col: Column, internal: Any) -> bytes:
    """tiflow's model.ColumnValueString over the internal value, as bytes for the hash."""
    if internal is None:
        return b"null"
    if isinstance(internal, (bytes, bytearray)):
        return bytes(internal)
    if isinstance(internal, float):
        return go_float_string(internal, 32 if col.tidb_type == "FLOAT" else 64).encode()
    return str(internal).encode()


def _crc(*parts: bytes) -> int:
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


def index_value_hash(info: TableInfo, row: Mapping[str, Any]) -> int:
    """IndexValueDispatcher: XOR of crc32(schema+table) and crc32(name+value) per handle key column."""
    h = _crc(info.schema.encode(), info.table.encode())
    for col in info.key_columns:
        h ^= _crc(col.name.encode(), value_string(col, row[col.name]))
    return h


def partition_kind(rule: str) -> str:
    """The dispatcher a partition rule names (tiflow `getPartitionDispatcher`, case-insensitive): `index-value`
    (alias `rowid`), `ts`, `table`, `columns`; `default`, an empty rule and any unknown rule are the default
    dispatcher, which is the table dispatcher (tiflow `partition.NewDefaultDispatcher`)."""
    kind = (rule or "").lower()
    if kind == "rowid":
        return "index-value"
    return kind if kind in ("index-value", "ts", "table", "columns") else "table"


def partition_for(
    rule: str, info: TableInfo, row: Mapping[str, Any], partitions: int, *, commit_ts: int = 0,
    columns: tuple[str, ...] = (),
) -> int:
    """The partition TiCDC's dispatcher for `rule` picks (see `partition_kind`); `columns` for the columns rule."""
    if partitions <= 1:
        return 0
    kind = partition_kind(rule)
    if kind == "index-value":
        return index_value_hash(info, row) % partitions
    if kind == "ts":
        return commit_ts % partitions
    h = _crc(info.schema.encode(), info.table.encode())
    if kind == "columns":
        for name in columns:
            h ^= _crc(name.encode(), value_string(info.column(name), row[name]))
    return h % partitions


_AVRO_CONVERTED = frozenset({"BIGINT UNSIGNED", "DECIMAL", "BIT", "ENUM", "SET"})


class TableCodec:
    """Schemas and encoders of one table version, built once (schema JSON and parsing are the slow parts).

    The per-row work is planned once too: each field's Avro name and whether its value needs `avro_value`
    (most types pass through), and each schema id's Confluent header. The bytes are those of
    `confluent_frame(..., key_datum(...))` / `value_datum(...)`: the golden and codec tests hold them equal.
    """

    def __init__(self, info: TableInfo, cfg: CodecConfig) -> None:
        self.info = info
        self.cfg = cfg
        self.key_schema = key_schema(info, cfg)
        self.value_schema = value_schema(info, cfg)
        self.key_parsed = parse_schema(self.key_schema)
        self.value_parsed = parse_schema(self.value_schema)
        self._key_plan = self._plan(info.key_columns)
        self._value_plan = self._plan(info.columns)
        self._headers: dict[int, bytes] = {}

    def _plan(self, columns: Any) -> tuple[tuple[str, str, Column | None], ...]:
        return tuple((c.name, sanitize_name(c.name), c if c.tidb_type in _AVRO_CONVERTED else None) for c in columns)

    def _datum(self, plan: tuple[tuple[str, str, Column | None], ...], row: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {field: row[name] if col is None else avro_value(col, row[name], cfg) for name, field, col in plan}

    def _frame(self, schema_id: int, parsed: Any, datum: Mapping[str, Any]) -> bytes:
        header = self._headers.get(schema_id)
        if header is None:
            header = self._headers[schema_id] = b"\x00" + struct.pack(">I", schema_id)
        buf = io.BytesIO()
        buf.write(header)
        fastavro.schemaless_writer(buf, parsed, datum)
        return buf.getvalue()

    def encode_key(self, schema_id: int, row: Mapping[str, Any]) -> bytes:
        return self._frame(schema_id, self.key_parsed, self._datum(self._key_plan, row))

    def encode_value(self, schema_id: int, row: Mapping[str, Any], *, op: str, commit_ts: int) -> bytes:
        datum = self._datum(self._value_plan, row)
        if self.cfg.enable_tidb_extension:
            datum["_tidb_op"] = op
            datum["_tidb_commit_ts"] = commit_ts
            datum["_tidb_commit_physical_time"] = ms_from_tso(commit_ts)
        return self._frame(schema_id, self.value_parsed, datum)
