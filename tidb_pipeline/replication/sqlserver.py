"""SQL for the built-in SQL Server applier: the JDBC sink's table shape and upserts, per dialect.

The applier does what the Confluent Microsoft SQL Server Sink does with `insert.mode=UPSERT`,
`pk.mode=record_key`, `delete.enabled=true`, `auto.create=true`, `auto.evolve=true` (spec/confluent.md),
so a table it writes looks like the connector's and either can take over from the other:
- Columns come from the Avro *value* schema, types from the Avro type (as the connector sees it through
  the Avro converter), not from `tidb_type`: int -> int, long -> bigint, float -> real, double -> float,
  boolean -> bit, decimal -> decimal(38,s), string -> varchar(max) (varchar(900) in the primary key, the
  longest an index key allows), bytes -> varbinary(max) (varbinary(900) in the key). TiCDC sends dates and
  times as strings, so they land as strings, as with the connector.
- The primary key is the Avro *key* record's fields; upserts are `MERGE ... WITH (HOLDLOCK)` (the lock
  makes MERGE's check-then-insert atomic under concurrency); a tombstone deletes by key.
- New fields in a newer value schema become `ALTER TABLE ... ADD` with the field's Avro default, so rows
  written before the change read as TiDB backfilled them (TiCDC sends no change for those rows).

Deliberate differences from the connector: TiCDC's `_tidb_*` extension fields are metadata, not table
columns, and are left out; only key columns are NOT NULL (a later TiDB schema may relax a column, and the
connector cannot relax one it created NOT NULL).

The same logic emits PostgreSQL for the lab's stand-in (`numeric(38,s)`, `text`, `bytea`,
`INSERT ... ON CONFLICT DO UPDATE`). Every statement is text for `sqlalchemy.text()`: values are bound as
`:rNcM` parameters, identifiers are quoted, and a colon inside an identifier or a DDL default is escaped
so SQLAlchemy does not take it for a parameter. Defaults are the one place a value is written into SQL
(DDL cannot bind); they are rendered from typed Avro defaults with the dialect's string escaping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tidb_pipeline.replication.avro_types import EXTENSION_FIELDS, key_names, load_schema
from tidb_pipeline.resources.sqlserver import Dialect

DIALECTS: tuple[Dialect, ...] = ("mssql", "postgresql")

# The connector (and SQL Server) cap decimals at 38 digits; wider TiDB decimals do not fit either way.
DECIMAL_PRECISION = 38
# SQL Server's index key limit is 900 bytes, hence varchar(900) for string keys.
KEY_LENGTH = 900
OFFSETS_TABLE = "_tidb_pipeline_offsets"

# SQL Server allows 2100 parameters per request and 1000 rows in a VALUES list.
_MAX_PARAMS = {"mssql": 2000, "postgresql": 30000}
_MAX_ROWS = 1000


def check_dialect(dialect: str) -> Dialect:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}; use one of {', '.join(DIALECTS)}")
    return dialect  # type: ignore[return-value]


def _escape_colons(text: str) -> str:
    return text.replace(":", "\\:")


def quote_ident(name: str, dialect: Dialect) -> str:
    """A quoted identifier: [name] for SQL Server, "name" for PostgreSQL."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier {name!r}")
    if dialect == "mssql":
        return "[" + _escape_colons(name.replace("]", "]]")) + "]"
    return '"' + _escape_colons(name.replace('"', '""')) + '"'


@dataclass(frozen=True)
class TargetTable:
    """A table in the target database; `schema` None means the login's default schema."""

    name: str
    schema: str | None = None

    def sql(self, dialect: Dialect) -> str:
        parts = [self.schema, self.name] if self.schema else [self.name]
        return ".".join(quote_ident(p, dialect) for p in parts)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True)
class SqlColumn:
    """One target column: its SQL type in one dialect and its DDL default (already rendered)."""

    name: str
    sql_type: str
    is_key: bool
    nullable: bool
    avro_type: str
    default_sql: str | None = None


# --- types ----------------------------------------------------------------------------------------------
_TYPES: dict[str, dict[Dialect, str]] = {
    "int": {"mssql": "int", "postgresql": "integer"},
    "long": {"mssql": "bigint", "postgresql": "bigint"},
    "float": {"mssql": "real", "postgresql": "real"},
    "double": {"mssql": "float", "postgresql": "double precision"},
    "boolean": {"mssql": "bit", "postgresql": "boolean"},
    "string": {"mssql": "varchar(max)", "postgresql": "text"},
    "bytes": {"mssql": "varbinary(max)", "postgresql": "bytea"},
}
_KEY_TYPES: dict[str, dict[Dialect, str]] = {
    "string": {"mssql": f"varchar({KEY_LENGTH})", "postgresql": f"varchar({KEY_LENGTH})"},
    "bytes": {"mssql": f"varbinary({KEY_LENGTH})", "postgresql": "bytea"},
}


def sql_type(branch: Any, *, is_key: bool, dialect: Dialect, field: str = "?") -> str:
    """The SQL type the JDBC sink would create for one Avro type (the non-null branch of a field)."""
    if isinstance(branch, Mapping):
        avro, logical = branch.get("type"), branch.get("logicalType")
        if logical == "decimal" and avro in ("bytes", "fixed"):
            scale = int(branch.get("scale", 0))
            name = "decimal" if dialect == "mssql" else "numeric"
            return f"{name}({DECIMAL_PRECISION},{scale})"
    else:
        avro = branch
    avro = {"fixed": "bytes", "enum": "string"}.get(avro, avro)
    table = _KEY_TYPES if is_key and avro in _KEY_TYPES else _TYPES
    if avro not in table:
        raise ValueError(
            f"field {field!r} has Avro type {branch!r}, which the SQL Server sink cannot map to a column; "
            "TiCDC only emits primitive types and decimals"
        )
    return table[avro][dialect]


def _branch(field: Mapping[str, Any]) -> tuple[Any, bool]:
    ftype = field["type"]
    if isinstance(ftype, list):
        rest = [b for b in ftype if b != "null"]
        if len(rest) != 1:
            raise ValueError(f"field {field['name']!r} has union type {ftype!r}; TiCDC only emits [null, T] unions")
        return rest[0], True
    return ftype, False


def _avro_name(branch: Any) -> str:
    return branch if isinstance(branch, str) else str(branch.get("type"))


def default_literal(value: Any, avro_type: str, dialect: Dialect) -> str | None:
    """A DDL DEFAULT literal for an Avro default, or None when there is none to render.

    Bytes and decimal defaults are left out: Avro writes them as code-point strings, and TiCDC never gives
    decimals a default.
    """
    if value is None:
        return None
    if avro_type == "boolean" and isinstance(value, bool):
        if dialect == "mssql":
            return "1" if value else "0"
        return "TRUE" if value else "FALSE"
    if avro_type in ("int", "long") and isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    if avro_type in ("float", "double") and isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        return repr(number) if math.isfinite(number) else None
    if avro_type in ("string", "enum") and isinstance(value, str):
        if "\x00" in value:
            return None
        quoted = "'" + _escape_colons(value.replace("'", "''")) + "'"
        return "N" + quoted if dialect == "mssql" else quoted
    return None


def table_columns(
    value_schema: str | Mapping[str, Any], key_schema: str | Mapping[str, Any], dialect: Dialect
) -> tuple[SqlColumn, ...]:
    """Target columns in value-schema order, without TiCDC's `_tidb_*` fields."""
    keys = key_names(key_schema)
    columns: list[SqlColumn] = []
    for field in load_schema(value_schema)["fields"]:
        name = field["name"]
        if name in EXTENSION_FIELDS:
            continue
        branch, nullable = _branch(field)
        is_key = name in keys
        avro = _avro_name(branch)
        logical = branch.get("logicalType") if isinstance(branch, Mapping) else None
        default = None if logical else default_literal(field.get("default"), avro, dialect)
        columns.append(SqlColumn(name, sql_type(branch, is_key=is_key, dialect=dialect, field=name), is_key,
                                 nullable, avro, None if is_key else default))
    missing = set(keys) - {c.name for c in columns}
    if missing:
        raise ValueError(f"key field(s) {sorted(missing)} are not in the value schema; the key and value schemas "
                         "must belong to the same table version")
    return tuple(columns)


# --- DDL ------------------------------------------------------------------------------------------------
def _column_ddl(column: SqlColumn, dialect: Dialect) -> str:
    parts = [quote_ident(column.name, dialect), column.sql_type]
    if column.default_sql is not None:
        parts.append(f"DEFAULT {column.default_sql}")
    parts.append("NOT NULL" if column.is_key else "NULL")
    return " ".join(parts)


def create_table_sql(table: TargetTable, columns: Sequence[SqlColumn], dialect: Dialect) -> str:
    """CREATE TABLE with the key columns as the primary key (the applier checks existence first)."""
    keys = [c for c in columns if c.is_key]
    if not keys:
        raise ValueError(f"table {table.label} has no key columns; pk.mode=record_key needs the Avro key's fields")
    body = [_column_ddl(c, dialect) for c in columns]
    body.append(f"PRIMARY KEY ({', '.join(quote_ident(c.name, dialect) for c in keys)})")
    return f"CREATE TABLE {table.sql(dialect)} (\n  " + ",\n  ".join(body) + "\n)"


def add_column_sql(table: TargetTable, column: SqlColumn, dialect: Dialect) -> str:
    # SQL Server's syntax is `ADD col ...` (no COLUMN keyword); PostgreSQL takes `ADD COLUMN`.
    keyword = "ADD" if dialect == "mssql" else "ADD COLUMN"
    return f"ALTER TABLE {table.sql(dialect)} {keyword} {_column_ddl(column, dialect)}"


def add_columns_sql(
    table: TargetTable, existing: Iterable[str], columns: Sequence[SqlColumn], dialect: Dialect
) -> list[str]:
    """ALTER statements for columns the table lacks (existing names compared case-insensitively, as
    SQL Server's default collation does)."""
    have = {name.lower() for name in existing}
    missing = [c for c in columns if c.name.lower() not in have]
    keys = [c.name for c in missing if c.is_key]
    if keys:
        raise ValueError(
            f"table {table.label} lacks key column(s) {keys}; a primary key cannot be changed by adding columns. "
            "Recreate the table (or point the applier at a new one) after a key change in TiDB"
        )
    return [add_column_sql(table, c, dialect) for c in missing]


# --- DML ------------------------------------------------------------------------------------------------
def param(row: int, col: int) -> str:
    """The bind parameter name of row `row`, column `col` in a multi-row statement."""
    return f"r{row}c{col}"


def rows_per_statement(n_columns: int, dialect: Dialect) -> int:
    """How many rows one multi-row statement may carry within the dialect's parameter limit."""
    return max(1, min(_MAX_ROWS, _MAX_PARAMS[dialect] // max(1, n_columns)))


def _values(n_rows: int, n_cols: int) -> str:
    return ", ".join("(" + ", ".join(f":{param(r, c)}" for c in range(n_cols)) + ")" for r in range(n_rows))


def upsert_sql(
    table: TargetTable, columns: Sequence[str], keys: Sequence[str], dialect: Dialect, *, rows: int = 1
) -> str:
    """Insert-or-update `rows` rows by key; bind `param(r, c)` for row r, column c of `columns`."""
    if not keys or not set(keys) <= set(columns):
        raise ValueError(f"upsert into {table.label} needs its key columns {list(keys)} among {list(columns)}")
    q = [quote_ident(c, dialect) for c in columns]
    qk = [quote_ident(k, dialect) for k in keys]
    rest = [quote_ident(c, dialect) for c in columns if c not in keys]
    values = _values(rows, len(columns))
    if dialect == "mssql":
        # The connector's statement, with a multi-row VALUES source instead of one `SELECT ? AS ...` per row.
        sql = (f"MERGE INTO {table.sql(dialect)} WITH (HOLDLOCK) AS target\n"
               f"USING (VALUES {values}) AS incoming ({', '.join(q)})\n"
               f"ON ({' AND '.join(f'target.{k} = incoming.{k}' for k in qk)})\n")
        if rest:
            sql += f"WHEN MATCHED THEN UPDATE SET {', '.join(f'target.{c} = incoming.{c}' for c in rest)}\n"
        sql += f"WHEN NOT MATCHED THEN INSERT ({', '.join(q)}) VALUES ({', '.join(f'incoming.{c}' for c in q)});"
        return sql
    conflict = (f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in rest)}" if rest else "DO NOTHING")
    return (f"INSERT INTO {table.sql(dialect)} ({', '.join(q)}) VALUES {values}\n"
            f"ON CONFLICT ({', '.join(qk)}) {conflict}")


def delete_sql(table: TargetTable, keys: Sequence[str], dialect: Dialect, *, rows: int = 1) -> str:
    """Delete `rows` keys; bind `param(r, c)` for row r, key column c of `keys`."""
    if not keys:
        raise ValueError(f"delete from {table.label} needs key columns")
    qk = [quote_ident(k, dialect) for k in keys]
    if len(keys) == 1:
        binds = ", ".join(f":{param(r, 0)}" for r in range(rows))
        return f"DELETE FROM {table.sql(dialect)} WHERE {qk[0]} IN ({binds})"
    # Row-value IN is PostgreSQL-only; OR of ANDs reads the same on both.
    match = " OR ".join(
        "(" + " AND ".join(f"{k} = :{param(r, c)}" for c, k in enumerate(qk)) + ")" for r in range(rows)
    )
    return f"DELETE FROM {table.sql(dialect)} WHERE {match}"


def row_params(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Bind values for a multi-row statement from row tuples."""
    return {param(r, c): v for r, row in enumerate(rows) for c, v in enumerate(row)}


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- offsets --------------------------------------------------------------------------------------------
OFFSET_KEY = ("table_name", "topic", "kafka_partition")
OFFSET_COLUMNS = ("table_name", "topic", "kafka_partition", "next_offset")


def offsets_columns(dialect: Dialect) -> tuple[SqlColumn, ...]:
    return (
        SqlColumn("table_name", "varchar(256)", True, False, "string"),
        SqlColumn("topic", "varchar(249)", True, False, "string"),  # Kafka's longest topic name
        SqlColumn("kafka_partition", "int" if dialect == "mssql" else "integer", True, False, "int"),
        SqlColumn("next_offset", "bigint", False, False, "long"),
    )


def create_offsets_sql(table: TargetTable, dialect: Dialect) -> str:
    """The offsets table: the next offset to apply per (target table, topic, partition)."""
    cols = offsets_columns(dialect)
    body = [f"{quote_ident(c.name, dialect)} {c.sql_type} NOT NULL" for c in cols]
    body.append(f"PRIMARY KEY ({', '.join(quote_ident(k, dialect) for k in OFFSET_KEY)})")
    return f"CREATE TABLE {table.sql(dialect)} (\n  " + ",\n  ".join(body) + "\n)"


def select_offsets_sql(table: TargetTable, dialect: Dialect, *, lock: bool = False) -> str:
    """Stored offsets of one target table and topic; binds :table_name and :topic.

    With `lock`, the rows stay locked until the transaction ends, so a concurrent applier waits and then
    sees offsets that moved (and stops) instead of applying the same records again.
    """
    p, o = quote_ident("kafka_partition", dialect), quote_ident("next_offset", dialect)
    where = f"WHERE {quote_ident('table_name', dialect)} = :table_name AND {quote_ident('topic', dialect)} = :topic"
    if dialect == "mssql":
        hint = " WITH (UPDLOCK, HOLDLOCK)" if lock else ""
        return f"SELECT {p}, {o} FROM {table.sql(dialect)}{hint} {where}"
    return f"SELECT {p}, {o} FROM {table.sql(dialect)} {where}" + (" FOR UPDATE" if lock else "")


def offsets_upsert_sql(table: TargetTable, dialect: Dialect, *, rows: int = 1) -> str:
    return upsert_sql(table, OFFSET_COLUMNS, OFFSET_KEY, dialect, rows=rows)
