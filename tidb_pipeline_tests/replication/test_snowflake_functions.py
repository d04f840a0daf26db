"""Every statement the pipeline sends to Snowflake uses only Snowflake's documented functions.

Renders the statements of every builder (merge and its statistics, pending ranges, watermarks, unconverted
values, landing DDL and loads, cleanup, checksums and checks, backfill, replica DDL, session pins) for the type-coverage
table and the TPC-C tables, parses each with sqlglot's Snowflake dialect, and fails on any function outside
`snowflake_functions.SNOWFLAKE_FUNCTIONS` (each with the page that documents it). Function names are read from
the tokens as written, not from sqlglot's tree: sqlglot reads `LOG10(x)`, which Snowflake lacks, as `LOG(10, x)`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import replace as dc_replace
from typing import Any

import pytest
import sqlglot
from sqlglot.parser import Parser
from sqlglot.tokens import TokenType

from tidb_pipeline.config import ColumnsConfig, SnowflakeSessionConfig
from tidb_pipeline.engine.backfill import insert_from_load_sql
from tidb_pipeline.defs.checks import unconverted_values_sql
from tidb_pipeline.replication import holes, progress
from tidb_pipeline.replication import checksum, checksum_chunks, cleanup, ddl, landing, merge, mode_columns, modes, schema_changes
from tidb_pipeline.replication import columns as columns_policy
from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns
from tidb_pipeline.replication.ddl import Statement, TableRef
from tidb_pipeline.resources.warehouse import alter_session_sql
from tidb_pipeline.workload import types_table
from tidb_pipeline.workload.schema import CDC_KEYS, DDL
from tidb_pipeline_tests.replication.snowflake_functions import SNOWFLAKE_FUNCTIONS, doc_url
from tidb_pipeline_tests.replication.support import decimal_type, field, record, with_extension

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
DB = "TIDB_REPLICA"
LANDING, REPLICA, CONTROL = TableRef("LANDING", "L", DB), TableRef("REPLICA", "R", DB), TableRef("PIPELINE", "", DB)
WATERMARKS = TableRef("PIPELINE", "MERGE_WATERMARKS", DB)
RANGES = (merge.MergeRange(0, -1, 9), merge.MergeRange(2, 4, 7))

_TYPE_WORD = re.compile(r"^\s*`?(\w+)`?\s+([A-Za-z]+)(?:\((\d+)(?:,\s*(\d+))?\))?\s*(UNSIGNED)?", re.IGNORECASE)
_INT_AVRO = {"tinyint": "int", "smallint": "int", "mediumint": "int", "int": "int", "bigint": "long", "year": "int"}


def _field(name: str, sql: str, nullable: bool) -> dict[str, Any]:
    """A TiCDC Avro field for a MySQL column definition (spec/ticdc-avro.md's type table)."""
    m = _TYPE_WORD.match(f"{name} {sql}")
    assert m, sql
    word, p, s, unsigned = m.group(2).lower(), m.group(3), m.group(4), bool(m.group(5))
    if word in _INT_AVRO:
        big = word == "bigint"
        tidb = "YEAR" if word == "year" else ("BIGINT" if big else "INT") + (" UNSIGNED" if unsigned else "")
        return field(name, "long" if big or (word == "int" and unsigned) else "int", tidb, nullable)
    if word in ("decimal", "numeric"):
        return field(name, decimal_type(int(p), int(s or 0)), "DECIMAL", nullable)
    simple = {"float": ("float", "FLOAT"), "double": ("double", "DOUBLE"), "json": ("string", "JSON"),
              "date": ("string", "DATE"), "datetime": ("string", "DATETIME"), "timestamp": ("string", "TIMESTAMP"),
              "time": ("string", "TIME"), "enum": ("string", "ENUM"), "set": ("string", "SET"),
              "bit": ("bytes", "BIT")}  # fmt: skip
    if word in simple:
        return field(name, simple[word][0], simple[word][1], nullable)
    if word in ("binary", "varbinary", "blob", "tinyblob", "mediumblob", "longblob"):
        return field(name, "bytes", "BLOB", nullable)
    return field(name, "string", "TEXT", nullable)


def _table(name: str, columns: list[tuple[str, str]], key: tuple[str, ...]) -> tuple[tuple[ReplicaColumn, ...], list]:
    """(replica columns, checksum columns) of a table given as (column, MySQL definition) pairs."""
    fields = [_field(n, sql, "NOT NULL" not in sql.upper() and n not in key) for n, sql in columns]
    key_fields = [f for f in fields if f["name"] in key]
    cols = replica_columns(with_extension(record(name, fields)), record(name, key_fields))
    by_name = {c.name: c for c in cols}
    checks = []
    for n, sql in columns:
        m = _TYPE_WORD.match(f"{n} {sql}")
        assert m
        checks.append(checksum.checksum_column(n, m.group(2).lower(), sql.split(" NOT")[0].split(" NULL")[0].lower(),
                                               by_name[n].sql_type.split("(")[0]))
    return cols, checks


def _tables() -> Iterator[tuple[str, tuple[ReplicaColumn, ...], list]]:
    yield (types_table.TABLE, *_table(types_table.TABLE, [(n, s) for n, s, _ in types_table.COLUMNS], ("id",)))
    for table, key in CDC_KEYS.items():
        lines = [ln.strip().rstrip(",") for ln in DDL[table].strip().splitlines()[1:-1]]
        columns = [(ln.split()[0], ln.split(None, 1)[1]) for ln in lines if not ln.upper().startswith(("PRIMARY", "KEY", "UNIQUE", "INDEX"))]
        yield (table, *_table(table, columns, tuple(key)))


def _policy_table() -> tuple[str, tuple[ReplicaColumn, ...], list]:
    """The type-coverage table under a column policy: every hashable column hashed, the others masked but one
    excluded (`replication.columns`)."""
    cols, checks = _table(types_table.TABLE, [(n, s) for n, s, _ in types_table.COLUMNS], ("id",))
    values = [c for c in cols if not c.is_key]
    hashed = tuple(c.name for c in values if c.tidb_type in columns_policy.HASHABLE_TIDB_TYPES and c.name != "c_longtext")
    policy = ColumnsConfig(exclude=("c_longtext",), hash=hashed,
                           mask=tuple(c.name for c in values if c.name not in hashed and c.name != "c_longtext"))
    policied = columns_policy.apply_policy(cols, policy, "lab_types.types_coverage")
    kinds = {c.name: c.policy for c in policied}
    return (f"{types_table.TABLE} with a column policy", policied,
            [checksum.ChecksumColumn(c.name, kinds[c.name]) if kinds[c.name] else c for c in checks if c.name in kinds])


def _statements() -> Iterator[tuple[str, Statement]]:
    """(what, statement) for everything the pipeline sends to Snowflake."""
    yield "landing DDL", Statement(ddl.create_landing_sql(LANDING))
    yield "watermark DDL", Statement(ddl.create_watermark_sql(WATERMARKS))
    yield "unconverted DDL", Statement(ddl.create_unconverted_sql(merge.unconverted_table(WATERMARKS)))
    yield "dead-letter DDL", Statement(ddl.create_dead_letter_sql(TableRef("PIPELINE", "DEAD_LETTERS", DB)))
    yield "session pins", Statement(alter_session_sql(SnowflakeSessionConfig().parameters()))
    yield "table columns", ddl.table_columns_sql(REPLICA)
    locks = TableRef("PIPELINE", "LOAD_LOCKS", DB)
    yield "lock DDL", Statement(landing.create_load_lock_sql(locks))
    yield "lock row", landing.ensure_lock_row_sql(locks, LANDING)
    yield "take lock", landing.take_load_lock_sql(locks, LANDING, NOW)
    yield "landed offsets", landing.landed_offsets_sql(LANDING, TableRef("PIPELINE", "DEAD_LETTERS", DB), "t")
    landed = TableRef("PIPELINE", "LANDING_OFFSETS", DB)
    yield "landed offsets DDL", Statement(landing.create_landed_offsets_sql(landed))
    yield "read landed offsets", landing.read_landed_offsets_sql(landed, LANDING, "t")
    for s in landing.write_landed_offsets_statements(landed, LANDING, "t", {0: 5, 2: 9}, "b1", NOW.replace(tzinfo=None)):
        yield "write landed offsets", s
    yield "forget landed offsets", landing.forget_landed_offsets_sql(landed, LANDING)
    load = TableRef("PIPELINE", "BACKFILL_ROWS_L", DB)
    yield "load rows table", Statement(landing.create_load_rows_sql('"ROWS"'))
    for s in landing.stage_file_statements('"ROWS"', "@stage/t/f.parquet"):
        yield "stage file", s
    for s in landing.land_rows_statements(LANDING, '"ROWS"', {0: 5}):
        yield "land rows", s
    yield "dead letters", landing.dead_letter_insert_sql(
        TableRef("PIPELINE", "DEAD_LETTERS", DB),
        [landing.DeadLetter("t", 0, 1, "{}", b"k", None, "bad")], NOW.replace(tzinfo=None))
    yield "cleanup", cleanup.cleanup_sql(LANDING, WATERMARKS, REPLICA, NOW, dt.timedelta(hours=1))
    yield "cleanup, landed offsets", cleanup.cleanup_sql(LANDING, WATERMARKS, REPLICA, NOW, dt.timedelta(hours=1),
                                                         landed, "t")
    gaps_table = TableRef("PIPELINE", holes.OFFSET_GAPS_TABLE, DB)
    src = holes.OffsetSources(LANDING, WATERMARKS, REPLICA, "t", TableRef("PIPELINE", "DEAD_LETTERS", DB), gaps_table)
    yield "offset gaps DDL", Statement(holes.create_offset_gaps_sql(gaps_table))
    yield "present offsets", holes.present_offsets_sql(src)
    yield "merge reach", holes.reach_sql(src)
    yield "merge reach, capped", holes.reach_sql(src, 1000)
    yield "holes", holes.holes_sql(src)
    yield "holes, bounded", holes.holes_sql(src, {0: (4, 9), 2: (-1, 3)})
    yield "holes, above the watermarks", holes.holes_sql(src, above={0: 4, 3: 7})
    yield "unmerged tops", holes.unmerged_tops_sql(src.landing, {0: 4, 1: 2})
    yield "merge reach, bounded and capped", holes.reach_sql(src, 1000, {0: (4, 9)})
    yield "read gaps", holes.read_gaps_sql(gaps_table, "t")
    for s in holes.replace_gaps_statements(gaps_table, "t", [holes.Gap(0, 5, 7, holes.WAITING, "x", NOW)], {0: 4}):
        yield "replace gaps", s
    yield "merged through", progress.merged_through_sql(WATERMARKS, REPLICA)
    yield "unconverted check", unconverted_values_sql(merge.unconverted_table(WATERMARKS), REPLICA)
    changes = schema_changes.schema_changes_table(WATERMARKS)
    yield "schema changes DDL", Statement(schema_changes.create_schema_changes_sql(changes))
    yield "schema changes read", schema_changes.read_changes_sql(changes, REPLICA)
    yield "schema change record", schema_changes.record_change_sql(
        changes, REPLICA, schema_changes.ColumnChange("widen_type", "c", "NUMBER(10,0)", "NUMBER(19,0)"), before=1,
        after=2, now=NOW)
    yield "replica column types", schema_changes.replica_types_sql(REPLICA)
    yield "widen column", Statement(schema_changes.alter_type_sql(REPLICA, "c", "NUMBER(19,0)"))
    yield "rename column", Statement(schema_changes.rename_column_sql(REPLICA, "a", "b"))
    yield "drop column", Statement(schema_changes.drop_column_sql(REPLICA, "c"))
    yield "truncate replica", Statement(schema_changes.truncate_replica_sql(REPLICA))
    yield "hash salt", columns_policy.set_salt_statement("salt")
    for table, columns, checks in (*_tables(), _policy_table()):
        yield f"{table}: replica DDL", Statement(ddl.create_replica_sql(REPLICA, columns))
        for s in ddl.add_columns_sql(REPLICA, [], columns):
            yield f"{table}: add columns", Statement(s)
        plan = merge.MergePlan(REPLICA, LANDING, WATERMARKS, columns)
        yield f"{table}: pending ranges", merge.pending_ranges_sql(plan)
        yield f"{table}: pending ranges capped", merge.pending_ranges_sql(plan, 100)
        builtin = merge.MergePlan(REPLICA, LANDING, WATERMARKS, columns, topic="t", landed=landed)
        yield f"{table}: pending bounds", merge.pending_bounds_sql(builtin)
        yield f"{table}: pending ranges bounded", merge.pending_ranges_sql(builtin, None, {0: (4, 9), 2: (-1, 3)})
        yield f"{table}: batch stats", merge.batch_stats_sql(plan, RANGES)
        for s in merge.merge_transaction(plan, RANGES, NOW, (1, 9)).statements:
            yield f"{table}: merge transaction", s
        # After a TRUNCATE and a rename (replication.schema_changes): commit-ts deletes, the old field read too.
        renamed = tuple(dc_replace(c, previous_fields=("old_" + c.field,)) if not c.is_key else c for c in columns)
        after = merge.MergePlan(REPLICA, LANDING, WATERMARKS, renamed, truncated_at=(1 << 62) + 5)
        yield f"{table}: batch stats after truncate and rename", merge.batch_stats_sql(after, RANGES)
        for s in merge.merge_transaction(after, RANGES, NOW, (1, 9)).statements:
            yield f"{table}: merge after truncate and rename", s
        yield f"{table}: key range", merge.key_range_sql(plan, RANGES) or Statement("SELECT 1")
        yield f"{table}: rows per key", merge.max_rows_per_key_sql(plan, RANGES)
        stats = merge.BatchStats(merge.MergeCounts(1, 0, 0, 1, 1, tuple((c.name, 1) for c in plan.checked)), 1, None, 1)
        for s in merge.unconverted_statements(plan, RANGES, NOW, stats):
            yield f"{table}: unconverted records", s
        yield f"{table}: backfill insert", insert_from_load_sql(REPLICA, load, columns)
        record_load = merge.record_unconverted_from_load_sql(merge.unconverted_table(WATERMARKS), REPLICA, load,
                                                             columns, NOW)
        if record_load is not None:
            yield f"{table}: backfill unconverted", record_load
        key = checks[[c.name for c in checks].index(next(c.name for c in columns if c.is_key))]
        chunks = checksum_chunks.range_chunks(key.name, [1, 10]) if key.kind in checksum.RANGE_KINDS \
            else checksum_chunks.bucket_chunks(key.name, 4)
        yield f"{table}: checksums", checksum_chunks.checksums_sql("snowflake", REPLICA.sql, checks, key, chunks)
        yield f"{table}: bucket checksums", checksum_chunks.checksums_sql(
            "snowflake", REPLICA.sql, checks, key, checksum_chunks.bucket_chunks(key.name, 4))
        if chunks[0].bucket is None:
            yield f"{table}: chunk checksum", checksum_chunks.chunk_checksum_sql("snowflake", REPLICA.sql, checks, chunks[1])
        yield from _mode_statements(table, columns, load, checks, key, chunks)


def _mode_statements(table: str, columns: tuple[ReplicaColumn, ...], load: TableRef, checks: Any, key: Any,
                     chunks: Any) -> Iterator[tuple[str, Statement]]:
    """The soft_delete and history replicas' statements (`replication.modes`): DDL, merges, checks, switches."""
    for mode in (mode_columns.SOFT_DELETE, mode_columns.HISTORY):
        plan = merge.MergePlan(REPLICA, LANDING, WATERMARKS, columns, mode=mode)
        yield f"{table}: {mode} DDL", Statement(modes.create_mode_replica_sql(REPLICA, columns, mode))
        yield f"{table}: {mode} checksums", checksum_chunks.checksums_sql(
            "snowflake", modes.current_rows_sql(REPLICA, mode), checks, key, chunks)
        yield f"{table}: {mode} counts", modes.mode_counts_sql(REPLICA, mode) or Statement("SELECT 1")
        yield f"{table}: {mode} backfill insert", insert_from_load_sql(REPLICA, load, columns, mode, 1 << 18)
        for old in mode_columns.MODES:
            for s in modes.switch_statements(REPLICA, columns, old, mode, NOW) + modes.switch_statements(
                    REPLICA, columns, mode, old, NOW):
                yield f"{table}: switch {old} <-> {mode}", s
        if mode == mode_columns.SOFT_DELETE:
            yield f"{table}: soft_delete batch stats", merge.batch_stats_sql(plan, RANGES)
            for s in merge.merge_transaction(plan, RANGES, NOW, (1, 9)).statements:
                yield f"{table}: soft_delete merge transaction", s
        else:
            yield f"{table}: history counts", modes.history_counts_sql(plan, RANGES)
            yield f"{table}: history insert", modes.history_insert_sql(plan, RANGES)
            yield f"{table}: history re-link", modes.history_relink_sql(plan, RANGES)
        # After a TRUNCATE and a rename (replication.schema_changes): the mode's truncate, then its merge.
        keys = [c.name for c in columns if c.is_key]
        for s in schema_changes.truncate_statements(REPLICA, mode, (1 << 62) + 5, keys):
            yield f"{table}: {mode} truncate", Statement(s) if isinstance(s, str) else s
        renamed = tuple(dc_replace(c, previous_fields=("old_" + c.field,)) if not c.is_key else c for c in columns)
        after = dc_replace(plan, columns=renamed, truncated_at=(1 << 62) + 5)
        if mode == mode_columns.SOFT_DELETE:
            for s in merge.merge_transaction(after, RANGES, NOW, (1, 9)).statements:
                yield f"{table}: soft_delete merge after truncate and rename", s
        else:
            yield f"{table}: history counts after truncate and rename", modes.history_counts_sql(after, RANGES)
            yield f"{table}: history insert after truncate and rename", modes.history_insert_sql(after, RANGES)


def _bound(stmt: Statement) -> str:
    """The text as the connector sends it: `%s` bound (to NULL here), `%%` a literal `%`."""
    if stmt.params:
        return stmt.sql.replace("%s", "NULL").replace("%%", "%")
    return stmt.sql


def functions_called(sql: str) -> set[str]:
    """Names written directly before `(`: function calls (quoted identifiers and type names left out)."""
    tokens = sqlglot.tokenize(sql, read="snowflake")
    return {a.text.upper() for a, b in zip(tokens, tokens[1:])
            if b.token_type == TokenType.L_PAREN and a.end + 1 == b.start and re.match(r"[A-Za-z_]", a.text)
            and a.token_type not in Parser.TYPE_TOKENS and a.token_type != TokenType.IDENTIFIER}


STATEMENTS = list(_statements())


def test_the_rendering_covers_both_table_sets_and_every_kind() -> None:
    whats = {w for w, _ in STATEMENTS}
    assert {f"{t}: merge transaction" for t in (types_table.TABLE, *CDC_KEYS)} <= whats
    assert "types_coverage: backfill unconverted" in whats and "types_coverage: unconverted records" in whats
    assert "types_coverage with a column policy: merge transaction" in whats and "hash salt" in whats
    assert len(STATEMENTS) > 150


@pytest.mark.parametrize(("what", "stmt"), STATEMENTS, ids=[f"{i}-{w}" for i, (w, _) in enumerate(STATEMENTS)])
def test_statement_parses_as_snowflake_and_calls_only_documented_functions(what: str, stmt: Statement) -> None:
    sql = _bound(stmt)
    sqlglot.parse_one(sql, read="snowflake")  # raises on anything Snowflake's grammar does not have
    unknown = functions_called(sql) - set(SNOWFLAKE_FUNCTIONS)
    assert not unknown, f"{what}: {sorted(unknown)} are not documented Snowflake functions\n{sql[:2000]}"


def test_the_allowlist_links_each_function_to_its_page() -> None:
    for name, url in SNOWFLAKE_FUNCTIONS.items():
        assert re.fullmatch(r"https://docs\.snowflake\.com/en/sql-reference/functions/[a-z0-9_-]+", url), name
        assert url == doc_url(name)
    assert "LOG10" not in SNOWFLAKE_FUNCTIONS
    assert functions_called("SELECT LOG10(x), LOG(10, x), CAST(x AS NUMBER(38,0)), \"f\"(1)") == {"LOG10", "LOG", "CAST"}
