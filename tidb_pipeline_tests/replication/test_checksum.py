"""Checksum SQL: pure shape tests, then the same rows on MariaDB and fakesnow give the same text and sums."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pymysql
import pytest
import snowflake.connector as sf_connector

from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.replication.avro_types import ReplicaColumn
from tidb_pipeline.replication.checksum_chunks import (
    Chunk,
    boundaries_sql,
    bucket_chunks,
    checksums_sql,
    chunk_checksum_sql,
    compare_chunks,
    parse_checksums,
    range_chunks,
)
from tidb_pipeline.replication.checksum import (
    ChecksumColumn,
    checksum_column,
    chunk_count,
    column_kind,
    field_sql,
    hex_number_sql,
    mysql_table,
    row_text_sql,
    target_checksum_column,
    target_range_splittable,
    target_table,
    value_text_sql,
)
from tidb_pipeline.replication.ddl import TableRef, create_replica_sql, quote_ident
from tidb_pipeline.replication.landing import _json_float32
from tidb_pipeline.replication.sqlserver import TargetTable

# --- pure ------------------------------------------------------------------------------------------------


def test_kinds_follow_tidb_types_and_a_variant_replica_means_json() -> None:
    cases = {
        ("bigint", None): "int", ("year", None): "int", ("decimal", "NUMBER"): "decimal",
        ("float", "FLOAT"): "float", ("double", "FLOAT"): "double", ("varchar", "TEXT"): "text",
        ("enum", "TEXT"): "text", ("blob", "BINARY"): "binary", ("bit", "BINARY"): "bit",
        ("date", "DATE"): "date", ("timestamp", "TIMESTAMP_NTZ"): "datetime", ("time", "TEXT"): "time",
        ("json", "VARIANT"): "json", ("longtext", "VARIANT"): "json",  # MariaDB's JSON alias
        ("geometry", "TEXT"): "text",
    }  # fmt: skip
    assert {k: column_kind(*k) for k in cases} == cases
    assert checksum_column("b", "bit", "bit(10)") == ChecksumColumn("b", "bit", 10)
    assert checksum_column("i", "int", "int(11)") == ChecksumColumn("i", "int", None)


def test_field_encoding_is_length_prefixed_with_a_null_marker_on_both_sides() -> None:
    col = ChecksumColumn("na`me\"", "text")
    assert field_sql("mysql", col) == "COALESCE(CONCAT(CHAR_LENGTH(CAST(`na``me\"` AS CHAR)), ':', CAST(`na``me\"` AS CHAR)), '~')"
    assert field_sql("snowflake", col) == (
        "COALESCE(CONCAT(CAST(LENGTH(CAST(\"na`me\"\"\" AS VARCHAR)) AS VARCHAR), ':', CAST(\"na`me\"\"\" AS VARCHAR)), '~')"
    )
    two = [ChecksumColumn("a", "int"), ChecksumColumn("b", "date")]
    assert row_text_sql("mysql", two) == (
        "CONCAT(COALESCE(CONCAT(CHAR_LENGTH(CAST(`a` AS CHAR)), ':', CAST(`a` AS CHAR)), '~'), "
        "COALESCE(CONCAT(CHAR_LENGTH(IF(MONTH(`b`) = 0 OR DAYOFMONTH(`b`) = 0, NULL, DATE_FORMAT(`b`, '%Y-%m-%d'))), "
        "':', IF(MONTH(`b`) = 0 OR DAYOFMONTH(`b`) = 0, NULL, DATE_FORMAT(`b`, '%Y-%m-%d'))), '~'))"
    )  # a zero date is NULL, as the replica stores it
    with pytest.raises(ValueError, match="no columns"):
        row_text_sql("mysql", [])


def test_hex_number_sql() -> None:
    assert hex_number_sql("mysql", "h", 15) == "CAST(CONV(SUBSTR(h, 1, 15), 16, 10) AS UNSIGNED)"
    sf = hex_number_sql("snowflake", "h", 2)
    assert sf == (
        "CAST(((POSITION(SUBSTR(h, 1, 1) IN '0123456789abcdef') - 1) * 16 + "
        "(POSITION(SUBSTR(h, 2, 1) IN '0123456789abcdef') - 1) * 1) AS NUMBER(38,0))"
    )


def test_range_chunks_from_tile_starts() -> None:
    chunks = range_chunks("id", [1, 40, 40, 80, None])
    assert chunks == (
        Chunk(0, "id", None, 40), Chunk(1, "id", 40, 80), Chunk(2, "id", 80, None),
    )  # fmt: skip
    assert [c.label for c in chunks] == ["id < 40", "id >= 40 AND id < 80", "id >= 80"]
    assert range_chunks("id", [5]) == (Chunk(0, "id"),)
    assert range_chunks("id", [5])[0].label == "all rows"
    day = Chunk(1, "d", dt.date(2024, 1, 1), dt.datetime(2024, 2, 1, 3, 4, 5))
    assert day.label == "d >= '2024-01-01' AND d < '2024-02-01 03:04:05'"
    assert bucket_chunks("name", 2)[1].label == "bucket 1 of 2 (MD5 of name)"


def test_boundaries_use_ntile_over_the_key() -> None:
    stmt = boundaries_sql("shop", "or`ders", "id", 8)
    assert stmt.sql == (
        "SELECT MIN(q.k) FROM (SELECT `id` AS k, NTILE(%s) OVER (ORDER BY `id`) AS tile "
        "FROM `shop`.`or``ders`) q GROUP BY q.tile ORDER BY 1"
    )
    assert stmt.params == (8,)
    with pytest.raises(ValueError, match="at least 1"):
        boundaries_sql("a", "b", "id", 0)


def test_checksums_sql_binds_boundaries_and_escapes_percent_only_with_params() -> None:
    cols = [ChecksumColumn("id", "int"), ChecksumColumn("d", "date")]
    ranged = checksums_sql("mysql", "`s`.`t`", cols, cols[0], range_chunks("id", [0, 10, 20]))
    assert ranged.params == (10, 20)
    assert "CASE WHEN `id` < %s THEN 0 WHEN `id` < %s THEN 1 ELSE 2 END AS chunk" in ranged.sql
    assert "'%%Y-%%m-%%d'" in ranged.sql and "'%Y" not in ranged.sql
    single = checksums_sql("mysql", "`s`.`t`", cols, cols[0], range_chunks("id", [0]))
    assert single.params == () and "SELECT 0 AS chunk" in single.sql and "'%Y-%m-%d'" in single.sql
    name = ChecksumColumn("name", "text")
    buckets = checksums_sql("snowflake", '"T"', [name], name, bucket_chunks("name", 4))
    assert buckets.params == ()
    assert buckets.sql.startswith("SELECT MOD(CAST(((POSITION(SUBSTR(r.km, 1, 1) IN '0123456789abcdef') - 1) * 268435456")
    assert ", 4) AS chunk, COUNT(*), SUM(CAST(((POSITION(SUBSTR(r.m, 1, 1)" in buckets.sql
    assert 'MD5(t.v0) AS km FROM (\n    SELECT 0 AS chunk, CAST("name" AS VARCHAR) AS v0 FROM "T"\n  ) t' in buckets.sql
    with pytest.raises(ValueError, match="must be one of"):
        checksums_sql("mysql", "t", cols, name, bucket_chunks("name", 2))
    one = chunk_checksum_sql("snowflake", '"T"', cols, Chunk(1, "id", 10, 20))
    assert one.params == (10, 20) and one.sql.startswith("SELECT 1, COUNT(*), COALESCE(SUM(")
    assert one.sql.endswith('FROM "T" WHERE "id" >= %s AND "id" < %s) t\n) r')
    with pytest.raises(ValueError, match="range chunks"):
        chunk_checksum_sql("mysql", "t", cols, bucket_chunks("id", 2)[0])


def test_compare_chunks_treats_a_missing_chunk_as_empty() -> None:
    chunks = range_chunks("id", [0, 10])
    source = parse_checksums([(0, 3, Decimal(30)), (1, 2, 7)])
    replica = parse_checksums([(0, 3, 30)])
    results = compare_chunks(chunks, source, replica)
    assert [(r.equal, r.describe()) for r in results] == [
        (True, "id < 10: source 3 rows, replica 3 rows"),
        (False, "id >= 10: source 2 rows, replica 0 rows"),
    ]


# --- both engines ---------------------------------------------------------------------------------------

SOURCE_DDL = """CREATE TABLE {table} (
  id BIGINT PRIMARY KEY, c_int INT, c_ubig BIGINT UNSIGNED, c_dec DECIMAL(12,3), c_float FLOAT, c_double DOUBLE,
  c_text VARCHAR(64), c_bin VARBINARY(16), c_bit BIT(10), c_json JSON, c_date DATE, c_dt DATETIME(6),
  c_ts TIMESTAMP(6) NULL DEFAULT NULL, c_time TIME(3), c_year YEAR, c_enum ENUM('a', 'b c')
) DEFAULT CHARSET = utf8mb4"""
COLUMNS = ("id", "c_int", "c_ubig", "c_dec", "c_float", "c_double", "c_text", "c_bin", "c_bit", "c_json", "c_date",
           "c_dt", "c_ts", "c_time", "c_year", "c_enum")  # fmt: skip
# (name, Snowflake type, TiDB type, Avro type) as avro_types maps them; the replica DDL is the pipeline's.
REPLICA_TYPES = [
    ("id", "NUMBER(19,0)", "BIGINT", "long"), ("c_int", "NUMBER(10,0)", "INT", "int"),
    ("c_ubig", "NUMBER(20,0)", "BIGINT UNSIGNED", "long"), ("c_dec", "NUMBER(12,3)", "DECIMAL", "bytes"),
    ("c_float", "FLOAT", "FLOAT", "float"), ("c_double", "FLOAT", "DOUBLE", "double"),
    ("c_text", "VARCHAR", "TEXT", "string"), ("c_bin", "BINARY", "BLOB", "bytes"), ("c_bit", "BINARY", "BIT", "bytes"),
    ("c_json", "VARIANT", "JSON", "string"), ("c_date", "DATE", "DATE", "string"),
    ("c_dt", "TIMESTAMP_NTZ(6)", "DATETIME", "string"), ("c_ts", "TIMESTAMP_NTZ(6)", "TIMESTAMP", "string"),
    ("c_time", "VARCHAR", "TIME", "string"), ("c_year", "NUMBER(4,0)", "YEAR", "int"), ("c_enum", "VARCHAR", "ENUM", "string"),
]  # fmt: skip
REPLICA_COLUMNS = tuple(ReplicaColumn(n, s, n != "id", t, n == "id", a) for n, s, t, a in REPLICA_TYPES)


def sample_rows(n: int = 40) -> list[tuple[Any, ...]]:
    """Rows in source terms; row 0 is all NULLs, the rest vary every type, awkward values included."""
    rows: list[tuple[Any, ...]] = [(0, *([None] * (len(COLUMNS) - 1)))]
    texts = ["", "plain", "a:b~c", "héllo wörld ✓", "4:abcd", "'quoted' \"too\"", "tab\tnew\nline", "~"]
    doubles = [0.0, -0.0, 0.1, -2.5e-300, 1e300, 1.2345678901234567, 123456789.125, -7.0]
    floats = [0.0, 1.1, -3.4e38, 1.234567, 1.5e-30, 123456792.0, 0.33333334, 7.0]
    jsons = ['{"a": 1, "b": [1, 2.5, "x y"]}', "[]", '{"k": {"n": null, "t": true}}', '"str"', "3", "[1, 2, 3]",
             '{"a b": "c:d"}', "{}"]  # fmt: skip
    for i in range(1, n):
        rows.append((
            i * 10,
            (-1) ** i * i * 1_000_003,
            2**64 - i if i % 3 == 0 else i,
            Decimal(f"{(-1) ** i * i * 1234}.{i % 1000:03d}"),
            floats[i % len(floats)],
            doubles[i % len(doubles)],
            texts[i % len(texts)],
            bytes([i % 256, 0, 255, 10][: 1 + i % 4]) if i % 5 else b"",
            (i * 37) % 1024,
            jsons[i % len(jsons)],
            dt.date(2000 + i, 1 + i % 12, 1 + i % 28),
            dt.datetime(2020, 1 + i % 12, 1 + i % 28, i % 24, i % 60, i % 60, (i * 12345) % 1_000_000),
            dt.datetime(2021, 2, 3, 4, 5, 6, i) if i % 2 else None,
            ["-838:59:59.500", "00:00:00", "12:34:56.125", "100:00:01.000", "-00:00:01.250"][i % 5],
            1901 + i,
            ["a", "b c", None][i % 3],
        ))  # fmt: skip
    return rows


def _replica_value(name: str, value: Any) -> tuple[str, Any]:
    """SQL for one value as the merge would have stored it from TiCDC's record (placeholder + bound value)."""
    if value is None:
        return "NULL", None
    if name == "c_float":
        return "%s::FLOAT", float(_json_float32(value))  # TiCDC sends a float32; the landing keeps its text
    if name in ("c_bin", "c_bit"):
        raw = value if isinstance(value, bytes) else value.to_bytes(2, "big")  # BIT(10): 2 big-endian bytes
        return "TO_BINARY(%s, 'HEX')", raw.hex()
    if name == "c_json":
        return "PARSE_JSON(%s)", value
    if name in ("c_dt", "c_ts"):
        return "TO_TIMESTAMP_NTZ(%s)", value.isoformat(sep=" ")
    if name == "c_date":
        return "TO_DATE(%s)", value.isoformat()
    return "%s", value


@pytest.fixture(scope="module")
def tables(mariadb: Service, snowflake: Service, lab_settings: LabSettings) -> Iterator[tuple[Any, Any, str, TableRef]]:
    """The same rows in a MariaDB table (unique database) and in its replica on the lab's fakesnow."""
    name = f"ck_{uuid.uuid4().hex[:10]}"
    src = pymysql.connect(**mariadb.connect_kwargs(), autocommit=True)  # type: ignore[attr-defined]
    sf = sf_connector.connect(**connection_args(lab_settings))
    rows = sample_rows()
    with src.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(SOURCE_DDL.format(table=mysql_table(name, "t")))
        cur.execute("SET time_zone = '+00:00'")
        cur.executemany(f"INSERT INTO {mysql_table(name, 't')} VALUES ({', '.join(['%s'] * len(COLUMNS))})", rows)
    replica = TableRef("S", "T", name.upper())
    cur = sf.cursor()
    cur.execute(f"CREATE DATABASE {quote_ident(replica.database or '')}")
    cur.execute(f"CREATE SCHEMA {quote_ident(replica.database or '')}.{quote_ident(replica.schema)}")
    cur.execute(create_replica_sql(replica, REPLICA_COLUMNS))
    selects, params = [], []
    for row in rows:
        parts = [_replica_value(n, v) for n, v in zip(COLUMNS, row)]
        selects.append("SELECT " + ", ".join(p for p, _ in parts))
        params += [v for p, v in parts if p != "NULL"]
    cur.execute(f"INSERT INTO {replica.sql} " + " UNION ALL ".join(selects), tuple(params))
    yield src, sf, name, replica
    with src.cursor() as c:
        c.execute(f"DROP DATABASE {name}")
    sf.cursor().execute(f"DROP TABLE {replica.sql}")  # fakesnow has no DROP DATABASE
    src.close()
    sf.close()


def _checksum_columns(src: Any, db: str) -> list[ChecksumColumn]:
    types = {n: s for n, s, _t, _a in REPLICA_TYPES}
    with src.cursor() as cur:
        cur.execute("SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_NAME = 't' ORDER BY ORDINAL_POSITION", (db,))  # fmt: skip
        return [checksum_column(n, d, c, types[n].split("(")[0]) for n, d, c in cur.fetchall()]


def test_every_row_has_the_same_canonical_text_and_md5_on_both_engines(tables) -> None:
    src, sf, db, replica = tables
    columns = _checksum_columns(src, db)
    assert [c.kind for c in columns] == ["int", "int", "int", "decimal", "float", "double", "text", "binary", "bit",
                                         "json", "date", "datetime", "datetime", "time", "int", "text"]  # fmt: skip
    with src.cursor() as cur:
        cur.execute(f"SELECT id, {row_text_sql('mysql', columns)} FROM {mysql_table(db, 't')} ORDER BY id")
        mysql_rows = [(int(i), t) for i, t in cur.fetchall()]
    sf_rows = [(int(i), t) for i, t in sf.cursor().execute(
        f"SELECT \"id\", {row_text_sql('snowflake', columns)} FROM {replica.sql} ORDER BY \"id\"").fetchall()]
    assert len(mysql_rows) == 40
    assert sf_rows == mysql_rows
    assert mysql_rows[0] == (0, "1:0" + "~" * 15)
    assert mysql_rows[1][1].startswith("2:10")
    # the positional hex reading in Snowflake equals Python's int(hex, 16)
    text = mysql_rows[3][1]
    got = sf.cursor().execute(f"SELECT {hex_number_sql('snowflake', 'MD5(v.t)', 15)} FROM (SELECT %s AS t) v",
                              (text,)).fetchone()[0]
    assert int(got) == int(hashlib.md5(text.encode()).hexdigest()[:15], 16)


def _powers_of_ten() -> list[float]:
    """Exact powers of ten 1e-30..1e30 (the nearest doubles), their neighbours either side, and negatives."""
    values = []
    for k in range(-30, 31):
        p = float(f"1e{k}")
        values += [p, math.nextafter(p, 0.0), math.nextafter(p, math.inf)]
    extremes = [1.7976931348623157e308, 2.2250738585072014e-308, 1e308, 9.999999999999999e307]
    return values + [-v for v in values[::7]] + extremes


def _python_text(v: float) -> str:
    """The canonical double text computed in Python with the same IEEE arithmetic (`_significant`, 15 digits);
    powers of ten from libm's pow, as both engines here compute POWER (10^23, a tie, is 1.0000000000000001e23)."""
    a = abs(v)
    e = math.floor(math.log10(a))
    e += -1 if a < math.pow(10.0, e) else 1 if e < 308 and a >= math.pow(10.0, e + 1) else 0
    return f"{'-' if v < 0 else ''}{math.floor(a / math.pow(10.0, e) * 10**14 + 0.5)}e{e}"


def test_exponents_of_powers_of_ten_and_neighbours_agree_on_both_engines(
    mariadb: Service, snowflake: Service, lab_settings: LabSettings,
) -> None:
    """`LOG(10, x)` may miss an exact power of ten by an ulp; the corrected exponent is exact on both sides,
    up to the largest double (whose next power of ten is out of range)."""
    values = _powers_of_ten()
    column = ChecksumColumn("v", "double")
    with pymysql.connect(**mariadb.connect_kwargs(), autocommit=True) as src, src.cursor() as cur:  # type: ignore[attr-defined]
        db = f"ck_pow_{uuid.uuid4().hex[:10]}"
        cur.execute(f"CREATE DATABASE {db}")
        try:
            cur.execute(f"CREATE TABLE {db}.p (i INT PRIMARY KEY, v DOUBLE)")
            cur.executemany(f"INSERT INTO {db}.p VALUES (%s, %s)", list(enumerate(values)))
            cur.execute(f"SELECT v FROM {db}.p ORDER BY i")
            assert [r[0] for r in cur.fetchall()] == values  # stored exactly
            cur.execute(f"SELECT {value_text_sql('mysql', column)} FROM {db}.p ORDER BY i")
            mysql_texts = [r[0] for r in cur.fetchall()]
        finally:
            cur.execute(f"DROP DATABASE {db}")
    with sf_connector.connect(**connection_args(lab_settings)) as sf:
        cur = sf.cursor()
        rows = " UNION ALL ".join(f"SELECT {i} AS i, %s::FLOAT AS \"v\"" for i in range(len(values)))
        cur.execute(f"SELECT {value_text_sql('snowflake', column)} FROM ({rows}) ORDER BY i", tuple(values))
        snowflake_texts = [r[0] for r in cur.fetchall()]
    expected = [_python_text(v) for v in values]
    diffs = [(repr(v), e, m, f) for v, e, m, f in zip(values, expected, mysql_texts, snowflake_texts) if not e == m == f]
    assert not diffs, diffs
    assert expected[30 * 3:30 * 3 + 3] == ["100000000000000e0", "1000000000000000e-1", "100000000000000e0"]
    # Each exact power keeps its own exponent (never one less with a 16-digit mantissa), except 1e23: the double
    # nearest 10^23 is below POWER(10, 23) on both engines, so both write it one exponent down, alike.
    powers = {k: expected[(k + 30) * 3] for k in range(-30, 31)}
    assert {k: t for k, t in powers.items() if t != f"100000000000000e{k}"} == {23: "1000000000000000e22"}


def test_chunk_checksums_agree_then_name_the_changed_chunk(tables) -> None:
    src, sf, db, replica = tables
    columns = _checksum_columns(src, db)
    key = columns[0]
    with src.cursor() as cur:
        cur.execute(*_params(boundaries_sql(db, "t", "id", 4)))
        starts = [r[0] for r in cur.fetchall()]
    chunks = range_chunks("id", starts)
    assert [c.label for c in chunks] == ["id < 100", "id >= 100 AND id < 200", "id >= 200 AND id < 300", "id >= 300"]

    def both() -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
        with src.cursor() as cur:
            cur.execute(*_params(checksums_sql("mysql", mysql_table(db, "t"), columns, key, chunks)))
            mine = parse_checksums(cur.fetchall())
        theirs = parse_checksums(sf.cursor().execute(*_params(checksums_sql("snowflake", replica.sql, columns, key, chunks))).fetchall())
        return mine, theirs

    source, rep = both()
    assert source == rep and sorted(n for n, _ in source.values()) == [10, 10, 10, 10]
    sf.cursor().execute(f'UPDATE {replica.sql} SET "c_dec" = "c_dec" + 0.001 WHERE "id" = 250')
    try:
        source, rep = both()
        diff = [r.chunk.label for r in compare_chunks(chunks, source, rep) if not r.equal]
        assert diff == ["id >= 200 AND id < 300"]
        # hash buckets (for keys that cannot be range-split) find it too, and agree elsewhere
        buckets = bucket_chunks("id", 5)
        with src.cursor() as cur:
            cur.execute(*_params(checksums_sql("mysql", mysql_table(db, "t"), columns, key, buckets)))
            b_src = parse_checksums(cur.fetchall())
        b_rep = parse_checksums(sf.cursor().execute(*_params(checksums_sql("snowflake", replica.sql, columns, key, buckets))).fetchall())
        assert sum(n for n, _ in b_src.values()) == 40
        assert len([r for r in compare_chunks(buckets, b_src, b_rep) if not r.equal]) == 1
        one = next(c for c in chunks if c.index == 2)
        with src.cursor() as cur:
            cur.execute(*_params(chunk_checksum_sql("mysql", mysql_table(db, "t"), columns, one)))
            s_one = parse_checksums([cur.fetchone()])
        r_one = parse_checksums([sf.cursor().execute(*_params(chunk_checksum_sql("snowflake", replica.sql, columns, one))).fetchone()])
        assert s_one == {2: source[2]} and r_one == {2: rep[2]}
    finally:
        sf.cursor().execute(f'UPDATE {replica.sql} SET "c_dec" = "c_dec" - 0.001 WHERE "id" = 250')


def _params(stmt) -> tuple[str, Any]:
    return stmt.sql, (stmt.params or None)


# --- SQL targets (the SQL applier's / SQL Server Sink's tables): SQL Server text, PostgreSQL for real --------

ALL_KINDS = [
    ChecksumColumn("id", "int"), ChecksumColumn("u", "int", unsigned_wraps=True), ChecksumColumn("d", "decimal"),
    ChecksumColumn("f", "float"), ChecksumColumn("g", "double"), ChecksumColumn("s", "text"),
    ChecksumColumn("b", "binary"), ChecksumColumn("bt", "bit", 10), ChecksumColumn("j", "json"),
    ChecksumColumn("dd", "date"), ChecksumColumn("ts", "datetime"), ChecksumColumn("tm", "time"),
]  # fmt: skip


def test_target_columns_unwrap_unsigned_bigints_and_range_split_only_numbers() -> None:
    assert target_checksum_column("u", "bigint", "bigint(20) unsigned", "bigint") == ChecksumColumn("u", "int", None, True)
    # string mode (avro-bigint-unsigned-handling-mode=string) keeps the digits: nothing to unwrap
    assert target_checksum_column("u", "bigint", "bigint unsigned", "text") == ChecksumColumn("u", "int")
    assert target_checksum_column("i", "int", "int(10) unsigned", "bigint") == ChecksumColumn("i", "int")
    assert target_checksum_column("b", "bit", "bit(10)", "varbinary") == ChecksumColumn("b", "bit", 10)
    assert target_checksum_column("t", "datetime", "datetime(6)", "varchar").kind == "datetime"
    split = {(c.name, t): target_range_splittable(c, t) for c, t in [
        (ChecksumColumn("i", "int"), "bigint"), (ChecksumColumn("d", "decimal"), "numeric"),
        (ChecksumColumn("d", "decimal"), "decimal"), (ChecksumColumn("u", "int", unsigned_wraps=True), "bigint"),
        (ChecksumColumn("i", "int"), "text"), (ChecksumColumn("dt", "datetime"), "varchar"),
        (ChecksumColumn("dd", "date"), "text"),
    ]}  # fmt: skip
    assert split == {("i", "bigint"): True, ("d", "numeric"): True, ("d", "decimal"): True, ("u", "bigint"): False,
                     ("i", "text"): False, ("dt", "varchar"): False, ("dd", "text"): False}
    assert [chunk_count(n, 100, 8) for n in (0, 1, 100, 101, 10_000)] == [1, 1, 1, 2, 8]
    assert target_table("mssql", "t]x", "dbo") == "[dbo].[t]]x]"
    assert target_table("postgresql", 'a"b:c') == '"a""b:c"'  # run as is, not through text(): ':' stays


def test_target_fields_propagate_null_and_count_characters() -> None:
    col = ChecksumColumn("s", "text")
    assert field_sql("postgresql", col) == (
        "CASE WHEN CAST(\"s\" AS text) IS NULL THEN '~' ELSE (CAST(LENGTH(CAST(\"s\" AS text)) AS text)) || (':') || "
        "(CAST(\"s\" AS text)) END"
    )
    assert field_sql("mssql", col) == (
        "CASE WHEN CAST([s] AS nvarchar(max)) IS NULL THEN N'~' ELSE "
        "(CAST((LEN((CAST([s] AS nvarchar(max)) + N'.') COLLATE Latin1_General_100_CI_AS_SC_UTF8) - 1) AS nvarchar(max)))"
        " + (N':') + (CAST([s] AS nvarchar(max))) END"
    )
    assert value_text_sql("mssql", ChecksumColumn("u", "int", unsigned_wraps=True)) == (
        "CAST(CASE WHEN [u] < 0 THEN CAST([u] AS decimal(20,0)) + 18446744073709551616 ELSE CAST([u] AS decimal(20,0)) "
        "END AS nvarchar(max))"
    )
    assert value_text_sql("postgresql", ChecksumColumn("b", "bit", 10)) == (
        "RIGHT((REPEAT('0', 4)) || (UPPER(ENCODE(\"b\", 'hex'))), 4)"
    )


def test_mssql_checksums_parse_as_tsql_group_by_expressions_and_sum_as_decimal() -> None:
    import sqlglot

    ranged = checksums_sql("mssql", "[dbo].[t]", ALL_KINDS, ALL_KINDS[0], range_chunks("id", [0, 10, 20]))
    buckets = checksums_sql("mssql", "[dbo].[t]", ALL_KINDS, ALL_KINDS[5], bucket_chunks("s", 7))
    one = chunk_checksum_sql("mssql", "[dbo].[t]", ALL_KINDS, Chunk(1, "id", 10, 20))
    for stmt in (ranged, buckets, one):
        # T-SQL that parses (placeholders as the driver sends them), with no '%' besides them
        assert "%" not in stmt.sql.replace("%s", "")
        sqlglot.parse_one(stmt.sql.replace("%s", "@P"), read="tsql")
        assert "HASHBYTES('MD5', CAST((" in stmt.sql and "COLLATE Latin1_General_100_CI_AS_SC_UTF8 AS varchar(max)))" in stmt.sql
        assert "SUM(CAST((CAST(0x00 + SUBSTRING(r.m, 1, 7) AS bigint) * 16 + CAST(SUBSTRING(r.m, 8, 1) AS int) / 16) AS decimal(38,0)))" in stmt.sql
        assert "MD5(" not in stmt.sql.replace("'MD5'", "") and "CONCAT(" not in stmt.sql and "MOD(" not in stmt.sql
        assert "POWER(CAST(10 AS float), (FLOOR(LOG10(ABS(CAST([g] AS float)))) + CASE WHEN ABS(CAST([g] AS float)) < " in stmt.sql
    assert ranged.params == (10, 20) and "CASE WHEN [id] < %s THEN 0 WHEN [id] < %s THEN 1 ELSE 2 END AS chunk" in ranged.sql
    assert ranged.sql.endswith(") r GROUP BY r.chunk ORDER BY 1")
    bucket = "(CAST(0x00 + SUBSTRING(r.km, 1, 4) AS bigint) - (CAST(0x00 + SUBSTRING(r.km, 1, 4) AS bigint) / 7) * 7)"
    assert buckets.sql.startswith(f"SELECT {bucket} AS chunk, COUNT(*), ") and buckets.sql.endswith(f"GROUP BY {bucket} ORDER BY 1")
    assert "HASHBYTES('MD5', CAST((t.v5) COLLATE Latin1_General_100_CI_AS_SC_UTF8 AS varchar(max))) AS km" in buckets.sql


def test_mssql_hash_bytes_read_as_the_same_60_bit_number() -> None:
    # The T-SQL reads bytes, MySQL reads hex digits: the same arithmetic in Python must agree on both readings.
    assert hex_number_sql("mssql", "h", 15) == "(CAST(0x00 + SUBSTRING(h, 1, 7) AS bigint) * 16 + CAST(SUBSTRING(h, 8, 1) AS int) / 16)"
    assert hex_number_sql("mssql", "h", 8) == "CAST(0x00 + SUBSTRING(h, 1, 4) AS bigint)"
    for text in ("", "1:0~~", "héllo ✓", "x" * 1000):
        h = hashlib.md5(text.encode()).digest()
        assert int.from_bytes(b"\x00" + h[:7], "big") * 16 + h[7] // 16 == int(h.hex()[:15], 16) < 2**63
        assert int.from_bytes(b"\x00" + h[:4], "big") == int(h.hex()[:8], 16)
    with pytest.raises(ValueError, match="at most 15"):
        hex_number_sql("mssql", "h", 16)


@pytest.fixture(scope="module")
def pg_tables(mariadb: Service, postgres: Service) -> Iterator[tuple[Any, Any, str, TargetTable]]:
    """The sample rows in MariaDB, and in PostgreSQL as the SQL applier writes them: its DDL from TiCDC's Avro
    schemas (ticdc_schema, as the lab change feed registers them) and TiCDC's datums for the rows."""
    import sqlalchemy as sa

    from tidb_pipeline.replication import sqlserver as sq
    from tidb_pipeline.replication.ticdc_schema import CodecConfig, key_schema, snapshot_datum, table_info, value_schema

    name = f"ckpg_{uuid.uuid4().hex[:10]}"
    src = pymysql.connect(**mariadb.connect_kwargs(), autocommit=True)  # type: ignore[attr-defined]
    engine = sa.create_engine(postgres.sqlalchemy_url().replace("postgresql://", "postgresql+pg8000://", 1))  # type: ignore[attr-defined]
    with src.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(SOURCE_DDL.format(table=mysql_table(name, "t")))
        cur.execute("SET time_zone = '+00:00'")
        cur.executemany(f"INSERT INTO {mysql_table(name, 't')} VALUES ({', '.join(['%s'] * len(COLUMNS))})", sample_rows())
    with pymysql.connect(**mariadb.connect_kwargs(), cursorclass=pymysql.cursors.DictCursor) as dconn, dconn.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute("SELECT * FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 't' "
                    "ORDER BY ORDINAL_POSITION", (name,))
        column_rows = cur.fetchall()
        cur.execute("SELECT INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME FROM information_schema.STATISTICS "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 't'", (name,))
        index_rows = cur.fetchall()
    cfg = CodecConfig()
    info = table_info(name, "t", column_rows, index_rows, json_columns=["c_json"])
    columns = sq.table_columns(value_schema(info, cfg), key_schema(info, cfg), "postgresql")
    target = TargetTable("t", name)
    with src.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(f"SELECT * FROM {mysql_table(name, 't')} ORDER BY id")
        datums = [snapshot_datum(info, row, cfg) for row in cur.fetchall()]
    names = [c.name for c in columns]
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        conn.execute(sa.text(sq.create_table_sql(target, columns, "postgresql")))
        conn.execute(sa.text(sq.upsert_sql(target, names, ["id"], "postgresql", rows=len(datums))),
                     sq.row_params([tuple(d[n] for n in names) for d in datums]))
    yield src, engine, name, target
    with src.cursor() as c:
        c.execute(f"DROP DATABASE {name}")
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()
    src.close()


def _target_columns(src: Any, db: str, engine: Any, target: TargetTable) -> list[ChecksumColumn]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        types = dict(conn.execute(sa.text("SELECT column_name, data_type FROM information_schema.columns "
                                          "WHERE table_schema = :s AND table_name = :t"), {"s": target.schema, "t": target.name}).all())
    with src.cursor() as cur:
        cur.execute("SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_NAME = 't' ORDER BY ORDINAL_POSITION", (db,))  # fmt: skip
        # MariaDB's JSON is a LONGTEXT alias; TiDB reports `json` itself.
        return [target_checksum_column(n, "json" if n == "c_json" else d, c, types[n]) for n, d, c in cur.fetchall()]


def test_postgresql_rows_have_mysqls_canonical_text_and_md5(pg_tables) -> None:
    src, engine, db, target = pg_tables
    columns = _target_columns(src, db, engine, target)
    assert [(c.kind, c.unsigned_wraps) for c in columns][:3] == [("int", False), ("int", False), ("int", True)]
    assert [c.kind for c in columns][3:] == ["decimal", "float", "double", "text", "binary", "bit", "json", "date",
                                             "datetime", "datetime", "time", "int", "text"]  # fmt: skip
    with src.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(f"SELECT id, {row_text_sql('mysql', columns)} FROM {mysql_table(db, 't')} ORDER BY id")
        mysql_rows = [(int(i), t) for i, t in cur.fetchall()]
    table = target_table("postgresql", target.name, target.schema)
    with engine.connect() as conn:
        pg_rows = [(int(i), t) for i, t in conn.exec_driver_sql(
            f'SELECT "id", {row_text_sql("postgresql", columns)} FROM {table} ORDER BY "id"').fetchall()]
        got = conn.exec_driver_sql(f"SELECT {hex_number_sql('postgresql', 'MD5(v.t)', 15)} FROM (SELECT %s AS t) v",
                                   (mysql_rows[3][1],)).scalar_one()
    assert len(mysql_rows) == 40
    assert pg_rows == mysql_rows
    assert int(got) == int(hashlib.md5(mysql_rows[3][1].encode()).hexdigest()[:15], 16)


def test_postgresql_chunk_checksums_agree_then_name_the_changed_chunk(pg_tables) -> None:
    import sqlalchemy as sa

    src, engine, db, target = pg_tables
    columns = _target_columns(src, db, engine, target)
    key = columns[0]
    table = target_table("postgresql", target.name, target.schema)
    with src.cursor() as cur:
        cur.execute(*_params(boundaries_sql(db, "t", "id", 4)))
        chunks = range_chunks("id", [r[0] for r in cur.fetchall()])
    buckets = bucket_chunks("id", 5)

    def both(chunks: Any) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
        with src.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.execute(*_params(checksums_sql("mysql", mysql_table(db, "t"), columns, key, chunks)))
            mine = parse_checksums(cur.fetchall())
        stmt = checksums_sql("postgresql", table, columns, key, chunks)
        with engine.connect() as conn:
            theirs = parse_checksums(conn.exec_driver_sql(stmt.sql, stmt.params).fetchall())
        return mine, theirs

    source, rep = both(chunks)
    assert source == rep and sorted(n for n, _ in source.values()) == [10, 10, 10, 10]
    b_src, b_rep = both(buckets)
    assert b_src == b_rep and sum(n for n, _ in b_src.values()) == 40
    with engine.begin() as conn:
        before = conn.execute(sa.text(f'SELECT "c_time" FROM {table} WHERE "id" = 250')).scalar_one()
        conn.execute(sa.text(f'UPDATE {table} SET "c_time" = \'12:34:56.126\' WHERE "id" = 250'))
    try:
        source, rep = both(chunks)
        assert [r.chunk.label for r in compare_chunks(chunks, source, rep) if not r.equal] == ["id >= 200 AND id < 300"]
        b_src, b_rep = both(buckets)
        assert len([r for r in compare_chunks(buckets, b_src, b_rep) if not r.equal]) == 1
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'UPDATE {table} SET "c_time" = :v WHERE "id" = 250'), {"v": before})
    assert both(chunks)[0] == both(chunks)[1]
