"""The `kafka_connect` resource: one small client for Confluent Cloud's Connect API v1 and self-managed Connect.

The two differ in ways that matter to a reconciler (spec/confluent.md):
- Confluent Cloud masks secrets on `GET .../config` as `****************`; a masked config must never be
  sent back, so `put_config` refuses one outright. It may answer 429 with `Retry-After` on any call.
- Self-managed Connect answers 409 while the group rebalances (and right after a worker starts); that is
  retried with backoff. A 409 saying the connector already exists is not retried.
- Transport errors, 502/503/504 and 429 (`Retry-After` honoured) are retried a bounded number of times
  (`resources.http.request`, the loop the TiCDC and ksqlDB clients share).
- Errors come as `{"error": {"code", "message"}}` or `{"error_code", "message"}`; both become
  `KafkaConnectError`. Messages are scrubbed of the secret values of the config being sent, because
  Connect echoes invalid values back.
Status is normalised into `ConnectorStatus` so callers need not know the flavor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import dagster as dg
import httpx
from pydantic import Field

from tidb_pipeline.resources.http import HttpClient, RetryPolicy, basic_auth_client
from tidb_pipeline.resources.http import request as http_request

MASK = "****************"
CONFLUENT_CLOUD_API = "https://api.confluent.cloud"

Flavor = Literal["confluent_cloud", "self_managed"]

# Config keys whose values are credentials (matched as substrings of the key, lower-cased).
_SECRET_KEY_PARTS = ("password", "secret", "private.key", "passphrase", "api.key", "token", "credentials")
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


def confluent_cloud_url(environment_id: str, cluster_id: str, api: str = CONFLUENT_CLOUD_API) -> str:
    """The Connect API v1 base for one Kafka cluster (`env-...`, `lkc-...`)."""
    env, cluster = quote(environment_id, safe=""), quote(cluster_id, safe="")
    return f"{api.rstrip('/')}/connect/v1/environments/{env}/clusters/{cluster}"


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in _SECRET_KEY_PARTS)


class KafkaConnectError(RuntimeError):
    """A Connect REST call failed; `status` is the HTTP status, `code` the API's own error code if any."""

    def __init__(self, status: int, code: int | str | None, message: str, *, what: str = "") -> None:
        self.status = status
        self.code = code
        self.message = message
        hint = _HINTS.get(status, "")
        code_part = f", code {code}" if code is not None and code != status else ""
        answer = f" with HTTP {status}{code_part}" if status else ""  # 0: no answer (transport error)
        super().__init__(f"Kafka Connect {what or 'request'} failed{answer}: {message}{hint}")


_HINTS = {
    401: " (check KAFKA_CONNECT_API_KEY/KAFKA_CONNECT_API_SECRET; Confluent Cloud needs a Cloud API key, "
         "not a Kafka cluster key)",
    403: " (the API key lacks permission on this environment/cluster)",
}


@dataclass(frozen=True)
class TaskStatus:
    id: int
    state: str
    # Confluent Cloud's `msg` or the first line of self-managed Connect's `trace`.
    message: str = ""


@dataclass(frozen=True)
class ConnectorStatus:
    """Connector and task states as either flavor reports them (upper-case state names)."""

    name: str
    state: str
    tasks: tuple[TaskStatus, ...] = ()
    message: str = ""

    @property
    def running(self) -> bool:
        """The connector and all of its tasks run (and it has at least one task)."""
        return self.state == "RUNNING" and bool(self.tasks) and all(t.state == "RUNNING" for t in self.tasks)

    @property
    def failed_tasks(self) -> tuple[TaskStatus, ...]:
        return tuple(t for t in self.tasks if t.state == "FAILED")


def parse_status(name: str, body: Mapping[str, Any]) -> ConnectorStatus:
    """Normalise `GET /connectors/{name}/status` from either flavor."""
    connector = body.get("connector") or {}
    tasks = tuple(
        TaskStatus(id=int(t.get("id", i)), state=str(t.get("state", "")).upper(),
                   message=_first_line(t.get("msg") or t.get("trace") or ""))
        for i, t in enumerate(body.get("tasks") or [])
    )
    return ConnectorStatus(
        name=str(body.get("name") or name),
        state=str(connector.get("state", "")).upper(),
        tasks=tuple(sorted(tasks, key=lambda t: t.id)),
        message=_first_line(connector.get("msg") or connector.get("trace") or ""),
    )


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0][:500] if str(text).strip() else ""


def parse_error(response: httpx.Response) -> tuple[int | str | None, str]:
    """(code, message) from either error shape; falls back to the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return None, response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        nested = body.get("error")
        if isinstance(nested, dict):
            return nested.get("code"), str(nested.get("message") or "")
        if "error_code" in body or "message" in body:
            return body.get("error_code"), str(body.get("message") or "")
    return None, str(body)[:300]


def _redact(text: str, secrets: Sequence[str]) -> str:
    # Longest first, so a secret containing another is removed whole.
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    return text


def _is_rebalance_conflict(message: str) -> bool:
    # 409 also means "already exists", which no amount of waiting fixes.
    return "already exists" not in message.lower()


@dataclass
class KafkaConnectClient(HttpClient):
    """Plain client: one method per endpoint, bounded retries. Build it with `KafkaConnectResource.get_client()`."""

    http: httpx.Client
    flavor: Flavor
    max_retries: int = 5
    max_retry_wait_s: float = 60.0
    backoff_s: float = 0.25
    sleep: Callable[[float], None] = field(default=time.sleep)

    # --- endpoints ----------------------------------------------------------------------------
    def list(self) -> list[str]:
        return sorted(self._request("GET", "/connectors", what="list connectors").json())

    def get_config(self, name: str) -> dict[str, str] | None:
        """The stored config, or None if the connector does not exist. On Confluent Cloud secrets are masked."""
        response = self._request("GET", f"/connectors/{_q(name)}/config", what=f"get config of {name!r}",
                                 allow_404=True)
        return None if response.status_code == 404 else {str(k): str(v) for k, v in response.json().items()}

    def get_status(self, name: str) -> ConnectorStatus | None:
        """Normalised status, or None if the connector does not exist."""
        response = self._request("GET", f"/connectors/{_q(name)}/status", what=f"get status of {name!r}",
                                 allow_404=True)
        return None if response.status_code == 404 else parse_status(name, response.json())

    def put_config(self, name: str, config: Mapping[str, str]) -> bool:
        """Create or update with the full config (real secrets); True if it was created (self-managed tells)."""
        body = self._checked(name, config)
        response = self._request("PUT", f"/connectors/{_q(name)}/config", json=body,
                                 what=f"put config of {name!r}", secrets=_secret_values(body))
        return response.status_code == 201

    def create(self, name: str, config: Mapping[str, str]) -> None:
        body = self._checked(name, config)
        self._request("POST", "/connectors", json={"name": name, "config": body}, what=f"create {name!r}",
                      secrets=_secret_values(body))

    def pause(self, name: str) -> None:
        """Asks to pause (202, asynchronous): poll `get_status` for PAUSED."""
        self._request("PUT", f"/connectors/{_q(name)}/pause", what=f"pause {name!r}")

    def resume(self, name: str) -> None:
        """Asks to resume (202, asynchronous): poll `get_status` for RUNNING."""
        self._request("PUT", f"/connectors/{_q(name)}/resume", what=f"resume {name!r}")

    def delete(self, name: str) -> bool:
        """Delete; False if it did not exist."""
        response = self._request("DELETE", f"/connectors/{_q(name)}", what=f"delete {name!r}", allow_404=True)
        return response.status_code != 404

    def wait_for_state(self, name: str, states: set[str], *, timeout_s: float = 60.0,
                       interval_s: float = 0.2, all_tasks: bool = True) -> ConnectorStatus:
        """Poll status until the connector (and, with `all_tasks`, each of at least one task) is in `states`."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.get_status(name)
            if status is not None and status.state in states and (
                not all_tasks or (status.tasks and all(t.state in states for t in status.tasks))
            ):
                return status
            if time.monotonic() > deadline:
                seen = "absent" if status is None else f"{status.state}, tasks {[t.state for t in status.tasks]}"
                raise TimeoutError(f"connector {name!r} did not reach {sorted(states)} within {timeout_s:.0f}s "
                                   f"(last seen: {seen})")
            self.sleep(interval_s)

    # --- plumbing -----------------------------------------------------------------------------
    def _checked(self, name: str, config: Mapping[str, str]) -> dict[str, str]:
        bad = sorted(k for k, v in config.items() if not isinstance(v, str))
        if bad:
            raise ValueError(f"connector {name!r}: config values must be strings; not strings: {', '.join(bad)}")
        masked = sorted(k for k, v in config.items() if MASK in v)
        if masked:
            raise ValueError(
                f"connector {name!r}: refusing to send masked values for {', '.join(masked)}; a config read "
                "back from Confluent Cloud has its secrets masked — build the config with the real secrets"
            )
        if config.get("name", name) != name:
            raise ValueError(f"connector {name!r}: config 'name' is {config['name']!r}; they must match")
        return {**config, "name": name}

    def _request(self, method: str, path: str, *, what: str, json: Any = None, allow_404: bool = False,
                 secrets: Sequence[str] | None = None) -> httpx.Response:
        def retry(response: httpx.Response) -> bool:
            return self._retryable(response, _redact(parse_error(response)[1], secrets or []))

        try:
            response = http_request(
                self.http, method, path, json=json, sleep=self.sleep, retry_status=retry,
                policy=RetryPolicy(self.max_retries, self.backoff_s, self.max_retry_wait_s),
            )
        except httpx.TransportError as exc:
            raise KafkaConnectError(0, None, f"cannot reach {self.http.base_url} ({type(exc).__name__}) after "
                                    f"{self.max_retries + 1} attempts; check the Kafka Connect URL",
                                    what=what) from None
        if response.status_code < 400 or (allow_404 and response.status_code == 404):
            return response
        code, message = parse_error(response)
        raise KafkaConnectError(response.status_code, code, _redact(message, secrets or []), what=what)

    def _retryable(self, response: httpx.Response, message: str) -> bool:
        """Whether this answer may change on retry (429 is always retried, honouring Retry-After)."""
        status = response.status_code
        if status == 409 and self.flavor == "self_managed" and _is_rebalance_conflict(message):
            return True
        # A worker also answers 500 "Request cannot be completed because a rebalance is expected" for reads.
        if status == 500 and self.flavor == "self_managed" and "rebalance" in message.lower():
            return True
        return status in _RETRY_STATUSES


def _q(name: str) -> str:
    return quote(name, safe="")


def _secret_values(config: Mapping[str, str]) -> list[str]:
    # Short values (e.g. "1") would redact ordinary words in messages; real secrets are long.
    return [v for k, v in config.items() if is_secret_key(k) and len(v) >= 4]


class KafkaConnectResource(dg.ConfigurableResource):
    """Kafka Connect REST: Confluent Cloud Connect API v1 or a self-managed worker (default: the lab's)."""

    flavor: Flavor = "self_managed"
    url: str = Field(default="http://127.0.0.1:18083",
                     description="self-managed: the worker's REST URL; Confluent Cloud: "
                                 "https://api.confluent.cloud/connect/v1/environments/{env}/clusters/{lkc}")
    api_key: str | None = Field(default=None, description="Basic auth user (a Confluent Cloud API key)")
    api_secret: str | None = Field(default=None, description="Basic auth password")
    timeout_s: float = 30.0
    max_retries: int = 5
    max_retry_wait_s: float = 60.0

    def get_client(self, *, transport: httpx.BaseTransport | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> KafkaConnectClient:
        http = basic_auth_client(self.url, api_key=self.api_key, api_secret=self.api_secret, timeout_s=self.timeout_s,
                                 accept="application/json", transport=transport)
        return KafkaConnectClient(http=http, flavor=self.flavor, max_retries=self.max_retries,
                                  max_retry_wait_s=self.max_retry_wait_s, sleep=sleep)


def kafka_connect_resource(env: Mapping[str, str] | None = None) -> KafkaConnectResource:
    """From KAFKA_CONNECT_FLAVOR, KAFKA_CONNECT_URL (or CONFLUENT_ENVIRONMENT_ID + CONFLUENT_KAFKA_CLUSTER_ID),
    KAFKA_CONNECT_API_KEY / KAFKA_CONNECT_API_SECRET."""
    from tidb_pipeline.resources.env import secret, setting

    flavor = setting("KAFKA_CONNECT_FLAVOR", "self_managed", env)
    if flavor not in ("confluent_cloud", "self_managed"):
        raise ValueError(f"KAFKA_CONNECT_FLAVOR={flavor!r}; set it to confluent_cloud or self_managed")
    url = setting("KAFKA_CONNECT_URL", "", env)
    if not url and flavor == "confluent_cloud":
        env_id = setting("CONFLUENT_ENVIRONMENT_ID", "", env)
        cluster_id = setting("CONFLUENT_KAFKA_CLUSTER_ID", "", env)
        if not (env_id and cluster_id):
            raise ValueError("KAFKA_CONNECT_FLAVOR=confluent_cloud needs KAFKA_CONNECT_URL or both "
                             "CONFLUENT_ENVIRONMENT_ID (env-...) and CONFLUENT_KAFKA_CLUSTER_ID (lkc-...)")
        url = confluent_cloud_url(env_id, cluster_id)
    return KafkaConnectResource(
        flavor=flavor,  # type: ignore[arg-type]
        url=url or "http://127.0.0.1:18083",
        api_key=secret("KAFKA_CONNECT_API_KEY", env),
        api_secret=secret("KAFKA_CONNECT_API_SECRET", env),
    )
