"""The lab's Snowflake (fakesnow server over file-backed DuckDB) and the project's Snowflake resource.

The server runs as a real lab service on a free port with its data under a tmp folder; every client here
connects over HTTP with the real snowflake-connector, including a Dagster run in a separate process.

What fakesnow 0.12.1's *server* does with the SQL this project needs (measured here, 2026-11-25):
- Works: `PARSE_JSON`, VARIANT paths with casts (`RECORD_METADATA:offset::int`, `:key.id::int`), `QUALIFY
  ROW_NUMBER() OVER (...) = 1`, `MERGE` whose source is a subquery with QUALIFY (returns inserted/updated/
  deleted counts), `ALTER TABLE ... ADD COLUMN [IF NOT EXISTS]`, `TO_TIMESTAMP(ms, 3)`, `MD5`, `SHA2`,
  `LISTAGG ... WITHIN GROUP`, `bitxor_agg`, transactions both ways (`autocommit=False` + commit()/rollback(),
  and `BEGIN`/`COMMIT`/`ROLLBACK` statements); another session does not see uncommitted rows.
- `PUT file://... @stage` works across processes (the server hands the client a GCS-style upload URL to
  itself). `COPY INTO` from a stage works for CSV, including quoted JSON text into VARIANT columns, and
  for JSON into a table with exactly one VARIANT column; `COPY` load history skips an already loaded file
  ("LOAD_SKIPPED"). It fails for JSON into a two-column table (`MATCH_BY_COLUMN_NAME` → binder error) and
  for any transforming `COPY INTO t FROM (SELECT $1:a, ... FROM @stage)` (binder error or HTTP 500). So the
  landing loader should stage CSV with the two JSON columns, or load JSON into a one-column table and
  `INSERT ... SELECT v:RECORD_METADATA, v:RECORD_CONTENT`.
- Unsupported statements come back as HTTP 500 (e.g. `SELECT HASH(...)`: fakesnow's HASH is DuckDB's
  unsigned 64-bit hash, which overflows its Arrow result). The connector retries a 500 until its
  `network_timeout` — forever when unset — which is why `connection_args` sets one.
- Different from Snowflake: `HASH` values differ (and `SUM(HASH(..))` is a float); `HASH_AGG`,
  `MD5_NUMBER_LOWER64` and `TO_NUMBER(hex, 'XXXX')` are missing — checksums should use MD5/LISTAGG, which
  MySQL and Snowflake compute alike. A MERGE with duplicate source keys inserts both rows instead of failing.
  Uncast variant numbers order as strings ('12' < '5'). `SELECT ?` needs paramstyle qmark (default pyformat).
  A query with a FROM needs a current database even for `range()`. `CREATE SCHEMA` switches the session's
  current schema, as in Snowflake. One connection runs one statement at a time ("connection is busy").
- A statement longer than the socket timeout (connector default 60 s) is reported as failed while it still
  completes on the server; the lab sets a long socket timeout.
Login + `SELECT 1` over HTTP takes ~0.2-0.3 s once the connector is imported (the import is ~0.9 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import snowflake.connector

from tidb_pipeline.lab.service import up
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import SnowflakeService, connection_args, lab_env
from tidb_pipeline.resources.snowflake import snowflake_resource
from tidb_pipeline_tests.lab import snowflake_smoke_defs
from tidb_pipeline_tests.lab_resources import private_part

REPO_ROOT = Path(__file__).resolve().parents[2]




@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnowflakeService]:
    with private_part(SnowflakeService, tmp_path_factory.mktemp("lab")) as svc:
        yield svc


def _connect(svc: SnowflakeService, **kwargs: Any) -> snowflake.connector.SnowflakeConnection:
    return snowflake.connector.connect(**connection_args(svc.settings), **kwargs)


def _rows(conn: snowflake.connector.SnowflakeConnection, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    return list(conn.cursor().execute(sql, params).fetchall())


# --- the resource, without a server ----------------------------------------------------------------------


def test_resource_reads_lab_endpoint_and_secrets_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SNOWFLAKE_"):
            monkeypatch.delenv(name)
    settings = LabSettings(ports={"snowflake": 23456})
    for name, value in {**lab_env(settings), "SNOWFLAKE_DATABASE": "ANALYTICS"}.items():
        monkeypatch.setenv(name, value)

    resource = snowflake_resource()

    # The password is only named at load time, so it never sits in the definitions.
    assert isinstance(resource.password, dg.EnvVar) and resource.password.env_var_name == "SNOWFLAKE_PASSWORD"
    args = dict(resource.process_config_and_initialize()._connection_args)  # noqa: SLF001
    assert args == {
        "account": "fakesnow",
        "user": "fake",
        "password": "snow",
        "database": "ANALYTICS",
        "network_timeout": 30,
        "application": "DagsterLabs_Dagster",
        "host": "127.0.0.1",
        "port": 23456,
        "protocol": "http",
        "socket_timeout": 900,
    }


def test_resource_without_host_targets_snowflake_itself() -> None:
    env = {"SNOWFLAKE_ACCOUNT": "xy12345", "SNOWFLAKE_USER": "loader", "SNOWFLAKE_PRIVATE_KEY": "pem"}
    resource = snowflake_resource(env)
    assert resource.additional_snowflake_connection_args is None
    assert resource.password is None
    assert isinstance(resource.private_key, dg.EnvVar)
    assert (resource.database, resource.warehouse, resource.role, resource.schema_) == (None, None, None, None)


def test_resource_names_a_bad_port() -> None:
    with pytest.raises(ValueError, match="SNOWFLAKE_PORT='http' is not an integer"):
        snowflake_resource({"SNOWFLAKE_HOST": "127.0.0.1", "SNOWFLAKE_PORT": "http"})


# --- the server ------------------------------------------------------------------------------------------


def test_connect_and_first_query_time(service: SnowflakeService) -> None:
    started = time.perf_counter()
    with _connect(service) as conn:
        assert _rows(conn, "SELECT 1") == [(1,)]
    elapsed = time.perf_counter() - started
    print(f"fakesnow login + SELECT 1 over HTTP: {elapsed:.3f}s")
    assert elapsed < 5


def test_variant_round_trip_and_merge(service: SnowflakeService) -> None:
    landing = [
        ({"partition": 0, "offset": 5, "key": {"id": 1}}, {"id": 1, "note": "first"}),
        ({"partition": 0, "offset": 12, "key": {"id": 1}}, {"id": 1, "note": "second"}),
        ({"partition": 0, "offset": 7, "key": {"id": 2}}, {}),
        ({"partition": 0, "offset": 9, "key": {"id": 3}}, {"id": 3, "note": "new"}),
    ]
    with _connect(service, database="RT", schema="LANDING") as conn:
        cur = conn.cursor()
        cur.execute("CREATE OR REPLACE TABLE LAND (RECORD_METADATA VARIANT, RECORD_CONTENT VARIANT)")
        for meta, content in landing:
            params = (json.dumps(meta), json.dumps(content))
            cur.execute("INSERT INTO LAND SELECT PARSE_JSON(%s), PARSE_JSON(%s)", params)
        assert _rows(conn, "SELECT RECORD_METADATA:offset::int, RECORD_CONTENT:note::string FROM LAND ORDER BY 1") == [
            (5, "first"), (7, None), (9, "new"), (12, "second"),
        ]
        cur.execute("CREATE OR REPLACE TABLE REPLICA (ID INT, NOTE VARCHAR)")
        cur.execute("INSERT INTO REPLICA VALUES (1, 'stale'), (2, 'to delete')")
        merge = """
            MERGE INTO REPLICA t USING (
                SELECT RECORD_METADATA:key.id::int AS id, RECORD_CONTENT:note::string AS note,
                       RECORD_CONTENT::string = '{}' AS is_delete
                FROM LAND
                QUALIFY ROW_NUMBER() OVER (PARTITION BY RECORD_METADATA:key.id::int
                                           ORDER BY RECORD_METADATA:offset::int DESC) = 1
            ) s ON t.ID = s.id
            WHEN MATCHED AND s.is_delete THEN DELETE
            WHEN MATCHED THEN UPDATE SET NOTE = s.note
            WHEN NOT MATCHED AND NOT s.is_delete THEN INSERT (ID, NOTE) VALUES (s.id, s.note)
        """
        # (inserted, updated, deleted), as Snowflake reports them.
        assert _rows(conn, merge) == [(1, 1, 1)]
        assert _rows(conn, "SELECT ID, NOTE FROM REPLICA ORDER BY ID") == [(1, "second"), (3, "new")]


def test_transaction_rollback_and_commit(service: SnowflakeService) -> None:
    with _connect(service, database="TX", schema="PUBLIC") as setup:
        setup.cursor().execute("CREATE OR REPLACE TABLE T (ID INT)")
    with _connect(service, database="TX", schema="PUBLIC", autocommit=False) as tx, _connect(
        service, database="TX", schema="PUBLIC"
    ) as other:
        tx.cursor().execute("INSERT INTO T VALUES (1)")
        assert _rows(other, "SELECT COUNT(*) FROM T") == [(0,)]
        tx.rollback()
        tx.cursor().execute("INSERT INTO T VALUES (2)")
        tx.commit()
        assert _rows(other, "SELECT ID FROM T") == [(2,)]


def test_put_and_copy_into_from_another_process(service: SnowflakeService, tmp_path: Path) -> None:
    import csv

    batch = tmp_path / "batch_0001.csv"
    records = [({"partition": 1, "offset": 100 + i}, {"id": i, "s": 'a,"b"\nc'}) for i in range(3)]
    with batch.open("w", newline="") as f:
        csv.writer(f).writerows([json.dumps(m), json.dumps(c)] for m, c in records)
    with _connect(service, database="LOADS", schema="LANDING") as conn:
        cur = conn.cursor()
        cur.execute("CREATE OR REPLACE TABLE LAND (RECORD_METADATA VARIANT, RECORD_CONTENT VARIANT)")
        cur.execute("CREATE OR REPLACE STAGE LOAD_STAGE")
        cur.execute(f"PUT file://{batch} @LOAD_STAGE")
        copy = "COPY INTO LAND FROM @LOAD_STAGE FILE_FORMAT = (TYPE = 'CSV' FIELD_OPTIONALLY_ENCLOSED_BY = '\"')"
        assert [r[1:3] for r in _rows(conn, copy)] == [("LOADED", 3)]
        assert [r[1] for r in _rows(conn, copy)] == ["LOAD_SKIPPED"]
        got = _rows(conn, "SELECT RECORD_METADATA:offset::int, RECORD_CONTENT:s::string FROM LAND ORDER BY 1")
        assert got == [(100 + i, 'a,"b"\nc') for i in range(3)]


def test_data_survives_restart(service: SnowflakeService, tmp_path: Path) -> None:
    staged = tmp_path / "kept.csv"
    staged.write_text("1\n")
    with _connect(service, database="DURABLE", schema="PUBLIC") as conn:
        cur = conn.cursor()
        cur.execute("CREATE OR REPLACE TABLE KEPT (ID INT, DOC VARIANT)")
        cur.execute("INSERT INTO KEPT SELECT 1, PARSE_JSON(%s)", (json.dumps({"a": [1, 2]}),))
        cur.execute("CREATE OR REPLACE STAGE KEPT_STAGE")
        cur.execute(f"PUT file://{staged} @KEPT_STAGE AUTO_COMPRESS = FALSE")

    service.stop()
    up([service], log=lambda _msg: None)

    # No database at login: the server itself must have re-attached DURABLE's file.
    with _connect(service) as conn:
        cur = conn.cursor()
        cur.execute("USE DATABASE DURABLE")
        assert _rows(conn, "SELECT ID, DOC:a[1]::int FROM PUBLIC.KEPT") == [(1, 2)]
        assert [r[1] for r in _rows(conn, "SHOW STAGES IN DURABLE.PUBLIC")] == ["KEPT_STAGE"]
        assert [r[0] for r in _rows(conn, "LIST @DURABLE.PUBLIC.KEPT_STAGE")] == ["kept_stage/kept.csv"]


# --- the acceptance: a Dagster run in another process ----------------------------------------------------


def test_dagster_run_in_separate_process_writes_through_resource(service: SnowflakeService, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SNOWFLAKE_")}
    env = {
        **inherited,
        **lab_env(service.settings),
        "SNOWFLAKE_DATABASE": "DAGSTER_SMOKE",
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), inherited.get("PYTHONPATH")) if p),
    }
    key = dg.AssetKey(["snowflake", snowflake_smoke_defs.SCHEMA, snowflake_smoke_defs.TABLE])
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", snowflake_smoke_defs.__name__,
         "--select", key.to_user_string()],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    wall = time.perf_counter() - started
    assert proc.returncode == 0, f"dagster asset materialize failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]
        event = instance.get_latest_materialization_event(key)
        assert event is not None and event.asset_materialization is not None
        metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    run_id = runs[0].run_id
    print(
        f"dagster CLI run: {wall:.1f}s wall; in the run, connect {metadata['connect_seconds']:.3f}s, "
        f"first query {metadata['first_query_seconds']:.3f}s"
    )
    assert metadata["rows_for_run"] == 1

    with _connect(service, database="DAGSTER_SMOKE") as conn:
        got = _rows(conn, "SELECT RUN_ID, PAYLOAD:asset::string FROM SMOKE.RUNS")
    assert got == [(run_id, key.to_user_string())]
