"""The columns each replica mode adds to TiDB's (README "Replica modes"); names only, no SQL.

- `replica`: none; the replica holds the source's current rows.
- `soft_delete`: `_DELETED` (BOOLEAN) and `_DELETED_AT` (TIMESTAMP_NTZ(3), UTC): a delete keeps the row.
- `history`: one row per version: `_OP` (TiCDC's `c`/`u`, `d` for a delete), `_COMMIT_TS` (TiDB's commit TSO;
  for a delete, the TSO of the version it ended), `_VALID_FROM` / `_VALID_TO` (TIMESTAMP_NTZ(3), UTC),
  `_IS_CURRENT`, and where the version first landed (`_KAFKA_PARTITION`, `_KAFKA_OFFSET`).
"""

from __future__ import annotations

from collections.abc import Iterable

REPLICA, SOFT_DELETE, HISTORY = "replica", "soft_delete", "history"
MODES = (REPLICA, SOFT_DELETE, HISTORY)

DELETED, DELETED_AT = "_DELETED", "_DELETED_AT"
OP, COMMIT_TS, VALID_FROM, VALID_TO, IS_CURRENT = "_OP", "_COMMIT_TS", "_VALID_FROM", "_VALID_TO", "_IS_CURRENT"
KAFKA_PARTITION, KAFKA_OFFSET = "_KAFKA_PARTITION", "_KAFKA_OFFSET"

# (name, Snowflake type) per mode, in table order after TiDB's columns.
MODE_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    REPLICA: (),
    SOFT_DELETE: ((DELETED, "BOOLEAN"), (DELETED_AT, "TIMESTAMP_NTZ(3)")),
    HISTORY: (
        (OP, "VARCHAR(1)"),
        (COMMIT_TS, "NUMBER(20,0)"),
        (VALID_FROM, "TIMESTAMP_NTZ(3)"),
        (VALID_TO, "TIMESTAMP_NTZ(3)"),
        (IS_CURRENT, "BOOLEAN"),
        (KAFKA_PARTITION, "NUMBER(10,0)"),
        (KAFKA_OFFSET, "NUMBER(19,0)"),
    ),
}
ALL_MODE_COLUMNS = frozenset(n for cols in MODE_COLUMNS.values() for n, _ in cols)


def mode_column_names(mode: str) -> tuple[str, ...]:
    if mode not in MODE_COLUMNS:
        raise ValueError(f"unknown replica mode {mode!r}; use one of {', '.join(MODES)}")
    return tuple(n for n, _ in MODE_COLUMNS[mode])


def mode_of_columns(names: Iterable[str]) -> str:
    """The mode a replica table's shape says it is in (its mode columns), for telling config and table apart."""
    have = set(names)
    if VALID_FROM in have:
        return HISTORY
    if DELETED in have:
        return SOFT_DELETE
    return REPLICA
