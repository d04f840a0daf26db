"""TiCDC's Avro schemas from TiDB table metadata, and TiCDC's Avro datums for values read from TiDB.

Pure functions only. `key_schema` / `value_schema` give, byte for byte, the schemas TiCDC registers for a
table (tiflow's `pkg/sink/codec/avro/avro.go`: Go's `encoding/json` over maps, hence sorted keys), from
information_schema metadata (`table_info`). Production code needs them before any changefeed exists: a
backfill creates the replica with exactly the columns the later merges will see (spec/ticdc-avro.md).

`snapshot_datum` turns a row read over the MySQL protocol (PyMySQL's Python values) into the Avro datum
TiCDC would write for the same row, so a snapshot loads through the same JSON forms and casts as the
change stream. The lab's change feed (`tidb_pipeline.lab.ticdc.codec`) builds on this module for its
schemas and adds the binlog value codec, framing and partition dispatch.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


class FieldNameCollisionError(ValueError):
    """Two columns of a table sanitise to one Avro field name: TiCDC cannot encode the table with Avro.

    tiflow's `SanitizeName` adds no suffix to tell them apart, and goavro refuses a record whose fields
    repeat a name ("ought to have unique name"), so TiCDC fails on the table's first row
    (CDC:ErrAvroSchemaAPIError) instead of writing it.
    """


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
    """A table version: the columns TiCDC replicates, in table order, plus the handle key it keys records by.

    `columns` never holds a virtual generated column (TiCDC's `IsColCDCVisible`); `unique_keys` are the
    column lists of every unique index (PRIMARY included), reduced to those columns.
    """

    schema: str
    table: str
    columns: tuple[Column, ...]
    handle_key: tuple[str, ...]
    version: int = 0  # bumps when the columns change; schema caches are keyed by it
    unique_keys: tuple[tuple[str, ...], ...] = ()
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

    @functools.cached_property
    def unique_columns(self) -> tuple[Column, ...]:
        """Columns flagged handle or unique key: a change to any of them splits an UPDATE (`ShouldSplitUpdateEvent`)."""
        keys = set(self.handle_key).union(*self.unique_keys)
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


def is_virtual_generated(extra: Any) -> bool:
    """information_schema.COLUMNS.EXTRA of a virtual generated column (TiDB and MariaDB both say so there)."""
    return "VIRTUAL GENERATED" in str(extra or "").upper()


def choose_handle_key(
    columns: Sequence[Column], indexes: Sequence[tuple[str, bool, Sequence[str]]]
) -> tuple[str, ...]:
    """TiCDC's handle key: the primary key, else the NOT NULL unique index with the fewest columns.

    `columns` are the replicated ones: an index on a column not among them (a virtual generated column) is
    never the handle (`IsIndexUnique`). `indexes` are (name, unique, columns) in definition order; ties go
    to the earlier index as TiDB's lower index id wins.
    """
    visible = {c.name for c in columns}
    nullable = {c.name for c in columns if c.nullable}
    best: tuple[str, ...] = ()
    for name, unique, cols in indexes:
        if not unique or any(c in nullable or c not in visible for c in cols):
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


def float32(x: float) -> float:
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
            return _go_number(float32(float(raw)))
        if tt == "DOUBLE":
            return _go_number(float(raw))
    except (ValueError, ArithmeticError):
        return None  # an expression default TiCDC could not turn into a number: no default
    if tt == "BIT":
        data = bit_bytes(int(raw[2:-1] or "0", 2) if raw.lower().startswith("b'") else int(raw))
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


def check_field_names(info: TableInfo) -> None:
    """Raise FieldNameCollisionError when two columns of `info` become the same Avro field name."""
    seen: dict[str, str] = {}
    for col in info.columns:
        name = sanitize_name(col.name)
        if name in seen:
            raise FieldNameCollisionError(
                f"TiCDC cannot encode {info.schema}.{info.table} with Avro: columns {seen[name]!r} and "
                f"{col.name!r} both become field {name!r} (Avro names allow only [A-Za-z0-9_]; goavro: "
                "field ought to have unique name); rename one of them"
            )
        seen[name] = col.name


def _record(info: TableInfo, fields: list[dict[str, Any]], cfg: CodecConfig) -> dict[str, Any]:
    check_field_names(info)
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
        fields += [dict(f) for f in _EXTENSION_FIELDS]  # type: ignore[call-overload]  # each is a mapping
    return go_json(_record(info, fields, cfg))


def table_info(
    schema: str,
    table: str,
    column_rows: Sequence[Mapping[str, Any]],
    index_rows: Iterable[Mapping[str, Any]],
    *,
    json_columns: Iterable[str] = (),
    version: int = 0,
) -> TableInfo:
    """A TableInfo from information_schema rows (dicts keyed by upper-case column names).

    `column_rows` are COLUMNS rows in ORDINAL_POSITION order; a row whose EXTRA says `VIRTUAL GENERATED` is
    left out, as TiCDC never replicates such a column (stored generated columns are kept). `index_rows` are STATISTICS rows
    (INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME) in the server's order, which decides ties between
    equally short unique indexes. `json_columns` names columns to treat as JSON whatever their DATA_TYPE
    (MariaDB's JSON is a LONGTEXT alias); TiDB reports DATA_TYPE `json` itself.
    """
    as_json = set(json_columns)
    columns = tuple(
        column_from_information_schema(r, is_json=str(r["COLUMN_NAME"]) in as_json)
        for r in column_rows
        if not is_virtual_generated(r.get("EXTRA"))
    )
    indexes: dict[str, tuple[bool, dict[int, str]]] = {}
    for r in index_rows:
        unique, cols = indexes.setdefault(str(r["INDEX_NAME"]), (int(r["NON_UNIQUE"]) == 0, {}))
        cols[int(r["SEQ_IN_INDEX"])] = str(r["COLUMN_NAME"])
    ordered = [(name, unique, [cols[i] for i in sorted(cols)]) for name, (unique, cols) in indexes.items()]
    visible = {c.name for c in columns}
    unique_keys = tuple(tuple(c for c in cols if c in visible) for _, unique, cols in ordered if unique)
    return TableInfo(schema, table, columns, choose_handle_key(columns, ordered), version,
                     tuple(k for k in unique_keys if k))


# --- values read over the MySQL protocol -----------------------------------------------------------------------

def bit_bytes(n: int) -> bytes:
    # types.NewBinaryLiteralFromUint(v, -1): big-endian, leading zero bytes trimmed, at least one byte.
    return n.to_bytes(8, "big").lstrip(b"\x00") or b"\x00"



def fraction(us: int, fsp: int) -> str:
    return f".{us:06d}"[: fsp + 1] if fsp > 0 else ""



def format_time(value: dt.timedelta, fsp: int) -> str:
    """TiDB's Duration.String(): `[-]HH:MM:SS[.f]`, hours unbounded."""
    sign = "-" if value < dt.timedelta(0) else ""
    mag = -value if sign else value
    total_us = (mag.days * 86400 + mag.seconds) * 1_000_000 + mag.microseconds
    secs, us = divmod(total_us, 1_000_000)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h:02d}:{m:02d}:{s:02d}{fraction(us, fsp)}"


def format_datetime(value: dt.datetime, fsp: int) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}{fraction(value.microsecond, fsp)}"



# TiDB's DECIMAL holds up to 65 digits; Python's default context (28 digits) cannot quantize those.
_DECIMAL_CONTEXT = Context(prec=65 + 30)


def decimal_at_scale(value: Any, scale: int | None) -> Decimal:
    """`value` (a Decimal or anything `str` renders as one) rounded to `scale` digits when the column has one."""
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    return d if scale is None else d.quantize(Decimal(1).scaleb(-scale), context=_DECIMAL_CONTEXT)


def snapshot_value(col: Column, value: Any, cfg: CodecConfig) -> Any:
    """The Avro datum TiCDC writes for `value`, a column value as PyMySQL returns it from TiDB.

    TIMESTAMP values must have been read in the changefeed server's time zone (set the session's
    `time_zone` to it), as TiCDC renders them there. Values PyMySQL leaves as text (zero dates) pass
    through, as TiDB prints them the same way.
    """
    if value is None:
        return None
    tt = col.tidb_type
    if tt in ("INT", "INT UNSIGNED", "BIGINT", "YEAR"):
        return int(value)
    if tt == "BIGINT UNSIGNED":
        n = int(value)
        if cfg.bigint_unsigned_handling_mode == BIGINT_UNSIGNED_STRING:
            return str(n)
        return n - (1 << 64) if n >= 1 << 63 else n  # Go's int64(uint64) wraps
    if tt == "FLOAT":
        return float32(float(value))
    if tt == "DOUBLE":
        return float(value)
    if tt == "DECIMAL":
        d = decimal_at_scale(value, col.scale)
        return d if cfg.decimal_handling_mode == DECIMAL_PRECISE else format(d, "f")
    if tt == "BIT":
        return bit_bytes(int.from_bytes(value, "big") if isinstance(value, (bytes, bytearray)) else int(value))
    if tt == "BLOB":
        return value.encode() if isinstance(value, str) else bytes(value)
    if isinstance(value, str):
        return value
    if tt == "DATE" and isinstance(value, dt.date):
        return value.isoformat()
    if tt in ("DATETIME", "TIMESTAMP") and isinstance(value, dt.datetime):
        return format_datetime(value, col.scale or 0)
    if tt == "TIME" and isinstance(value, dt.timedelta):
        return format_time(value, col.scale or 0)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode()
    if isinstance(value, (set, frozenset)):
        return ",".join(m for m in col.members if m in value)  # SET members in definition order
    return str(value)


def snapshot_datum(info: TableInfo, row: Sequence[Any], cfg: CodecConfig) -> dict[str, Any]:
    """A row (values in `info.columns` order) -> the value datum without the `_tidb_*` extension fields."""
    return {sanitize_name(c.name): snapshot_value(c, v, cfg) for c, v in zip(info.columns, row, strict=True)}
