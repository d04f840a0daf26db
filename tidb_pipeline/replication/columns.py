"""The column policy of a replica: which TiDB columns it holds, and which it holds hashed or masked.

Per table (`TableConfig.columns`): `include` (only these columns) or `exclude` (every column but these), and per
kept column `hash` or `mask`:
- hash: `SHA2(salt || text, 256)`, the lower-case hex SHA-256 of the salt followed by the value's text, stored as
  VARCHAR (NULL stays NULL). The text is the value as MySQL/TiDB prints it (`CAST(c AS CHAR)`), which for the
  hashable types is also TiCDC's text (spec/ticdc-avro.md): integers and YEAR as digits (a BIGINT UNSIGNED that
  TiCDC wrapped negative is unwrapped first), DECIMAL with its scale's digits (`12.50`), strings, ENUM and SET
  members as written, DATE `YYYY-MM-DD`, DATETIME/TIMESTAMP `YYYY-MM-DD HH:MM:SS[.fff]` with the column's
  fraction digits, TIME `[-]HH:MM:SS[.fff]`. So the content check can compute the same hash on the TiDB side
  (`SHA2(CONCAT(salt, value), 256)`) and still verify the column. FLOAT/DOUBLE (engines print them
  differently), binaries, BIT and JSON (no agreed text) cannot be hashed: mask or exclude them.
- mask: the column stays (same type) and is always NULL.

The SQL Server copy (`engine.sqlserver`) follows the same policy on TiCDC's Avro field names (`by_field`),
hashing in Python (`hash_value`, the same digest) into a varchar(64) column.

The salt is a secret named by `hash_salt_env` and read only by the run that hashes (`dg.EnvVar` semantics). It
never enters SQL text built here: in Snowflake it is a session variable set with a bound parameter
(`set_salt_statement`) and read as `$TP_HASH_SALT` by the MERGE and the backfill; on the TiDB side the check
binds it. It is never logged, put in metadata or in an error.

Key columns are never excluded, hashed or masked: the merge, the checks and the SQL Server copy find rows by them.
Column names are only known from the schema, so `apply_policy` (at the first merge, backfill or check) refuses a
name the table does not have, naming the table and the column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Protocol

from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns, unwrap_unsigned
from tidb_pipeline.replication.ddl import Statement
from tidb_pipeline.replication.ticdc_schema import sanitize_name

# The Snowflake session variable the hash expressions read (`$TP_HASH_SALT`).
SALT_VARIABLE = "TP_HASH_SALT"
HASH_SQL_TYPE = "VARCHAR"
# tidb_types whose TiCDC text equals MySQL's `CAST(c AS CHAR)` (see the module docstring).
HASHABLE_TIDB_TYPES = frozenset({
    "INT", "INT UNSIGNED", "BIGINT", "BIGINT UNSIGNED", "YEAR", "DECIMAL", "TEXT", "ENUM", "SET", "DATE",
    "DATETIME", "TIMESTAMP", "TIME",
})  # fmt: skip


class ColumnPolicyError(ValueError):
    """The column policy names a column the table lacks, or treats one in a way it cannot be."""


class Policy(Protocol):
    """`config.ColumnsConfig`, as this module reads it."""

    @property
    def include(self) -> tuple[str, ...]: ...
    @property
    def exclude(self) -> tuple[str, ...]: ...
    @property
    def hash(self) -> tuple[str, ...]: ...
    @property
    def mask(self) -> tuple[str, ...]: ...


def check_names(policy: Policy, table: str, names: Sequence[str], keys: Sequence[str]) -> None:
    """Raise ColumnPolicyError when the policy names a column `table` does not have, or touches a key column."""
    have = set(names)
    for field in ("include", "exclude", "hash", "mask"):
        if unknown := [n for n in getattr(policy, field) if n not in have]:
            raise ColumnPolicyError(
                f"{table}: columns.{field} names {', '.join(map(repr, unknown))}, which the table does not have "
                f"(its columns: {', '.join(names)}); fix the name in tidb_pipeline.yaml")
    if touched := [k for k in keys if k in policy.exclude or k in policy.hash or k in policy.mask
                   or (policy.include and k not in policy.include)]:
        raise ColumnPolicyError(
            f"{table}: key column(s) {', '.join(map(repr, touched))} cannot be excluded, hashed or masked (rows are "
            "found by the key); remove them from columns in tidb_pipeline.yaml")


def kept(policy: Policy, name: str) -> bool:
    return name in policy.include if policy.include else name not in policy.exclude


def treatment(policy: Policy, name: str) -> str:
    """"hash", "mask" or "" (as replicated)."""
    return "hash" if name in policy.hash else "mask" if name in policy.mask else ""


def apply_policy(columns: Sequence[ReplicaColumn], policy: Policy | None, table: str) -> tuple[ReplicaColumn, ...]:
    """The replica's columns under the policy: left-out columns gone, hashed ones VARCHAR, each marked.

    `columns` carry TiDB's names (`with_names`); `table` names the source in errors.
    """
    if policy is None:
        return tuple(columns)
    check_names(policy, table, [c.name for c in columns], [c.name for c in columns if c.is_key])
    out = []
    for c in columns:
        if not kept(policy, c.name):
            continue
        how = treatment(policy, c.name)
        if how == "hash":
            if c.tidb_type not in HASHABLE_TIDB_TYPES:
                raise ColumnPolicyError(
                    f"{table}: column {c.name!r} ({c.tidb_type or c.avro_type}) cannot be hashed: its text differs "
                    "between TiDB and TiCDC, so the check could not verify it; mask or exclude it instead")
            c = replace(c, sql_type=HASH_SQL_TYPE, policy="hash")
        elif how == "mask":
            c = replace(c, policy="mask")
        out.append(c)
    return tuple(out)


def kept_names(policy: Policy | None, names: Sequence[str]) -> tuple[str, ...]:
    """`names` the policy keeps (for readers that see TiDB's columns, e.g. a check or the SQL Server copy)."""
    return tuple(names) if policy is None else tuple(n for n in names if kept(policy, n))


def hash_sql(text: str) -> str:
    """Snowflake: the hex SHA-256 of the salt (session variable) and `text`; NULL stays NULL."""
    return f"SHA2(${SALT_VARIABLE} || {text}, 256)"


def mysql_hash_sql(text: str) -> str:
    """MySQL/TiDB: the same hash, the salt bound as the one `%s` parameter."""
    return f"SHA2(CONCAT(%s, {text}), 256)"


# Snowflake limits a string session variable to 256 bytes.
MAX_SALT_BYTES = 256


def set_salt_statement(salt: str) -> Statement:
    """Sets the salt for this Snowflake session, bound (never in the SQL text); run before the MERGE/backfill."""
    if not salt or len(salt.encode("utf-8")) > MAX_SALT_BYTES:
        # The message gives the length only, never the value.
        raise ColumnPolicyError(f"the hash salt must be 1 to {MAX_SALT_BYTES} bytes (UTF-8), Snowflake's limit for a "
                                f"session variable; it has {len(salt.encode('utf-8'))}")
    return Statement(f"SET {SALT_VARIABLE} = %s", (salt,))


def needs_salt(columns: Sequence[ReplicaColumn]) -> bool:
    return any(c.policy == "hash" for c in columns)


def describe(policy: Policy | None) -> str:
    """One line for the UI: what the replica leaves out, hashes and masks (no salt)."""
    if policy is None or not (policy.include or policy.exclude or policy.hash or policy.mask):
        return "every column as in TiDB"
    parts = []
    if policy.include:
        parts.append(f"only {', '.join(policy.include)}")
    if policy.exclude:
        parts.append(f"excluded: {', '.join(policy.exclude)}")
    if policy.hash:
        parts.append(f"hashed (SHA-256, salted): {', '.join(policy.hash)}")
    if policy.mask:
        parts.append(f"masked (NULL): {', '.join(policy.mask)}")
    return "; ".join(parts)


# --- the SQL Server copy (the built-in applier hashes in Python; its columns carry TiCDC's Avro field names) ---


@dataclass(frozen=True)
class FieldPolicy:
    """A policy over Avro field names (TiDB's names sanitised as TiCDC does)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hash: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()


def by_field(policy: Policy) -> FieldPolicy:
    def names(xs: Sequence[str]) -> tuple[str, ...]:
        return tuple(sanitize_name(x) for x in xs)

    return FieldPolicy(names(policy.include), names(policy.exclude), names(policy.hash), names(policy.mask))


def value_text(column: ReplicaColumn, value: Any) -> str | None:
    """A decoded Avro value's text as MySQL prints it (what `hash_value` hashes); None stays None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(unwrap_unsigned(value) if column.wraps_unsigned else value)
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def hash_value(salt: str, column: ReplicaColumn, value: Any) -> str | None:
    """Python's `SHA2(salt || text, 256)`: the same hex digest the Snowflake MERGE and TiDB compute."""
    text = value_text(column, value)
    return None if text is None else hashlib.sha256((salt + text).encode("utf-8")).hexdigest()


def row_transform(
    policy: Policy | None, value_schema: str, key_schema: str, table: str,
) -> tuple[Callable[[str], bool], Callable[[str, Any, Callable[[], str]], Any]]:
    """(kept(field), value(field, decoded value, salt)) for a table's records under `policy` (Avro field names).

    Raises ColumnPolicyError for a column that cannot be hashed (see the module docstring).
    """
    if policy is None:
        return (lambda _f: True), (lambda _f, v, _s: v)
    fp = by_field(policy)
    columns = {c.field: c for c in replica_columns(value_schema, key_schema)}
    for f in fp.hash:
        c = columns.get(f)
        if c is not None and c.tidb_type not in HASHABLE_TIDB_TYPES:
            raise ColumnPolicyError(f"{table}: column {f!r} ({c.tidb_type or c.avro_type}) cannot be hashed; mask or "
                                    "exclude it instead")

    def value(f: str, v: Any, salt: Callable[[], str]) -> Any:
        how = treatment(fp, f)
        if how == "mask":
            return None
        return hash_value(salt(), columns[f], v) if how == "hash" else v

    return (lambda f: kept(fp, f)), value
