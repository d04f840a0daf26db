"""SQL text of the built-in SQL Server applier, per dialect.

No SQL Server runs here (no Docker, no Linux package in reach), so the SQL Server statements are checked
as text against what spec/confluent.md documents for the Microsoft SQL Server Sink: upserts as
`MERGE ... WITH (HOLDLOCK)`, auto-created types decimal -> decimal(38,s), string -> varchar(max)
(varchar(900) in a primary key), bytes -> varbinary(max), and the primary key from the record key. The
PostgreSQL statements are checked as text here and executed for real against the lab's PostgreSQL in
tidb_pipeline_tests/engine/test_sqlserver_applier.py.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql, postgresql

from tidb_pipeline.replication import sqlserver as sql
from tidb_pipeline.replication.sqlserver import SqlColumn, TargetTable
from tidb_pipeline_tests.replication.support import field, record, with_extension

DECIMAL = {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}

# The spec's example table (spec/ticdc-avro.md) plus one column per remaining Avro type TiCDC emits.
KEY = record("t", [field("id", "long", "BIGINT")])
VALUE = with_extension(record("t", [
    field("id", "long", "BIGINT"),
    field("name", "string", "TEXT", nullable=True),
    field("price", DECIMAL, "DECIMAL"),
    {"default": 1, "name": "flag", "type": {"type": "int", "connect.parameters": {"tidb_type": "INT"}}},
    field("ratio", "float", "FLOAT", nullable=True),
    field("score", "double", "DOUBLE", nullable=True),
    field("payload", "bytes", "BLOB", nullable=True),
    field("born", "string", "DATE", nullable=True),
    {"default": "it's: new", "name": "note",
     "type": [{"type": "string", "connect.parameters": {"tidb_type": "TEXT"}}, "null"]},
]))


def test_columns_follow_the_sink_type_mapping_in_both_dialects() -> None:
    assert sql.table_columns(VALUE, KEY, "mssql") == (
        SqlColumn("id", "bigint", True, False, "long"),
        SqlColumn("name", "varchar(max)", False, True, "string"),
        SqlColumn("price", "decimal(38,2)", False, False, "bytes"),
        SqlColumn("flag", "int", False, False, "int", "1"),
        SqlColumn("ratio", "real", False, True, "float"),
        SqlColumn("score", "float", False, True, "double"),
        SqlColumn("payload", "varbinary(max)", False, True, "bytes"),
        SqlColumn("born", "varchar(max)", False, True, "string"),  # TiCDC sends DATE as a string
        SqlColumn("note", "varchar(max)", False, True, "string", "N'it''s\\: new'"),
    )
    assert [(c.name, c.sql_type, c.default_sql) for c in sql.table_columns(VALUE, KEY, "postgresql")] == [
        ("id", "bigint", None), ("name", "text", None), ("price", "numeric(38,2)", None), ("flag", "integer", "1"),
        ("ratio", "real", None), ("score", "double precision", None), ("payload", "bytea", None),
        ("born", "text", None), ("note", "text", "'it''s\\: new'"),
    ]


def test_string_and_bytes_keys_fit_an_index() -> None:
    key = record("k", [field("code", "string", "TEXT"), field("raw", "bytes", "BLOB")])
    value = record("k", [field("code", "string", "TEXT"), field("raw", "bytes", "BLOB"),
                         field("v", "string", "TEXT", nullable=True)])
    assert [c.sql_type for c in sql.table_columns(value, key, "mssql")] == [
        "varchar(900)", "varbinary(900)", "varchar(max)"]
    assert [c.sql_type for c in sql.table_columns(value, key, "postgresql")] == ["varchar(900)", "bytea", "text"]


def test_create_table_mssql_has_record_key_primary_key() -> None:
    columns = sql.table_columns(VALUE, KEY, "mssql")
    assert sql.create_table_sql(TargetTable("tidb_test_t", "dbo"), columns, "mssql") == (
        "CREATE TABLE [dbo].[tidb_test_t] (\n"
        "  [id] bigint NOT NULL,\n"
        "  [name] varchar(max) NULL,\n"
        "  [price] decimal(38,2) NULL,\n"
        "  [flag] int DEFAULT 1 NULL,\n"
        "  [ratio] real NULL,\n"
        "  [score] float NULL,\n"
        "  [payload] varbinary(max) NULL,\n"
        "  [born] varchar(max) NULL,\n"
        "  [note] varchar(max) DEFAULT N'it''s\\: new' NULL,\n"
        "  PRIMARY KEY ([id])\n"
        ")"
    )


def test_create_table_needs_a_key() -> None:
    with pytest.raises(ValueError, match="no key columns"):
        sql.create_table_sql(TargetTable("t"), [SqlColumn("v", "int", False, True, "int")], "mssql")


def test_merge_with_holdlock_mssql() -> None:
    table = TargetTable("t", "dbo")
    assert sql.upsert_sql(table, ["id", "name", "price"], ["id"], "mssql", rows=2) == (
        "MERGE INTO [dbo].[t] WITH (HOLDLOCK) AS target\n"
        "USING (VALUES (:r0c0, :r0c1, :r0c2), (:r1c0, :r1c1, :r1c2)) AS incoming ([id], [name], [price])\n"
        "ON (target.[id] = incoming.[id])\n"
        "WHEN MATCHED THEN UPDATE SET target.[name] = incoming.[name], target.[price] = incoming.[price]\n"
        "WHEN NOT MATCHED THEN INSERT ([id], [name], [price]) VALUES (incoming.[id], incoming.[name], "
        "incoming.[price]);"
    )
    # A table of key columns only has nothing to update.
    assert sql.upsert_sql(table, ["a", "b"], ["a", "b"], "mssql") == (
        "MERGE INTO [dbo].[t] WITH (HOLDLOCK) AS target\n"
        "USING (VALUES (:r0c0, :r0c1)) AS incoming ([a], [b])\n"
        "ON (target.[a] = incoming.[a] AND target.[b] = incoming.[b])\n"
        "WHEN NOT MATCHED THEN INSERT ([a], [b]) VALUES (incoming.[a], incoming.[b]);"
    )


def test_upsert_postgresql_on_conflict() -> None:
    table = TargetTable("t", "s")
    assert sql.upsert_sql(table, ["id", "name"], ["id"], "postgresql", rows=2) == (
        'INSERT INTO "s"."t" ("id", "name") VALUES (:r0c0, :r0c1), (:r1c0, :r1c1)\n'
        'ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name"'
    )
    assert sql.upsert_sql(table, ["a"], ["a"], "postgresql") == (
        'INSERT INTO "s"."t" ("a") VALUES (:r0c0)\nON CONFLICT ("a") DO NOTHING'
    )
    with pytest.raises(ValueError, match="key columns"):
        sql.upsert_sql(table, ["name"], ["id"], "postgresql")


def test_delete_by_key() -> None:
    assert sql.delete_sql(TargetTable("t", "dbo"), ["id"], "mssql", rows=3) == (
        "DELETE FROM [dbo].[t] WHERE [id] IN (:r0c0, :r1c0, :r2c0)")
    # SQL Server has no row-value IN; OR of ANDs works in both dialects.
    assert sql.delete_sql(TargetTable("t"), ["w", "d"], "postgresql", rows=2) == (
        'DELETE FROM "t" WHERE ("w" = :r0c0 AND "d" = :r0c1) OR ("w" = :r1c0 AND "d" = :r1c1)')
    assert sql.row_params([(1, "a"), (2, "b")]) == {"r0c0": 1, "r0c1": "a", "r1c0": 2, "r1c1": "b"}


def test_add_columns_only_what_is_missing() -> None:
    columns = sql.table_columns(VALUE, KEY, "mssql")
    # Names match ignoring case, as in SQL Server's default collation (and TiDB's column names).
    existing = ["ID", "name", "price", "flag", "ratio", "score", "payload"]
    assert sql.add_columns_sql(TargetTable("t", "dbo"), existing, columns, "mssql") == [
        "ALTER TABLE [dbo].[t] ADD [born] varchar(max) NULL",
        "ALTER TABLE [dbo].[t] ADD [note] varchar(max) DEFAULT N'it''s\\: new' NULL",
    ]
    pg_columns = sql.table_columns(VALUE, KEY, "postgresql")
    assert sql.add_columns_sql(TargetTable("t"), existing, pg_columns, "postgresql") == [
        'ALTER TABLE "t" ADD COLUMN "born" text NULL',
        "ALTER TABLE \"t\" ADD COLUMN \"note\" text DEFAULT 'it''s\\: new' NULL",
    ]
    with pytest.raises(ValueError, match="lacks key column"):
        sql.add_columns_sql(TargetTable("t"), ["name"], columns, "mssql")


@pytest.mark.parametrize(("value", "avro", "mssql_lit", "pg_lit"), [
    (True, "boolean", "1", "TRUE"),
    (-7, "long", "-7", "-7"),
    (1.5, "double", "1.5", "1.5"),
    (float("nan"), "double", None, None),
    ("O'Brien", "string", "N'O''Brien'", "'O''Brien'"),
    ("12:30", "string", "N'12\\:30'", "'12\\:30'"),
    (None, "string", None, None),
    ("\x00", "string", None, None),
    ("abc", "bytes", None, None),  # Avro bytes defaults are code-point strings: left out
    (True, "int", None, None),  # a default of the wrong type is not rendered
])
def test_default_literals(value: object, avro: str, mssql_lit: str | None, pg_lit: str | None) -> None:
    assert sql.default_literal(value, avro, "mssql") == mssql_lit
    assert sql.default_literal(value, avro, "postgresql") == pg_lit


def test_identifiers_are_quoted_and_colons_do_not_become_parameters() -> None:
    assert sql.quote_ident("a]b", "mssql") == "[a]]b]"
    assert sql.quote_ident('a"b', "postgresql") == '"a""b"'
    statement = sql.upsert_sql(TargetTable("t"), ["id", "x:y"], ["id"], "postgresql")
    compiled = sa.text(statement).compile(dialect=postgresql.dialect())
    assert set(compiled.params) == {"r0c0", "r0c1"}
    assert '"x:y"' in str(compiled)
    ddl = sql.add_columns_sql(TargetTable("t"), ["id"], [SqlColumn("t:1", "text", False, True, "string", "'a:b'")],
                              "mssql")[0]
    assert set(sa.text(ddl).compile(dialect=mssql.dialect()).params) == set()
    assert str(sa.text(ddl).compile(dialect=mssql.dialect())) == "ALTER TABLE [t] ADD [t:1] text DEFAULT 'a:b' NULL"
    with pytest.raises(ValueError, match="invalid SQL identifier"):
        sql.quote_ident("", "mssql")


def test_statement_sizes_stay_within_sql_server_limits() -> None:
    for n_cols in (1, 3, 21, 2000, 5000):
        rows = sql.rows_per_statement(n_cols, "mssql")
        assert 1 <= rows <= 1000
        assert rows * n_cols <= 2100 or rows == 1  # 2100 parameters per request; one row always goes
    assert sql.rows_per_statement(2, "mssql") == 1000 and sql.rows_per_statement(21, "mssql") == 95
    assert list(sql.chunks([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]


def test_offsets_table_and_locking_reads() -> None:
    off = TargetTable(sql.OFFSETS_TABLE, "dbo")
    assert sql.create_offsets_sql(off, "mssql") == (
        "CREATE TABLE [dbo].[_tidb_pipeline_offsets] (\n"
        "  [table_name] varchar(256) NOT NULL,\n  [topic] varchar(249) NOT NULL,\n"
        "  [kafka_partition] int NOT NULL,\n  [next_offset] bigint NOT NULL,\n"
        "  PRIMARY KEY ([table_name], [topic], [kafka_partition])\n)"
    )
    assert sql.select_offsets_sql(off, "mssql", lock=True) == (
        "SELECT [kafka_partition], [next_offset] FROM [dbo].[_tidb_pipeline_offsets] WITH (UPDLOCK, HOLDLOCK) "
        "WHERE [table_name] = :table_name AND [topic] = :topic"
    )
    assert sql.select_offsets_sql(TargetTable("o"), "postgresql", lock=True).endswith(" FOR UPDATE")
    assert "FOR UPDATE" not in sql.select_offsets_sql(TargetTable("o"), "postgresql")
    assert sql.offsets_upsert_sql(off, "mssql").startswith("MERGE INTO [dbo].[_tidb_pipeline_offsets] WITH (HOLDLOCK)")


def test_unmappable_types_and_dialects_are_named() -> None:
    value = record("t", [field("id", "long", "BIGINT"), {"name": "m", "type": {"type": "map", "values": "string"}}])
    with pytest.raises(ValueError, match="field 'm'"):
        sql.table_columns(value, KEY, "mssql")
    with pytest.raises(ValueError, match="unknown SQL dialect 'oracle'"):
        sql.check_dialect("oracle")
    with pytest.raises(ValueError, match=r"key field\(s\) \['id'\]"):
        sql.table_columns(record("t", [field("v", "int", "INT")]), KEY, "mssql")
