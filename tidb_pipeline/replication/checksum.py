"""Chunked checksums that compare a TiDB table with its Snowflake replica without moving the rows.

The idea is PingCAP's sync-diff-inspector's: split the table by primary-key ranges, compute per chunk a row
count and an order-independent checksum on *both* sides, and name the chunks that differ. Here both sides
compute the checksum in SQL from one canonical text per row, so the same row gives the same number on
MySQL/TiDB and on Snowflake:

    row text = field(c1) || field(c2) || ...        field(v) = '~' for NULL, else <char length> ':' <text>
    row hash = the first 15 hex digits of MD5(row text), as an integer (60 bits)
    chunk    = COUNT(*), SUM(row hash)                (exact: DECIMAL in MySQL, NUMBER(38,0) in Snowflake)

The length prefix makes the encoding self-delimiting, so no value can fake a column boundary and NULL never
collides with any text (the NULL marker has no ':'). MD5 is used because every engine here computes it
identically; `HASH`/`HASH_AGG` are engine-specific and do not exist in MySQL. MySQL reads the hex digits with
`CONV`; Snowflake with a positional sum over `POSITION(digit IN '0123456789abcdef')` (portable where
`TO_NUMBER(x, 'XXX')` is not), cast to NUMBER(38,0) before summing so the sum stays exact integer arithmetic.

Canonical text per column kind (measured on MariaDB 10/11 and the lab's Snowflake here):
- int, year: the decimal digits. decimal: the digits with the column's scale (`-0.50`); a decimal wider than
  Snowflake's 38 digits is a VARCHAR in the replica holding the same text.
- double: 15 significant digits as `[-]<mantissa digits>e<exponent>` computed with the same arithmetic on
  both sides (`FLOOR(|v| / 10^e * 10^14 + 0.5)`, e the exponent with 10^e <= |v| < 10^(e+1): `FLOOR(LOG(10,
  |v|))` corrected against POWER(10, e) and POWER(10, e + 1) on both sides, as a logarithm may miss an exact
  power of ten by one ulp); zero is `0`.
  float: the same at 6 significant digits, from the value's *text* on the MySQL side (TiDB prints a FLOAT's
  shortest float32 text, MariaDB 6 digits; the replica holds the double of the text TiCDC sent). Limit: a
  FLOAT whose text has 7+ digits ending exactly at a rounding tie may round apart (rare; it shows as a
  differing chunk, never as a false pass). Subnormal doubles (< 1e-308) are not supported.
- date `YYYY-MM-DD`; datetime/timestamp `YYYY-MM-DD HH:MM:SS.ffffff` (TIMESTAMP as the TiDB session's time
  zone shows it, which must be the changefeed's time zone, as TiCDC writes it). A TiDB zero date (zero month
  or day) is NULL, as the merge stores it.
- time: TiDB's text `[-]HH:MM:SS` padded to six fraction digits (the replica keeps TiCDC's text verbatim).
- binary/blob: upper-case hex. bit(M): the hex of ceil(M/8) big-endian bytes, as TiCDC sends BIT.
- json: the JSON text with all whitespace removed. Limits: object key order must agree (TiDB and TiCDC sort
  keys; MariaDB stores JSON as written), and numbers must print alike (`1.0` vs `1`, exponents).
- anything else: the value as text.

Chunks: for a range-splittable first key column (numbers, dates, datetimes) the boundaries are row-count
quantiles read from TiDB (`NTILE`), and chunk i is `lower <= key < upper`. String keys are compared with
different collations by MySQL (case-insensitive by default) and Snowflake (binary), so the same range would
select different rows; such tables are split into hash buckets of the key's canonical text instead.
Each side computes all chunks in one scan (`checksum_chunks.checksums_sql`), grouped by a CASE over the
boundaries.

SQL targets (the built-in SQL applier's and the SQL Server Sink's tables; dialects `mssql` and `postgresql`,
the lab's stand-in) hold what TiCDC's Avro carries, with the JDBC sink's types: dates, datetimes and times as
TiCDC's strings, decimals as decimal(38,s), FLOAT as real, BIT and binaries as varbinary/bytea, JSON as its
text, BIGINT UNSIGNED wrapped into a signed bigint. Their canonical texts are built from those types so the
row text equals MySQL's byte for byte:
- datetime/time strings are padded to six fraction digits; a wrapped BIGINT UNSIGNED (`unsigned_wraps`) is
  unwrapped (+2^64 when negative); binaries are upper-case hex; FLOAT/DOUBLE use the same arithmetic.
- NULL propagates through `||` (PostgreSQL) and `+` (SQL Server), whose CONCAT treats NULL as empty.
- SQL Server has no MD5 over text: `HASHBYTES('MD5', ...)` of the row text converted to UTF-8 through a
  `_UTF8` collation (SQL Server 2019 or later), so it hashes the bytes MySQL hashes; characters are counted
  with `LEN` under that (supplementary-character aware) collation with a sentinel, as LEN ignores trailing
  spaces. The 60-bit number is read from the hash bytes; sums are taken as decimal(38,0) (bigint overflows).
- Range chunks only over numeric key columns (int, decimal): the target's temporal keys are strings.
Column policy (`replication.columns`): an excluded column is in neither side's list (never read); a masked one
is `NULL` on the TiDB side (not read there either) against the replica's value, which must be NULL; a hashed one
is `SHA2(CONCAT(salt, CAST(c AS CHAR)), 256)` on the TiDB side, the salt bound
(`checksum_chunks.checksums_sql(salt=...)`), against the replica's stored hex text, so a hashed column is
verified without its values leaving TiDB.

These statements bind with `%s` and contain no other `%`, so they run through SQLAlchemy's
`exec_driver_sql` on pg8000 (`format`) and python-tds (positional `pyformat`) alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tidb_pipeline.replication.ddl import quote_ident
from tidb_pipeline.resources.tidb import quote_mysql

Dialect = Literal["mysql", "snowflake", "postgresql", "mssql"]
SqlTargetDialect = Literal["postgresql", "mssql"]
SQL_TARGETS: tuple[SqlTargetDialect, ...] = ("postgresql", "mssql")
# A UTF-8, supplementary-character-aware collation: gives MySQL's utf8mb4 bytes and code-point counts.
MSSQL_UTF8_COLLATION = "Latin1_General_100_CI_AS_SC_UTF8"
_TEXT_TYPE = {"postgresql": "text", "mssql": "nvarchar(max)"}
_TWO_TO_64 = 2**64
# Where the TiDB side's hash takes the bound salt: replaced by `%s` after `%` escaping
# (`checksum_chunks._bind_salt`).
_SALT_MARK = "\x01SALT\x01"

NULL_MARKER = "~"
HASH_HEX_DIGITS = 15  # 60 bits per row: a SUM over 2^64 rows still fits NUMBER(38,0)
BUCKET_HEX_DIGITS = 8
_HEX = "'0123456789abcdef'"

_INT = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year", "bool", "boolean"}
_DECIMAL = {"decimal", "numeric"}
_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_DATETIME = {"datetime", "timestamp"}
RANGE_KINDS = frozenset({"int", "decimal", "date", "datetime"})
# In SQL targets temporal values are TiCDC's strings, so only numeric keys can be range-split there.
TARGET_RANGE_KINDS = frozenset({"int", "decimal"})
_TARGET_NUMERIC_TYPES = frozenset({
    "tinyint", "smallint", "int", "integer", "bigint", "decimal", "numeric",
})  # fmt: skip


@dataclass(frozen=True)
class ChecksumColumn:
    """One column as the checksum encodes it; `bits` is M of a BIT(M) column.

    `unsigned_wraps`: a BIGINT UNSIGNED that a SQL target stores as a signed bigint (TiCDC's default `long`
    mode wraps values above 2^63-1); the target side adds 2^64 back to negative values.
    """

    name: str
    kind: str
    bits: int | None = None
    unsigned_wraps: bool = False


def column_kind(source_data_type: str, replica_data_type: str | None = None) -> str:
    """The canonical kind from TiDB's DATA_TYPE, refined by the replica's type (a VARIANT is JSON)."""
    t = source_data_type.lower()
    if (replica_data_type or "").upper() == "VARIANT" or t == "json":
        return "json"
    if t in _INT:
        return "int"
    if t in _DECIMAL:
        return "decimal"
    if t == "float":
        return "float"
    if t in ("double", "real", "double precision"):
        return "double"
    if t == "bit":
        return "bit"
    if t in _BINARY:
        return "binary"
    if t == "date":
        return "date"
    if t in _DATETIME:
        return "datetime"
    if t == "time":
        return "time"
    return "text"


def bit_width(column_type: str) -> int:
    """M of `bit(M)` (TiDB's COLUMN_TYPE); 1 when absent, as in MySQL."""
    inside = column_type.partition("(")[2].partition(")")[0]
    return int(inside) if inside.strip().isdigit() else 1


def checksum_column(name: str, data_type: str, column_type: str, replica_data_type: str | None = None) -> ChecksumColumn:
    kind = column_kind(data_type, replica_data_type)
    return ChecksumColumn(name, kind, bit_width(column_type) if kind == "bit" else None)


def target_checksum_column(name: str, data_type: str, column_type: str, target_data_type: str) -> ChecksumColumn:
    """A source column as a SQL target (SQL Server / PostgreSQL) holds it; `target_data_type` is the target's
    information_schema DATA_TYPE (a BIGINT UNSIGNED in a signed bigint is unwrapped)."""
    kind = column_kind(data_type)
    target = target_data_type.lower()
    wraps = (kind == "int" and data_type.lower() == "bigint" and "unsigned" in column_type.lower()
             and target == "bigint")
    return ChecksumColumn(name, kind, bit_width(column_type) if kind == "bit" else None, wraps)


def target_range_splittable(column: ChecksumColumn, target_data_type: str) -> bool:
    """True when a SQL target can select `lower <= key < upper` with the same rows as MySQL (a number both sides)."""
    return (column.kind in TARGET_RANGE_KINDS and not column.unsigned_wraps
            and target_data_type.lower() in _TARGET_NUMERIC_TYPES)


def chunk_count(source_rows: int, rows_per_chunk: int, max_chunks: int) -> int:
    """How many chunks to split `source_rows` into: about `rows_per_chunk` each, at least 1, at most `max_chunks`."""
    return max(1, min(max_chunks, -(-source_rows // max(1, rows_per_chunk))))


def quote_target(dialect: SqlTargetDialect, name: str) -> str:
    """A quoted identifier for SQL text run as is (no SQLAlchemy `text()`: colons stay unescaped)."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier {name!r}")
    return "[" + name.replace("]", "]]") + "]" if dialect == "mssql" else '"' + name.replace('"', '""') + '"'


def target_table(dialect: SqlTargetDialect, name: str, schema: str | None = None) -> str:
    """`[schema].[name]` / `"schema"."name"` (no schema: the login's default)."""
    return ".".join(quote_target(dialect, p) for p in ([schema, name] if schema else [name]))


def mysql_table(db: str, table: str) -> str:
    return f"{quote_mysql(db)}.{quote_mysql(table)}"


def _ident(dialect: Dialect, name: str) -> str:
    if dialect == "mysql":
        return quote_mysql(name)
    return quote_target(dialect, name) if dialect == "mssql" else quote_ident(name)


def _concat(parts: Sequence[str], dialect: Dialect = "mysql") -> str:
    if len(parts) == 1:
        return parts[0]
    if dialect in SQL_TARGETS:
        # Operators, not CONCAT: theirs treats NULL as '' and SQL Server's takes at most 254 arguments.
        return (" || " if dialect == "postgresql" else " + ").join(f"({p})" for p in parts)
    # CONCAT exists in both and is NULL if any part is; every part here is non-NULL by construction.
    return f"CONCAT({', '.join(parts)})"


def _lit(dialect: Dialect, text: str) -> str:
    """A string literal; N'' on SQL Server so row texts stay nvarchar (non-ASCII survives)."""
    return f"N'{text}'" if dialect == "mssql" else f"'{text}'"


def _cast_text(dialect: Dialect, expr: str) -> str:
    if dialect == "mysql":
        return f"CAST({expr} AS CHAR)"
    return f"CAST({expr} AS {_TEXT_TYPE[dialect]})" if dialect in SQL_TARGETS else f"CAST({expr} AS VARCHAR)"


def _int_text(dialect: Dialect, expr: str) -> str:
    if dialect == "mysql":
        return f"CAST({expr} AS SIGNED)"
    if dialect in SQL_TARGETS:
        return _cast_text(dialect, f"CAST({expr} AS bigint)")
    return f"CAST(CAST({expr} AS NUMBER(38,0)) AS VARCHAR)"


def _log10(dialect: Dialect, a: str) -> str:
    """Base-10 logarithm in each dialect: `LOG(10, x)` in Snowflake and MySQL (Snowflake has no LOG10),
    PostgreSQL's one-argument LOG is base 10, T-SQL's LOG10."""
    if dialect == "postgresql":
        return f"LOG({a})"
    return f"LOG10({a})" if dialect == "mssql" else f"LOG(10, {a})"


def exponent_sql(dialect: Dialect, a: str) -> str:
    """The decimal exponent e of a positive double `a`: the integer with POWER(10, e) <= a < POWER(10, e + 1).

    A logarithm can land just below an exact power of ten (LOG(10, 1000) = 2.9999999999999996 on some engines)
    or just above one, and engines' logarithms differ; FLOOR of it is corrected by comparing `a` with the powers
    themselves, so the result depends only on POWER(10, k), which both sides compute alike (libm's pow in the
    lab's engines; measured for 1e-30..1e30, their neighbours and the extreme doubles, test_checksum), not on
    where the logarithm landed. 10^309 is out of range (an error in MySQL), so the upper power stops at 10^308: no double
    reaches 10^309. Where two engines' POWER differ (10^23 is a rounding tie), a value at that power may differ
    by one exponent: a differing chunk, never a false pass.
    """
    ten = "CAST(10 AS float)" if dialect == "mssql" else "10"
    e = f"FLOOR({_log10(dialect, a)})"
    up = f"CASE WHEN {e} < 308 THEN {e} + 1 ELSE 308 END"
    return (f"({e} + CASE WHEN {a} < POWER({ten}, {e}) THEN -1 "
            f"WHEN {e} < 308 AND {a} >= POWER({ten}, {up}) THEN 1 ELSE 0 END)")


def _significant(dialect: Dialect, v: str, digits: int) -> str:
    """`[-]<digits>e<exp>` of a double, identical arithmetic on every side; zero -> '0'."""
    # SQL Server's POWER returns its first argument's type (int 10 -> 0 for 10^-3).
    exp = exponent_sql(dialect, f"ABS({v})")
    ten = "CAST(10 AS float)" if dialect == "mssql" else "10"
    mantissa = f"FLOOR(ABS({v}) / POWER({ten}, {exp}) * {10 ** (digits - 1)} + 0.5)"
    if dialect == "mysql":
        sign = f"IF({v} < 0, '-', '')"
    elif dialect == "snowflake":
        sign = f"IFF({v} < 0, '-', '')"
    else:
        sign = f"CASE WHEN {v} < 0 THEN {_lit(dialect, '-')} ELSE {_lit(dialect, '')} END"
    text = _concat([sign, _int_text(dialect, mantissa), _lit(dialect, "e"), _int_text(dialect, exp)], dialect)
    return f"CASE WHEN {v} = 0 THEN {_lit(dialect, '0')} ELSE {text} END"


def _time_text(t: str) -> str:
    """Pad TiDB TIME text to six fraction digits (`12:00:00` -> `12:00:00.000000`)."""
    return f"CASE WHEN POSITION('.' IN {t}) = 0 THEN CONCAT({t}, '.000000') ELSE SUBSTR(CONCAT({t}, '000000'), 1, POSITION('.' IN {t}) + 6) END"


def _target_pad_fraction(dialect: SqlTargetDialect, t: str) -> str:
    """`_time_text` for SQL targets (also for their datetime strings); NULL stays NULL."""
    if dialect == "mssql":
        return (f"CASE WHEN CHARINDEX('.', {t}) = 0 THEN {t} + N'.000000' "
                f"ELSE SUBSTRING({t} + N'000000', 1, CHARINDEX('.', {t}) + 6) END")
    return (f"CASE WHEN POSITION('.' IN {t}) = 0 THEN {t} || '.000000' "
            f"ELSE SUBSTR({t} || '000000', 1, POSITION('.' IN {t}) + 6) END")


def _strip_whitespace(dialect: Dialect, t: str) -> str:
    # Character codes, not escapes: backslash escapes in literals differ between engines.
    chars = {"mysql": "CHAR({} USING utf8mb4)", "mssql": "NCHAR({})"}
    for code in (32, 10, 9, 13):
        t = f"REPLACE({t}, {chars.get(dialect, 'CHR({})').format(code)}, {_lit(dialect, '')})"
    return t


def _char_length(dialect: Dialect, v: str) -> str:
    """Characters (code points) of a text, as MySQL's CHAR_LENGTH counts them."""
    if dialect == "mysql":
        return f"CHAR_LENGTH({v})"
    if dialect == "mssql":
        # LEN ignores trailing spaces (hence the sentinel) and counts a surrogate pair once only under an SC collation.
        return f"(LEN(({v} + N'.') COLLATE {MSSQL_UTF8_COLLATION}) - 1)"
    return f"LENGTH({v})"


def _md5_sql(dialect: Dialect, text: str) -> str:
    """MD5 of a text's UTF-8 bytes: hex text, except on SQL Server, where it is the 16 hash bytes."""
    if dialect == "mssql":
        return f"HASHBYTES('MD5', CAST(({text}) COLLATE {MSSQL_UTF8_COLLATION} AS varchar(max)))"
    return f"MD5({text})"


def _target_hex(dialect: SqlTargetDialect, c: str) -> str:
    return f"UPPER(ENCODE({c}, 'hex'))" if dialect == "postgresql" else f"CAST(CONVERT(varchar(max), {c}, 2) AS nvarchar(max))"


def _target_value_text(dialect: SqlTargetDialect, column: ChecksumColumn, c: str) -> str:
    """The canonical text of a column as the SQL applier / SQL Server Sink stored it (see the module docstring)."""
    k = column.kind
    if k == "int" and column.unsigned_wraps:
        wide = "numeric" if dialect == "postgresql" else "decimal(20,0)"
        return _cast_text(dialect, f"CASE WHEN {c} < 0 THEN CAST({c} AS {wide}) + {_TWO_TO_64} ELSE CAST({c} AS {wide}) END")
    if k in ("double", "float"):
        as_double = f"CAST({c} AS {'double precision' if dialect == 'postgresql' else 'float'})"
        return _significant(dialect, as_double, 15 if k == "double" else 6)
    if k in ("datetime", "time"):
        return _target_pad_fraction(dialect, _cast_text(dialect, c))
    if k == "binary":
        return _target_hex(dialect, c)
    if k == "bit":
        width = 2 * (((column.bits or 1) + 7) // 8)
        zeros = f"REPEAT('0', {width})" if dialect == "postgresql" else f"REPLICATE(N'0', {width})"
        return f"RIGHT({_concat([zeros, _target_hex(dialect, c)], dialect)}, {width})"
    if k == "json":
        return _cast_text(dialect, _char_length(dialect, _strip_whitespace(dialect, _cast_text(dialect, c))))
    return _cast_text(dialect, c)  # int, decimal, date (TiCDC's `YYYY-MM-DD`), text


def _escape_percent(sql: str, params: tuple[Any, ...]) -> str:
    """Both drivers interpolate pyformat params with `%`, so literal `%` must be doubled when params exist."""
    return sql.replace("%", "%%") if params else sql


def _snowflake_datetime(c: str) -> str:
    """`YYYY-MM-DD HH:MM:SS.ffffff` from parts, which every engine formats alike (`TO_CHAR` with `FF6` does not)."""

    def two(part: str) -> str:
        return f"LPAD(CAST({part}({c}) AS VARCHAR), 2, '0')"

    # DATEDIFF in microseconds, not DATE_PART(NANOSECOND): a nanosecond count overflows 64 bits past 2262.
    micros = f"LPAD(CAST(DATEDIFF(MICROSECOND, DATE_TRUNC('SECOND', {c}), {c}) AS VARCHAR), 6, '0')"
    return (
        f"CONCAT(TO_CHAR(CAST({c} AS DATE), 'YYYY-MM-DD'), ' ', {two('HOUR')}, ':', {two('MINUTE')}, ':', "
        f"{two('SECOND')}, '.', {micros})"
    )


def value_text_sql(dialect: Dialect, column: ChecksumColumn, ref: str | None = None) -> str:
    """SQL giving the column's canonical text (NULL stays NULL)."""
    c = ref or _ident(dialect, column.name)
    if column.kind in ("hash", "mask"):  # the column policy (module docstring)
        if dialect == "mysql":
            return "NULL" if column.kind == "mask" else f"SHA2(CONCAT({_SALT_MARK}, CAST({c} AS CHAR)), 256)"
        return _cast_text(dialect, c)
    if dialect in SQL_TARGETS:
        return _target_value_text(dialect, column, c)  # type: ignore[arg-type]
    k = column.kind
    my = dialect == "mysql"
    if k == "int":
        return f"CAST({c} AS CHAR)" if my else f"CAST({c} AS VARCHAR)"
    if k == "decimal":
        if my:
            return f"CAST({c} AS CHAR)"
        # Put back the leading zero of NUMBER(p,p) text ('.0277') where an engine drops it (a no-op on Snowflake).
        t = f"CAST({c} AS VARCHAR)"
        return (f"IFF(STARTSWITH({t}, '.'), '0' || {t}, "
                f"IFF(STARTSWITH({t}, '-.'), '-0' || SUBSTR({t}, 2), {t}))")
    if k == "double":
        return _significant(dialect, c, 15)
    if k == "float":
        return _significant(dialect, f"CAST(CAST({c} AS CHAR) AS DOUBLE)" if my else c, 6)
    # A TiDB date with a zero month or day (`0000-00-00`) is NULL in the replica (replication.merge, "Conversions").
    zero = f"MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0"
    if k == "date":
        return f"IF({zero}, NULL, DATE_FORMAT({c}, '%Y-%m-%d'))" if my else f"TO_CHAR({c}, 'YYYY-MM-DD')"
    if k == "datetime":
        return f"IF({zero}, NULL, DATE_FORMAT({c}, '%Y-%m-%d %H:%i:%s.%f'))" if my else _snowflake_datetime(c)
    if k == "time":
        return _time_text(f"CAST({c} AS CHAR)" if my else c)
    if k == "binary":
        return f"HEX({c})" if my else f"HEX_ENCODE({c})"
    if k == "bit":
        # The value's low bytes, zero-padded: drivers and encoders disagree on the byte width of a BIT value.
        width = 2 * (((column.bits or 1) + 7) // 8)
        hexed = f"HEX({c})" if my else f"HEX_ENCODE({c})"
        return f"RIGHT(CONCAT(REPEAT('0', {width}), {hexed}), {width})"
    if k == "json":
        # Object key order differs between engines (MariaDB keeps the written order, TiDB and Snowflake
        # normalise theirs), so JSON is compared by its whitespace-free length: a weaker, order-free proof.
        text = _strip_whitespace(dialect, f"CAST({c} AS CHAR)" if my else f"TO_JSON({c})")
        return f"CAST(CHAR_LENGTH({text}) AS CHAR)" if my else f"CAST(LENGTH({text}) AS VARCHAR)"
    return f"CAST({c} AS CHAR)" if my else f"CAST({c} AS VARCHAR)"


def field_sql(dialect: Dialect, column: ChecksumColumn, text: str | None = None) -> str:
    """`<length>:<text>`, or the NULL marker; `text` is an already canonical text expression, if given."""
    v = text or value_text_sql(dialect, column)
    if dialect in SQL_TARGETS:
        body = _concat([_cast_text(dialect, _char_length(dialect, v)), _lit(dialect, ":"), v], dialect)
        return f"CASE WHEN {v} IS NULL THEN {_lit(dialect, NULL_MARKER)} ELSE {body} END"
    length = f"CHAR_LENGTH({v})" if dialect == "mysql" else f"CAST(LENGTH({v}) AS VARCHAR)"
    return f"COALESCE(CONCAT({length}, ':', {v}), '{NULL_MARKER}')"


def row_text_sql(dialect: Dialect, columns: Sequence[ChecksumColumn]) -> str:
    if not columns:
        raise ValueError("no columns to checksum; the source and replica share no column")
    return _concat([field_sql(dialect, c) for c in columns], dialect)


def hex_number_sql(dialect: Dialect, hex_text: str, digits: int) -> str:
    """The first `digits` lower-case hex digits of `hex_text` as an exact integer.

    On SQL Server `hex_text` is the hash's bytes (`_md5_sql`): whole bytes read as a bigint behind a zero byte
    (never negative), an odd last digit as the high nibble of the next byte.
    """
    if dialect == "mysql":
        return f"CAST(CONV(SUBSTR({hex_text}, 1, {digits}), 16, 10) AS UNSIGNED)"
    if dialect == "postgresql":
        return f"CAST(CAST('x' || SUBSTR({hex_text}, 1, {digits}) AS bit({4 * digits})) AS bigint)"
    if dialect == "mssql":
        if not 1 <= digits <= 15:
            raise ValueError("SQL Server reads at most 15 hex digits (60 bits) into a bigint")
        whole, half = divmod(digits, 2)
        number = f"CAST(0x00 + SUBSTRING({hex_text}, 1, {whole}) AS bigint)" if whole else "CAST(0 AS bigint)"
        return f"({number} * 16 + CAST(SUBSTRING({hex_text}, {whole + 1}, 1) AS int) / 16)" if half else number
    terms = [
        f"(POSITION(SUBSTR({hex_text}, {i + 1}, 1) IN {_HEX}) - 1) * {16 ** (digits - 1 - i)}" for i in range(digits)
    ]
    return f"CAST(({' + '.join(terms)}) AS NUMBER(38,0))"
