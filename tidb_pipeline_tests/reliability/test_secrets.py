"""Secrets never leave the environment: the pipeline runs (changefeed asset, landing, merge, checks, and a
failing run) with a sentinel in every secret variable the resources read, then logs, the Dagster instance's
run and event storage in a tmp DAGSTER_HOME, asset metadata, check metadata and error messages are
searched for each sentinel in the forms a leak would take (raw, URL-encoded, Basic-auth base64)."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import dagster as dg
import pymysql
import pytest

from tidb_pipeline.lab.env import pipeline_env
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.jobs import merge_job_name
from tidb_pipeline.defs.tables import changefeed_key
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.resources.tidb import quote_mysql
from tidb_pipeline_tests.reliability.support import (
    ITEMS_DDL,
    free_port,
    mysql_kwargs,
    private_services,
    wait_for_checkpoint,
    write_history,
)

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:10]
# Every secret variable a resource reads (defs/resources.py and resources/*). Characters that break an
# unencoded URI are in the ones that travel in URIs.
SECRETS = {
    "TIDB_PASSWORD": f"tidb-pw-{TAG}",
    "KAFKA_API_KEY": f"kafkakey{TAG}",
    "KAFKA_API_SECRET": f"kafka/secret+{TAG}@:",
    "SCHEMA_REGISTRY_API_KEY": f"srkey{TAG}",
    "SCHEMA_REGISTRY_API_SECRET": f"sr/secret+{TAG}@:",
    "SNOWFLAKE_PASSWORD": f"sf-pw-{TAG}",
    "TICDC_PASSWORD": f"ticdc-pw-{TAG}",
}
SENTINEL_USER = f"sentinel_{TAG}"


def leak_forms(name: str, value: str) -> list[bytes]:
    forms = {value, quote(value, safe=""), quote_plus(value)}
    if name.endswith("SECRET"):
        key = SECRETS[name.replace("SECRET", "KEY")]
        forms.add(base64.b64encode(f"{key}:{value}".encode()).decode())
    if name == "TICDC_PASSWORD":
        forms.add(base64.b64encode(f"ticdc:{value}".encode()).decode())
    return [f.encode() for f in forms]


def find_leaks(blob: bytes, where: str) -> list[str]:
    return [f"{name} ({form.decode()!r}) in {where}" for name, value in SECRETS.items()
            for form in leak_forms(name, value) if form in blob]


@pytest.fixture
def sentinel_env(lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service,
                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with private_services(lab_settings, tmp_path / "lab", ["ticdc"]) as own:
        with pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn, conn.cursor() as cur:
            # The TiDB password must be real for the checks to log in: a user whose password is the sentinel.
            cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (SENTINEL_USER, SECRETS["TIDB_PASSWORD"]))
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO {quote_mysql(SENTINEL_USER)}@'%'")
        home = tmp_path / "dagster_home"
        home.mkdir()
        env = {**pipeline_env(own), **SECRETS, "TIDB_USER": SENTINEL_USER, "TICDC_USER": "ticdc",
               "DAGSTER_HOME": str(home)}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        try:
            yield {"own": own, "home": home}
        finally:
            with pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn, conn.cursor() as cur:
                cur.execute("DROP USER IF EXISTS %s@'%%'", (SENTINEL_USER,))


def test_no_secret_reaches_logs_run_storage_metadata_or_errors(
    sentinel_env: dict[str, Any], lab_settings: LabSettings, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from tidb_pipeline.config import parse_config

    caplog.set_level(logging.DEBUG)
    own, home = sentinel_env["own"], sentinel_env["home"]
    db = f"rel_secrets_{TAG}"
    config = parse_config({"source": {"changefeed_id": f"rel-secrets-{TAG}"},
                           "snowflake": {"database": f"REL_SECRETS_{TAG.upper()}"},
                           "retries": {"max_retries": 0},  # the failing run below fails once, not five times
                           "tables": [{"db": db, "table": "items", "key": ["id"]}]})
    with pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {quote_mysql(db)}")
        cur.execute(ITEMS_DDL.format(t=f"{quote_mysql(db)}.`items`"))
    instance = dg.DagsterInstance.get()
    defs = build_defs(config=config)
    resources = defs.resources or {}
    repo = defs.get_repository_def()
    try:
        cf = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and changefeed_key(config) in a.keys]
        assert dg.materialize(cf, instance=instance, resources=resources).success
        with pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn:
            write_history(conn, db, "items", seed=6, changes=40)
        wait_for_checkpoint(own, config.source.changefeed_id)
        assert repo.get_job(merge_job_name("default")).execute_in_process(instance=instance, resources=resources).success
        checks = repo.get_job("reconcile").execute_in_process(instance=instance, resources=resources,
                                                                raise_on_error=False)
        evaluations = checks.get_asset_check_evaluations()
        assert evaluations, "the checks did not run"
        # A failing run: the registry is down, and its error message must not carry the API secret.
        broken = dict(resources)
        broken["schema_registry"] = type(resources["schema_registry"])(
            url=f"http://127.0.0.1:{free_port()}", api_key=dg.EnvVar("SCHEMA_REGISTRY_API_KEY"),
            api_secret=dg.EnvVar("SCHEMA_REGISTRY_API_SECRET"), timeout_s=2)
        failed = repo.get_job(merge_job_name("default")).execute_in_process(
            instance=instance, resources=broken, raise_on_error=False)
        assert not failed.success
    finally:
        with resources["ticdc"].get_client() as client:
            client.delete(config.source.changefeed_id)
        with pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_mysql(db)}")

    # The sentinels were really used: TiCDC had to be given the registry secret, so its store holds it.
    # (This is also the proof that `find_leaks` finds a secret where one is.)
    store = b"".join(p.read_bytes() for p in (own.root / "ticdc").rglob("changefeeds.sqlite*"))
    assert any("SCHEMA_REGISTRY_API_SECRET" in leak for leak in find_leaks(store, "the TiCDC store"))

    leaks: list[str] = []
    # 1. Everything the instance stored: runs, event logs (metadata, errors), compute logs, schedules.
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files), f"no run storage under {home}: {files}"
    for path in files:
        leaks += find_leaks(path.read_bytes(), str(path.relative_to(home)))
    # 2. Asset materialization and check metadata, and failure messages, read back through the instance.
    records = instance.get_event_records(dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION))
    assert len(records) >= 3, "expected the changefeed, landing and replica materializations"
    for record in records:
        mat = record.asset_materialization
        leaks += find_leaks(repr(mat.metadata).encode(), f"metadata of {mat.asset_key.to_user_string()}")
    for ev in evaluations:
        leaks += find_leaks(repr(ev.metadata).encode(), f"check {ev.check_name}")
    failures = [e for e in failed.all_events if e.is_failure]
    assert failures
    for e in failures:
        leaks += find_leaks(repr(e.event_specific_data).encode(), f"failure event {e.event_type_value}")
    # 3. Logs: Python logging records and whatever reached stdout/stderr.
    leaks += find_leaks("\n".join(r.getMessage() for r in caplog.records).encode(), "log records")
    out, err = capfd.readouterr()
    leaks += find_leaks((out + err).encode(), "stdout/stderr")
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
