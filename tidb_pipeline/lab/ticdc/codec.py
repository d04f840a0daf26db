"""TiCDC's Avro codec, rebuilt in Python for the lab change feed (spec/ticdc-avro.md).

Pure functions only: table metadata -> key/value Avro schemas (byte-for-byte what tiflow's
`pkg/sink/codec/avro/avro.go` emits, which is Go's `encoding/json` over maps, hence sorted keys), binlog row
values (as mysql-replication 1.0.17 yields them from MariaDB) -> Avro datums, Confluent wire framing, the
topic expression and the `index-value` partition dispatcher (`cdc/sink/dmlsink/mq/dispatcher/partition`).

Two layers of values exist, as in TiCDC: the *internal* value (what TiCDC's mounter holds: ints, strings for
decimals and temporal types, enum/set/bit numbers) drives the partition hash; the *Avro* value goes on the wire.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import io
import json
import math
import os
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import fastavro

# --- TSO -------------------------------------------------------------------------------------------------------

_LOGICAL_BITS = 18


def tso_from_ms(physical_ms: int, logical: int = 0) -> int:
    """A TiDB TSO: physical epoch milliseconds shifted over 18 logical bits."""
    return (physical_ms << _LOGICAL_BITS) | logical


def ms_from_tso(ts: int) -> int:
    """The physical part (epoch ms) of a TSO."""
    return ts >> _LOGICAL_BITS


# --- configuration ---------------------------------------------------------------------------------------------

DECIMAL_PRECISE = "precise"
DECIMAL_STRING = "string"
BIGINT_UNSIGNED_LONG = "long"
BIGINT_UNSIGNED_STRING = "string"


@dataclass(frozen=True)
class CodecConfig:
    """The Avro protocol options of a changefeed."""

    namespace: str = "default"  # the changefeed namespace, first part of every record namespace
    enable_tidb_extension: bool = False
    decimal_handling_mode: str = DECIMAL_PRECISE
    bigint_unsigned_handling_mode: str = BIGINT_UNSIGNED_LONG
    time_zone: str = "UTC"  # TIMESTAMP values are rendered in this zone, as TiCDC does with its --tz

    def __post_init__(self) -> None:
        zone(self.time_zone)  # fail at configuration time, not on the first TIMESTAMP row
        if self.decimal_handling_mode not in (DECIMAL_PRECISE, DECIMAL_STRING):
            raise ValueError(
                f"avro-decimal-handling-mode={self.decimal_handling_mode!r} is not supported; use precise or string"
            )
        if self.bigint_unsigned_handling_mode not in (BIGINT_UNSIGNED_LONG, BIGINT_UNSIGNED_STRING):
            raise ValueError(
                f"avro-bigint-unsigned-handling-mode={self.bigint_unsigned_handling_mode!r} is not supported; "
                "use long or string"
            )


@functools.lru_cache(maxsize=None)
def zone(name: str) -> dt.tzinfo:
    """A time zone by TiCDC `--tz` name: an IANA name, "UTC", or "System"/"" for the host's zone."""
    if name in ("System", "system", ""):
        env = os.environ.get("TZ", "").lstrip(":")
        if env:
            return zone(env)
        try:
            with open("/etc/localtime", "rb") as f:
                return ZoneInfo.from_file(f, key="localtime")
        except OSError:
            return dt.timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time zone {name!r} is unknown; use an IANA name such as UTC or Asia/Shanghai") from None


# --- table metadata --------------------------------------------------------------------------------------------

_INT_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer"}
_TEXT_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext"}
_BLOB_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_TEMPORAL = {"date": "DATE", "datetime": "DATETIME", "timestamp": "TIMESTAMP", "time": "TIME"}


class TableIneligibleError(ValueError):
    """A table has neither a primary key nor a NOT NULL unique index (TiCDC: CDC:ErrTableIneligible)."""


@dataclass(frozen=True)
class Column:
    """One column as information_schema.COLUMNS describes it, reduced to what the codec needs."""

    name: str
    data_type: str  # information_schema DATA_TYPE, lower case; "json" for MariaDB's JSON alias
    nullable: bool
    default: str | None = None  # the TiDB-style default literal ("1", "ab", "CURRENT_TIMESTAMP"); None = NULL/none
    unsigned: bool = False
    precision: int | None = None  # DECIMAL precision, BIT length, BINARY(n) length
    scale: int | None = None  # DECIMAL scale, fractional seconds digits of temporal types
    members: tuple[str, ...] = ()  # ENUM/SET members in definition order

    # Cached: asked for every value of every row (frozen dataclasses still allow cached_property).
    @functools.cached_property
    def tidb_type(self) -> str:
        t = self.data_type
        if t in _INT_TYPES:
            return "INT UNSIGNED" if self.unsigned else "INT"
        if t == "bigint":
            return "BIGINT UNSIGNED" if self.unsigned else "BIGINT"
        if t == "float":
            return "FLOAT"
        if t in ("double", "real"):
            return "DOUBLE"
        if t in ("decimal", "numeric"):
            return "DECIMAL"
        if t in _BLOB_TYPES:
            return "BLOB"
        if t == "bit":
            return "BIT"
        if t == "enum":
            return "ENUM"
        if t == "set":
            return "SET"
        if t == "json":
            return "JSON"
        if t in _TEMPORAL:
            return _TEMPORAL[t]
        if t == "year":
            return "YEAR"
        # CHAR/VARCHAR/TEXT family, and MariaDB-only types (uuid, inet6) that TiDB would hold as strings.
        return "TEXT"


@dataclass(frozen=True)
class TableInfo:
    """A table version: columns in table order plus the handle key TiCDC keys records by."""

    schema: str
    table: str
    columns: tuple[Column, ...]
    handle_key: tuple[str, ...]
    version: int = 0  # bumps when the columns change; schema caches are keyed by it
    _by_name: dict[str, Column] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {c.name: c for c in self.columns})
        if not self.handle_key:
            raise TableIneligibleError(
                f"table {self.schema}.{self.table} has neither a primary key nor a NOT NULL unique index; "
                "TiCDC cannot replicate it (CDC:ErrTableIneligible): add a primary key"
            )
        missing = [k for k in self.handle_key if k not in self._by_name]
        if missing:
            raise ValueError(f"handle key columns {missing} are not columns of {self.schema}.{self.table}")

    def column(self, name: str) -> Column:
        return self._by_name[name]

    @functools.cached_property
    def key_columns(self) -> tuple[Column, ...]:
        """Handle key columns in table column order (as tiflow's HandleKeyColInfos)."""
        keys = set(self.handle_key)
        return tuple(c for c in self.columns if c.name in keys)


def parse_members(column_type: str) -> tuple[str, ...]:
    """Members of `enum('a','b''c')` / `set(...)` from information_schema COLUMN_TYPE, unescaped."""
    body = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    return tuple(m.replace("''", "'").replace("\\\\", "\\") for m in re.findall(r"'((?:[^']|'')*)'", body))


_CURRENT_TS = re.compile(r"^(current_timestamp|now|localtimestamp)(\(\d*\))?$", re.IGNORECASE)


def parse_default(raw: str | None, data_type: str) -> str | None:
    """MariaDB's COLUMN_DEFAULT (quoted literals, `NULL`, expressions) -> TiDB's stored default literal."""
    if raw is None or raw == "NULL":
        return None
    if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
        return raw[1:-1].replace("''", "'").replace("\\\\", "\\")
    if _CURRENT_TS.match(raw):
        return "CURRENT_TIMESTAMP"
    if data_type == "bit" and raw.lower().startswith("b'"):
        return raw  # kept as b'...' and turned into bytes by the codec
    return raw


def column_from_information_schema(row: Mapping[str, Any], *, is_json: bool = False) -> Column:
    """A Column from one information_schema.COLUMNS row (dict keyed by upper-case column names)."""
    data_type = "json" if is_json else str(row["DATA_TYPE"]).lower()
    column_type = str(row["COLUMN_TYPE"]).lower()
    precision = row.get("NUMERIC_PRECISION")
    scale = row.get("NUMERIC_SCALE")
    if data_type in _TEMPORAL:
        scale = row.get("DATETIME_PRECISION") or 0
        precision = None
    elif data_type in ("binary",):
        precision = int(row.get("CHARACTER_OCTET_LENGTH") or 0)
    members = parse_members(str(row["COLUMN_TYPE"])) if data_type in ("enum", "set") else ()
    return Column(
        name=str(row["COLUMN_NAME"]),
        data_type=data_type,
        nullable=str(row["IS_NULLABLE"]).upper() == "YES",
        default=parse_default(row.get("COLUMN_DEFAULT"), data_type),
        unsigned="unsigned" in column_type,
        precision=int(precision) if precision is not None else None,
        scale=int(scale) if scale is not None else None,
        members=members,
    )


def choose_handle_key(
    columns: Sequence[Column], indexes: Sequence[tuple[str, bool, Sequence[str]]]
) -> tuple[str, ...]:
    """TiCDC's handle key: the primary key, else the NOT NULL unique index with the fewest columns.

    `indexes` are (name, unique, columns) in definition order; ties go to the earlier index as TiDB's
    lower index id wins.
    """
    nullable = {c.name for c in columns if c.nullable}
    best: tuple[str, ...] = ()
    for name, unique, cols in indexes:
        if not unique or any(c in nullable for c in cols):
            continue
        if name.upper() == "PRIMARY":
            return tuple(cols)
        if not best or len(cols) < len(best):
            best = tuple(cols)
    return best


# --- names -----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def sanitize_name(name: str) -> str:
    """Avro name sanitising as tiflow's common.SanitizeName (Debezium's SchemaNameAdjuster)."""
    out = []
    for i, ch in enumerate(name):
        ascii_letter = ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ch == "_"
        digit = "0" <= ch <= "9"
        if i == 0 and not ascii_letter:
            out.append("_")
            if digit:
                out.append(ch)
        elif not (ascii_letter or digit):
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def avro_namespace(namespace: str, schema: str) -> str:
    ns, s = sanitize_name(namespace), sanitize_name(schema)
    return f"{ns}.{s}" if s else ns


_KAFKA_FORBIDDEN = re.compile(r"[^a-zA-Z0-9._\-]")
_AVRO_TOPIC_EXPR = re.compile(r"^[A-Za-z0-9._\-]*\{schema\}[A-Za-z0-9._\-]*\{table\}[A-Za-z0-9._\-]*$")


def validate_topic_expression(expr: str) -> None:
    """Avro needs one topic per table: the expression must hold `{schema}` and then `{table}`."""
    if not _AVRO_TOPIC_EXPR.match(expr):
        raise ValueError(
            f"topic expression {expr!r} is invalid for Avro: it must contain {{schema}} and {{table}} "
            "and otherwise only [A-Za-z0-9._-] (CDC:ErrKafkaInvalidTopicExpression)"
        )


def topic_name(expr: str, schema: str, table: str) -> str:
    """Substitute a topic expression as TiCDC does (forbidden characters -> `_`, 249-char limit)."""
    name = expr.replace("{schema}", _KAFKA_FORBIDDEN.sub("_", schema)).replace(
        "{table}", _KAFKA_FORBIDDEN.sub("_", table)
    )
    if len(name) > 249:
        return name[:249]
    return {".": "_", "..": "__"}.get(name, name)


def subject_names(topic: str) -> tuple[str, str]:
    """TopicNameStrategy subjects (`<topic>-key`, `<topic>-value`) after TiCDC's dot escaping."""
    t = topic.replace(".", "_")
    return f"{t}-key", f"{t}-value"


# --- Go-compatible JSON ------------------------------------------------------------------------------------------


def go_json(obj: Any) -> str:
    """Compact JSON as Go's encoding/json writes it: raw UTF-8, HTML characters escaped, maps key-sorted
    by the caller (dicts here are built in Go's sorted order)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _float32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _go_number(x: float) -> int | float:
    # Go prints an integral float64 without ".0"; Python's json would add it.
    if math.isfinite(x) and x == int(x) and abs(x) < 1e21:
        return int(x)
    return x


# --- schemas ---------------------------------------------------------------------------------------------------


def _avro_type(col: Column, cfg: CodecConfig) -> dict[str, Any]:
    tt = col.tidb_type
    params: dict[str, str] = {"tidb_type": tt}
    t = col.data_type
    if t in _INT_TYPES:
        avro = "long" if (t in ("int", "integer") and col.unsigned) else "int"
    elif t == "bigint":
        avro = "string" if col.unsigned and cfg.bigint_unsigned_handling_mode == BIGINT_UNSIGNED_STRING else "long"
    elif tt == "FLOAT":
        avro = "float"
    elif tt == "DOUBLE":
        avro = "double"
    elif tt == "BIT":
        avro = "bytes"
        params = {"length": str(col.precision if col.precision is not None else 1), "tidb_type": tt}
    elif tt == "DECIMAL":
        if cfg.decimal_handling_mode == DECIMAL_PRECISE:
            return {
                "type": "bytes",
                "connect.parameters": params,
                "logicalType": "decimal",
                "precision": col.precision if col.precision is not None else 10,
                "scale": col.scale if col.scale is not None else 0,
            }
        avro = "string"
    elif tt == "BLOB":
        avro = "bytes"
    elif tt in ("ENUM", "SET"):
        avro = "string"
        params = {"allowed": ",".join(_escape_member(m) for m in col.members), "tidb_type": tt}
    elif tt == "YEAR":
        avro = "int"
    else:  # TEXT, JSON, temporal
        avro = "string"
    return {"type": avro, "connect.parameters": params}


def _escape_member(option: str) -> str:
    return option.replace(",", "\\,").replace("\\'", "'").replace("''", "'")


def _default_datum(col: Column, cfg: CodecConfig) -> Any:
    """The schema default: TiDB's stored default literal run through the value codec, then JSON-ready."""
    raw = col.default
    if raw is None:
        return None
    tt = col.tidb_type
    try:
        if tt in ("INT", "INT UNSIGNED", "YEAR"):
            return int(Decimal(raw))
        if tt == "BIGINT":
            return int(Decimal(raw))
        if tt == "BIGINT UNSIGNED":
            n = int(Decimal(raw))
            if cfg.bigint_unsigned_handling_mode == BIGINT_UNSIGNED_STRING:
                return raw
            return n - (1 << 64) if n >= 1 << 63 else n
        if tt == "FLOAT":
            return _go_number(_float32(float(raw)))
        if tt == "DOUBLE":
            return _go_number(float(raw))
    except (ValueError, ArithmeticError):
        return None  # an expression default TiCDC could not turn into a number: no default
    if tt == "BIT":
        data = _bit_bytes(int(raw[2:-1] or "0", 2) if raw.lower().startswith("b'") else int(raw))
        return base64.b64encode(data).decode()  # Go marshals []byte as base64
    if tt == "BLOB":
        return base64.b64encode(raw.encode()).decode()
    return raw  # TEXT, DECIMAL (string mode), ENUM, SET, JSON, temporal: the literal itself


def _fields(columns: Sequence[Column], cfg: CodecConfig) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = []
    for col in columns:
        avro = _avro_type(col, cfg)
        name = sanitize_name(col.name)
        if avro.get("logicalType") == "decimal":
            # goavro cannot hold a default for a logical type, so TiCDC never sets one.
            if col.nullable:
                fields.append({"default": None, "name": name, "type": ["null", avro]})
            else:
                fields.append({"name": name, "type": avro})
            continue
        default = _default_datum(col, cfg)
        if col.nullable:
            union = ["null", avro] if default is None else [avro, "null"]
            fields.append({"default": default, "name": name, "type": union})
        elif default is not None:
            fields.append({"default": default, "name": name, "type": avro})
        else:
            fields.append({"name": name, "type": avro})
    return fields


_EXTENSION_FIELDS = [
    {"default": "", "name": "_tidb_op", "type": "string"},
    {"default": 0, "name": "_tidb_commit_ts", "type": "long"},
    {"default": 0, "name": "_tidb_commit_physical_time", "type": "long"},
]


def _record(info: TableInfo, fields: list[dict[str, Any]], cfg: CodecConfig) -> dict[str, Any]:
    return {
        "type": "record",
        "name": sanitize_name(info.table),
        "namespace": avro_namespace(cfg.namespace, info.schema),
        "fields": fields,
    }


def key_schema(info: TableInfo, cfg: CodecConfig) -> str:
    """The key schema JSON exactly as TiCDC registers it."""
    return go_json(_record(info, _fields(info.key_columns, cfg), cfg))


def value_schema(info: TableInfo, cfg: CodecConfig) -> str:
    """The value schema JSON exactly as TiCDC registers it."""
    fields = _fields(info.columns, cfg)
    if cfg.enable_tidb_extension:
        fields += [dict(f) for f in _EXTENSION_FIELDS]
    return go_json(_record(info, fields, cfg))


# --- values ----------------------------------------------------------------------------------------------------

EMPTY_SET = "empty set"  # mysql-replication's NONE_SOURCE for a SET holding no members
_ZERO_DATE_SOURCES = {"out of date range", "out of datetime range", "out of datetime2 range"}


def _bit_bytes(n: int) -> bytes:
    # types.NewBinaryLiteralFromUint(v, -1): big-endian, leading zero bytes trimmed, at least one byte.
    return n.to_bytes(8, "big").lstrip(b"\x00") or b"\x00"


def _bit_int(value: Any) -> int:
    if isinstance(value, str):  # mysql-replication yields BIT as a string of '0'/'1'
        return int(value or "0", 2)
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(value, "big")
    return int(value)


def _frac(us: int, fsp: int) -> str:
    return f".{us:06d}"[: fsp + 1] if fsp > 0 else ""


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


def format_time(value: dt.timedelta, fsp: int) -> str:
    """TiDB's Duration.String(): `[-]HH:MM:SS[.f]`, hours unbounded."""
    sign = "-" if value < dt.timedelta(0) else ""
    mag = -value if sign else value
    total_us = (mag.days * 86400 + mag.seconds) * 1_000_000 + mag.microseconds
    secs, us = divmod(total_us, 1_000_000)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h:02d}:{m:02d}:{s:02d}{_frac(us, fsp)}"


def format_datetime(value: dt.datetime, fsp: int) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}{_frac(value.microsecond, fsp)}"


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
        d = value if isinstance(value, Decimal) else Decimal(str(value))
        if col.scale is not None:
            d = d.quantize(Decimal(1).scaleb(-col.scale))
        return format(d, "f")
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
    return fastavro.parse_schema(json.loads(schema_json), _write_hint=False)


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


def partition_for(
    rule: str, info: TableInfo, row: Mapping[str, Any], partitions: int, *, commit_ts: int = 0
) -> int:
    """The partition TiCDC's dispatcher `rule` picks (index-value, table, ts; `default` = index-value)."""
    if partitions <= 1:
        return 0
    if rule in ("index-value", "default", "rowid", ""):
        return index_value_hash(info, row) % partitions
    if rule == "table":
        return _crc(info.schema.encode(), info.table.encode()) % partitions
    if rule == "ts":
        return commit_ts % partitions
    raise ValueError(f"partition dispatcher {rule!r} is not supported by the lab change feed; use index-value")


class TableCodec:
    """Schemas and encoders of one table version, built once (schema JSON and parsing are the slow parts)."""

    def __init__(self, info: TableInfo, cfg: CodecConfig) -> None:
        self.info = info
        self.cfg = cfg
        self.key_schema = key_schema(info, cfg)
        self.value_schema = value_schema(info, cfg)
        self.key_parsed = parse_schema(self.key_schema)
        self.value_parsed = parse_schema(self.value_schema)

    def encode_key(self, schema_id: int, row: Mapping[str, Any]) -> bytes:
        return confluent_frame(schema_id, self.key_parsed, key_datum(self.info, row, self.cfg))

    def encode_value(self, schema_id: int, row: Mapping[str, Any], *, op: str, commit_ts: int) -> bytes:
        datum = value_datum(self.info, row, self.cfg, op=op, commit_ts=commit_ts)
        return confluent_frame(schema_id, self.value_parsed, datum)
