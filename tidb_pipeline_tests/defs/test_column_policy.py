"""The column policy on the lab, over the type-coverage table: include/exclude, hash and mask.

Through the changefeed, landing and MERGE, the replica holds exactly: the excluded columns absent, the masked
ones NULL, the hashed ones the hex SHA-256 of salt + the value's text (computed here with hashlib from the
source's values, in MySQL's text form per type), every other column equal to the source. The content check
passes (it computes the same hash in TiDB), and fails naming the range once one hashed value is changed in the
replica behind the pipeline's back. A backfill fills the replica by the same policy. The check never reads an excluded or masked column from TiDB (MariaDB's
general log shows the SQL it sent), and the salt appears in no Dagster event, log record or metadata.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import dagster as dg
import pymysql
import pytest
import snowflake.connector

from tidb_pipeline.defs.check_results import CheckSettings
from tidb_pipeline.defs.checks import build_replica_checks
from tidb_pipeline.engine.backfill import backfill
from tidb_pipeline.lab.snapshot import MariaDBSnapshotSource
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.defs.tables import changefeed_key, table_keys, table_names
from tidb_pipeline.lab.compare import compare_table
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.lab.ticdc.codec import tso_from_ms
from tidb_pipeline.workload import types_table
from tidb_pipeline_tests.changefeed import wait_for_checkpoint
from tidb_pipeline_tests.defs.lab_pipeline import lab_pipeline, materialize

pytestmark = pytest.mark.integration

SALT_ENV = "TP_TEST_HASH_SALT"
SALT = "s@lt-ü-42 日本"  # non-ASCII: both sides hash UTF-8 bytes
EXCLUDED = ("c_longtext", "c_bit64")
MASKED = ("c_json", "c_double", "c_blob")
# Every hashable kind of the type table: ints (BIGINT UNSIGNED above 2^63 arrives wrapped), decimals (NUMBER
# and the 65-digit VARCHAR), strings (CHAR, unicode), ENUM, SET, DATE, DATETIME(6), TIMESTAMP(3), TIME, YEAR.
HASHED = ("c_int", "c_bigint_u", "c_decimal", "c_decimal_wide", "c_char", "c_varchar", "c_enum", "c_set", "c_date",
          "c_datetime", "c_timestamp", "c_time", "c_time6", "c_year")
FSP = {"c_datetime": 6, "c_timestamp": 3, "c_time": 0, "c_time6": 6}


def mysql_text(name: str, value: Any) -> str:
    """The value as MySQL's CAST(c AS CHAR) prints it (the text the policy hashes), from the Python value."""
    if isinstance(value, dt.datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
        return text + (f".{value.microsecond:06d}"[: FSP[name] + 1] if FSP[name] else "")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        us = value.days * 86_400_000_000 + value.seconds * 1_000_000 + value.microseconds
        sign, us = ("-" if us < 0 else ""), abs(us)
        s, frac = divmod(us, 1_000_000)
        text = f"{sign}{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
        return text + (f".{frac:06d}"[: FSP[name] + 1] if FSP[name] else "")
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def expected_hash(name: str, value: Any) -> str | None:
    return None if value is None else hashlib.sha256((SALT + mysql_text(name, value)).encode()).hexdigest()


@pytest.fixture()
def pipeline(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service, ticdc: Service,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv(SALT_ENV, SALT)

    def config(suffix: str, _tpcc_db: str) -> dict[str, Any]:
        return {
            "source": {"changefeed_id": f"cols-{suffix}"},
            "snowflake": {"database": f"COLS_{suffix.upper()}"},
            "tables": [{"db": f"cols_types_{suffix}", "table": types_table.TABLE, "key": ["id"],
                        "hash_salt_env": SALT_ENV,
                        "columns": {"exclude": list(EXCLUDED), "hash": list(HASHED), "mask": list(MASKED)}}],
        }

    with lab_pipeline(lab_settings, mariadb, prefix="cols", config=config, more_databases=("cols_types_{suffix}",)) as p:
        yield {**p, "db": p["databases"][0]}
        with contextlib.suppress(Exception), snowflake.connector.connect(**connection_args(lab_settings)) as sf:
            sf.cursor().execute(f'DROP DATABASE IF EXISTS "{p["config"].snowflake.database}"')


def _content_check(defs: dg.Definitions, config: Any, key: dg.AssetCheckKey) -> dg.ExecuteInProcessResult:
    """The content check alone, one row per chunk, so a differing chunk names a one-row key range."""
    checks = build_replica_checks(config=config, tables=config.tables, settings=CheckSettings(rows_per_chunk=1),
                                  suffix="cols")
    job = dg.define_asset_job("cols_check", selection=dg.AssetSelection.checks(key))
    only = dg.Definitions(assets=defs.assets, asset_checks=checks, jobs=[job], resources=defs.resources)
    result = only.resolve_job_def("cols_check").execute_in_process()
    assert result.success
    return result


@contextlib.contextmanager
def _general_log(conn_kwargs: dict[str, Any]) -> Iterator[list[str]]:
    """Statements MariaDB receives while the block runs (its general log, as a table)."""
    sent: list[str] = []
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn, conn.cursor() as cur:
        cur.execute("SELECT NOW(6)")
        (start,) = cur.fetchone()
        cur.execute("SET GLOBAL log_output = 'TABLE'")
        cur.execute("SET GLOBAL general_log = 1")
        try:
            yield sent
        finally:
            cur.execute("SET GLOBAL general_log = 0")
            cur.execute("SELECT CONVERT(argument USING utf8mb4) FROM mysql.general_log WHERE event_time >= %s "
                        "AND command_type = 'Query'", (start,))
            sent.extend(r[0] for r in cur.fetchall())


def test_column_policy_on_the_type_table(
    pipeline: dict[str, Any], lab_settings: LabSettings, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config, defs, conn_kwargs, db = pipeline["config"], pipeline["defs"], pipeline["conn_kwargs"], pipeline["db"]
    (table,) = config.tables
    keys, names = table_keys(config, table), table_names(config, table)
    materialize(defs, {changefeed_key(config)})
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
        types_table.create_types_table(conn, db)
        types_table.insert_types_rows(conn, database=db)
        types_table.update_types_rows(conn, database=db)
        source = types_table.read_types_rows(conn, database=db)
    assert source == types_table.expected_rows(updated=True)
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id, target=tso_from_ms(int(time.time() * 1000)))
    merged = materialize(defs, {keys.landing, keys.replica})

    # Full contents: the replica's columns, the plain ones equal to TiDB, the hashed and masked ones by the model.
    kept = [c for c in types_table.COLUMN_NAMES if c not in EXCLUDED]
    plain = [c for c in kept if c not in HASHED and c not in MASKED]
    with snowflake.connector.connect(**connection_args(lab_settings)) as sf, pymysql.connect(**conn_kwargs) as src:
        cur = sf.cursor()
        cur.execute(f"SELECT * FROM {names.replica.sql} ORDER BY \"id\"")
        got_names = [d[0] for d in cur.description]
        replica = {row[0]: dict(zip(got_names, row)) for row in cur.fetchall()}
        cmp = compare_table(src, db, types_table.TABLE, sf, names.replica, ["id"], only=plain)
    assert got_names == kept
    assert cmp.equal and cmp.source_rows == len(source), cmp
    model = {i: {c: expected_hash(c, row[c]) for c in HASHED} | {c: None for c in MASKED} for i, row in source.items()}
    assert {i: {c: r[c] for c in (*HASHED, *MASKED)} for i, r in replica.items()} == model
    assert sum(v is not None for r in model.values() for v in r.values()) > 30, "too few hashed values to prove much"
    (md,) = [e.materialization.metadata for e in merged.get_asset_materialization_events() if e.asset_key == keys.replica]
    marked = {c.name: c.tags.get("column_policy") for c in md["dagster/column_schema"].value.columns}
    assert marked == {c: ("hash" if c in HASHED else "mask" if c in MASKED else None) for c in kept}

    # The content check computes the same hashes in TiDB; it reads neither excluded nor masked columns there.
    check_key = dg.AssetCheckKey(keys.replica, "content_matches_source")
    with _general_log(conn_kwargs) as sent:
        passed = _content_check(defs, config, check_key)
    (evaluation,) = passed.get_asset_check_evaluations()
    assert evaluation.passed, evaluation.metadata
    assert evaluation.metadata["columns_hashed_compared"].value == list(HASHED)
    reads = [s for s in sent if types_table.TABLE in s and "SHA2" in s]
    assert reads, f"the check sent no checksum query to TiDB: {sent}"
    for column in (*EXCLUDED, *MASKED):
        assert not [s for s in sent if f"`{column}`" in s], f"{column} was read from TiDB"

    # A hashed value changed in the replica behind the pipeline's back: the check fails and names the range.
    with snowflake.connector.connect(**connection_args(lab_settings)) as sf:
        sf.cursor().execute(f'UPDATE {names.replica.sql} SET "c_varchar" = %s WHERE "id" = 3',
                            (expected_hash("c_varchar", "tampered"),))
    (evaluation,) = _content_check(defs, config, check_key).get_asset_check_evaluations()
    md = {k: v.value for k, v in evaluation.metadata.items()}
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.ERROR), md
    assert md["differing_ranges"] == ["id >= 3 AND id < 4: source 1 rows, replica 1 rows"], md

    # The salt reached no event, metadata or log record (the runs above, including the failing check).
    events = [repr(e) for r in (merged, passed) for e in r.all_events]
    assert events and not [e for e in events if SALT in e]
    assert not [r for r in caplog.records if SALT in r.getMessage()]
    assert SALT not in repr(config) and os.environ[SALT_ENV] == SALT


def test_backfill_follows_the_column_policy(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    config, defs, conn_kwargs, db = pipeline["config"], pipeline["defs"], pipeline["conn_kwargs"], pipeline["db"]
    names = table_names(config, config.tables[0])
    with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
        types_table.create_types_table(conn, db)
        types_table.insert_types_rows(conn, database=db)
        source = types_table.read_types_rows(conn, database=db)
    with defs.resources["ticdc"].get_client() as client, \
            snowflake.connector.connect(**connection_args(lab_settings)) as sf:
        backfill(tidb=None, snowflake_connection=sf, ticdc_client=client,
                 kafka=KafkaResource(bootstrap_servers=lab_settings.kafka_bootstrap),
                 registry=SchemaRegistryResource(url=lab_settings.registry_url), config=config, tables=config.tables,
                 snapshot=MariaDBSnapshotSource(conn_kwargs), chunk_rows=2)
        cur = sf.cursor()
        cur.execute(f"SELECT * FROM {names.replica.sql}")
        got_names = [d[0] for d in cur.description]
        replica = {row[0]: dict(zip(got_names, row)) for row in cur.fetchall()}
        plain = [c for c in types_table.COLUMN_NAMES if c not in (*EXCLUDED, *HASHED, *MASKED)]
        with pymysql.connect(**conn_kwargs) as src:
            cmp = compare_table(src, db, types_table.TABLE, sf, names.replica, ["id"], only=plain)
    assert got_names == [c for c in types_table.COLUMN_NAMES if c not in EXCLUDED]
    assert cmp.equal and cmp.source_rows == len(types_table.ROWS), cmp
    model = {i: {c: expected_hash(c, row[c]) for c in HASHED} | {c: None for c in MASKED} for i, row in source.items()}
    assert {i: {c: r[c] for c in (*HASHED, *MASKED)} for i, r in replica.items()} == model
