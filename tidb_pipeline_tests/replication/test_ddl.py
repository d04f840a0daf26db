import re

from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns
from tidb_pipeline.replication.ddl import (
    TableRef,
    add_columns_sql,
    create_dead_letter_sql,
    create_landing_sql,
    create_replica_sql,
    create_watermark_sql,
    quote_ident,
    stage_folder,
    table_columns_sql,
)
from tidb_pipeline_tests.replication.support import field, fake_snowflake, record

ODD = TableRef("S", 'my-Table "x" 1', database="DB")


def test_quote_ident_keeps_case_and_doubles_quotes():
    assert [quote_ident(n) for n in ("id", "Order", "a b-c", 'q"x')] == ['"id"', '"Order"', '"a b-c"', '"q""x"']
    assert ODD.sql == '"DB"."S"."my-Table ""x"" 1"'
    assert ODD.label == 'DB.S.my-Table "x" 1'


def test_replica_ddl_text():
    columns = (
        ReplicaColumn("Order", "NUMBER(19,0)", False, "BIGINT", True, "long"),
        ReplicaColumn("select", "VARCHAR", True, "TEXT", False, "string"),
        ReplicaColumn("a b", "NUMBER(10,2)", False, "DECIMAL", False, "bytes", 10, 2),
    )
    assert create_replica_sql(TableRef("S", "T"), columns) == (
        'CREATE TABLE IF NOT EXISTS "S"."T" (\n'
        '  "Order" NUMBER(19,0) NOT NULL,\n'
        '  "select" VARCHAR,\n'
        '  "a b" NUMBER(10,2),\n'
        '  PRIMARY KEY ("Order")\n'
        ")"
    )


def test_all_ddl_runs_twice_on_fakesnow_with_awkward_names():
    key = record("t", [field("Order", "long", "BIGINT"), field("select", "string", "TEXT")])
    value = record(
        "t", [field("Order", "long", "BIGINT"), field("select", "string", "TEXT"), field("MixedCase", "int", "INT", nullable=True)]
    )
    columns = replica_columns(value, key)
    with fake_snowflake() as conn:
        cur = conn.cursor()
        for _ in range(2):  # IF NOT EXISTS: idempotent
            for sql in (
                create_replica_sql(ODD, columns),
                create_landing_sql(TableRef("S", "LANDING x")),
                create_watermark_sql(TableRef("S", "WM")),
                create_dead_letter_sql(TableRef("S", "DLQ")),
            ):
                cur.execute(sql)
        cur.execute(f'INSERT INTO {ODD.sql} ("Order", "select", "MixedCase") VALUES (1, %s, 2)', ("x",))
        cur.execute(f"SELECT * FROM {ODD.sql}")
        assert [tuple(r) for r in cur.fetchall()] == [(1, "x", 2)]
        stmt = table_columns_sql(ODD)
        cur.execute(stmt.sql, stmt.params)
        assert [r[0] for r in cur.fetchall()] == ["Order", "select", "MixedCase"]
        cur.execute('SELECT * FROM "S"."LANDING x"')
        assert [d.name for d in cur.description] == ["RECORD_METADATA", "RECORD_CONTENT"]
        cur.execute('SELECT * FROM "S"."WM"')
        assert [d.name for d in cur.description] == ["REPLICA_TABLE", "PARTITION", "MERGED_OFFSET", "MERGED_AT"]


def test_add_columns_only_adds_missing_and_never_drops():
    old = record("t", [field("id", "long", "BIGINT"), field("a", "string", "TEXT")])
    new = record(
        "t",
        [
            field("id", "long", "BIGINT"),
            field("a", "string", "TEXT"),
            field("New Col", {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}, "DECIMAL"),
            field("d", "string", "DATE", nullable=True),
        ],
    )
    key = record("t", [field("id", "long", "BIGINT")])
    table = TableRef("S", "T")
    statements = add_columns_sql(table, ["id", "a", "gone"], replica_columns(new, key))
    assert statements == [
        'ALTER TABLE "S"."T" ADD COLUMN "New Col" NUMBER(12,3)',
        'ALTER TABLE "S"."T" ADD COLUMN "d" DATE',
    ]
    assert add_columns_sql(table, ["id", "a", "New Col", "d"], replica_columns(new, key)) == []
    with fake_snowflake() as conn:
        cur = conn.cursor()
        cur.execute(create_replica_sql(table, replica_columns(old, key)))
        for sql in statements:
            cur.execute(sql)
        cur.execute('SELECT * FROM "S"."T"')
        assert [(d.name, d.precision, d.scale) for d in cur.description][2:] == [("New Col", 12, 3), ("d", None, None)]


def test_stage_folder_keeps_safe_names_and_hashes_others_apart():
    assert stage_folder("ORDER_LINE") == "ORDER_LINE"
    hostile = ["a/b", "a b", "it's", 'quo"te', "a_b c", "a b_c", "..", "", "naïve"]
    folders = [stage_folder(n) for n in hostile]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in folders)
    assert all("/" not in f and f not in (".", "..") for f in folders)
    assert len(set(folders)) == len(folders)  # "a_b c" and "a b_c" sanitise alike; the hash keeps them apart
    assert stage_folder("a/b") == stage_folder("a/b")  # stable across runs: REMOVE finds what PUT wrote
