"""TiCDC Avro schemas -> typed Snowflake replica columns.

The replica's columns are derived from the topic's Avro *value* schema (spec/ticdc-avro.md); which of them
form the key comes from the *key* schema. Every field carries `connect.parameters.tidb_type`, which is what
tells a DATE string from a TEXT string or a BIGINT UNSIGNED long from a BIGINT long.

Type decisions (TiDB -> Snowflake), chosen to keep every value exact:
- INT / INT UNSIGNED -> NUMBER(10,0); BIGINT -> NUMBER(19,0); BIGINT UNSIGNED -> NUMBER(20,0).
  In TiCDC's default `long` mode a BIGINT UNSIGNED above 2^63-1 arrives wrapped negative; the merge adds
  2^64 to negative values of such columns (`unwrap_unsigned` is the same rule in Python).
- FLOAT, DOUBLE -> FLOAT (Snowflake's FLOAT is a double, so a TiDB FLOAT fits exactly).
- DECIMAL(p,s) -> NUMBER(p,s) while p <= 38; wider decimals (TiDB allows 65 digits, and the Snowflake
  connector writes them as JSON strings) and string-mode decimals whose precision the schema does not
  carry -> VARCHAR holding the exact digits.
- TEXT, ENUM, SET -> VARCHAR; BLOB, BIT -> BINARY; JSON -> VARIANT; DATE -> DATE;
  DATETIME, TIMESTAMP -> TIMESTAMP_NTZ(6) (TIMESTAMP arrives in the changefeed's time zone; kept as is);
  YEAR -> NUMBER(4,0).
- TIME -> VARCHAR, TiDB's text `[-]HH:MM:SS[.ffffff]` verbatim. TiDB TIME is a duration from -838:59:59 to
  838:59:59, which Snowflake's TIME (a time of day) cannot hold; clamping or NULLing would silently change
  data, so the exact text is kept and `TO_TIME` is left to readers who know their column is a time of day.
- A tidb_type this module does not know falls back on the Avro type (long -> NUMBER(19,0), string -> VARCHAR,
  bytes -> BINARY, ...), so a new TiDB type degrades to an exact untyped column instead of failing the merge.

Names: the replica carries TiDB's column names, but TiCDC writes Avro field names, which it sanitises
(tiflow `common.SanitizeName`: every character outside `[A-Za-z0-9_]` becomes `_`, a leading non-letter gets a
`_` prefix, so `Mixed Case` arrives as `Mixed_Case`). `ReplicaColumn.field` keeps the Avro name (the JSON
path into the landing row), `name` the replica's. `source_names` maps fields back to TiDB's names; TiCDC
adds no suffix when two columns sanitise alike (goavro then refuses the schema and the changefeed stops), so
a field always comes from exactly one column of its table version.

Only key columns are NOT NULL in the replica: a later schema may relax a column's nullability, and an
`ADD COLUMN ... NOT NULL` on a populated table fails. `ReplicaColumn.nullable` still records the source's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tidb_pipeline.replication.ticdc_schema import sanitize_name

# Fields TiCDC appends with enable-tidb-extension=true; metadata, not table columns.
EXTENSION_FIELDS = frozenset({"_tidb_op", "_tidb_commit_ts", "_tidb_commit_physical_time"})
# Snowflake's NUMBER holds at most 38 digits.
MAX_NUMBER_PRECISION = 38
UNSIGNED_WRAP = 2**64

_INT_TYPES = {"INT": 10, "INT UNSIGNED": 10, "BIGINT": 19, "BIGINT UNSIGNED": 20, "YEAR": 4}
_FIXED_SQL_TYPES = {
    "FLOAT": "FLOAT",
    "DOUBLE": "FLOAT",
    "TEXT": "VARCHAR",
    "ENUM": "VARCHAR",
    "SET": "VARCHAR",
    "TIME": "VARCHAR",
    "BLOB": "BINARY",
    "BIT": "BINARY",
    "JSON": "VARIANT",
    "DATE": "DATE",
    "DATETIME": "TIMESTAMP_NTZ(6)",
    "TIMESTAMP": "TIMESTAMP_NTZ(6)",
}
_AVRO_FALLBACK = {
    "int": "NUMBER(10,0)",
    "long": "NUMBER(19,0)",
    "float": "FLOAT",
    "double": "FLOAT",
    "boolean": "BOOLEAN",
    "string": "VARCHAR",
    "bytes": "BINARY",
}


@dataclass(frozen=True)
class ReplicaColumn:
    """One replica column and what the merge needs to convert its JSON value."""

    name: str
    sql_type: str
    nullable: bool
    tidb_type: str
    is_key: bool
    avro_type: str  # primitive Avro type of the (non-null branch of the) field: int, long, string, bytes, ...
    precision: int | None = None
    scale: int | None = None
    field: str = ""  # the Avro field name TiCDC writes (TiDB's name sanitised); "" = the same as `name`
    # Field names the column had before a rename (replication.schema_changes): rows landed earlier carry those.
    previous_fields: tuple[str, ...] = ()
    # The column policy's treatment (`replication.columns`): "" as replicated, "hash" (a hex SHA-256 VARCHAR of
    # the salt and the value's text), "mask" (always NULL).
    policy: str = ""

    def __post_init__(self) -> None:
        if not self.field:
            object.__setattr__(self, "field", self.name)

    @property
    def wraps_unsigned(self) -> bool:
        """True when values above 2^63-1 arrive wrapped negative (BIGINT UNSIGNED in long mode)."""
        return self.tidb_type == "BIGINT UNSIGNED" and self.avro_type == "long"


def load_schema(schema: str | Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept a schema as registry JSON text or as an already-parsed dict."""
    parsed = json.loads(schema) if isinstance(schema, str) else schema
    if not isinstance(parsed, Mapping) or parsed.get("type") != "record":
        raise ValueError("expected an Avro record schema (TiCDC key or value schema); got something else")
    return parsed


def _field_type(field: Mapping[str, Any]) -> tuple[Any, bool]:
    """(non-null branch, nullable) of a field's type."""
    ftype = field["type"]
    if isinstance(ftype, list):
        branches = [b for b in ftype if b != "null"]
        if len(branches) != 1:
            raise ValueError(
                f"field {field['name']!r} has union type {ftype!r}; TiCDC only emits [null, T] unions"
            )
        return branches[0], len(branches) < len(ftype)
    return ftype, False


def _sql_type(tidb_type: str, avro_type: str, precision: int | None, scale: int | None) -> str:
    if tidb_type in _INT_TYPES:
        return f"NUMBER({_INT_TYPES[tidb_type]},0)"
    if tidb_type == "DECIMAL":
        if precision is not None and precision <= MAX_NUMBER_PRECISION:
            return f"NUMBER({precision},{scale or 0})"
        return "VARCHAR"
    if tidb_type in _FIXED_SQL_TYPES:
        return _FIXED_SQL_TYPES[tidb_type]
    return _AVRO_FALLBACK.get(avro_type, "VARIANT")


def sql_type_of(tidb_type: str, avro_type: str, precision: int | None, scale: int | None) -> str:
    """The replica type of a column as replicated (before a column policy changes it)."""
    return _sql_type(tidb_type, avro_type, precision, scale)


def _column(field: Mapping[str, Any], key_names: set[str]) -> ReplicaColumn:
    branch, nullable = _field_type(field)
    if isinstance(branch, str):
        params: dict[str, Any]
        avro_type, params, precision, scale = branch, {}, None, None
    else:
        avro_type = branch.get("type")
        params = branch.get("connect.parameters") or {}
        precision, scale = branch.get("precision"), branch.get("scale")
        if precision is None and "connect.decimal.precision" in params:
            # Connect-style string decimals may carry the precision as a parameter.
            precision = int(params["connect.decimal.precision"])
            scale = int(params.get("scale", 0))
    tidb_type = str(params.get("tidb_type", "")).upper()
    return ReplicaColumn(
        name=field["name"],
        sql_type=_sql_type(tidb_type, avro_type, precision, scale),
        nullable=nullable,
        tidb_type=tidb_type,
        is_key=field["name"] in key_names,
        avro_type=avro_type,
        precision=precision,
        scale=scale,
    )


def key_names(key_schema: str | Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the handle-key fields, in key-schema order."""
    return tuple(f["name"] for f in load_schema(key_schema)["fields"])


def replica_columns(
    value_schema: str | Mapping[str, Any], key_schema: str | Mapping[str, Any],
    names: Mapping[str, str] | None = None,
) -> tuple[ReplicaColumn, ...]:
    """Replica columns in table order; `_tidb_*` extension fields are left out.

    `names` maps Avro field names to replica column names (TiDB's, see `source_names`); a field it does
    not list keeps its Avro name.
    """
    keys = key_names(key_schema)
    fields = [f for f in load_schema(value_schema)["fields"] if f["name"] not in EXTENSION_FIELDS]
    columns = tuple(_column(f, set(keys)) for f in fields)
    missing = set(keys) - {c.name for c in columns}
    if missing:
        raise ValueError(
            f"key field(s) {sorted(missing)} are not in the value schema; the key and value schemas must "
            "belong to the same table version"
        )
    return with_names(columns, names) if names else columns


def with_names(columns: Sequence[ReplicaColumn], names: Mapping[str, str]) -> tuple[ReplicaColumn, ...]:
    """`columns` renamed by Avro field name (`names`: field -> replica name); unlisted fields keep theirs."""
    out = tuple(replace(c, name=names.get(c.field, c.name)) for c in columns)
    seen: dict[str, str] = {}
    for c in out:
        if c.name in seen:
            raise ValueError(f"fields {seen[c.name]!r} and {c.field!r} both map to replica column {c.name!r}")
        seen[c.name] = c.field
    return out


class ColumnNameError(ValueError):
    """An Avro field cannot be traced back to exactly one TiDB column."""


def source_names(
    fields: Sequence[str], *, replica: Sequence[str] = (), source: Callable[[], Sequence[str]] | None = None,
) -> dict[str, str]:
    """TiDB's column name for each Avro field name: TiCDC's `SanitizeName` reversed.

    A field takes the name of the replica column that sanitises to it, when there is exactly one: a column
    keeps its name once created, and steady-state merges need nothing from TiDB. Otherwise `source()`
    (TiDB's current column names, asked at most once) decides. A field that no current TiDB column
    sanitises to (dropped since this schema version) keeps its Avro name; without `source` every field
    not in the replica does.
    """
    asked: list[Sequence[str]] = []

    def tidb() -> Sequence[str]:
        if not asked:
            asked.append(tuple(source()) if source is not None else ())
        return asked[0]

    out: dict[str, str] = {}
    for f in fields:
        known = [n for n in replica if sanitize_name(n) == f]
        if len(known) == 1:
            out[f] = known[0]
            continue
        found = [n for n in tidb() if sanitize_name(n) == f]
        if len(found) > 1:
            raise ColumnNameError(
                f"TiDB columns {', '.join(repr(n) for n in found)} all become Avro field {f!r}; TiCDC cannot "
                "replicate this table with Avro (the schema would repeat a field): rename all but one of them"
            )
        if found:
            out[f] = found[0]
        elif len(known) > 1:
            raise ColumnNameError(
                f"replica columns {', '.join(repr(n) for n in known)} all match Avro field {f!r} and TiDB has "
                "none of them now: drop or rename the stale replica columns"
            )
        else:
            out[f] = f
    return out


def key_columns(columns: Sequence[ReplicaColumn]) -> tuple[ReplicaColumn, ...]:
    return tuple(c for c in columns if c.is_key)


def unwrap_unsigned(value: int | None) -> int | None:
    """Undo TiCDC's long-mode wrap of a BIGINT UNSIGNED value (negative -> value + 2^64)."""
    if value is not None and value < 0:
        return value + UNSIGNED_WRAP
    return value

