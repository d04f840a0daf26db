"""The changefeed as a declared thing: what TiCDC should run, how it differs from what runs, what to do.

Pure: no I/O, no imports from resources. The defs layer turns resources into `KafkaSink` / `Registry`,
calls `build_changefeed`, reads the running changefeed through the `ticdc` resource and executes `plan`.

Secrets. The sink URI and the registry URL carry the Kafka and registry API secrets, percent-encoded (an
unencoded `/`, `+`, `@`, `:` or `%` breaks a URI silently). TiCDC's GET answers with those passwords masked
as `xxxxx`, so `diff` masks the desired values the same way before comparing and the real values are only
ever sent, never read back. A consequence: a rotated secret alone is not a visible difference; pass
`force_update` to `plan` to push it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from tidb_pipeline.config import PipelineConfig, TableConfig

MASK = "xxxxx"
# Query parameters TiCDC masks in GET answers (tiflow pkg/util/uri.go).
MASKED_QUERY_KEYS = frozenset({"sasl-password", "password"})
# A plain table-filter name is letters, digits, `$`, `_` and non-ASCII; every other ASCII char is reserved.
_FILTER_PLAIN = re.compile(r"[A-Za-z0-9$_]|[^\x00-\x7f]")

RUNNING_STATES = frozenset({"normal", "warning", "pending"})
RESUMABLE_STATES = frozenset({"stopped", "failed"})


@dataclass(frozen=True)
class KafkaSink:
    """Where TiCDC writes: brokers, TLS/SASL (Confluent Cloud: tls + PLAIN with an API key)."""

    bootstrap_servers: str
    tls: bool = False
    sasl_user: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    sasl_mechanism: str = "plain"
    replication_factor: int = 1
    # Holds nothing with Avro (every table is routed by the dispatcher) but TiCDC requires one.
    default_topic: str | None = None


@dataclass(frozen=True)
class Registry:
    """The Schema Registry TiCDC registers the Avro schemas in."""

    url: str
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DesiredChangefeed:
    """The full changefeed definition, real secrets included; its repr shows only masked values."""

    changefeed_id: str
    sink_uri: str = field(repr=False)
    replica_config: Mapping[str, Any] = field(repr=False)
    # Only used on create: 0 means "now"; a backfill passes its snapshot TSO.
    start_ts: int = 0

    @property
    def sink_uri_masked(self) -> str:
        return mask_uri(self.sink_uri)

    @property
    def replica_config_masked(self) -> dict[str, Any]:
        return mask_replica_config(self.replica_config)

    def __repr__(self) -> str:
        return (
            f"DesiredChangefeed(changefeed_id={self.changefeed_id!r}, sink_uri={self.sink_uri_masked!r}, "
            f"start_ts={self.start_ts})"
        )


class ObservedChangefeed(Protocol):
    """What GET /api/v2/changefeeds/{id} tells (the `ticdc` resource's ChangefeedInfo fits)."""

    @property
    def state(self) -> str: ...
    @property
    def sink_uri_masked(self) -> str: ...
    @property
    def config(self) -> Mapping[str, Any]: ...


Action = Literal["create", "noop", "update", "resume", "blocked"]


@dataclass(frozen=True)
class Plan:
    """The decision: an action, the API calls it takes in order, and why (masked, safe to log)."""

    action: Action
    steps: tuple[str, ...]
    differences: tuple[str, ...] = ()
    reason: str = ""


# --- building -------------------------------------------------------------------------------------------


def filter_name(name: str) -> str:
    """A schema or table name as a literal in TiDB's table-filter syntax (reserved chars backslash-escaped).

    A name ending in a space or tab is backquoted instead: TiDB trims a rule's trailing blanks before
    parsing, which would cut an escaped one off.
    """
    if name.endswith((" ", "\t")):
        return "`" + name.replace("`", "``") + "`"
    return "".join(c if _FILTER_PLAIN.fullmatch(c) else "\\" + c for c in name)


def table_rule(t: TableConfig) -> str:
    return f"{filter_name(t.db)}.{filter_name(t.table)}"


def _enc(value: str) -> str:
    # safe="" so that `/`, `+`, `@`, `:`, `%`, `?`, `&` and `=` are all encoded.
    return quote(value, safe="")


def sink_uri(config: PipelineConfig, kafka: KafkaSink) -> str:
    """`kafka://<bootstrap>/<default-topic>?protocol=avro&...`, every credential percent-encoded."""
    src = config.source
    topic = kafka.default_topic or f"{src.changefeed_id}-default"
    params: list[tuple[str, str]] = [
        ("protocol", "avro"),
        ("partition-num", str(src.partitions)),
        ("replication-factor", str(kafka.replication_factor)),
        ("enable-tidb-extension", "true" if src.enable_tidb_extension else "false"),
        ("avro-decimal-handling-mode", config.decimal_handling),
        ("avro-bigint-unsigned-handling-mode", src.bigint_unsigned_handling),
    ]
    if kafka.tls:
        params.append(("enable-tls", "true"))
    if kafka.sasl_user:
        params += [
            ("sasl-mechanism", kafka.sasl_mechanism),
            ("sasl-user", kafka.sasl_user),
            ("sasl-password", kafka.sasl_password or ""),
        ]
    query = "&".join(f"{k}={_enc(v)}" for k, v in params)
    return f"kafka://{kafka.bootstrap_servers}/{_enc(topic)}?{query}"


def registry_url(registry: Registry) -> str:
    """`https://<key>:<secret>@<endpoint>` with both credentials percent-encoded (unchanged without a key)."""
    url = registry.url.rstrip("/")
    if not registry.api_key:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    userinfo = f"{_enc(registry.api_key)}:{_enc(registry.api_secret or '')}"
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment))


# The changefeed-level settings the pipeline wants, stated in full in every create and update: TiCDC's PUT
# decodes the body into an empty config, so a setting left out is reset to its zero value, not kept
# (`check_gc_safe_point` would turn false, letting GC pass an unreplicated checkpoint). Values are TiCDC's own
# defaults (tiflow pkg/config/replica_config.go), which a create fills in anyway, so create and update agree.
REPLICA_SETTINGS: dict[str, Any] = {
    "memory_quota": 1024 * 1024 * 1024,
    "case_sensitive": False,
    "force_replicate": False,  # tables without a handle key are refused, never replicated without one
    "ignore_ineligible_table": False,
    "check_gc_safe_point": True,
    "enable_sync_point": False,
    "enable_table_monitor": False,
    "bdr_mode": False,
}


def replica_config(config: PipelineConfig, registry: Registry) -> dict[str, Any]:
    """The complete replica config: `REPLICA_SETTINGS`, the table filter and the Avro sink.

    Objects the pipeline does not send (mounter, scheduler, consistent, ...) are TiCDC's defaults on create and
    on update alike (an update rebuilds them from the defaults); inside `sink` what is not sent is unset on
    both, which for a Kafka Avro sink means TiCDC's defaults (URI parameters win over `kafka_config`).
    """
    src = config.source
    rules = [table_rule(t) for t in config.tables]
    return {
        **REPLICA_SETTINGS,
        "filter": {"rules": rules},
        "sink": {
            "protocol": "avro",
            "schema_registry": registry_url(registry),
            "dispatchers": [{"matcher": list(rules), "topic": src.topic_pattern, "partition": "index-value"}],
            "kafka_config": {
                "codec_config": {
                    "enable_tidb_extension": src.enable_tidb_extension,
                    "avro_decimal_handling_mode": config.decimal_handling,
                    "avro_bigint_unsigned_handling_mode": src.bigint_unsigned_handling,
                }
            },
        },
    }


def build_changefeed(
    config: PipelineConfig, kafka: KafkaSink, registry: Registry, *, start_ts: int = 0
) -> DesiredChangefeed:
    """The changefeed that replicates exactly `config.tables` into one Avro topic per table."""
    if not config.tables:
        # An empty filter means "every table" to TiCDC: refuse rather than replicate the whole cluster.
        raise ValueError("the config lists no tables; add tables (or run `tidb-pipeline discover`) first")
    return DesiredChangefeed(
        changefeed_id=config.source.changefeed_id,
        sink_uri=sink_uri(config, kafka),
        replica_config=replica_config(config, registry),
        start_ts=start_ts,
    )


# --- masking and comparing ------------------------------------------------------------------------------


def mask_netloc(netloc: str) -> str:
    """`user:password@host` with the password replaced by `xxxxx` (TiCDC and our own displays agree on this)."""
    userinfo, at, host = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return netloc
    return f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"


def mask_uri(uri: str) -> str:
    """A URI with its userinfo password and sensitive query values replaced by `xxxxx`, as TiCDC shows it."""
    parts = urlsplit(uri)
    query = "&".join(
        f"{_enc(k)}={MASK if k in MASKED_QUERY_KEYS else _enc(v)}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, mask_netloc(parts.netloc), parts.path, query, parts.fragment))


def mask_replica_config(config: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(config)
    sink = out.get("sink")
    if isinstance(sink, Mapping) and isinstance(sink.get("schema_registry"), str):
        out["sink"] = {**sink, "schema_registry": mask_uri(sink["schema_registry"])}
    return out


@dataclass(frozen=True)
class _UriView:
    """A masked URI reduced to what means something: decoding, key order and encoding style do not."""

    scheme: str
    username: str
    host: str
    path: str
    query: tuple[tuple[str, str], ...]


def _uri_view(uri: str) -> _UriView:
    parts = urlsplit(mask_uri(uri))
    userinfo, _, host = parts.netloc.rpartition("@")
    pairs = sorted(parse_qsl(parts.query, keep_blank_values=True))
    username = unquote(userinfo.split(":", 1)[0])
    return _UriView(parts.scheme.lower(), username, host.lower(), unquote(parts.path), tuple(pairs))


def _sink_uri_diff(desired: str, actual: str) -> list[str]:
    d, a = _uri_view(desired), _uri_view(actual)
    out = []
    for attr in ("scheme", "username", "host", "path"):
        if getattr(d, attr) != getattr(a, attr):
            out.append(f"sink_uri {attr}: running {getattr(a, attr)!r}, declared {getattr(d, attr)!r}")
    dq, aq = dict(d.query), dict(a.query)
    for key in sorted(dq.keys() | aq.keys()):
        if dq.get(key) != aq.get(key):
            out.append(f"sink_uri {key}: running {aq.get(key)!r}, declared {dq.get(key)!r}")
    return out


def _config_diff(desired: Any, actual: Any, path: str) -> list[str]:
    """Differences where `desired` is not contained in `actual` (TiCDC fills in defaults we never set)."""
    if path == "replica_config.sink.schema_registry" and isinstance(desired, str) and isinstance(actual, str):
        if _uri_view(desired) == _uri_view(actual):
            return []
        return [f"{path}: running {mask_uri(actual)!r}, declared {mask_uri(desired)!r}"]
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{path}: running {actual!r}, declared an object"]
        return [d for k in desired for d in _config_diff(desired[k], actual.get(k), f"{path}.{k}")]
    if isinstance(desired, Sequence) and not isinstance(desired, str):
        if not isinstance(actual, Sequence) or isinstance(actual, str) or len(actual) != len(desired):
            return [f"{path}: running {actual!r}, declared {list(desired)!r}"]
        if all(not isinstance(x, Mapping) for x in desired):
            if list(actual) == list(desired):
                return []
            return [f"{path}: running {list(actual)!r}, declared {list(desired)!r}"]
        return [d for i, (x, y) in enumerate(zip(desired, actual)) for d in _config_diff(x, y, f"{path}[{i}]")]
    if desired != actual:
        return [f"{path}: running {actual!r}, declared {desired!r}"]
    return []


def diff(desired: DesiredChangefeed, actual: ObservedChangefeed) -> list[str]:
    """What differs between the declared and the running changefeed, masked (safe to log); [] when equal."""
    return _sink_uri_diff(desired.sink_uri, actual.sink_uri_masked) + _config_diff(
        mask_replica_config(desired.replica_config), actual.config or {}, "replica_config"
    )


def plan(desired: DesiredChangefeed, actual: ObservedChangefeed | None, *, force_update: bool = False) -> Plan:
    """Decide what brings the running changefeed to the declared one (the caller executes the steps)."""
    if actual is None:
        return Plan("create", ("create",), reason="changefeed does not exist")
    if actual.state not in RUNNING_STATES | RESUMABLE_STATES:
        return Plan(
            "blocked",
            (),
            reason=(
                f"changefeed {desired.changefeed_id} is {actual.state} and cannot be resumed or updated; "
                "delete it and materialise again to recreate it (replication restarts from now)"
            ),
        )
    differences = tuple(diff(desired, actual))
    if differences or force_update:
        pause = ("pause",) if actual.state in RUNNING_STATES else ()
        reason = "config differs" if differences else "update forced (e.g. a rotated secret)"
        return Plan("update", (*pause, "update", "resume"), differences, reason)
    if actual.state in RESUMABLE_STATES:
        return Plan("resume", ("resume",), reason=f"changefeed is {actual.state} with the declared config")
    return Plan("noop", (), reason=f"changefeed is {actual.state} with the declared config")
