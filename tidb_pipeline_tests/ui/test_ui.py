"""The Dagster UI as a user sees it: `dagster dev` against the lab, one table replicated, checked in Chromium.

One small MariaDB table in a database of its own, named by a test config (`TIDB_PIPELINE_CONFIG`) with its
own changefeed id and Snowflake database, so nothing here touches other tests' data. The test drives
Dagster only through what a user has: the webserver's GraphQL API (what the UI's buttons call) and the
pages themselves. Runs: the changefeed asset first (it creates the TiCDC changefeed), then rows go into
MariaDB, then landing + replica (+ the replica's checks) once the changefeed's checkpoint has passed them.

The browser part opens the table group's asset graph, the replica's page (latest materialisation and its
metadata) and its checks, and saves screenshots under the git-ignored `artifacts/ui/`.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pymysql
import pytest
import yaml
from playwright.sync_api import Page, expect

from tidb_pipeline.lab.env import pipeline_env
from tidb_pipeline.config import PipelineConfig, load_config
from tidb_pipeline.defs.tables import TableKeys, changefeed_key, group_name, table_keys
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.ticdc.codec import tso_from_ms
from tidb_pipeline.workload.schema import quote_ident
from tidb_pipeline_tests.lab_resources import drop_pipeline_output
from tidb_pipeline_tests.ui import dagster_dev
from tidb_pipeline_tests.ui.browser import TIMEOUT_MS, chromium_page
from tidb_pipeline.lab.ports import free_port

ARTIFACTS = dagster_dev.REPO / "artifacts" / "ui"
ROWS = [(1, "apple", "1.50"), (2, "pear", "2.25"), (3, "plum", "0.99")]


@dataclass(frozen=True)
class UiTable:
    """The test's table, its config and where that config lives."""

    db: str
    table: str
    config: PipelineConfig
    config_path: Path
    keys: TableKeys


def _mariadb(mariadb: Service, sql: str, params: tuple = ()) -> None:
    conn = pymysql.connect(autocommit=True, **mariadb.connect_kwargs())  # type: ignore[attr-defined]
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params or None)
    finally:
        conn.close()


def _changefeed_status(lab: LabSettings, cf_id: str) -> dict:
    response = httpx.get(f"{lab.ticdc_url}/api/v2/changefeeds/{cf_id}/status", timeout=30)
    assert response.status_code == 200, f"changefeed {cf_id} status: {response.status_code} {response.text}"
    return response.json()


def _wait_checkpoint_past(lab: LabSettings, cf_id: str, tso: int) -> None:
    """Until the changefeed's checkpoint passes `tso`; fails at once if the feed leaves `normal`."""
    seen: list[dict] = [{}]

    def passed() -> bool:
        seen.append(_changefeed_status(lab, cf_id))
        if seen[-1]["state"] != "normal":
            raise AssertionError(f"changefeed {cf_id} left normal: {seen[-1]}")
        return seen[-1]["checkpoint_ts"] > tso

    # The lab feed reads the server's whole binlog, other tests' traffic included: allow for a busy machine.
    deadline = time.monotonic() + 300
    while not passed():
        assert time.monotonic() < deadline, f"changefeed {cf_id} did not pass TSO {tso} in 300s: {seen[-1]}"
        time.sleep(0.25)


def _drop_everything(lab: LabSettings, mariadb: Service, t: UiTable) -> None:
    drop_pipeline_output(lab, t.config)
    _mariadb(mariadb, f"DROP DATABASE IF EXISTS {quote_ident(t.db)}")


@pytest.fixture()
def ui_table(tmp_path: Path, lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service,
             snowflake: Service, ticdc: Service) -> Iterator[UiTable]:
    """An empty table in a new MariaDB database, and a config that replicates only it."""
    suffix = uuid.uuid4().hex[:8]
    db, table = f"ui_{suffix}", "items"
    _mariadb(mariadb, f"CREATE DATABASE {quote_ident(db)}")
    _mariadb(mariadb, f"CREATE TABLE {quote_ident(db)}.{quote_ident(table)} "
                      "(id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, price DECIMAL(10,2) NOT NULL)")
    off = {"cron": "* * * * *", "enabled": False}
    path = tmp_path / "tidb_pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "source": {"changefeed_id": f"ui-{suffix}", "partitions": 1},
        "snowflake": {"database": f"UI_{suffix.upper()}"},
        # Only the runs the test launches may touch its tables.
        "merge_schedules": {"default": off},
        "cleanup_schedule": {**off, "cron": "0 */2 * * *"},
        "reconcile_schedule": {**off, "cron": "0 * * * *"},
        "tables": [{"db": db, "table": table, "key": ["id"]}],
    }))
    config = load_config(path)
    t = UiTable(db, table, config, path, table_keys(config, config.tables[0]))
    try:
        yield t
    finally:
        _drop_everything(lab_settings, mariadb, t)


@dataclass(frozen=True)
class RunningDagster:
    client: dagster_dev.Dagster
    location: str
    repository: str


@pytest.fixture()
def dagster(tmp_path: Path, lab_settings: LabSettings, ui_table: UiTable) -> Iterator[RunningDagster]:
    """`dagster dev` (webserver + daemon) on a free port, instance in a tmp DAGSTER_HOME, pointed at the lab."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(dagster_dev.REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, **pipeline_env(lab_settings), "TIDB_PIPELINE_CONFIG": str(ui_table.config_path)}
    port = free_port()
    log = tmp_path / "dagster_dev.log"
    proc = dagster_dev.start(home=home, env=env, port=port, log=log)
    client = dagster_dev.Dagster(f"http://127.0.0.1:{port}")
    try:
        location, repository = client.wait_loaded(proc, log)
        client.dismiss_community_dialog()
        yield RunningDagster(client, location, repository)
    finally:
        client.close()
        dagster_dev.stop(proc)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / "dagster_dev.log")


def _asset_url(base: str, key: tuple[str, ...] | list[str], view: str | None = None) -> str:
    path = "/".join(quote(part, safe="") for part in key)
    return f"{base}/assets/{path}" + (f"?view={view}" if view else "")


def _shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_ui_shows_the_replicated_table_its_materialisation_and_checks(
    tmp_path: Path, lab_settings: LabSettings, mariadb: Service, ui_table: UiTable, dagster: RunningDagster
) -> None:
    started = time.monotonic()
    phases: dict[str, float] = {}
    gql, keys, cf_id = dagster.client, ui_table.keys, ui_table.config.source.changefeed_id
    expected_keys = {tuple(k.path) for k in (changefeed_key(ui_table.config), keys.tidb, keys.kafka,
                                             keys.landing, keys.replica)}
    assert expected_keys <= gql.asset_keys()
    gql.stop_running_sensors(dagster.location, dagster.repository)

    # 1. The changefeed asset creates the TiCDC changefeed (before any row exists, so every row flows).
    run = gql.launch(dagster.location, dagster.repository, [changefeed_key(ui_table.config).path])
    dagster_dev.wait_for_run(gql, run, "changefeed")
    assert _changefeed_status(lab_settings, cf_id)["state"] == "normal"
    phases["changefeed run"] = time.monotonic() - started

    # 2. Rows in the source; wait until the changefeed has written them to Kafka.
    for row in ROWS:
        _mariadb(mariadb, f"INSERT INTO {quote_ident(ui_table.db)}.{quote_ident(ui_table.table)} "
                          "(id, name, price) VALUES (%s, %s, %s)", row)
    after = tso_from_ms(time.time_ns() // 1_000_000)
    _wait_checkpoint_past(lab_settings, cf_id, after)

    # 3. Landing + replica and the replica's checks, in one run (what "Materialize" launches).
    checks = gql.asset_checks(keys.replica.path)
    assert checks, "the replica has no asset checks: tidb_pipeline.defs should attach them"
    run = gql.launch(dagster.location, dagster.repository, [keys.landing.path, keys.replica.path], checks)
    dagster_dev.wait_for_run(gql, run, "landing + replica + checks")
    phases["landing + replica run"] = time.monotonic() - started
    landing = gql.latest_materialization(keys.landing.path)
    replica = gql.latest_materialization(keys.replica.path)
    assert landing is not None and landing.run_id == run
    assert replica is not None and replica.run_id == run
    assert landing.metadata["rows_loaded"] == len(ROWS)
    assert (replica.metadata["rows_inserted"], replica.metadata["rows_updated"], replica.metadata["rows_deleted"],
            replica.metadata["dagster/row_count"]) == (len(ROWS), 0, 0, len(ROWS))
    results = gql.check_results(keys.replica.path)
    assert {name: (r.status, r.success) for name, r in results.items()} == {
        c.name: ("SUCCEEDED", True) for c in checks}

    # 4. What a user sees.
    with chromium_page(tmp_path / "chromium-profile") as page:
        try:
            _assert_pages(page, gql.url, dagster.location, ui_table, run, replica, results)
        except Exception:
            _shot(page, "failure")
            raise
    phases["browser"] = time.monotonic() - started
    print(f"\nUI test phases (s since start): { {k: round(v, 1) for k, v in phases.items()} }")


def _metadata_row(page: Page, label: str, value: object) -> None:
    """The metadata table shows `label` with exactly `value` (a row's name is its cells' text)."""
    expect(page.get_by_role("row", name=f"{label} {value}", exact=True).first).to_be_visible(timeout=TIMEOUT_MS)


def _assert_pages(page: Page, base: str, location: str, t: UiTable, run: str,
                  replica: dagster_dev.Materialization, results: dict[str, dagster_dev.CheckResult]) -> None:
    keys = t.keys

    # The table group's lineage graph: one node per asset, labelled with the key's last part; the two
    # materialised ones (landing, replica) say so.
    page.goto(f"{base}/locations/{quote(location)}/asset-groups/{quote(group_name(t.config.tables[0]))}")
    for key in (keys.tidb, keys.kafka, keys.landing, keys.replica):
        expect(page.get_by_text(key.path[-1], exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text("Materialized", exact=True)).to_have_count(2, timeout=TIMEOUT_MS)
    # The replica's node sums up its checks.
    expect(page.get_by_text(f"{len(results)} / {len(results)} Passed", exact=True)).to_be_visible()
    _shot(page, "asset_graph")

    # The replica's overview: the latest materialisation links to the run, the row count is shown.
    page.goto(_asset_url(base, keys.replica.path))
    expect(page.get_by_text("Latest materialization", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator(f'a[href^="/runs/{run}"]').first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text("Row count", exact=True)).to_be_visible()
    _shot(page, "replica_overview")

    # Its events: the latest materialisation, from our run, with every plain metadata entry as reported.
    page.goto(_asset_url(base, keys.replica.path, "events"))
    expect(page.get_by_text("Materialized in run")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_role("link", name=run[:8], exact=True)).to_be_visible()
    for label, value in replica.metadata.items():
        if not isinstance(value, float):  # the UI rounds floats its own way
            _metadata_row(page, label, value)
    _shot(page, "replica_events")

    # Its checks: every check listed as succeeded; each one's latest evaluation passed, with its metadata.
    page.goto(_asset_url(base, keys.replica.path, "checks"))
    expect(page.get_by_text(f"Checks ({len(results)})", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text("Succeeded", exact=True)).to_have_count(len(results))
    for name, result in sorted(results.items()):
        page.get_by_text(name, exact=True).first.click()
        expect(page).to_have_url(re.compile(f"[?&]checkDetail={re.escape(name)}(&|$)"))
        expect(page.get_by_text("Passed", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator(f'a[href^="/runs/{run}"]').first).to_be_visible()
        for label, value in result.metadata.items():
            if isinstance(value, float):
                expect(page.get_by_role("cell", name=label, exact=True)).to_be_visible()
            else:
                _metadata_row(page, label, value)
        _shot(page, f"replica_check_{name}")
