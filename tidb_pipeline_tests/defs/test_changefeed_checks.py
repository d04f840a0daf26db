"""The changefeed's `registry_compatibility` and `changefeed_tables` checks, end to end on the lab (MariaDB ->
TiCDC stand-in -> registry stand-in), and the alerts they raise through the alerts sensor's own evaluation:

- a column added NOT NULL without a default under BACKWARD: WARN before any row carries it (naming the table, the
  change and the fix), ERROR once the stand-in TiCDC is stuck on the registry's 409 with TiCDC's bare
  `CDC:ErrAvroSchemaAPIError`; the check's own `fix` command (curl) lets the changefeed through, the restore
  command drops the subject's temporary level (back to the global BACKWARD), and the alert resolves;
- a table created in a replicated database is reported with the `tidb-pipeline discover` command, which (run as
  given) writes it into the table list; a listed table dropped from TiDB is an ERROR.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pymysql
import pytest
import yaml
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.alerts import evaluate
from tidb_pipeline.defs.changefeed_checks import REGISTRY_CHECK, TABLES_CHECK
from tidb_pipeline.defs.tables import changefeed_key
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.resources.notify import Notification
from tidb_pipeline.resources.tidb import quote_mysql
from tidb_pipeline_tests.changefeed import wait_for_checkpoint
from tidb_pipeline_tests.defs.lab_pipeline import lab_pipeline, materialize

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR


class Outbox:
    """A destination that keeps what the alerts sensor sends."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def send(self, notification: Notification) -> None:
        self.sent.append(notification)


def _config(suffix: str, db: str) -> dict[str, Any]:
    return {"source": {"changefeed_id": f"h6-cfcheck-{suffix}", "partitions": 1},
            "alerts": {"webhook": {}},
            "tables": [{"db": db, "table": "orders", "key": ["id"]}, {"db": db, "table": "legacy", "key": ["id"]}]}


def _run_checks(defs: dg.Definitions, config: PipelineConfig,
                instance: dg.DagsterInstance) -> dict[str, dg.AssetCheckEvaluation]:
    """Run the two checks as the reconcile job would (their own op, the definitions' resources)."""
    checks = [c for c in defs.asset_checks or []
              if isinstance(c, dg.AssetChecksDefinition) and {k.name for k in c.check_keys} & {REGISTRY_CHECK, TABLES_CHECK}]
    changefeed = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)
                  and changefeed_key(config) in a.keys]
    result = dg.materialize([*changefeed, *checks], selection=dg.AssetSelection.checks(*checks),
                            resources=dict(defs.resources or {}), instance=instance)
    assert result.success
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _md(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def _wait(what: str, probe: Callable[[], Any], timeout: float = 180) -> Any:
    # A deadline only against a stand-in that never gets there; each probe waits on the lab's own progress.
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


def _alerts(instance: dg.DagsterInstance, defs: dg.Definitions, config: PipelineConfig, cursor: str | None,
            outbox: Outbox) -> str:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    next_cursor, _ = evaluate(context, config, {"webhook": outbox}, None)
    return next_cursor


def _shell(command: str, cwd: Path | None = None) -> str:
    """Run a command the check printed, exactly as printed (the venv's scripts first on PATH)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command}: {done.stdout} {done.stderr}"
    return done.stdout


def test_incompatible_column_and_new_table_are_named_with_their_fixes(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, ticdc: Service, tmp_path: Path
) -> None:
    with lab_pipeline(lab_settings, mariadb, prefix="h6cc", config=_config) as lab, dg.instance_for_test() as instance:
        defs, config, db = lab["defs"], lab["config"], lab["tpcc_db"]
        t = lambda name: f"{quote_mysql(db)}.{quote_mysql(name)}"  # noqa: E731
        conn = pymysql.connect(autocommit=True, **lab["conn_kwargs"])
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {quote_mysql(db)}")
            cur.execute(f"CREATE TABLE {t('orders')} (id BIGINT PRIMARY KEY, name VARCHAR(20) NULL)")
            cur.execute(f"CREATE TABLE {t('legacy')} (id INT PRIMARY KEY)")
        materialize(defs, {changefeed_key(config)})
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {t('orders')} VALUES (1, 'a')")
            cur.execute(f"INSERT INTO {t('legacy')} VALUES (1)")
        wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)
        ticdc_client = defs.resources["ticdc"].get_client()
        registry_client = defs.resources["schema_registry"].get_client()
        subject = f"tidb_{db}_orders-value"
        assert registry_client.get_versions(subject) == [1]

        outbox = Outbox()
        cursor = _alerts(instance, defs, config, None, outbox)
        ev = _run_checks(defs, config, instance)
        assert (ev[REGISTRY_CHECK].passed, ev[TABLES_CHECK].passed) == (True, True)
        assert _md(ev[REGISTRY_CHECK])["compatibility_levels"] == {"(global)": "BACKWARD"}

        # 1. Before it bites: the DDL is in, no row carries it yet.
        with conn.cursor() as cur:
            cur.execute(f"ALTER TABLE {t('orders')} ADD COLUMN weight INT NOT NULL")
        ev = _run_checks(defs, config, instance)
        check = ev[REGISTRY_CHECK]
        md = _md(check)
        assert (check.passed, check.severity) == (False, WARN)
        assert (md["table"], md["subject"], md["compatibility"]) == (f"{db}.orders", subject, "BACKWARD")
        assert md["change"] == ("column `weight` added as INT NOT NULL without a default (Avro int): TiCDC gives "
                                "it no Avro default, so the new schema cannot read records written with version 1")
        registry_url = defs.resources["schema_registry"].url.rstrip("/")
        assert md["fix"] == ("curl -sS -X PUT -H 'Content-Type: application/vnd.schemaregistry.v1+json' --data "
                             f"'{{\"compatibility\": \"NONE\"}}' {registry_url}/config/{subject}")
        assert md["or, before rows are written"] == (
            f"ALTER TABLE `{db}`.`orders` ALTER COLUMN `weight` SET DEFAULT 0")
        assert check.description is not None and f"{db}.orders" in check.description

        # 2. It bites: the next row makes the stand-in TiCDC register the schema; the registry answers 409 and
        # the changefeed turns `warning` with TiCDC's code and message, which name no table.
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {t('orders')} VALUES (2, 'b', 5)")
        status = _wait("the changefeed to turn warning on the 409", lambda: (
            s if (s := ticdc_client.get_status(config.source.changefeed_id)).state == "warning" else None))
        assert (status.last_warning.code, status.last_warning.message) == (
            "CDC:ErrAvroSchemaAPIError", "[CDC:ErrAvroSchemaAPIError]schema manager API error, %s")
        assert registry_client.get_versions(subject) == [1]
        ev = _run_checks(defs, config, instance)
        check = ev[REGISTRY_CHECK]
        assert (check.passed, check.severity) == (False, ERROR)
        assert _md(check)["ticdc_error"] == ("CDC:ErrAvroSchemaAPIError: [CDC:ErrAvroSchemaAPIError]schema manager "
                                             "API error, %s")
        assert check.description.startswith(f"TiCDC changefeed {config.source.changefeed_id} is stuck: the registry "
                                            f"refuses {db}.orders's new schema (column `weight` added as INT NOT NULL")
        # The alert, through the alerts sensor's evaluation: the table, the change and the fix.
        cursor = _alerts(instance, defs, config, cursor, outbox)
        [alert] = [n for n in outbox.sent if REGISTRY_CHECK in n.title]
        assert alert.title == (f"ERROR: check {REGISTRY_CHECK} on changefeed {config.source.changefeed_id} "
                               f"({changefeed_key(config).to_user_string()})")
        facts = dict(alert.facts)
        assert (facts["table"], facts["fix"]) == (f"{db}.orders", md["fix"])
        assert facts["change"].startswith("column `weight` added as INT NOT NULL without a default")

        # 3. The fix as printed: the changefeed gets through, replicates the row, and BACKWARD goes back.
        _shell(md["fix"])
        wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)
        assert registry_client.get_versions(subject) == [1, 2]
        _wait("the changefeed back to normal", lambda: ticdc_client.get_status(config.source.changefeed_id).state
              == "normal")
        # The subject followed the global level, so restoring drops its own level again.
        assert md["then restore"] == f"curl -sS -X DELETE {registry_url}/config/{subject}"
        _shell(md["then restore"])
        with pytest.raises(SchemaRegistryError) as no_own_level:
            registry_client.get_compatibility(subject)
        assert no_own_level.value.error_code == 40408 and registry_client.get_compatibility() == "BACKWARD"
        ev = _run_checks(defs, config, instance)
        assert ev[REGISTRY_CHECK].passed
        cursor = _alerts(instance, defs, config, cursor, outbox)
        assert any(n.title.startswith(f"RESOLVED: check {REGISTRY_CHECK} on changefeed {config.source.changefeed_id}")
                   for n in outbox.sent)

        # 4. A new table in the source, then a listed table dropped.
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {t('coupons')} (id INT PRIMARY KEY, code VARCHAR(10) NOT NULL)")
            cur.execute(f"CREATE TABLE {t('audit_log')} (note TEXT)")  # no key: TiCDC cannot replicate it
        ev = _run_checks(defs, config, instance)
        check, md = ev[TABLES_CHECK], _md(ev[TABLES_CHECK])
        assert (check.passed, check.severity) == (False, WARN)
        assert md["new in TiDB"] == [f"{db}.coupons"]
        assert md["command"] == f"tidb-pipeline discover -d {db}"
        assert f"new table(s) {db}.coupons in a replicated database" in (check.description or "")
        out = _shell(md["command"], cwd=tmp_path)  # writes ./tidb_pipeline.yaml, as the command says
        assert out.strip() == "wrote 3 tables to tidb_pipeline.yaml"
        written = yaml.safe_load((tmp_path / "tidb_pipeline.yaml").read_text())
        assert sorted(x["table"] for x in written["tables"]) == ["coupons", "legacy", "orders"]

        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE {t('legacy')}")
        ev = _run_checks(defs, config, instance)
        check, md = ev[TABLES_CHECK], _md(ev[TABLES_CHECK])
        assert (check.passed, check.severity) == (False, ERROR)
        assert (md["in the config but not in TiDB"], md["new in TiDB"]) == ([f"{db}.legacy"], [f"{db}.coupons"])
        _alerts(instance, defs, config, cursor, outbox)
        [alert] = [n for n in outbox.sent if TABLES_CHECK in n.title]
        assert alert.severity == "error" and dict(alert.facts)["command"] == f"tidb-pipeline discover -d {db}"
        conn.close()
