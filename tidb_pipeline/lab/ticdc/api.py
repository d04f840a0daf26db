"""The lab change feed's control plane: the subset of TiCDC's OpenAPI v2 the pipeline uses.

Shapes, error codes and check order follow tiflow's `cdc/api/v2/changefeed.go`, `api_helpers.go` and
`model.go` (classic TiCDC v6.1 - v8.5):

- errors are `{"error_msg": "[CDC:ErrXxx]...", "error_code": "CDC:ErrXxx"}`, HTTP 400 for the codes TiCDC
  lists as bad requests (`cdc/api/util.go`) and 500 for every other code, as TiCDC does (so a duplicate id,
  `CDC:ErrChangeFeedAlreadyExists`, is a 500 there and here);
- `GET` masks `sasl-password` and a `user:password@` in the sink URI as `xxxxx`, re-encoding the query with
  sorted keys the way Go's `url.Values.Encode` does; the config comes back as stored, so
  `config.sink.schema_registry` shows its credentials in clear text, as TiCDC's does;
- pause only stops a normal/warning/pending changefeed and resume only restarts a stopped/failed/finished
  one; other states make both a no-op answering `{}`, as TiCDC's owner does;
- create fills what the body leaves out from TiCDC's default config (`created_config`); update is refused
  unless the changefeed is stopped or failed, and its `replica_config` replaces the whole config, settings
  left out reset to their zero values (`updated_config`);
- dispatchers: a topic is `{schema}`/`{table}` expression, a static name, or empty (the default topic); a
  table no dispatcher matches goes to the default topic; partition rules as TiCDC's (`codec.partition_for`).

The lab is stricter than TiCDC only where it cannot do more: the sink must be `kafka://` with
`protocol=avro`. Table filters and dispatcher matchers follow TiDB's table-filter syntax (`replication/table_filter.py`:
wildcards, `!`, backslash escapes, quoted names, `/regexp/`; the last matching rule decides),
case-insensitive unless `case_sensitive` is set, as in TiCDC. The namespace is always `default`.

`TiCDCApi.handle` is plain request -> response; the HTTP server is in `server.py`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote_plus, unquote, urlsplit, urlunsplit

from tidb_pipeline.lab.ticdc import capture
from tidb_pipeline.lab.ticdc.codec import ms_from_tso, tso_from_ms
from tidb_pipeline.lab.ticdc.store import Changefeed, ChangefeedStore
from tidb_pipeline.replication.table_filter import FilterSyntaxError, TableFilter
from tidb_pipeline.replication.changefeed import MASK, mask_netloc
from tidb_pipeline.replication.ticdc_schema import is_virtual_generated

VERSION = "v8.5.0"
GIT_HASH = "tidb-pipeline-lab"
NAMESPACE = "default"

CHANGEFEED_ID_RE = re.compile(r"^[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*$")
CHANGEFEED_ID_MAX_LEN = 128
# tiflow cdc/sink/dmlsink/mq/dispatcher/topic/expression.go: avroTopicNameRE
AVRO_TOPIC_RE = re.compile(r"^[A-Za-z0-9._\-]*\{schema\}[A-Za-z0-9._\-]*\{table\}[A-Za-z0-9._\-]*$")
HARD_CODED_TOPIC_RE = re.compile(r"^[A-Za-z0-9._\-]+$")  # expression.go hardCodeTopicNameRe: a static topic
# Never replicated, whatever the filter says: exactly the schemas capture skips (system + its bookkeeping).
SYSTEM_SCHEMAS = tuple(sorted(capture.SYSTEM_SCHEMAS | {capture.BOOKKEEPING_SCHEMA}))
KNOWN_PROTOCOLS = (
    "canal", "canal-json", "open-protocol", "avro", "flat-avro", "maxwell", "craft", "csv", "debezium", "simple"
)

# tiflow cdc/api/util.go: httpBadRequestError; every other code answers 500.
BAD_REQUEST_CODES = frozenset(
    {
        "CDC:ErrAPIInvalidParam",
        "CDC:ErrSinkURIInvalid",
        "CDC:ErrStartTsBeforeGC",
        "CDC:ErrChangeFeedNotExists",
        "CDC:ErrTargetTsBeforeStartTs",
        "CDC:ErrTableIneligible",
        "CDC:ErrFilterRuleInvalid",
        "CDC:ErrChangefeedUpdateRefused",
        "CDC:ErrMySQLConnectionError",
        "CDC:ErrMySQLInvalidConfig",
        "CDC:ErrCaptureNotExist",
        "CDC:ErrSchedulerRequestFailed",
    }
)


class ApiError(Exception):
    """A TiCDC error: its RFC code and message; the HTTP status follows from the code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}]{message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return 400 if self.code in BAD_REQUEST_CODES else 500

    def body(self) -> dict[str, str]:
        return {"error_msg": str(self), "error_code": self.code}


@dataclass(frozen=True)
class Response:
    """A JSON body (or plain text for the router's 404) and its status."""

    status: int
    body: Any


@dataclass(frozen=True)
class UpstreamTable:
    """A base table upstream and whether it has a handle key (PK or NOT NULL unique key)."""

    schema: str
    table: str
    eligible: bool


# --- pure helpers --------------------------------------------------------------------------------------


def checkpoint_time(ts: int) -> str:
    """TiCDC's JSONTime (`2006-01-02 15:04:05.000`) of a TSO, in the server's local time as TiCDC prints it."""
    ms = ms_from_tso(ts)
    return datetime.fromtimestamp(ms // 1000).strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}"


def go_time(epoch: float) -> str:
    """An epoch as Go's `time.Time` JSON (RFC 3339 with trimmed fraction, `Z` for UTC)."""
    dt = datetime.fromtimestamp(epoch).astimezone()
    frac = f"{dt.microsecond:06d}".rstrip("0")
    offset = dt.strftime("%z")
    zone = "Z" if offset in ("+0000", "-0000") else f"{offset[:3]}:{offset[3:]}"
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + zone


def mask_sink_uri(uri: str) -> str:
    """TiCDC's `util.MaskSinkURI`: `sasl-password` and a userinfo password become `xxxxx`."""
    parts = urlsplit(uri)
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k == "sasl-password" for k, _ in pairs):
        # Go: Values.Set leaves one value; Values.Encode sorts keys (stable within a key) and query-escapes.
        masked = [(k, v) for k, v in pairs if k != "sasl-password"] + [("sasl-password", MASK)]
        query = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in sorted(masked, key=lambda kv: kv[0]))
    return urlunsplit((parts.scheme, mask_netloc(parts.netloc), parts.path, query, parts.fragment))


def mask_url(url: str) -> str:
    """A URL with its userinfo password masked, for messages and echoed config."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, mask_netloc(parts.netloc), parts.path, parts.query, parts.fragment))


def parse_filter_rules(rules: Sequence[Any], *, case_sensitive: bool) -> TableFilter:
    """TiDB table-filter rules (`table_filter`: wildcards, `!`, `\\` escapes, quoted names, `/regexp/`)."""
    try:
        return TableFilter(rules, case_sensitive=case_sensitive)
    except FilterSyntaxError as exc:
        raise ApiError("CDC:ErrFilterRuleInvalid", f"filter rule is invalid {list(rules)!r}: {exc}") from None


@dataclass(frozen=True)
class SinkPlan:
    """What a changefeed definition resolves to, before any upstream or registry I/O."""

    default_topic: str
    registry_url: str
    filter_rules: TableFilter
    dispatchers: tuple[tuple[TableFilter, str], ...]  # (matcher, topic expression or static topic)
    case_sensitive: bool
    ignore_ineligible: bool

    def replicates(self, schema: str, table: str) -> bool:
        return schema.lower() not in SYSTEM_SCHEMAS and self.filter_rules.matches(schema, table)


# TiCDC's default replica config as its GET shows it (tiflow pkg/config/replica_config.go defaultReplicaConfig
# through cdc/api/v2/model.go ToAPIReplicaConfig; durations in nanoseconds). Create fills what a body leaves out
# from it; update does not (see `updated_config`).
DEFAULT_REPLICA_CONFIG: dict[str, Any] = {
    "memory_quota": 1024 * 1024 * 1024,
    "case_sensitive": False,
    "force_replicate": False,
    "ignore_ineligible_table": False,
    "check_gc_safe_point": True,
    "enable_sync_point": False,
    "enable_table_monitor": False,
    "bdr_mode": False,
    "sync_point_interval": 10 * 60 * 10**9,
    "sync_point_retention": 24 * 3600 * 10**9,
    "filter": {"rules": ["*.*"]},
    "mounter": {"worker_num": 16},
    "sink": {
        "csv": {"delimiter": ",", "quote": '"', "null": "\\N", "include_commit_ts": False,
                "binary_encoding_method": "base64", "output_old_value": False, "output_handle_key": False,
                "output_field_header": False},
        "encoder_concurrency": 32,
        "terminator": "\r\n",
        "date_separator": "day",
        "enable_partition_separator": True,
        "enable_kafka_sink_v2": False,
        "only_output_updated_columns": False,
        "delete_only_output_handle_key_columns": False,
        "content_compatible": False,
        "advance_timeout": 150,
        "send_bootstrap_interval_in_sec": 120,
        "send_bootstrap_in_msg_count": 10000,
        "send_bootstrap_to_all_partition": True,
        "send-all-bootstrap-at-start": False,
        "debezium_disable_schema": False,
        "debezium": {"output_old_value": True},
        "open": {"output_old_value": True},
    },
    "consistent": {"level": "none", "max_log_size": 64, "flush_interval": 2000, "meta_flush_interval": 200,
                   "encoding_worker_num": 16, "flush_worker_num": 8, "storage": "", "use_file_backend": False,
                   "compression": "", "flush_concurrency": 1, "memory_usage": {"memory_quota_percentage": 50}},
    "scheduler": {"enable_table_across_nodes": False, "region_threshold": 100000, "write_key_threshold": 0},
    "integrity": {"integrity_check_level": "none", "corruption_handle_level": "warn"},
    "changefeed_error_stuck_duration": 30 * 60 * 10**9,
    "synced_status": {"synced_check_interval": 300, "checkpoint_interval": 15},
}
# ReplicaConfig fields that are plain values in TiCDC's API struct: a PUT body without one sets its zero value.
_PUT_ZEROED = {"memory_quota": 0, "case_sensitive": False, "force_replicate": False, "ignore_ineligible_table": False,
               "check_gc_safe_point": False}  # fmt: skip
# Pointer fields a PUT copies as they are (absent = unset, left out of GET like Go's omitempty on nil).
_PUT_COPIED = ("enable_sync_point", "enable_table_monitor", "bdr_mode")


def _merged(base: Any, body: Any) -> Any:
    """Go's json.Unmarshal of `body` into a struct already holding `base`: objects merge, everything else replaces."""
    if isinstance(base, dict) and isinstance(body, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in body.items()}}
    return copy.deepcopy(body)


def created_config(body: Mapping[str, Any]) -> dict[str, Any]:
    """POST: TiCDC decodes the body into its default config, so every setting left out keeps its default."""
    return _merged(DEFAULT_REPLICA_CONFIG, dict(body))


def updated_config(body: Mapping[str, Any]) -> dict[str, Any]:
    """PUT: the whole config is replaced; nothing of the old one survives.

    tiflow `updateChangefeed` decodes the body into an empty `ChangefeedConfig` and converts it onto the
    default config (`toInternalReplicaConfigWithOriginConfig`): the plain fields take the body's value or
    their zero value (`check_gc_safe_point` false, `case_sensitive` false, ...; `memory_quota` 0 is re-defaulted
    by `FixMemoryQuota`), the pointer switches are copied (absent = unset), and each object the body has
    replaces the default one whole (its own omitted fields are unset, not defaulted); an object the body lacks
    is the default one.
    """
    res = copy.deepcopy(DEFAULT_REPLICA_CONFIG)
    for key, zero in _PUT_ZEROED.items():
        res[key] = copy.deepcopy(body.get(key, zero))
    if not res["memory_quota"]:
        res["memory_quota"] = DEFAULT_REPLICA_CONFIG["memory_quota"]
    for key in _PUT_COPIED:
        if body.get(key) is None:
            res.pop(key, None)
        else:
            res[key] = body[key]
    for key, value in body.items():
        if key not in _PUT_ZEROED and key not in _PUT_COPIED and value is not None:
            res[key] = copy.deepcopy(value)
    return res


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError("CDC:ErrAPIInvalidParam", f"invalid api parameter: {what} must be a JSON object")
    return value


def plan_sink(sink_uri: str, replica_config: Mapping[str, Any]) -> SinkPlan:
    """Validate a sink URI and replica config the way TiCDC does for a Kafka Avro changefeed."""
    if not sink_uri:
        raise ApiError(
            "CDC:ErrSinkURIInvalid", "sink uri invalid 'sink_uri is empty, cannot create a changefeed without sink_uri'"
        )
    try:
        parts = urlsplit(sink_uri)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ApiError("CDC:ErrSinkURIInvalid", f"sink uri invalid '{mask_sink_uri(sink_uri)}': {exc}") from None
    if parts.scheme != "kafka":
        raise ApiError(
            "CDC:ErrSinkURIInvalid",
            f"sink uri invalid '{mask_sink_uri(sink_uri)}': the lab change feed supports only kafka:// sinks",
        )
    if not parts.hostname:
        raise ApiError("CDC:ErrSinkURIInvalid", f"sink uri invalid '{mask_sink_uri(sink_uri)}': no broker address")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    topic = parts.path.strip("/")
    if not topic:
        raise ApiError("CDC:ErrKafkaInvalidConfig", "kafka config invalid: no topic is specified in sink-uri")

    sink = _object(replica_config.get("sink"), "replica_config.sink")
    # As in TiCDC, a URI parameter wins over the same setting in the replica config.
    protocol = query.get("protocol") or sink.get("protocol") or ""
    if protocol not in KNOWN_PROTOCOLS:
        raise ApiError("CDC:ErrSinkUnknownProtocol", f"unknown '{protocol}' message protocol for sink")
    if protocol != "avro":
        raise ApiError(
            "CDC:ErrSinkURIInvalid",
            f"sink uri invalid '{mask_sink_uri(sink_uri)}': the lab change feed speaks only protocol=avro, "
            f"not {protocol}",
        )
    registry = query.get("schema-registry") or sink.get("schema_registry") or ""
    if not isinstance(registry, str) or not registry:
        raise ApiError(
            "CDC:ErrCodecInvalidConfig",
            'Avro protocol requires parameter "schema-registry" or "glue-schema-registry" to specify the schema '
            "registry; set replica_config.sink.schema_registry",
        )

    case_sensitive = bool(replica_config.get("case_sensitive", False))
    filt = _object(replica_config.get("filter"), "replica_config.filter")
    # An absent or empty list means every table, as capture reads it.
    rules = filt.get("rules") or ["*.*"]
    if not isinstance(rules, list):
        raise ApiError("CDC:ErrFilterRuleInvalid", "filter rule is invalid: replica_config.filter.rules must be a list")
    dispatchers = sink.get("dispatchers") or []
    if not isinstance(dispatchers, list):
        raise ApiError(
            "CDC:ErrAPIInvalidParam", "invalid api parameter: replica_config.sink.dispatchers must be a list"
        )
    routes = []
    for d in dispatchers:
        d = _object(d, "a dispatcher")
        matcher = d.get("matcher") or ["*.*"]
        if not isinstance(matcher, list):
            raise ApiError("CDC:ErrFilterRuleInvalid", f"filter rule is invalid {matcher!r}: matcher must be a list")
        topic_rule = d.get("topic") or ""
        # tiflow getTopicDispatcher: "" is the default topic and a name without placeholders a static topic,
        # both accepted before the Avro expression check.
        if not isinstance(topic_rule, str) or (
            topic_rule and not HARD_CODED_TOPIC_RE.match(topic_rule) and not AVRO_TOPIC_RE.match(topic_rule)
        ):
            raise ApiError(
                "CDC:ErrKafkaTopicExprInvalid",
                f"invalid topic expression: {topic_rule} topic rule for Avro must contain {{schema}} and {{table}}",
            )
        if str(d.get("partition") or "").lower() == "index-value" and d.get("index"):
            raise ApiError(
                "CDC:ErrAPIInvalidParam",
                "invalid api parameter: the lab change feed does not support index-value with an index name; "
                "leave `index` empty to dispatch by the handle key",
            )
        routes.append((parse_filter_rules(matcher, case_sensitive=case_sensitive), topic_rule))
    return SinkPlan(
        default_topic=topic,
        registry_url=registry,
        filter_rules=parse_filter_rules(rules, case_sensitive=case_sensitive),
        dispatchers=tuple(routes),
        case_sensitive=case_sensitive,
        ignore_ineligible=bool(replica_config.get("ignore_ineligible_table", False)),
    )


def check_tables(plan: SinkPlan, tables: Sequence[UpstreamTable]) -> None:
    """Every replicated table needs a handle key (TiCDC: CDC:ErrTableIneligible unless ignore_ineligible_table).

    A table no dispatcher matches goes to the sink URI's default topic, as in TiCDC (its event router ends
    with an implicit `*.*` rule: default topic, default partition dispatcher).
    """
    replicated = [t for t in tables if plan.replicates(t.schema, t.table)]
    ineligible = [f"{t.schema}.{t.table}" for t in replicated if not t.eligible]
    if ineligible and not plan.ignore_ineligible:
        raise ApiError(
            "CDC:ErrTableIneligible",
            f"some tables are not eligible to replicate([{' '.join(ineligible)}]), if you want to ignore these "
            "tables, please set ignore_ineligible_table to true",
        )


def running_error_view(error: dict | None, *, with_time: bool) -> dict | None:
    if error is None:
        return None
    view = {key: str(error.get(key, "")) for key in ("addr", "code", "message")}
    if with_time:
        view = {"time": error.get("time", "0001-01-01T00:00:00Z"), **view}
    return view


def _shows_error(state: str) -> bool:
    # TiCDC hides errors of changefeeds that are fine or done (shouldShowRunningError).
    return state not in ("normal", "stopped", "finished", "removed")


def changefeed_info(cf: Changefeed) -> dict[str, Any]:
    """TiCDC's v2 `ChangeFeedInfo` (omitempty fields left out when empty), sink URI masked, config not."""
    info: dict[str, Any] = {
        "namespace": NAMESPACE,
        "id": cf.id,
        "sink_uri": mask_sink_uri(cf.sink_uri),
        "create_time": go_time(cf.created_at),
        "start_ts": cf.start_ts,
        # As TiCDC (toAPIModel -> ToAPIReplicaConfig): the config as stored, `sink.schema_registry` credentials
        # included; only `sink_uri` is masked. Clients must never show or keep it.
        "config": cf.replica_config,
        "state": cf.state,
        "creator_version": VERSION,
        # The lab's capture resolves and checkpoints in one step.
        "resolved_ts": cf.checkpoint_ts,
        "checkpoint_ts": cf.checkpoint_ts,
        "checkpoint_time": checkpoint_time(cf.checkpoint_ts),
    }
    if cf.error is not None and _shows_error(cf.state):
        info["error"] = running_error_view(cf.error, with_time=False)
    return info


def changefeed_common_info(cf: Changefeed) -> dict[str, Any]:
    """TiCDC's `ChangefeedCommonInfo`, one item of the list."""
    return {
        "upstream_id": 0,
        "namespace": NAMESPACE,
        "id": cf.id,
        "state": cf.state,
        "checkpoint_tso": cf.checkpoint_ts,
        "checkpoint_time": checkpoint_time(cf.checkpoint_ts),
        "error": running_error_view(cf.error, with_time=True) if _shows_error(cf.state) else None,
    }


def changefeed_status(cf: Changefeed) -> dict[str, Any]:
    status: dict[str, Any] = {"state": cf.state, "resolved_ts": cf.checkpoint_ts, "checkpoint_ts": cf.checkpoint_ts}
    if cf.error is not None:
        # A retryable error (the changefeed in `warning`) is TiCDC's `last_warning`; others are `last_error`.
        status["last_warning" if cf.state == "warning" else "last_error"] = running_error_view(cf.error, with_time=True)
    return status


def _parse_json(body: bytes) -> Any:
    # gin's BindJSON: an empty body is io.EOF, a 400.
    if not body.strip():
        raise ApiError("CDC:ErrAPIInvalidParam", "invalid api parameter: EOF")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ApiError("CDC:ErrAPIInvalidParam", f"invalid api parameter: {exc}") from None


def _uint(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ApiError("CDC:ErrAPIInvalidParam", f"invalid api parameter: {name} must be an unsigned integer")
    return value


def _validate_id(changefeed_id: str) -> None:
    if not CHANGEFEED_ID_RE.match(changefeed_id) or len(changefeed_id) > CHANGEFEED_ID_MAX_LEN:
        raise ApiError("CDC:ErrAPIInvalidParam", f"invalid changefeed_id: {changefeed_id}")


# --- the API -------------------------------------------------------------------------------------------


class TiCDCApi:
    """Request -> response for the OpenAPI v2 subset, over a `ChangefeedStore`.

    `list_tables` reads the upstream's tables (raises ApiError when it cannot), `probe_registry` returns the
    body of `GET <registry>/`, `now_ms` is the clock the TSOs come from.
    """

    def __init__(
        self,
        store: ChangefeedStore,
        *,
        list_tables: Callable[[], list[UpstreamTable]],
        probe_registry: Callable[[str], str],
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.store = store
        self.list_tables = list_tables
        self.probe_registry = probe_registry
        self.now_ms = now_ms
        self.capture_id = str(uuid.uuid4())
        self._lock = threading.Lock()  # one admin operation at a time, like TiCDC's owner job queue
        self._tso_lock = threading.Lock()
        self._last_tso = 0

    def current_tso(self) -> int:
        """A TSO from the clock, strictly increasing like PD's."""
        with self._tso_lock:
            ts = max(tso_from_ms(self.now_ms()), self._last_tso + 1)
            self._last_tso = ts
            return ts

    def handle(self, method: str, path: str, query: Mapping[str, str], body: bytes) -> Response:
        try:
            return self._route(method, path, query, body)
        except ApiError as exc:
            return Response(exc.status, exc.body())

    def _route(self, method: str, path: str, query: Mapping[str, str], body: bytes) -> Response:
        parts = [unquote(p) for p in path.split("/") if p]
        if parts[:2] != ["api", "v2"]:
            return Response(404, "404 page not found")
        rest = parts[2:]
        namespace = query.get("namespace") or NAMESPACE
        match method, rest:
            case "GET", ["health"]:
                return Response(200, {})
            case "GET", ["status"]:
                return Response(200, self.server_status())
            case "GET", ["changefeeds"]:
                return Response(200, self.list_changefeeds(query.get("state", ""), namespace))
            case "POST", ["changefeeds"]:
                return Response(200, self.create(body))
            case "GET", ["changefeeds", cf_id]:
                return Response(200, changefeed_info(self._existing(cf_id, namespace)))
            case "PUT", ["changefeeds", cf_id]:
                return Response(200, self.update(cf_id, namespace, body))
            case "DELETE", ["changefeeds", cf_id]:
                return Response(200, self.delete(cf_id, namespace))
            case "GET", ["changefeeds", cf_id, "status"]:
                return Response(200, changefeed_status(self._existing(cf_id, namespace)))
            case "POST", ["changefeeds", cf_id, "pause"]:
                return Response(200, self.pause(cf_id, namespace))
            case "POST", ["changefeeds", cf_id, "resume"]:
                return Response(200, self.resume(cf_id, namespace, body))
        return Response(404, "404 page not found")

    def server_status(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "git_hash": GIT_HASH,
            "id": self.capture_id,
            "cluster_id": "default",
            "pid": os.getpid(),
            "is_owner": True,
            "liveness": 0,
        }

    def list_changefeeds(self, state: str, namespace: str) -> dict[str, Any]:
        def wanted(s: str) -> bool:
            if state == "all":
                return True
            if state == "":
                return s in ("normal", "stopped", "failed", "warning", "pending")
            return s == state

        feeds = [] if namespace != NAMESPACE else self.store.list()
        items = [changefeed_common_info(cf) for cf in sorted(feeds, key=lambda c: c.id) if wanted(cf.state)]
        return {"total": len(items), "items": items}

    def _existing(self, cf_id: str, namespace: str) -> Changefeed:
        _validate_id(cf_id)
        cf = self.store.get(cf_id) if namespace == NAMESPACE else None
        if cf is None:
            raise ApiError("CDC:ErrChangeFeedNotExists", f"changefeed not exists, {namespace}/{cf_id}")
        return cf

    def _verify(self, sink_uri: str, replica_config: dict) -> None:
        plan = plan_sink(sink_uri, replica_config)
        check_tables(plan, self.list_tables())
        self._check_registry(plan.registry_url)

    def _check_registry(self, url: str) -> None:
        try:
            text = self.probe_registry(url.rstrip("/"))
        except Exception as exc:  # noqa: BLE001 - any failure to reach the registry is TiCDC's API error
            raise ApiError(
                "CDC:ErrAvroSchemaAPIError",
                f"schema manager API error, cannot reach the Schema Registry at {mask_url(url)}: {type(exc).__name__}",
            ) from None
        if text != "{}":
            raise ApiError(
                "CDC:ErrAvroSchemaAPIError",
                f"Unexpected response from Schema Registry at {mask_url(url)}: GET / must answer exactly {{}}",
            )

    def create(self, body: bytes) -> dict[str, Any]:
        cfg = _object(_parse_json(body), "the request body")
        sink_uri = cfg.get("sink_uri") or ""
        if not isinstance(sink_uri, str):
            raise ApiError("CDC:ErrAPIInvalidParam", "invalid api parameter: sink_uri must be a string")
        replica_config = _object(cfg.get("replica_config"), "replica_config")
        start_ts = _uint(cfg.get("start_ts"), "start_ts")
        if _uint(cfg.get("target_ts"), "target_ts"):
            raise ApiError(
                "CDC:ErrAPIInvalidParam", "invalid api parameter: the lab change feed does not support target_ts"
            )
        if not sink_uri:
            raise ApiError(
                "CDC:ErrSinkURIInvalid",
                "sink uri invalid 'sink_uri is empty, cannot create a changefeed without sink_uri'",
            )
        cf_id = cfg.get("changefeed_id") or str(uuid.uuid4())
        if not isinstance(cf_id, str):
            raise ApiError("CDC:ErrAPIInvalidParam", "invalid api parameter: changefeed_id must be a string")
        _validate_id(cf_id)
        namespace = cfg.get("namespace") or NAMESPACE
        if namespace != NAMESPACE:
            raise ApiError("CDC:ErrAPIInvalidParam", f"invalid namespace: {namespace}; the lab has only {NAMESPACE}")
        with self._lock:
            if self.store.get(cf_id) is not None:
                raise ApiError("CDC:ErrChangeFeedAlreadyExists", f"changefeed already exists, {cf_id}")
            now = self.current_tso()
            if start_ts == 0:
                start_ts = now
            elif start_ts > now:
                raise ApiError("CDC:ErrAPIInvalidParam", f"invalid start-ts {start_ts}, larger than current tso {now}")
            replica_config = created_config(replica_config)
            self._verify(sink_uri, replica_config)
            cf = Changefeed(
                id=cf_id,
                sink_uri=sink_uri,
                replica_config=replica_config,
                start_ts=start_ts,
                state="normal",
                checkpoint_ts=start_ts,
                binlog_file=None,
                binlog_pos=None,
                error=None,
                created_at=time.time(),
            )
            self.store.put(cf)
        return changefeed_info(cf)

    def update(self, cf_id: str, namespace: str, body: bytes) -> dict[str, Any]:
        with self._lock:
            old = self._existing(cf_id, namespace)
            if old.state not in ("stopped", "failed"):
                raise ApiError(
                    "CDC:ErrChangefeedUpdateRefused",
                    "changefeed update error: can only update changefeed config when it is stopped or failed",
                )
            cfg = _object(_parse_json(body), "the request body")
            if _uint(cfg.get("target_ts"), "target_ts"):
                raise ApiError(
                    "CDC:ErrAPIInvalidParam", "invalid api parameter: the lab change feed does not support target_ts"
                )
            sink_uri = cfg.get("sink_uri") or old.sink_uri
            if not isinstance(sink_uri, str):
                raise ApiError("CDC:ErrAPIInvalidParam", "invalid api parameter: sink_uri must be a string")
            replica_config = old.replica_config
            if cfg.get("replica_config") is not None:
                replica_config = updated_config(_object(cfg["replica_config"], "replica_config"))
            if sink_uri == old.sink_uri and replica_config == old.replica_config:
                raise ApiError(
                    "CDC:ErrChangefeedUpdateRefused",
                    "changefeed update error: changefeed config is the same with the old one, do nothing",
                )
            try:
                self._verify(sink_uri, replica_config)
            except ApiError as exc:
                if exc.code == "CDC:ErrTableIneligible":
                    raise
                raise ApiError("CDC:ErrChangefeedUpdateRefused", f"changefeed update error: {exc}") from None
            new = replace(old, sink_uri=sink_uri, replica_config=replica_config)
            self.store.put(new)
        return changefeed_info(new)

    def delete(self, cf_id: str, namespace: str) -> dict[str, Any]:
        _validate_id(cf_id)
        with self._lock:
            if namespace == NAMESPACE:
                self.store.delete(cf_id)
        return {}

    def pause(self, cf_id: str, namespace: str) -> dict[str, Any]:
        with self._lock:
            cf = self._existing(cf_id, namespace)
            if cf.state in ("normal", "warning", "pending"):
                self.store.set_state(cf_id, "stopped", cf.error)
        return {}

    def resume(self, cf_id: str, namespace: str, body: bytes) -> dict[str, Any]:
        with self._lock:
            cf = self._existing(cf_id, namespace)
            cfg = _parse_json(body)
            cfg = _object(cfg, "the request body")
            overwrite = _uint(cfg.get("overwrite_checkpoint_ts"), "overwrite_checkpoint_ts")
            if overwrite > self.current_tso():
                raise ApiError(
                    "CDC:ErrAPIInvalidParam",
                    f"invalid api parameter: overwrite_checkpoint_ts {overwrite} is in the future",
                )
            if cf.state not in ("stopped", "failed", "finished"):
                return {}
            if overwrite:
                # No binlog position: capture finds it again from the new checkpoint.
                self.store.put(
                    replace(cf, state="normal", error=None, checkpoint_ts=overwrite, binlog_file=None, binlog_pos=None)
                )
            else:
                self.store.set_state(cf_id, "normal", None)
        return {}


# --- the real upstream and registry --------------------------------------------------------------------

_TABLES_SQL = (
    "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES "
    "WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ({placeholders})"
)
# One row per column of every unique index, with its nullability; a key qualifies if none is nullable and
# none is a virtual generated column (TiCDC's IsIndexUnique).
_UNIQUE_KEY_COLUMNS_SQL = (
    "SELECT s.TABLE_SCHEMA, s.TABLE_NAME, s.INDEX_NAME, c.IS_NULLABLE, c.EXTRA "
    "FROM information_schema.STATISTICS s JOIN information_schema.COLUMNS c "
    "ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME AND c.COLUMN_NAME = s.COLUMN_NAME "
    "WHERE s.NON_UNIQUE = 0 AND s.TABLE_SCHEMA NOT IN ({placeholders})"
)


def mysql_table_lister(conn_kwargs: Mapping[str, Any]) -> Callable[[], list[UpstreamTable]]:
    """Reads the upstream's base tables and their handle-key eligibility from information_schema."""

    def list_tables() -> list[UpstreamTable]:
        import pymysql

        placeholders = ", ".join(["%s"] * len(SYSTEM_SCHEMAS))
        try:
            conn = pymysql.connect(connect_timeout=5, **conn_kwargs)
        except pymysql.MySQLError as exc:
            raise ApiError("CDC:ErrMySQLConnectionError", f"MySQL connection error: {exc}") from None
        try:
            with conn.cursor() as cur:
                cur.execute(_TABLES_SQL.format(placeholders=placeholders), SYSTEM_SCHEMAS)
                tables = [(s, t) for s, t in cur.fetchall()]
                cur.execute(_UNIQUE_KEY_COLUMNS_SQL.format(placeholders=placeholders), SYSTEM_SCHEMAS)
                nullable: dict[tuple[str, str, str], bool] = {}
                for schema, table, index, is_nullable, extra in cur.fetchall():
                    key = (schema, table, index)
                    unfit = is_nullable == "YES" or is_virtual_generated(extra)
                    nullable[key] = nullable.get(key, False) or unfit
        finally:
            conn.close()
        keyed = {(s, t) for (s, t, _), has_null in nullable.items() if not has_null}
        return [UpstreamTable(s, t, (s, t) in keyed) for s, t in sorted(tables)]

    return list_tables


def http_registry_probe(url: str) -> str:
    """The body of `GET <registry>/` (credentials in the URL become basic auth)."""
    import httpx

    return httpx.get(url + "/", timeout=5.0).text
