"""Schema changes and TRUNCATE mid-workload on the lab (issue 17, items 1 and 2).

One table, written by a background writer (inserts of new keys and updates of existing ones) the whole time;
each test runs a DDL in TiDB's stand-in while it writes, merges once while it still writes (the batch straddles
the DDL), stops it, merges again, and ends with the replica equal to the source in full (every source column,
every row) and the replica's checks green. The DDL the Avro records do not carry (the rename, the TRUNCATE)
comes from the lab change feed's DDL-history stand-in, read through the `tidb` resource as production reads
`mysql.tidb_ddl_history`. The tests run in file order on one replica, each starting from the previous state.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
import snowflake.connector

from tidb_pipeline.defs.tables import changefeed_key, table_keys, table_names
from tidb_pipeline.lab.compare import compare_table
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.replication.ddl import quote_ident
from tidb_pipeline.replication.schema_changes import schema_changes_table
from tidb_pipeline_tests.changefeed import wait_for_checkpoint
from tidb_pipeline_tests.defs.lab_pipeline import lab_pipeline, materialize

pytestmark = pytest.mark.integration

TABLE = "t"
CHECKS = ("row_count_matches_source", "content_matches_source", "schema_drift", "landing_continuity",
          "no_quarantined_records")


class Writer:
    """Inserts new keys and updates existing ones (`qty`, which no DDL here touches) until stopped."""

    def __init__(self, conn_kwargs: dict[str, Any], db: str, ids: Iterator[int]) -> None:
        self.conn_kwargs, self.table, self.ids = conn_kwargs, f"`{db}`.`{TABLE}`", ids
        self.stop = threading.Event()
        self.written = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with pymysql.connect(autocommit=True, **self.conn_kwargs) as conn, conn.cursor() as cur:
                while not self.stop.is_set():
                    i = next(self.ids)
                    cur.execute(f"INSERT INTO {self.table} (id, qty) VALUES (%s, %s)", (i, i % 97))
                    cur.execute(f"UPDATE {self.table} SET qty = qty + 1 WHERE id = %s", (i - 3,))
                    self.written += 1
                    time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - reported by stop_and_check
            self.error = exc

    def __enter__(self) -> Writer:
        self.thread.start()
        self.wait_for(20)
        return self

    def wait_for(self, more: int) -> None:
        """Until `more` further rows are written (progress, not a fixed sleep)."""
        target = self.written + more
        while self.written < target:
            assert self.error is None and self.thread.is_alive(), f"writer failed: {self.error!r}"
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert self.error is None, f"writer failed: {self.error!r}"


@pytest.fixture(scope="module")
def pipeline(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service, ticdc: Service,
) -> Iterator[dict[str, Any]]:
    def config(suffix: str, tpcc_db: str) -> dict[str, Any]:
        return {
            "source": {"changefeed_id": f"schema-{suffix}"},
            "snowflake": {"database": f"SCHEMA_{suffix.upper()}"},
            "tables": [{"db": tpcc_db, "table": TABLE, "key": ["id"]}],
        }

    with lab_pipeline(lab_settings, mariadb, prefix="schema", config=config) as p:
        db = p["tpcc_db"]
        with pymysql.connect(autocommit=True, **p["conn_kwargs"]) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{db}`")
            cur.execute(f"CREATE TABLE `{db}`.`{TABLE}` (id INT NOT NULL PRIMARY KEY, qty INT NULL, "
                        "price DECIMAL(5,2) NULL, name VARCHAR(24) NULL, gone VARCHAR(10) NULL)")
        materialize(p["defs"], {changefeed_key(p["config"])})  # before any row: no backfill needed
        with pymysql.connect(autocommit=True, **p["conn_kwargs"]) as conn, conn.cursor() as cur:
            cur.executemany(f"INSERT INTO `{db}`.`{TABLE}` VALUES (%s, %s, %s, %s, %s)",
                            [(i, i, f"{i % 999}.25", f"n{i}", f"g{i}") for i in range(1, 41)])
        p["ids"] = itertools.count(1000)
        p["table"] = p["config"].tables[0]
        yield p


def _sql(p: dict[str, Any], *statements: str) -> None:
    with pymysql.connect(autocommit=True, **p["conn_kwargs"]) as conn, conn.cursor() as cur:
        for s in statements:
            cur.execute(s.replace("{t}", f"`{p['tpcc_db']}`.`{TABLE}`"))


def _land_and_merge(p: dict[str, Any]) -> list[dict[str, Any]]:
    """Everything committed so far landed and merged; the replica materializations' metadata."""
    config, defs = p["config"], p["defs"]
    keys = table_keys(config, p["table"])
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)  # every commit so far
    result = materialize(defs, {keys.landing, keys.replica})
    return [{k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events() if e.asset_key == keys.replica]


def _assert_equal_and_green(p: dict[str, Any], lab_settings: LabSettings) -> dict[str, Any]:
    config, t = p["config"], p["table"]
    replica = table_names(config, t).replica
    with pymysql.connect(**p["conn_kwargs"]) as src, snowflake.connector.connect(**connection_args(lab_settings)) as sf:
        cmp = compare_table(src, t.db, t.table, sf, replica, t.key)
    assert cmp.source_rows > 0, f"{cmp.source} is empty: the test would prove nothing"
    assert cmp.equal, f"{cmp.source}: {cmp}"
    result = p["defs"].resolve_job_def("reconcile").execute_in_process(raise_on_error=False)
    evaluations = {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}
    key = table_keys(config, t).replica
    for check in CHECKS:
        e = evaluations[(key, check)]
        assert e.passed, f"{check}: { {k: v.value for k, v in e.metadata.items()} }"
    return {"drift": {k: v.value for k, v in evaluations[(key, "schema_drift")].metadata.items()}}


def _replica_columns(p: dict[str, Any], lab_settings: LabSettings) -> dict[str, str]:
    replica = table_names(p["config"], p["table"]).replica
    with snowflake.connector.connect(**connection_args(lab_settings)) as sf:
        cur = sf.cursor()
        cur.execute(f"SELECT column_name, data_type, numeric_precision, numeric_scale FROM "
                    f"{quote_ident(replica.database)}.information_schema.columns WHERE table_schema = %s AND "
                    "table_name = %s ORDER BY ordinal_position", (replica.schema, replica.name))
        return {r[0]: f"{r[1]}({r[2]},{r[3]})" if r[1] == "NUMBER" else r[1] for r in cur.fetchall()}


def _recorded(p: dict[str, Any], lab_settings: LabSettings) -> list[tuple[Any, ...]]:
    names = table_names(p["config"], p["table"])
    log = schema_changes_table(names.watermarks)
    with snowflake.connector.connect(**connection_args(lab_settings)) as sf:
        cur = sf.cursor()
        cur.execute(f'SELECT "KIND", "COLUMN_NAME", "OLD_TYPE", "NEW_TYPE", "NEW_NAME", "DDL_TSO", '
                    f'"SCHEMA_VERSION_BEFORE", "SCHEMA_VERSION_AFTER" FROM {log.sql} WHERE "REPLICA_TABLE" = %s',
                    (names.replica.label,))
        return cur.fetchall()


def _changes(metadata: list[dict[str, Any]]) -> list[str]:
    return [c for md in metadata if isinstance(md.get("schema_changes"), list) for c in md["schema_changes"]]


def test_first_merge_then_add_column_mid_workload(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    with Writer(pipeline["conn_kwargs"], pipeline["tpcc_db"], pipeline["ids"]) as w:
        _land_and_merge(pipeline)  # the replica is created here, and the DDL history followed from here
        _sql(pipeline, "ALTER TABLE {t} ADD COLUMN note VARCHAR(30) NULL")
        _sql(pipeline, "UPDATE {t} SET note = CONCAT('note ', id) WHERE id % 3 = 0")
        w.wait_for(20)
        mid = _land_and_merge(pipeline)
    md = mid + _land_and_merge(pipeline)
    assert "add_column 'note' VARCHAR" in _changes(md)
    assert _replica_columns(pipeline, lab_settings)["note"] == "TEXT"
    _assert_equal_and_green(pipeline, lab_settings)


def test_drop_column_mid_workload_keeps_it_unfilled(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    with Writer(pipeline["conn_kwargs"], pipeline["tpcc_db"], pipeline["ids"]) as w:
        _sql(pipeline, "ALTER TABLE {t} DROP COLUMN gone")
        w.wait_for(20)
        mid = _land_and_merge(pipeline)
    md = mid + _land_and_merge(pipeline)
    assert "drop_column_kept 'gone' VARCHAR: kept, no longer filled" in _changes(md)
    assert "gone" in _replica_columns(pipeline, lab_settings)  # the default policy keeps it
    checks = _assert_equal_and_green(pipeline, lab_settings)
    assert "replica keeps column 'gone' dropped upstream" in checks["drift"]["notes"]


def test_widen_types_mid_workload(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    with Writer(pipeline["conn_kwargs"], pipeline["tpcc_db"], pipeline["ids"]) as w:
        _sql(pipeline, "ALTER TABLE {t} MODIFY price DECIMAL(12,2) NULL", "ALTER TABLE {t} MODIFY name VARCHAR(200) NULL")
        # values only the wider types hold
        _sql(pipeline, "UPDATE {t} SET price = 1234567890.12, name = REPEAT('w', 150) WHERE id % 4 = 1")
        w.wait_for(20)
        mid = _land_and_merge(pipeline)
    md = mid + _land_and_merge(pipeline)
    changes = _changes(md)
    assert "widen_type 'price' NUMBER(5,2) -> NUMBER(12,2)" in changes
    assert not [c for c in changes if "'name'" in c], changes  # VARCHAR is unbounded in the replica: no change
    assert _replica_columns(pipeline, lab_settings)["price"] == "NUMBER(12,2)"
    widen = [r for r in _recorded(pipeline, lab_settings) if r[0] == "widen_type"]
    assert len(widen) == 1 and widen[0][6] is not None and widen[0][7] > widen[0][6], widen  # versions before < after
    _assert_equal_and_green(pipeline, lab_settings)


def test_rename_column_mid_workload_follows_the_ddl_history(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    with Writer(pipeline["conn_kwargs"], pipeline["tpcc_db"], pipeline["ids"]) as w:
        _sql(pipeline, "UPDATE {t} SET name = CONCAT('before ', id) WHERE id % 5 = 0")
        _sql(pipeline, "ALTER TABLE {t} RENAME COLUMN name TO label")
        _sql(pipeline, "UPDATE {t} SET label = CONCAT('after ', id) WHERE id % 7 = 0")
        w.wait_for(20)
        mid = _land_and_merge(pipeline)
    md = mid + _land_and_merge(pipeline)
    renamed = [c for c in _changes(md) if c.startswith("rename_column 'name' -> 'label'")]
    assert len(renamed) == 1, _changes(md)
    columns = _replica_columns(pipeline, lab_settings)
    assert "label" in columns and "name" not in columns, columns  # renamed in place, not dropped + added
    _assert_equal_and_green(pipeline, lab_settings)


def test_truncate_mid_workload_keeps_only_later_rows(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    with Writer(pipeline["conn_kwargs"], pipeline["tpcc_db"], pipeline["ids"]) as w:
        _land_and_merge(pipeline)  # the replica holds rows written before the truncate
        w.wait_for(20)
        with pymysql.connect(**pipeline["conn_kwargs"]) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT MAX(id) FROM `{pipeline['tpcc_db']}`.`{TABLE}`")
            (before_max,) = cur.fetchone()
        _sql(pipeline, "TRUNCATE TABLE {t}")
        w.wait_for(30)  # inserts (and updates of them) after the truncate
        mid = _land_and_merge(pipeline)
        w.wait_for(20)
    md = mid + _land_and_merge(pipeline)
    truncates = [c for c in _changes(md) if c.startswith("truncate at TSO")]
    assert len(truncates) == 1, _changes(md)
    (row,) = [r for r in _recorded(pipeline, lab_settings) if r[0] == "truncate"]
    assert row[5] > 0
    with pymysql.connect(**pipeline["conn_kwargs"]) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT MIN(id), COUNT(*) FROM `{pipeline['tpcc_db']}`.`{TABLE}`")
        min_id, count = cur.fetchone()
    assert count > 0 and min_id > before_max - 5, (min_id, before_max)  # only rows written after the truncate
    _assert_equal_and_green(pipeline, lab_settings)  # ...and the replica holds exactly those
