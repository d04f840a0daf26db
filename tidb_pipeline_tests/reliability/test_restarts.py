"""Restarts: the Kafka broker in the middle of a load, MariaDB under a running workload, the change feed
killed (it replays from its checkpoint). Each runs on private instances (free ports, tmp data) so no other
test sees them go down. Recovery is "run the same step again", as the next sensor tick or schedule does;
each scenario ends with the replica equal to the source and every landed offset present exactly once.

Each test has a table and changefeed of its own, healthy (replicating) before it starts, and every private
part is brought up again before and after it: a test that fails leaves nothing broken for the next one.
Waits are on progress (the checkpoint moving, the workload writing, a state changing), never on a deadline
tuned on a quiet machine, so they pass on a busy one too."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tidb_pipeline.defs.tables import table_names
from tidb_pipeline.lab import stack
from tidb_pipeline.lab.service import Service, up, wait_until
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.replication import wire
from tidb_pipeline.resources.ticdc import TiCDCResource
from tidb_pipeline.resources.tidb import quote_mysql
from tidb_pipeline_tests.reliability.support import (
    Feed,
    Target,
    assert_landed_exactly_once,
    assert_replica_equals_source,
    kafka_of,
    land,
    merge,
    private_services,
    restart,
    table_feed,
    wait_ports_closed,
    warehouse,
    write_history,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

PRIVATE = ["mariadb", "kafka", "ticdc"]
# How long a state change the test caused may take to show (MariaDB stopped -> `warning`; back -> `normal`).
# Only a failing run waits this long; it is a bound on failure detection, not on how fast a busy machine is.
STATE_CHANGE_S = 600


@pytest.fixture(scope="module")
def private(lab_settings: LabSettings, registry: Service, snowflake: Service,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSettings]:
    with private_services(lab_settings, tmp_path_factory.mktemp("restart-lab"), PRIVATE) as own:
        yield own


def _all_up(settings: LabSettings) -> None:
    services = [stack.service(n, settings) for n in PRIVATE]
    wait_ports_closed(settings, services)  # a restart cut short may leave a part still releasing its port
    up(services, log=lambda _m: None)


@pytest.fixture
def feed(private: LabSettings) -> Iterator[Feed]:
    """A table and changefeed of this test's own, replicating before the test starts."""
    _all_up(private)  # an earlier test may have failed with a part down
    with table_feed(private, "rel_restart") as f:
        f.catch_up()
        assert _changefeed_status(f).state == "normal"
        yield f
        _all_up(private)  # so the changefeed can be deleted whatever the test left behind


def _retry(step: Any, attempts: int = 12) -> Any:
    """What the orchestrator does for a failed run: run it again (here after a doubling pause, there on the next
    tick). Bounded by attempts, not by time, so a slow machine gets as many tries as a fast one."""
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except Exception:  # noqa: BLE001 - any failure of a run is retried; the last one is raised
            if attempt == attempts:
                raise
            time.sleep(min(2 ** (attempt - 1), 30))


def _converge(feed: Feed) -> int:
    feed.catch_up()
    settings = feed.settings
    target = Target.of(table_names(feed.config, feed.config.tables[0]))
    with warehouse(settings) as sf:
        _retry(lambda: land(settings, sf, target))
        _retry(lambda: merge(settings, sf, target))
        end = kafka_of(settings).end_offsets([feed.topic])[feed.topic]
        landed = assert_landed_exactly_once(sf, target.landing, end)
        assert_replica_equals_source(settings, sf, feed.db, feed.table, target.replica, ["id"])
    return landed


def _changefeed_status(feed: Feed) -> Any:
    with TiCDCResource(url=feed.settings.ticdc_url).get_client() as client:
        return client.get_status(feed.changefeed_id)


def _bulk(feed: Feed, first: int, n: int) -> None:
    t = f"{quote_mysql(feed.db)}.{quote_mysql(feed.table)}"
    with feed.connect() as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {t} (id, name, qty, price) VALUES (%s, %s, %s, %s)",
                        [(i, f"bulk-{i}", i % 50, f"{i % 1000}.50") for i in range(first, first + n)])


def test_kafka_broker_restart_in_the_middle_of_a_load(feed: Feed, monkeypatch: pytest.MonkeyPatch) -> None:
    _bulk(feed, 100_000, 1500)
    feed.catch_up()
    target = Target.of(table_names(feed.config, feed.config.tables[0]))
    restarted = threading.Event()
    row_function = wire.LineBuilder.row_function  # every landing row is built by one of its functions

    def row_function_then_restart(self: Any, key: Any, value: Any) -> Any:
        build = row_function(self, key, value)

        def row_then_restart(*args: Any) -> tuple[str, str]:
            out = build(*args)
            if not restarted.is_set():
                restarted.set()  # first record read: the broker goes down and comes back under the reader
                restart(feed.settings, "kafka")
            return out

        return row_then_restart

    monkeypatch.setattr(wire.LineBuilder, "row_function", row_function_then_restart)
    with warehouse(feed.settings) as sf:
        try:
            land(feed.settings, sf, target)
        except Exception:  # noqa: BLE001 - failing is allowed; landing half of it is not (checked below)
            pass
    monkeypatch.undo()
    assert restarted.is_set()
    # A restart that ran into the start-up timeout on a busy machine (the broker still starting, or not yet
    # bindable) leaves it down: bring it up, waiting on readiness. What is tested is the change feed's recovery.
    _all_up(feed.settings)
    # The change feed must carry on after the broker's restart without anyone resuming it (a broker error is
    # retryable in TiCDC: `warning`, then a retry from the checkpoint; never `failed`).
    _bulk(feed, 200_000, 200)
    assert _converge(feed) >= 1700
    assert _changefeed_status(feed).state == "normal"


def test_broker_down_turns_the_changefeed_warning_then_normal_again(feed: Feed) -> None:
    kafka = stack.service("kafka", feed.settings)
    kafka.stop()
    try:
        # A change feed that starts while the broker is away must fetch topic metadata for its first row:
        # "Failed to get metadata". TiCDC keeps the changefeed `warning` and retries; it never fails it.
        restart(feed.settings, "ticdc", kill=True)
        with feed.connect() as conn:
            write_history(conn, feed.db, feed.table, seed=800, changes=30)
        seen: list[Any] = []

        def warned() -> bool:
            seen.append(_changefeed_status(feed))
            assert seen[-1].state != "failed", seen[-1]
            return seen[-1].state == "warning"

        wait_until(warned, timeout=STATE_CHANGE_S, what="the changefeed turning `warning` while Kafka is down",
                   interval=0.2)  # fmt: skip
        warning = seen[-1].last_warning
        assert warning is not None and seen[-1].last_error is None, seen[-1]
        assert warning.code == "CDC:ErrKafkaCreateTopic" and "metadata" in warning.message, warning
    finally:
        up([kafka], log=lambda _m: None)
    # Back from its checkpoint after a backoff: everything written meanwhile arrives, nothing is lost.
    with feed.connect() as conn:
        write_history(conn, feed.db, feed.table, seed=801, changes=30)
    _converge(feed)
    assert _changefeed_status(feed).state == "normal"


def test_mariadb_restart_under_a_running_workload(feed: Feed) -> None:
    stop = threading.Event()
    errors: list[str] = []
    written = [0]

    def workload() -> None:
        seed = 500  # seeds own disjoint keys (write_history)
        while not stop.is_set():
            seed += 1
            try:
                with feed.connect() as conn:
                    write_history(conn, feed.db, feed.table, seed=seed, changes=20)
                written[0] += 1
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:  # restarting: reconnect
                errors.append(type(exc).__name__)
                time.sleep(0.2)

    thread = threading.Thread(target=workload, daemon=True)
    thread.start()
    try:
        # The workload and the change feed get going before the restart, and writes again after it.
        wait_until(lambda: written[0] >= 3, timeout=STATE_CHANGE_S, what="the workload writing before the restart")
        restart(feed.settings, "mariadb")
        after = written[0]
        wait_until(lambda: written[0] >= after + 3, timeout=STATE_CHANGE_S, what="the workload writing again")
    finally:
        stop.set()
        thread.join(60)
    assert errors, "the workload never noticed the restart: it did not overlap it"
    # As real TiCDC, the lab change feed retries a lost upstream connection by itself: no resume needed.
    _converge(feed)
    assert _changefeed_status(feed).state == "normal"


def test_upstream_down_turns_the_changefeed_warning_then_normal_again(feed: Feed) -> None:
    mariadb = stack.service("mariadb", feed.settings)
    mariadb.stop()
    try:
        seen: list[Any] = []

        def warned() -> bool:
            seen.append(_changefeed_status(feed))
            return seen[-1].state != "normal"

        wait_until(warned, timeout=STATE_CHANGE_S, what="the changefeed leaving `normal` while MariaDB is down",
                   interval=0.2)  # fmt: skip
        status = seen[-1]
        assert status.state == "warning", status  # retryable: never `failed` for a lost connection
        assert status.last_warning is not None and status.last_error is None, status
        assert "OperationalError" in status.last_warning.message or "Error" in status.last_warning.message
    finally:
        up([mariadb], log=lambda _m: None)
    wait_until(lambda: _changefeed_status(feed).state == "normal", timeout=STATE_CHANGE_S,
               what="the changefeed back to `normal` after MariaDB returned")
    with feed.connect() as conn:
        write_history(conn, feed.db, feed.table, seed=700, changes=30)
    _converge(feed)


def test_change_feed_killed_replays_and_still_converges(feed: Feed) -> None:
    with feed.connect() as conn:
        write_history(conn, feed.db, feed.table, seed=99, changes=150)
    before = sum(kafka_of(feed.settings).end_offsets([feed.topic])[feed.topic].values())
    restart(feed.settings, "ticdc", kill=True)  # kill -9: whatever was sent after the checkpoint is re-sent
    with feed.connect() as conn:
        write_history(conn, feed.db, feed.table, seed=100, changes=50)
    landed = _converge(feed)
    assert landed >= before + 50
