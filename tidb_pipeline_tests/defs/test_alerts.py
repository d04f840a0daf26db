"""The alerts sensor against a local HTTP receiver (Slack Web API, Teams webhook, generic webhook, a TiCDC
OpenAPI stand-in) and a local SMTP server (aiosmtpd), all started by the test, with a real Dagster instance:
real failed runs, check evaluations reported through the instance, the freshness daemon's own evaluation, and
the sensor evaluated with `build_sensor_context`.

What must hold: exactly one message per state change per destination, a resolved message on recovery, the
message names the table, the check, its numbers and links to the asset, and no secret reaches any message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.loader import LoadingContextForTest
from dagster._core.test_utils import freeze_time
from dagster._daemon.freshness import FreshnessDaemon

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.alerts import SENSOR_NAME
from tidb_pipeline.defs.resources import build_resources
from tidb_pipeline.lab.ports import free_port

REPLICA = dg.AssetKey(["snowflake", "REPLICA", "ORDERS"])
SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-slack-secret-7f3a",
    "SNOWFLAKE_PASSWORD": "sf-password-9c1e",
    "KAFKA_API_SECRET": "kafka-secret-44d2",
}


class Receiver:
    """One local HTTP server: records every POST by path; answers TiCDC status requests from `changefeed`."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes]] = []
        self.changefeed_state = "normal"
        self.fail_paths: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                if path in receiver.fail_paths:
                    self._reply(500, {"error": "down"})
                    return
                receiver.posts.append((path, body))
                self._reply(200, {"ok": True, "channel": "C1", "ts": "1.0"})

            def do_GET(self) -> None:  # noqa: N802
                if "/api/v2/changefeeds/" in self.path and "/status" in self.path:
                    now_ms = int(time.time() * 1000)
                    state = receiver.changefeed_state
                    self._reply(200, {"state": state, "checkpoint_ts": now_ms << 18, "resolved_ts": now_ms << 18,
                                      "last_warning": {"code": "CDC:ErrMySQLConnection", "message": "upstream lost"}
                                      if state == "warning" else None})
                else:
                    self._reply(404, {"error_code": "CDC:ErrChangeFeedNotExists", "error_msg": "no"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> list[bytes]:
        return [b for p, b in self.posts if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.messages.append(envelope.original_content or envelope.content)
        return "250 OK"




@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture()
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


def _config(receiver: Receiver, smtp_port: int) -> PipelineConfig:
    return parse_config({
        "alerts": {
            "ui_url": "https://dagster.example.com/",
            "slack": {"channel": "#data-alerts", "api_url": f"{receiver.url}/slack/api/"},
            "teams": {},
            "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp_port, "security": "none",
                      "sender": "pipeline@example.com", "recipients": ["oncall@example.com"], "password_env": None},
            "webhook": {},
        },
        "freshness": {"warn_after_minutes": 10, "fail_after_minutes": 60},
        "tables": [{"db": "tpcc", "table": "orders", "key": ["o_w_id", "o_d_id", "o_id"]}],
    })


class _Switch:
    fail = True


def _boom_job(switch: type[_Switch]) -> dg.JobDefinition:
    @dg.op
    def connect() -> None:
        if switch.fail:
            import os

            # An error that quotes a credential, as a careless driver might.
            raise ConnectionError(f"login failed for user tidb with password {os.environ['SNOWFLAKE_PASSWORD']}")

    @dg.job(name="nightly_export")
    def nightly_export() -> None:
        connect()

    return nightly_export


def _sensor_resources(config: PipelineConfig) -> dict[str, Any]:
    """The resources the alerts sensor uses, as `build_defs` configures them (the others need the lab)."""
    return {k: v for k, v in build_resources(config=config).items() if k.startswith("alert_") or k == "ticdc"}


class Harness:
    def __init__(self, receiver: Receiver, mailbox: Mailbox, smtp_port: int, instance: dg.DagsterInstance,
                 monkeypatch: pytest.MonkeyPatch, switch: type[_Switch]) -> None:
        for name, value in SECRETS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("TEAMS_WEBHOOK_URL", f"{receiver.url}/teams?sig=teams-secret-0b9d")
        monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{receiver.url}/hook?token=hook-secret-5e2c")
        monkeypatch.setenv("TICDC_URL", f"{receiver.url}/ticdc")
        self.receiver, self.mailbox, self.instance = receiver, mailbox, instance
        self.config = _config(receiver, smtp_port)
        self.defs = dg.Definitions.merge(build_defs(config=self.config), dg.Definitions(jobs=[_boom_job(switch)]))
        self.resources = _sensor_resources(self.config)
        self.cursor: str | None = None

    def tick(self) -> dg.SensorExecutionData:
        sensor = self.defs.get_repository_def().get_sensor_def(SENSOR_NAME)
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=self.resources,
                                          definitions=self.defs)
        data = sensor.evaluate_tick(context)
        self.cursor = data.cursor
        return data

    def run_boom(self) -> None:
        self.defs.get_job_def("nightly_export").execute_in_process(instance=self.instance, raise_on_error=False)

    def check(self, passed: bool, **metadata: Any) -> None:
        self.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=REPLICA, check_name="row_count_matches_source", passed=passed,
            severity=dg.AssetCheckSeverity.ERROR, metadata=metadata))

    def materialize_replica(self) -> None:
        self.instance.report_runless_asset_event(dg.AssetMaterialization(REPLICA, metadata={"rows_inserted": 3}))

    def freshness_daemon(self) -> None:
        """The freshness daemon's own per-asset evaluation (writes FreshnessStateChange events)."""
        node = self.defs.resolve_asset_graph().get(REPLICA)
        asyncio.run(FreshnessDaemon()._evaluate_asset(LoadingContextForTest(self.instance), node))  # noqa: SLF001

    def slack(self) -> list[str]:
        return [json.loads(b)["text"] for b in self.receiver.bodies("/slack/api/chat.postMessage")]

    def teams(self) -> list[str]:
        return [json.loads(b)["attachments"][0]["content"]["body"][0]["text"] for b in self.receiver.bodies("/teams")]

    def hooks(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.receiver.bodies("/hook")]

    def emails(self) -> list[Any]:
        return [message_from_bytes(m, policy=email_policy) for m in self.mailbox.messages]

    def everything_sent(self) -> list[str]:
        return [b.decode(errors="replace") for _, b in self.receiver.posts] + \
               [m.decode(errors="replace") for m in self.mailbox.messages]


@pytest.fixture()
def harness(receiver: Receiver, mailbox: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    switch = type("Switch", (_Switch,), {"fail": True})
    with dg.instance_for_test() as instance:
        h = Harness(receiver, mailbox[0], mailbox[1], instance, monkeypatch, switch)
        h.switch = switch  # type: ignore[attr-defined]
        yield h


def _hook_titles(h: Harness) -> list[str]:
    return [m["title"] for m in h.hooks()]


def test_one_message_per_state_change_then_resolved_on_every_destination(harness: Harness) -> None:
    h = harness
    h.materialize_replica()
    h.check(False, source_rows=100, replica_rows=97, difference=-3)
    h.run_boom()
    h.receiver.changefeed_state = "warning"

    h.tick()
    firing = [
        "ERROR: check row_count_matches_source on tpcc.orders (snowflake/REPLICA/ORDERS)",
        "ERROR: job nightly_export",
        "WARNING: TiCDC changefeed tidb-pipeline",
    ]
    assert sorted(_hook_titles(h)) == sorted(firing)
    # The same three on every destination: Slack (through dagster-slack), Teams (dagster-msteams), email.
    assert sorted(t.split("*")[1] for t in h.slack()) == sorted(firing)
    assert sorted(h.teams()) == sorted(f"**{t}**" for t in firing)
    assert sorted(m["Subject"] for m in h.emails()) == sorted(
        f"[tidb_pipeline {t.split(':')[0]}] {t}" for t in firing)

    check = next(m for m in h.hooks() if "row_count" in m["title"])
    assert check["facts"] == {"source_rows": "100", "replica_rows": "97", "difference": "-3"}
    assert check["link"] == ("https://dagster.example.com/assets/snowflake/REPLICA/ORDERS"
                             "?view=checks&checkDetail=row_count_matches_source")
    run = next(m for m in h.hooks() if "nightly_export" in m["title"])
    assert run["facts"]["error"].startswith("ConnectionError: login failed for user tidb with password ")
    assert run["link"].startswith("https://dagster.example.com/runs/")
    feed = next(m for m in h.hooks() if "changefeed" in m["title"])
    assert (feed["facts"]["state"], feed["facts"]["last warning"]) == ("warning", "CDC:ErrMySQLConnection upstream lost")

    # Nothing changed: nothing sent, however many ticks.
    before = len(h.receiver.posts), len(h.mailbox.messages)
    assert h.tick().skip_message == "no state changed"
    h.run_boom()  # a second failure of the same job is the same state
    h.check(False, source_rows=101, replica_rows=97, difference=-4)
    h.tick()
    assert (len(h.receiver.posts), len(h.mailbox.messages)) == before

    # Recovery: one resolved message each.
    h.check(True, source_rows=101, replica_rows=101, difference=0)
    h.switch.fail = False  # type: ignore[attr-defined]
    h.run_boom()
    h.receiver.changefeed_state = "normal"
    h.tick()
    resolved = _hook_titles(h)[3:]
    assert sorted(resolved) == sorted([
        "RESOLVED: check row_count_matches_source on tpcc.orders (snowflake/REPLICA/ORDERS) is OK again (was error)",
        "RESOLVED: job nightly_export is OK again (was error)",
        "RESOLVED: TiCDC changefeed tidb-pipeline is OK again (was warning)",
    ])
    assert {m["status"] for m in h.hooks()[3:]} == {"resolved"}
    assert len(h.slack()) == len(h.teams()) == len(h.emails()) == len(h.hooks()) == 6
    h.tick()
    assert len(h.hooks()) == 6

    # No secret in any message, although the run's error quoted one.
    sent = h.everything_sent()
    for secret in [*SECRETS.values(), "teams-secret-0b9d", "hook-secret-5e2c"]:
        assert not [s for s in sent if secret in s], secret
    assert "password [redacted]" in run["facts"]["error"]


def test_freshness_past_its_limit_as_dagsters_freshness_daemon_sees_it(harness: Harness) -> None:
    h = harness
    start = time.time()
    with freeze_time(start):
        h.materialize_replica()
        h.freshness_daemon()
    assert h.instance.get_freshness_state_records([REPLICA])[REPLICA].freshness_state == FreshnessState.PASS
    h.tick()
    assert h.hooks() == []  # fresh: nothing to say

    with freeze_time(start + 11 * 60):
        h.freshness_daemon()
    h.tick()
    with freeze_time(start + 61 * 60):
        h.freshness_daemon()
    h.tick()
    h.tick()
    titles = _hook_titles(h)
    what = "freshness of replica tpcc.orders (snowflake/REPLICA/ORDERS)"
    assert titles == [f"WARNING: {what}", f"ERROR: {what}"]
    fail = h.hooks()[1]
    assert (fail["facts"]["warn after"], fail["facts"]["fail after"]) == ("10 min", "60 min")
    assert fail["link"] == "https://dagster.example.com/assets/snowflake/REPLICA/ORDERS"

    with freeze_time(start + 62 * 60):
        h.materialize_replica()
        h.freshness_daemon()
    h.tick()
    assert _hook_titles(h)[2:] == [f"RESOLVED: {what} is OK again (was error)"]


def test_a_refused_message_is_retried_without_repeating_it_elsewhere(harness: Harness) -> None:
    h = harness
    h.receiver.fail_paths.add("/hook")
    h.check(False, source_rows=10, replica_rows=9, difference=-1)
    h.tick()
    assert (len(h.hooks()), len(h.slack()), len(h.emails())) == (0, 1, 1)
    h.tick()  # still down: kept
    h.receiver.fail_paths.clear()
    h.tick()
    h.tick()
    assert (len(h.hooks()), len(h.slack()), len(h.emails())) == (1, 1, 1)
    assert h.hooks()[0]["title"].startswith("ERROR: check row_count_matches_source on tpcc.orders")


def test_a_destination_without_its_secret_is_named_and_the_others_still_get_messages(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    h = harness
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    h.defs = dg.Definitions.merge(build_defs(config=h.config), dg.Definitions(jobs=[_boom_job(_Switch)]))
    h.resources = _sensor_resources(h.config)
    assert "alert_slack" not in h.resources
    h.check(False, source_rows=1, replica_rows=0, difference=-1)
    h.tick()
    assert "alerts.slack is configured but its secret variable is not set" in capfd.readouterr().err
    assert (len(h.slack()), len(h.hooks()), len(h.emails())) == (0, 1, 1)


def test_alert_config_names_the_field_and_never_echoes_a_secret() -> None:
    from tidb_pipeline.config import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config({"alerts": {"slack": {"channel": "#a", "token_env": "xoxb-123-secret"}}})
    assert "alerts.slack.token_env" in str(err.value) and "xoxb-123-secret" not in str(err.value)
    with pytest.raises(ConfigError, match=r"alerts\.email\.recipients"):
        parse_config({"alerts": {"email": {"smtp_host": "h", "sender": "a@b.c", "recipients": ["nobody"]}}})
    with pytest.raises(ConfigError, match=r"alerts\.ui_url"):
        parse_config({"alerts": {"ui_url": "dagster.example.com"}})
    with pytest.raises(ConfigError, match=r"freshness: .*warn_after_minutes \(90\) must be below"):
        parse_config({"freshness": {"warn_after_minutes": 90, "fail_after_minutes": 60}})
    assert dt.timedelta(minutes=parse_config({}).freshness.fail_after_minutes) == dt.timedelta(hours=1)
