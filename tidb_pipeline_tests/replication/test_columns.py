"""The column policy without a lab: config validation, the replica's columns, the checksum SQL, the salt's secrecy."""

from __future__ import annotations

import hashlib
import logging
from decimal import Decimal

import dagster as dg
import pytest

from tidb_pipeline.config import ColumnsConfig, ConfigError, parse_config
from tidb_pipeline.defs.tables import _replica_spec, column_description
from tidb_pipeline.replication import checksum, checksum_chunks
from tidb_pipeline.replication.avro_types import ReplicaColumn
from tidb_pipeline.replication.columns import ColumnPolicyError, apply_policy, hash_value, set_salt_statement
from tidb_pipeline.replication.merge import json_to_sql
from tidb_pipeline.resources.warehouse import Warehouse

COLS = (
    ReplicaColumn("id", "NUMBER(19,0)", False, "BIGINT", True, "long"),
    ReplicaColumn("email", "VARCHAR", True, "TEXT", False, "string"),
    ReplicaColumn("price", "NUMBER(10,2)", True, "DECIMAL", False, "bytes", 10, 2),
    ReplicaColumn("u", "NUMBER(20,0)", True, "BIGINT UNSIGNED", False, "long"),
    ReplicaColumn("born", "DATE", True, "DATE", False, "string"),
    ReplicaColumn("score", "FLOAT", True, "DOUBLE", False, "double"),
    ReplicaColumn("notes", "VARCHAR", True, "TEXT", False, "string"),
)


def _table(**extra: object) -> dict[str, object]:
    return {"tables": [{"db": "shop", "table": "customers", "key": ["id"], **extra}]}


@pytest.mark.parametrize(("extra", "message"), [
    ({"columns": {"include": ["a"], "exclude": ["b"]}}, "tables.0.columns: Value error, include and exclude"),
    ({"columns": {"hash": ["email"]}}, "tables.0: Value error, hash_salt_env: columns.hash needs"),
    ({"hash_salt_env": "S", "columns": {"hash": ["id"]}}, "key column(s) 'id' must be kept"),
    ({"columns": {"exclude": ["id"]}}, "key column(s) 'id' must be kept"),
    ({"hash_salt_env": "S", "columns": {"hash": ["a"], "mask": ["a"]}}, "hash and mask: 'a' in both"),
    ({"hash_salt_env": "s3cret-value", "columns": {"hash": ["a"]}}, "tables.0.hash_salt_env: Value error"),
])
def test_bad_policies_fail_at_load_naming_the_field(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_table(**extra))
    assert message in str(err.value)
    assert "s3cret-value" not in str(err.value)  # a salt pasted as the variable's name is not echoed


def test_policy_shapes_the_replica_and_its_sql() -> None:
    policy = ColumnsConfig(exclude=("notes",), hash=("email", "price", "u", "born"), mask=("score",))
    cols = apply_policy(COLS, policy, "shop.customers")
    assert [(c.name, c.sql_type, c.policy) for c in cols] == [
        ("id", "NUMBER(19,0)", ""), ("email", "VARCHAR", "hash"), ("price", "VARCHAR", "hash"),
        ("u", "VARCHAR", "hash"), ("born", "VARCHAR", "hash"), ("score", "FLOAT", "mask")]
    by = {c.name: json_to_sql(c, "v") for c in cols}
    assert by["email"] == "SHA2($TP_HASH_SALT || STRIP_NULL_VALUE(v)::VARCHAR, 256)"
    assert by["price"] == "SHA2($TP_HASH_SALT || (STRIP_NULL_VALUE(v)::NUMBER(10,2))::VARCHAR, 256)"
    assert "18446744073709551616" in by["u"]  # a wrapped BIGINT UNSIGNED is unwrapped before hashing
    assert by["score"] == "NULL::FLOAT"
    assert set_salt_statement("pepper").sql == "SET TP_HASH_SALT = %s"  # the salt is bound, never in the text
    with pytest.raises(ColumnPolicyError, match="it has 257") as err:
        set_salt_statement("x" * 257)
    assert "xxx" not in str(err.value)


@pytest.mark.parametrize(("policy", "message"), [
    (ColumnsConfig(exclude=("nope",)), "shop.customers: columns.exclude names 'nope', which the table does not have"),
    (ColumnsConfig(hash=("score",)), "shop.customers: column 'score' (DOUBLE) cannot be hashed"),
    (ColumnsConfig(include=("email",)), "shop.customers: key column(s) 'id' cannot be excluded"),
])
def test_policy_errors_name_table_and_column(policy: ColumnsConfig, message: str) -> None:
    with pytest.raises(ColumnPolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_policy(COLS, policy, "shop.customers")


def test_tidb_side_checksum_binds_the_salt_and_reads_no_left_out_column() -> None:
    cols = [checksum.ChecksumColumn("id", "int"), checksum.ChecksumColumn("email", "hash"),
            checksum.ChecksumColumn("score", "mask")]
    chunks = checksum_chunks.range_chunks("id", [1, 5])
    stmt = checksum_chunks.checksums_sql("mysql", "`shop`.`customers`", cols, cols[0], chunks, salt="pepper")
    assert "pepper" not in stmt.sql and stmt.params == (5, "pepper")
    assert "SHA2(CONCAT(%s, CAST(`email` AS CHAR)), 256)" in stmt.sql and "`score`" not in stmt.sql
    with pytest.raises(ValueError, match="salt"):
        checksum_chunks.checksums_sql("mysql", "t", cols, cols[0], chunks)
    one = checksum_chunks.chunk_checksum_sql("mysql", "t", cols, chunks[1], salt="pepper")
    assert one.params == ("pepper", 5)  # the SELECT list's salt comes before the WHERE's bounds


def test_python_hash_matches_the_sql_definition() -> None:
    u = COLS[3]
    assert hash_value("s", u, -1) == hashlib.sha256(b"s18446744073709551615").hexdigest()
    assert hash_value("s", COLS[2], Decimal("1.50")) == hashlib.sha256(b"s1.50").hexdigest()
    assert hash_value("s", COLS[1], None) is None


def test_salt_redacted_from_the_connectors_sql_log(caplog: pytest.LogCaptureFixture) -> None:
    class _Cursor:
        def execute(self, sql: str, params: tuple[str, ...] | None) -> None:
            # As the connector's pyformat binding does: the value interpolated client-side, then logged.
            text = sql % tuple(f"'{p}'" for p in params) if params else sql
            logging.getLogger("snowflake.connector.connection").debug("sql=[%s]", text)

        def fetchall(self) -> list[tuple]:
            return []

    class _Connection:
        def cursor(self) -> _Cursor:
            return _Cursor()

    caplog.set_level(logging.DEBUG, logger="snowflake.connector.connection")
    Warehouse(_Connection()).execute_secret(set_salt_statement("p3pper"))
    assert "sql=[SET TP_HASH_SALT = '****']" in caplog.messages
    assert not [m for m in caplog.messages if "p3pper" in m]


def test_ui_shows_the_policy_and_marks_columns() -> None:
    config = parse_config(_table(hash_salt_env="SALT", columns={"exclude": ["notes"], "hash": ["email"],
                                                                "mask": ["score"]}))
    spec = _replica_spec(config=config, table=config.tables[0])
    assert "Columns: excluded: notes; hashed (SHA-256, salted): email; masked (NULL): score." in str(spec.description)
    assert spec.metadata["columns_hash"] == "email" and spec.metadata["columns_exclude"] == "notes"
    assert "SALT" not in str(spec.metadata)  # neither the salt nor its variable
    cols = apply_policy(COLS, config.tables[0].columns, "shop.customers")
    assert [column_description(c) for c in cols if c.policy] == [
        "TiDB TEXT · HASHED: hex SHA-256 of salt || value text", "TiDB DOUBLE · MASKED: always NULL"]
    assert isinstance(spec, dg.AssetSpec)
