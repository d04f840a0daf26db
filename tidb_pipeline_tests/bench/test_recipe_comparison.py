"""PingCAP's recipe MERGE against ours on the same landing rows (issue 4's acceptance; figure 3's logic).

Keys that change several times between two runs, and deletes arriving as the connector's `{}` tombstones,
leave the recipe's replica different from the source, while ours equals it. Runs on the lab's fakesnow
server, in a schema of its own that is dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from snowflake.connector import connect as snowflake_connect

from tidb_pipeline.bench.merge import (
    ITEM_COLUMNS,
    Change,
    ReplicaDiff,
    apply_changes,
    change_rounds,
    compare_merges,
    diff_rows,
    item_row,
    recipe_merge_sql,
)
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.replication.ddl import TableRef

pytestmark = pytest.mark.integration


@pytest.fixture()
def connection_and_schema(lab_settings: LabSettings, snowflake: Service) -> Iterator[tuple[object, TableRef]]:
    schema = TableRef(f"RECIPE_{uuid.uuid4().hex[:8].upper()}", "", "TIDB_PIPELINE_BENCH")
    with snowflake_connect(**connection_args(lab_settings)) as conn:
        cur = conn.cursor()
        cur.execute('CREATE DATABASE IF NOT EXISTS "TIDB_PIPELINE_BENCH"')
        cur.execute(f'CREATE SCHEMA "TIDB_PIPELINE_BENCH"."{schema.schema}"')
        try:
            yield conn, schema
        finally:
            cur.execute(f'DROP SCHEMA IF EXISTS "TIDB_PIPELINE_BENCH"."{schema.schema}" CASCADE')


def test_recipe_differs_on_repeated_keys_and_tombstones_while_ours_equals_the_source(
    connection_and_schema: tuple[object, TableRef],
) -> None:
    conn, schema = connection_and_schema
    batches = [
        [Change(k, item_row(k, 0)) for k in range(1, 7)],
        [
            Change(1, item_row(1, 1)), Change(1, item_row(1, 2)),  # updated twice
            Change(2, None),  # deleted: a `{}` tombstone
            Change(7, item_row(7, 1)), Change(7, None),  # inserted and deleted between runs
            Change(8, item_row(8, 1)), Change(8, item_row(8, 2)),  # inserted and updated between runs
            Change(4, item_row(4, 1)),  # one plain update
        ],
    ]
    result = compare_merges(conn, schema, batches)

    model: dict[int, tuple] = {}
    for batch in batches:
        apply_changes(model, batch)
    assert sorted(model) == [1, 3, 4, 5, 6, 8]
    assert result.ours == ReplicaDiff(source_rows=6, replica_rows=6)
    assert result.ours.equal

    # As published: IS_NULL_VALUE({}) is false, so the tombstone of key 2 updates it to NULLs and the one of
    # key 7 inserts a row whose key is NULL; both versions of the new key 8 are inserted.
    assert not result.recipe.equal
    assert {2, 7, None} <= set(result.recipe.extra)
    assert 8 in result.recipe.duplicated
    assert 4 not in {*result.recipe.missing, *result.recipe.extra, *result.recipe.different}
    # With deletes recognised, the missing per-key dedup alone still duplicates key 8.
    assert not result.fixed.equal
    assert 8 in result.fixed.duplicated
    assert not {2, None} & set(result.fixed.extra)
    assert result.max_versions_per_key == 2


def test_generated_rounds_only_keys_changed_twice_or_deleted_differ(
    connection_and_schema: tuple[object, TableRef],
) -> None:
    conn, schema = connection_and_schema
    batches = change_rounds(seed=3, initial=40, rounds=3, changes=50)
    result = compare_merges(conn, schema, batches)

    assert result.ours.equal, result.ours.summary()
    assert not result.recipe.equal
    assert not result.fixed.equal
    # Computed independently from the batches: the keys the recipe can get wrong.
    risky: set[int | None] = {None}
    for batch in batches[1:]:
        counts = Counter(c.key for c in batch)
        risky |= {k for k, n in counts.items() if n > 1} | {c.key for c in batch if c.row is None}
    for diff in (result.recipe, result.fixed):
        wrong = {*diff.missing, *diff.extra, *diff.different, *diff.duplicated}
        assert wrong and wrong <= risky, sorted(wrong - risky, key=str)
    assert result.landing_rows == 40 + 3 * 50


def test_diff_rows_names_each_kind_of_difference() -> None:
    model = {1: item_row(1, 0), 2: item_row(2, 0), 3: item_row(3, 0)}
    rows = [item_row(1, 0), item_row(2, 1), item_row(4, 0), item_row(4, 0), (None, None, None, None, None)]
    assert diff_rows(model, rows) == ReplicaDiff(
        source_rows=3, replica_rows=5, missing=(3,), extra=(4, None), different=(2,), duplicated=(4,)
    )


def test_recipe_sql_keeps_the_published_clauses() -> None:
    landing, replica = TableRef("S", "LANDING"), TableRef("S", "ITEM")
    sql = recipe_merge_sql(replica, landing, ITEM_COLUMNS, {0: (-1, 9)}).sql
    assert 'IS_NULL_VALUE(l."RECORD_CONTENT")' in sql
    assert "WHEN MATCHED AND stm.\"__RECIPE_DELETE\" = true THEN DELETE" in sql
    assert "WHEN NOT MATCHED THEN INSERT" in sql
    assert "QUALIFY" not in sql and "ROW_NUMBER" not in sql  # no per-key dedup, as published
    fixed = recipe_merge_sql(replica, landing, ITEM_COLUMNS, {0: (-1, 9)}, fix_deletes=True).sql
    assert "IS_NULL_VALUE" not in fixed and 'l."RECORD_CONTENT":"i_id" IS NULL' in fixed
