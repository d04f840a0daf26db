"""Chunks of the chunked checksums (`replication.checksum`): key-range boundaries and hash buckets, the one-scan
checksum statement per side, and the comparison that names the chunks that differ.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tidb_pipeline.replication.ddl import Statement
from tidb_pipeline.resources.tidb import quote_mysql
from tidb_pipeline.replication.checksum import (
    BUCKET_HEX_DIGITS,
    ChecksumColumn,
    Dialect,
    HASH_HEX_DIGITS,
    _SALT_MARK,
    _concat,
    _escape_percent,
    _ident,
    _md5_sql,
    field_sql,
    hex_number_sql,
    mysql_table,
    value_text_sql,
)


@dataclass(frozen=True)
class Chunk:
    """Rows with `lower <= key < upper` (None = unbounded), or hash bucket `bucket` of `buckets`."""

    index: int
    column: str
    lower: Any = None
    upper: Any = None
    bucket: int | None = None
    buckets: int | None = None

    @property
    def label(self) -> str:
        if self.bucket is not None:
            return f"bucket {self.bucket} of {self.buckets} (MD5 of {self.column})"
        parts = []
        if self.lower is not None:
            parts.append(f"{self.column} >= {_literal(self.lower)}")
        if self.upper is not None:
            parts.append(f"{self.column} < {_literal(self.upper)}")
        return " AND ".join(parts) or "all rows"


def _literal(value: Any) -> str:
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return f"'{value.isoformat(sep=' ')}'" if isinstance(value, dt.datetime) else f"'{value.isoformat()}'"
    return repr(value)


def boundaries_sql(db: str, table: str, key_column: str, chunks: int) -> Statement:
    """MySQL/TiDB: the first key value of each of `chunks` equal-row-count tiles (row-count quantiles)."""
    if chunks < 1:
        raise ValueError("chunks must be at least 1")
    k = quote_mysql(key_column)
    return Statement(
        f"SELECT MIN(q.k) FROM (SELECT {k} AS k, NTILE(%s) OVER (ORDER BY {k}) AS tile "
        f"FROM {mysql_table(db, table)}) q GROUP BY q.tile ORDER BY 1",
        (chunks,),
    )


def range_chunks(column: str, tile_starts: Iterable[Any]) -> tuple[Chunk, ...]:
    """Chunks from the tiles' first values: (-inf, b1), [b1, b2), ..., [bn, +inf); duplicates collapse."""
    starts = sorted({v for v in tile_starts if v is not None})[1:]  # the first tile starts at -inf
    bounds: list[Any] = [None, *starts, None]
    return tuple(Chunk(i, column, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1))


def bucket_chunks(column: str, buckets: int) -> tuple[Chunk, ...]:
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    return tuple(Chunk(i, column, bucket=i, buckets=buckets) for i in range(buckets))


def _range_expr(dialect: Dialect, key: ChecksumColumn, chunks: Sequence[Chunk]) -> tuple[str, tuple[Any, ...]]:
    if len(chunks) == 1:
        return "0", ()
    k = _ident(dialect, key.name)
    whens = " ".join(f"WHEN {k} < %s THEN {c.index}" for c in chunks[:-1])
    return f"CASE {whens} ELSE {chunks[-1].index} END", tuple(_bind(c.upper) for c in chunks[:-1])


def _bind(value: Any) -> Any:
    # Both drivers bind these natively; anything else (e.g. bytes) would compare differently anyway.
    if isinstance(value, (int, Decimal, dt.date, dt.datetime, str, float)):
        return value
    raise ValueError(f"cannot use {type(value).__name__} value {value!r} as a chunk boundary")


def checksums_sql(
    dialect: Dialect,
    table: str,
    columns: Sequence[ChecksumColumn],
    key: ChecksumColumn,
    chunks: Sequence[Chunk],
    salt: str | None = None,
) -> Statement:
    """One scan: (chunk index, COUNT(*), SUM(row hash)) per non-empty chunk. `table` is already quoted.
    `salt`: for hashed columns on the TiDB side (bound, never in the text).

    Three layers, so that no long expression is repeated (an SQL transpiler takes seconds per repeat):
    canonical texts per column, then the row's MD5, then the 60-bit number summed per chunk.
    """
    if not chunks:
        raise ValueError("no chunks; pass at least one")
    if key not in columns:
        raise ValueError(f"key column {key.name!r} must be one of the checksummed columns")
    names = [f"v{i}" for i in range(len(columns))]
    texts = ", ".join(f"{value_text_sql(dialect, c)} AS {n}" for c, n in zip(columns, names))
    fields = [field_sql(dialect, c, f"t.{n}") for c, n in zip(columns, names)]
    m = hex_number_sql(dialect, "r.m", HASH_HEX_DIGITS)
    if chunks[0].bucket is not None:
        chunk, params = "0", ()
        key_md5 = f", {_md5_sql(dialect, f't.{names[list(columns).index(key)]}')} AS km"
        group = _mod(dialect, hex_number_sql(dialect, "r.km", BUCKET_HEX_DIGITS), chunks[0].buckets or 1)
    else:
        chunk, params = _range_expr(dialect, key, chunks)
        key_md5, group = "", "r.chunk"
    texts, params = _bind_salt(texts, params, salt, before=True)
    # SQL Server cannot GROUP BY an ordinal (and has no MOD); elsewhere the ordinal avoids repeating the group.
    group_by = group if dialect == "mssql" else "1"
    return Statement(
        f"SELECT {group} AS chunk, COUNT(*), {_sum_sql(dialect, m)} FROM (\n"
        f"  SELECT t.chunk, {_md5_sql(dialect, _concat(fields, dialect))} AS m{key_md5} FROM (\n"
        f"    SELECT {chunk} AS chunk, {texts} FROM {table}\n"
        "  ) t\n"
        f") r GROUP BY {group_by} ORDER BY 1",
        params,
    )


def _bind_salt(texts: str, params: tuple[Any, ...], salt: str | None, *, before: bool) -> tuple[str, tuple[Any, ...]]:
    """`texts` with `%` escaped and each salt mark a `%s`; the salts go after (`before`) or before `params`."""
    n = texts.count(_SALT_MARK)
    if n and salt is None:
        raise ValueError("hashed columns need the salt (checksums_sql(salt=...))")
    salts = (salt,) * n
    bound = params + salts if before else salts + params
    return _escape_percent(texts, bound).replace(_SALT_MARK, "%s"), bound


def _sum_sql(dialect: Dialect, number: str) -> str:
    # SQL Server sums a bigint as a bigint (overflows after 8 rows of 60 bits); the others widen on their own.
    return f"SUM(CAST({number} AS decimal(38,0)))" if dialect == "mssql" else f"SUM({number})"


def _mod(dialect: Dialect, number: str, n: int) -> str:
    # T-SQL's modulo is `%`, which the drivers' parameter formatting would take for a placeholder.
    return f"({number} - ({number} / {n}) * {n})" if dialect == "mssql" else f"MOD({number}, {n})"


def chunk_checksum_sql(dialect: Dialect, table: str, columns: Sequence[ChecksumColumn], chunk: Chunk,
                       salt: str | None = None) -> Statement:
    """(chunk index, COUNT(*), SUM(row hash)) of one range chunk: a bounded scan, to drill into one range."""
    if chunk.bucket is not None:
        raise ValueError("chunk_checksum_sql takes range chunks; use checksums_sql for hash buckets")
    k = _ident(dialect, chunk.column)
    where, params = [], []
    if chunk.lower is not None:
        where.append(f"{k} >= %s")
        params.append(_bind(chunk.lower))
    if chunk.upper is not None:
        where.append(f"{k} < %s")
        params.append(_bind(chunk.upper))
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    names = [f"v{i}" for i in range(len(columns))]
    texts, bound = _bind_salt(", ".join(f"{value_text_sql(dialect, c)} AS {n}" for c, n in zip(columns, names)),
                              tuple(params), salt, before=False)
    fields = [field_sql(dialect, c, f"t.{n}") for c, n in zip(columns, names)]
    return Statement(
        f"SELECT {chunk.index}, COUNT(*), COALESCE({_sum_sql(dialect, hex_number_sql(dialect, 'r.m', HASH_HEX_DIGITS))}, 0) FROM (\n"
        f"  SELECT {_md5_sql(dialect, _concat(fields, dialect))} AS m FROM (SELECT {texts} FROM {table}{cond}) t\n"
        ") r",
        bound,
    )


@dataclass(frozen=True)
class ChunkResult:
    chunk: Chunk
    source_rows: int
    source_sum: int
    replica_rows: int
    replica_sum: int

    @property
    def equal(self) -> bool:
        return self.source_rows == self.replica_rows and self.source_sum == self.replica_sum

    def describe(self) -> str:
        return f"{self.chunk.label}: source {self.source_rows} rows, replica {self.replica_rows} rows"


def parse_checksums(rows: Iterable[Sequence[Any]]) -> dict[int, tuple[int, int]]:
    """{chunk index: (rows, sum)} from `checksums_sql` results (drivers return Decimal or int)."""
    return {int(c): (int(n), int(s or 0)) for c, n, s in rows}


def compare_chunks(
    chunks: Sequence[Chunk], source: Mapping[int, tuple[int, int]], replica: Mapping[int, tuple[int, int]]
) -> tuple[ChunkResult, ...]:
    """Every chunk with both sides' numbers (a chunk absent from a side has 0 rows there)."""
    return tuple(
        ChunkResult(c, *source.get(c.index, (0, 0)), *replica.get(c.index, (0, 0))) for c in chunks
    )
