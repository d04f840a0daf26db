"""A stand-in for Confluent Cloud's Connect API v1, in process, as an `httpx.MockTransport`.

It is not Confluent Cloud: it follows the shapes spec/confluent.md documents, and only those, so the
`kafka_connect` client's Confluent-specific paths can be tested here (no managed connectors run locally):
- HTTP Basic with one Cloud API key; anything else → 401.
- `POST /connectors` → 201; `PUT /connectors/{n}/config` → 200 create-or-update; `GET .../config` with
  secrets masked as `****************` and service-added keys (`cloud.provider`, ...) mixed in.
- `GET .../status` → `{"connector": {"state"}, "tasks": [{"id", "state", "msg"}]}`; a create/update starts in
  PROVISIONING and pause/resume (202, asynchronous) take effect only after `settle_polls` status reads, so
  a client has to poll rather than assume.
- `DELETE` → 200 `{"error": null}`.
- Both error shapes: `{"error": {"code", "message"}}` (not found, conflict, auth, throttling) and
  `{"error_code", "message"}` (invalid requests and configs).
- `throttle(n, retry_after)` makes the next n calls answer 429 with `Retry-After`.
It stores what was PUT verbatim (a masked value sent back would really be stored as the mask, which is
the failure the client guards against), and records every request for assertions.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx

MASK = "****************"
API = "https://api.confluent.cloud"
PLUGINS = ("SnowflakeSink", "MicrosoftSqlServerSink")
# Keys Confluent Cloud treats as passwords (masked on read).
SECRET_KEYS = frozenset({"kafka.api.secret", "snowflake.private.key", "snowflake.private.key.passphrase",
                         "connection.password"})
# What the service adds to a stored config (inferred from the console's config export).
SERVICE_KEYS = {"cloud.environment": "prod", "cloud.provider": "aws", "kafka.region": "us-west-2",
                "kafka.endpoint": "SASL_SSL://pkc-stand-in.us-west-2.aws.confluent.cloud:9092"}


@dataclass
class _Connector:
    config: dict[str, str]
    state: str = "PROVISIONING"
    # The state it moves to once `polls_left` status reads have passed.
    target: str = "RUNNING"
    polls_left: int = 0


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    body: Any
    authorized: bool


@dataclass
class ConfluentCloudConnect:
    """The stand-in's state; `transport()` serves it to an httpx client."""

    environment: str = "env-stand1"
    cluster: str = "lkc-stand1"
    api_key: str = "CLOUDKEYSTANDIN01"
    api_secret: str = "cloud/secret+with@odd:chars%?"
    settle_polls: int = 1
    connectors: dict[str, _Connector] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _throttle: list[str] = field(default_factory=list)

    @property
    def base_path(self) -> str:
        return f"/connect/v1/environments/{self.environment}/clusters/{self.cluster}"

    @property
    def url(self) -> str:
        return API + self.base_path

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def throttle(self, times: int = 1, retry_after: str = "1") -> None:
        """The next `times` requests answer 429 with this Retry-After value."""
        self._throttle.extend([retry_after] * times)

    def stored_config(self, name: str) -> dict[str, str]:
        """What the service holds, unmasked (for assertions only; the API never shows this)."""
        return dict(self.connectors[name].config)

    # --- request handling ---------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        authorized = self._authorized(request)
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.requests.append(Recorded(request.method, path, body, authorized))
        if self._throttle:
            return _nested(429, "Too Many Requests", headers={"Retry-After": self._throttle.pop(0)})
        if not authorized:
            return _nested(401, "Unauthorized")
        if not path.startswith(self.base_path + "/connectors"):
            return _nested(404, f"Not Found: no Connect API for {path}")
        parts = [unquote(p) for p in path[len(self.base_path) + 1:].split("/")]
        return self._route(request.method, parts, body)

    def _authorized(self, request: httpx.Request) -> bool:
        header = request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        return header == f"Basic {expected}"

    def _route(self, method: str, parts: list[str], body: Any) -> httpx.Response:
        match (method, parts[1:]):
            case ("GET", []):
                return httpx.Response(200, json=sorted(self.connectors))
            case ("POST", []):
                return self._create(body)
            case ("GET", [name]):
                return self._with(name, lambda c: httpx.Response(200, json=self._info(name, c)))
            case ("GET", [name, "config"]):
                return self._with(name, lambda c: httpx.Response(200, json=_masked(c.config)))
            case ("PUT", [name, "config"]):
                return self._put(name, body)
            case ("GET", [name, "status"]):
                return self._with(name, lambda c: httpx.Response(200, json=self._status(name, c)))
            case ("PUT", [name, "pause"]):
                return self._with(name, lambda c: self._transition(c, "PAUSED"))
            case ("PUT", [name, "resume"]):
                return self._with(name, lambda c: self._transition(c, "RUNNING"))
            case ("DELETE", [name]):
                return self._with(name, lambda c: self._delete(name))
        return _nested(404, f"Not Found: {method} /{'/'.join(parts)}")

    def _with(self, name: str, action: Any) -> httpx.Response:
        connector = self.connectors.get(name)
        if connector is None:
            return _nested(404, f"Connector {name} not found")
        return action(connector)

    def _create(self, body: Any) -> httpx.Response:
        if not (isinstance(body, dict) and isinstance(body.get("name"), str) and isinstance(body.get("config"), dict)):
            return _flat(400, "request body must be {\"name\": ..., \"config\": {...}}")
        name = body["name"]
        if name in self.connectors:
            return _nested(409, f"Connector {name} already exists")
        invalid = _validate(name, body["config"])
        if invalid:
            return invalid
        self.connectors[name] = _Connector(dict(body["config"]), polls_left=self.settle_polls)
        return httpx.Response(201, json=self._info(name, self.connectors[name]))

    def _put(self, name: str, body: Any) -> httpx.Response:
        if not isinstance(body, dict):
            return _flat(400, "request body must be a JSON object of config values")
        invalid = _validate(name, body)
        if invalid:
            return invalid
        existing = self.connectors.get(name)
        # An update re-provisions; a paused connector stays paused.
        target = existing.target if existing is not None else "RUNNING"
        self.connectors[name] = _Connector(dict(body), "PROVISIONING", target, self.settle_polls)
        return httpx.Response(200, json=self._info(name, self.connectors[name]))

    def _transition(self, connector: _Connector, target: str) -> httpx.Response:
        connector.target = target
        connector.polls_left = self.settle_polls
        return httpx.Response(202)

    def _delete(self, name: str) -> httpx.Response:
        del self.connectors[name]
        return httpx.Response(200, json={"error": None})

    def _status(self, name: str, connector: _Connector) -> dict[str, Any]:
        if connector.polls_left > 0:
            connector.polls_left -= 1
        elif connector.state != connector.target:
            connector.state = connector.target
        tasks = [] if connector.state == "PROVISIONING" else [
            {"id": i, "state": connector.state, "worker_id": name, "msg": ""}
            for i in range(int(connector.config.get("tasks.max", "1")))
        ]
        return {"name": name, "connector": {"state": connector.state, "worker_id": name, "trace": ""},
                "tasks": tasks, "type": "sink"}

    def _info(self, name: str, connector: _Connector) -> dict[str, Any]:
        return {"name": name, "config": _masked(connector.config), "tasks": [], "type": "sink"}


def _validate(name: str, config: dict[str, Any]) -> httpx.Response | None:
    not_strings = sorted(k for k, v in config.items() if not isinstance(v, str))
    if not_strings:
        return _flat(400, f"Invalid config: values must be strings ({', '.join(not_strings)})")
    if config.get("name", name) != name:
        return _flat(400, f"Connector name mismatch: {config.get('name')!r} in config, {name!r} in the path")
    plugin = config.get("connector.class")
    if plugin not in PLUGINS:
        return _flat(400, f"Invalid connector.class {plugin!r}; available plugins: {', '.join(PLUGINS)}")
    return None


def _masked(config: dict[str, str]) -> dict[str, str]:
    shown = {k: (MASK if k in SECRET_KEYS else v) for k, v in config.items()}
    return {**SERVICE_KEYS, **shown}


def _nested(status: int, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": status, "message": message}}, headers=headers)


def _flat(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error_code": status, "message": message})
