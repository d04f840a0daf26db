"""`alerts_sensor`: tell a person when something goes wrong, once per state change, and when it recovers.

Each tick reads the state of everything worth a message, compares it with the state the cursor remembers,
and sends one notification per change to every destination in the config's `alerts` (Slack, Microsoft
Teams, email, a webhook; `resources/notify.py`):
- each asset check (replica checks, changefeed check, SQL Server checks): its latest evaluation, PASS /
  WARN / ERROR (a check whose run died before evaluating is ERROR);
- each job: the status of its latest finished run (a failed run fires; the next successful one resolves);
- the TiCDC changefeed, asked directly every tick: `warning` fires a warning, `failed` (or `error`,
  `removed`, `finished`) an error; an unreachable TiCDC API a warning;
- each replica's freshness as Dagster's freshness daemon last evaluated it (PASS / WARN / FAIL), or, when the
  daemon has not evaluated it, by the same rule (`defs/freshness.py`) from its last materialization.
A worse state fires, a better but still bad one fires at its new level, a return to OK sends the resolved
message, and an unchanged state sends nothing however many ticks it lasts. Something not known this tick
(a check running, a changefeed being created) keeps its previous state.

Messages name the table, the check and its numbers, and link to the asset or run in the UI (`alerts.ui_url`).
They are built only from Dagster's records and then redacted (`notify.redact`): no secret leaves. A message a
destination refused stays in the cursor's outbox and is retried on the next ticks (the state still advances,
so other destinations do not get it twice). The tick issues no warehouse statement.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import dagster as dg
from dagster._core.definitions.freshness import FreshnessState

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.freshness import freshness_state
from tidb_pipeline.defs.sensors import daemon_interval
from tidb_pipeline.defs.tables import changefeed_key, table_keys
from tidb_pipeline.resources.notify import Notification, Sender, SlackSender, TeamsSender, secret_values
from tidb_pipeline.resources.ticdc import TiCDCError, TiCDCResource

SENSOR_NAME = "alerts_sensor"
CURSOR_VERSION = 1
MAX_OUTBOX = 200
# The resource key of each destination (defs/resources.py adds those whose secret is set).
RESOURCE_KEYS = {"slack": "alert_slack", "teams": "alert_teams", "email": "alert_email", "webhook": "alert_webhook"}

State = Literal["ok", "warning", "error"]
_BAD_CHANGEFEED = {"failed", "error", "removed", "finished"}
_FRESHNESS = {FreshnessState.PASS: "ok", FreshnessState.WARN: "warning", FreshnessState.FAIL: "error"}


@dataclass(frozen=True)
class Observed:
    """The state of one thing now (None: not known this tick), and what a message about it says."""

    subject: str
    state: State | None
    what: str  # "row_count_matches_source on tpcc.orders (snowflake/REPLICA/ORDERS)"
    facts: tuple[tuple[str, str], ...] = ()
    link: str = ""


# --- naming and linking -----------------------------------------------------------------------------------


def asset_link(ui: str, key: dg.AssetKey, check: str | None = None) -> str:
    url = f"{ui}/assets/{'/'.join(quote(p, safe='') for p in key.path)}"
    return f"{url}?view=checks&checkDetail={quote(check, safe='')}" if check else url


def _labels(config: PipelineConfig) -> dict[dg.AssetKey, str]:
    out = {changefeed_key(config): f"changefeed {config.source.changefeed_id}"}
    for t in config.tables:
        keys = table_keys(config, t)
        out[keys.replica] = f"{t.db}.{t.table}"
        out[keys.landing] = f"{t.db}.{t.table} landing"
    return out


def _label(labels: Mapping[dg.AssetKey, str], key: dg.AssetKey) -> str:
    name = key.to_user_string()
    return f"{labels[key]} ({name})" if key in labels else name


def _short(value: Any) -> str | None:
    """A metadata value as one short text, or None when it is not worth a line (large JSON, tables)."""
    value = value.value if isinstance(value, dg.MetadataValue) else value
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        shown = "; ".join(str(v) for v in value[:3])
        return shown + (f" (+{len(value) - 3} more)" if len(value) > 3 else "")
    if isinstance(value, (str, int, float, bool)):
        text = str(value)
        return text if len(text) <= 300 else text[:297] + "..."
    return None


def _facts(metadata: Mapping[str, Any], limit: int = 10) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for name, value in metadata.items():
        if name.startswith("dagster/"):
            continue
        text = _short(value)
        if text is not None:
            out.append((name, text))
        if len(out) >= limit:
            break
    return tuple(out)


# --- what to watch -----------------------------------------------------------------------------------------


def check_states(instance: dg.DagsterInstance, config: PipelineConfig, keys: Sequence[dg.AssetCheckKey],
                 ui: str) -> list[Observed]:
    """Each check's latest evaluation (one instance query for all)."""
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(keys))
    labels = _labels(config)
    out: list[Observed] = []
    for key in keys:
        what = f"check {key.name} on {_label(labels, key.asset_key)}"
        subject = f"check {key.asset_key.to_user_string()}:{key.name}"
        link = asset_link(ui, key.asset_key, key.name)
        record = latest.get(key)
        if record is None:
            continue
        evaluation = record.evaluation
        if evaluation is None:
            run = instance.get_run_by_id(record.run_id) if record.run_id else None
            if run is not None and run.is_finished and run.status != dg.DagsterRunStatus.SUCCESS:
                out.append(Observed(subject, "error", what,
                                    (("problem", f"the check did not complete: run {run.run_id[:8]} {run.status.value}"),),
                                    f"{ui}/runs/{run.run_id}"))
            continue  # planned or running: unknown for now
        facts = _facts(evaluation.metadata)
        if evaluation.description:
            facts = (("description", _short(evaluation.description) or ""), *facts)
        if evaluation.passed:
            state: State = "ok"
        else:
            state = "warning" if evaluation.severity == dg.AssetCheckSeverity.WARN else "error"
        out.append(Observed(subject, state, what, facts, link))
    return out


def _failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    for event_type in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
        records = instance.get_records_for_run(run_id, of_type=event_type, limit=1).records
        if not records:
            continue
        event = records[0].event_log_entry.dagster_event
        data = getattr(event, "event_specific_data", None)
        error = getattr(data, "error", None)
        # Dagster wraps the user's exception; the cause says what happened.
        while error is not None and error.cls_name and error.cls_name.startswith("Dagster") and error.cause:
            error = error.cause
        if error is not None:
            message = error.message.split(":", 1)[1] if error.message.startswith(f"{error.cls_name}:") else error.message
            return f"{error.cls_name}: {message.strip()}"[:500]
        if event is not None and event.message:
            return event.message[:500]
    return "(no error recorded)"


def run_states(instance: dg.DagsterInstance, jobs: Iterable[str], ui: str) -> list[Observed]:
    """Per job, the status of its latest finished run."""
    out: list[Observed] = []
    for job in jobs:
        records = instance.get_run_records(
            dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]), limit=1)
        if not records:
            continue
        run = records[0].dagster_run
        facts: list[tuple[str, str]] = [("run", run.run_id)]
        if group := run.tags.get("tidb_pipeline/group"):
            facts.append(("table group", group))
        if records[0].end_time:
            facts.append(("ended", dt.datetime.fromtimestamp(records[0].end_time, dt.timezone.utc)
                          .isoformat(timespec="seconds")))
        if run.status == dg.DagsterRunStatus.FAILURE:
            facts.append(("error", _failure_message(instance, run.run_id)))
            state: State = "error"
        else:
            state = "ok"
        out.append(Observed(f"job {job}", state, f"job {job}", tuple(facts), f"{ui}/runs/{run.run_id}"))
    return out


def changefeed_state(ticdc: TiCDCResource, config: PipelineConfig, ui: str) -> Observed:
    changefeed = config.source.changefeed_id
    subject, what = f"changefeed {changefeed}", f"TiCDC changefeed {changefeed}"
    link = asset_link(ui, changefeed_key(config))
    try:
        with ticdc.get_client() as client:
            status = client.get_status(changefeed)
    except TiCDCError as exc:
        if exc.status == 404 or exc.code == "CDC:ErrChangeFeedNotExists":
            return Observed(subject, None, what)  # not created yet: the ticdc asset creates it
        return Observed(subject, "warning", what, (("problem", f"TiCDC API unreachable or failing: {exc}"[:300]),), link)
    facts: list[tuple[str, str]] = [("state", status.state), ("checkpoint_ts", str(status.checkpoint_ts))]
    if status.checkpoint_ts:
        lag = time.time() - (status.checkpoint_ts >> 18) / 1000
        facts.append(("checkpoint lag", f"{lag:.0f} s"))
    for name, err in (("last error", status.last_error), ("last warning", status.last_warning)):
        if err is not None and (err.code or err.message):
            facts.append((name, f"{err.code} {err.message}".strip()[:300]))
    state: State | None
    if status.state == "normal":
        state = "ok"
    elif status.state == "warning":
        state = "warning"
    elif status.state in _BAD_CHANGEFEED:
        state = "error"
    else:
        state = None  # stopped (paused on purpose, e.g. while its config is updated), pending, ...
    return Observed(subject, state, what, tuple(facts), link)


def freshness_states(instance: dg.DagsterInstance, config: PipelineConfig, ui: str,
                     now: float | None = None) -> list[Observed]:
    """Each replica's freshness: the freshness daemon's record, else Dagster's rule applied here."""
    now = time.time() if now is None else now
    replicas = {table_keys(config, t).replica: t for t in config.tables}
    records = instance.get_freshness_state_records(list(replicas))
    latest = instance.get_latest_materialization_events(list(replicas))
    out: list[Observed] = []
    for key, table in replicas.items():
        limits = config.freshness_of(table)
        event = latest.get(key)
        facts: list[tuple[str, str]] = [("warn after", f"{limits.warn_after_minutes:g} min"),
                                        ("fail after", f"{limits.fail_after_minutes:g} min")]
        state: State | None = None
        if event is not None:
            facts.insert(0, ("minutes since last update", f"{(now - event.timestamp) / 60:.1f}"))
            meta = event.asset_materialization.metadata if event.asset_materialization else {}
            for name in ("merged_offsets", "merged_through"):
                if name in meta and (text := _short(meta[name]) or json.dumps(getattr(meta[name], "value", None))):
                    facts.append((name, text))
        record = records.get(key)
        if record is not None and record.freshness_state in _FRESHNESS:
            state = _FRESHNESS[record.freshness_state]  # type: ignore[assignment]
            facts.append(("evaluated by", "Dagster's freshness daemon"))
        elif event is not None:
            state = {"PASS": "ok", "WARN": "warning", "FAIL": "error"}[freshness_state(now - event.timestamp, limits)]  # type: ignore[assignment]
        out.append(Observed(f"freshness {key.to_user_string()}", state,
                            f"freshness of replica {table.db}.{table.table} ({key.to_user_string()})",
                            tuple(facts), asset_link(ui, key)))
    return out


# --- state changes -> notifications ------------------------------------------------------------------------


def changes(previous: Mapping[str, str], observed: Iterable[Observed], at: str) -> tuple[list[Notification], dict[str, str]]:
    """Notifications for states that changed since `previous`, and the new state map."""
    states = dict(previous)
    out: list[Notification] = []
    for o in observed:
        if o.state is None:
            continue
        before = states.get(o.subject, "ok")
        states[o.subject] = o.state
        if o.state == before:
            continue
        if o.state == "ok":
            out.append(Notification(o.subject, "resolved", "ok", f"RESOLVED: {o.what} is OK again (was {before})",
                                    o.facts, o.link, at))
        else:
            out.append(Notification(o.subject, "firing", o.state, f"{o.state.upper()}: {o.what}", o.facts, o.link, at))
    return out, states


@dataclass
class AlertsCursor:
    states: dict[str, str]
    outbox: list[tuple[str, Notification]]

    def serialize(self) -> str:
        return json.dumps({"v": CURSOR_VERSION, "states": self.states,
                           "outbox": [{"to": d, "n": n.to_dict()} for d, n in self.outbox]}, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str | None, log: Callable[[str], None]) -> AlertsCursor:
        if not text:
            return cls({}, [])
        try:
            data = json.loads(text)
            if data.get("v") != CURSOR_VERSION:
                raise ValueError(f"version {data.get('v')!r}")
            return cls({str(k): str(v) for k, v in data["states"].items()},
                       [(str(o["to"]), Notification.from_dict(o["n"])) for o in data.get("outbox", [])])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log(f"{SENSOR_NAME}: ignoring unreadable cursor ({type(exc).__name__}); every current problem is "
                "reported once more")
            return cls({}, [])


def deliver(senders: Mapping[str, Sender], queue: Sequence[tuple[str, Notification]],
            log: Callable[[str], None]) -> list[tuple[str, Notification]]:
    """Send each (destination, notification); returns those that failed, to retry next tick."""
    failed: list[tuple[str, Notification]] = []
    for destination, notification in queue:
        sender = senders.get(destination)
        if sender is None:
            failed.append((destination, notification))
            continue
        try:
            sender.send(notification)
        except Exception as exc:  # noqa: BLE001 - one destination down must not stop the others
            # The exception's text may echo a URL or an address; name its type only.
            log(f"{SENSOR_NAME}: {destination} refused a message about {notification.subject} "
                f"({type(exc).__name__}); it is retried next tick")
            failed.append((destination, notification))
    return failed


def _senders(config: PipelineConfig, resources: Any) -> dict[str, Sender]:
    out: dict[str, Sender] = {}
    alerts = config.alerts
    for name in alerts.destinations:
        resource = getattr(resources, RESOURCE_KEYS[name], None)
        if resource is None:
            continue
        if name == "slack" and alerts.slack is not None:
            out[name] = SlackSender(resource, alerts.slack.channel, alerts.slack.api_url)
        elif name == "teams":
            out[name] = TeamsSender(resource)
        else:
            out[name] = resource
    return out


def secret_env_names(config: PipelineConfig) -> list[str]:
    a = config.alerts
    names = [a.slack.token_env if a.slack else None, a.teams.webhook_url_env if a.teams else None,
             a.webhook.url_env if a.webhook else None, a.email.password_env if a.email else None]
    return [n for n in names if n]


def evaluate(context: dg.SensorEvaluationContext, config: PipelineConfig, senders: Mapping[str, Sender],
             ticdc: TiCDCResource | None, *, now: float | None = None) -> tuple[str, list[Notification]]:
    """One tick: (next cursor, notifications sent or queued this tick)."""
    ui = config.alerts.ui_url
    log = context.log.warning
    cursor = AlertsCursor.parse(context.cursor, log)
    repo = context.repository_def
    check_keys = sorted(repo.asset_graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)) \
        if repo is not None else []
    jobs = sorted(j for j in (repo.job_names if repo is not None else []) if not j.startswith("__"))
    observed = [
        *check_states(context.instance, config, check_keys, ui),
        *run_states(context.instance, jobs, ui),
        *([changefeed_state(ticdc, config, ui)] if ticdc is not None else []),
        *freshness_states(context.instance, config, ui, now),
    ]
    at = dt.datetime.fromtimestamp(now or time.time(), dt.timezone.utc).isoformat(timespec="seconds")
    notifications, states = changes(cursor.states, observed, at)
    secrets = secret_values(names=secret_env_names(config))
    notifications = [n.redacted(secrets) for n in notifications]
    for name in config.alerts.destinations:
        if name not in senders:
            log(f"{SENSOR_NAME}: alerts.{name} is configured but its secret variable is not set in this "
                "environment; its messages wait in the outbox")
    queue = [*cursor.outbox, *((d, n) for n in notifications for d in config.alerts.destinations)]
    failed = deliver(senders, queue, log)
    if len(failed) > MAX_OUTBOX:
        log(f"{SENSOR_NAME}: dropping {len(failed) - MAX_OUTBOX} undelivered messages (oldest first)")
        failed = failed[-MAX_OUTBOX:]
    return AlertsCursor(states, failed).serialize(), notifications


def build_alerts_sensor(*, config: PipelineConfig, resource_keys: Iterable[str]) -> dg.SensorDefinition | None:
    """The sensor, when the config names a destination; `resource_keys` are the alert resources available."""
    if not config.alerts.destinations:
        return None
    keys = set(resource_keys) & set(RESOURCE_KEYS.values())

    @dg.sensor(
        name=SENSOR_NAME, minimum_interval_seconds=daemon_interval(config.alerts.interval_seconds),
        default_status=dg.DefaultSensorStatus.RUNNING, required_resource_keys={*keys, "ticdc"},
        description=f"One message per state change of checks, runs, the changefeed and replica freshness to "
                    f"{', '.join(config.alerts.destinations)}.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor, sent = evaluate(context, config, _senders(config, context.resources), context.resources.ticdc)
        if sent:
            context.log.info(f"{len(sent)} state change(s): " + "; ".join(n.title for n in sent)[:1000])
            return dg.SensorResult(cursor=cursor)
        return dg.SensorResult(cursor=cursor, skip_reason="no state changed")

    return _sensor
