"""The `ticdc` resource: a small client for TiCDC's OpenAPI v2 (the lab's stand-in speaks the same subset).

One method per endpoint, small frozen dataclasses back. Errors come as `TiCDCError(code, message, status)`
parsed from TiCDC's envelope `{"error_msg", "error_code"}`.

Retries: a connection that could not be opened is retried for every call (nothing was sent). A 5xx or a
broken read is retried only for calls that are safe to repeat (GET, DELETE, pause, resume): TiCDC answers
500 for most of its error codes, and a repeated create or update after a lost answer would fail with
"already exists" / "config is the same" instead of the real outcome.

Secrets: the sink URI and registry URL sent on create/update carry passwords. They are never logged, and
any echo of them in an error message (TiCDC quotes a URI it cannot parse) is scrubbed before raising.
TiCDC's GET masks the sink URI but returns `config.sink.schema_registry` with its credentials in clear text
(only its logging masks it): `ChangefeedInfo` masks both as it parses the answer, so no caller ever holds,
logs or shows the registry secret read back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

import dagster as dg
import httpx
from pydantic import Field

from tidb_pipeline.resources.http import HttpClient, RetryPolicy
from tidb_pipeline.resources.http import request as http_request

_log = logging.getLogger("tidb_pipeline.ticdc")

MASK = "xxxxx"
_SECRET_QUERY_KEYS = ("sasl-password", "password")
_MAX_BACKOFF_S = 5.0


class TiCDCError(Exception):
    """TiCDC refused a request or could not be reached (code "" and status 0 for transport failures)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"TiCDC {status or 'unreachable'} {code or '(no code)'}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class RunningError:
    code: str
    message: str
    addr: str = ""
    time: str = ""


@dataclass(frozen=True)
class ServerStatus:
    version: str
    git_hash: str
    id: str
    pid: int
    is_owner: bool
    liveness: int


@dataclass(frozen=True)
class ChangefeedSummary:
    """One item of GET /api/v2/changefeeds."""

    id: str
    namespace: str
    state: str
    checkpoint_ts: int
    checkpoint_time: str
    error: RunningError | None


@dataclass(frozen=True)
class ChangefeedInfo:
    """GET /api/v2/changefeeds/{id}, with the passwords in `sink_uri_masked` and `config` masked (TiCDC masks the
    sink URI only; `parse_changefeed_info` masks the registry URL in the config)."""

    id: str
    state: str
    checkpoint_ts: int
    checkpoint_time: str
    error: RunningError | None
    sink_uri_masked: str
    config: Mapping[str, Any]
    resolved_ts: int = 0
    start_ts: int = 0


@dataclass(frozen=True)
class ChangefeedStatus:
    state: str
    checkpoint_ts: int
    resolved_ts: int
    last_error: RunningError | None
    last_warning: RunningError | None


# --- parsing ----------------------------------------------------------------------------------------------


def _running_error(value: Any) -> RunningError | None:
    if not isinstance(value, Mapping):
        return None
    return RunningError(
        code=str(value.get("code") or ""),
        message=str(value.get("message") or ""),
        addr=str(value.get("addr") or ""),
        time=str(value.get("time") or ""),
    )


def parse_changefeed_info(body: Mapping[str, Any]) -> ChangefeedInfo:
    """A GET/create/update answer -> ChangefeedInfo, every password in it masked."""
    return ChangefeedInfo(
        id=str(body.get("id", "")),
        state=str(body.get("state", "")),
        checkpoint_ts=int(body.get("checkpoint_ts") or 0),
        checkpoint_time=str(body.get("checkpoint_time") or ""),
        error=_running_error(body.get("error")),
        sink_uri_masked=_mask(str(body.get("sink_uri") or "")),
        config=_masked_config(body.get("config")),
        resolved_ts=int(body.get("resolved_ts") or 0),
        start_ts=int(body.get("start_ts") or 0),
    )


def _mask(uri: str) -> str:
    """Userinfo password and sensitive query values as `xxxxx` (TiCDC masks already; this guards one that does not)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return MASK
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}" if at and ":" in userinfo else parts.netloc
    pairs = [p.partition("=") for p in parts.query.split("&")] if parts.query else []
    query = "&".join(f"{k}={MASK}" if unquote(k) in _SECRET_QUERY_KEYS else f"{k}{eq}{v}" for k, eq, v in pairs)
    return parts._replace(netloc=netloc, query=query).geturl()


def _masked_config(config: Any) -> dict[str, Any]:
    """A replica config as GET returns it, with `sink.schema_registry`'s password masked (TiCDC leaves it)."""
    if not isinstance(config, Mapping):
        return {}
    sink = config.get("sink")
    if isinstance(sink, Mapping) and isinstance(sink.get("schema_registry"), str):
        return {**config, "sink": {**sink, "schema_registry": _mask(sink["schema_registry"])}}
    return dict(config)


def _uri_secrets(uri: str) -> list[str]:
    """Passwords inside a URI: the userinfo password and sensitive query values (decoded)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return []
    out = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        out.append(unquote(userinfo.split(":", 1)[1]))
    out += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in _SECRET_QUERY_KEYS]
    return [s for s in out if s]


def request_secrets(sink_uri: str, replica_config: Mapping[str, Any]) -> list[str]:
    """Every password in a create/update request, for scrubbing error messages."""
    sink = replica_config.get("sink") if isinstance(replica_config, Mapping) else None
    registry = sink.get("schema_registry") if isinstance(sink, Mapping) else None
    return _uri_secrets(sink_uri) + (_uri_secrets(registry) if isinstance(registry, str) else [])


def scrub(text: str, secrets: Iterable[str]) -> str:
    # A secret may come back raw or in any of the encodings a server might re-apply.
    forms = {f for s in secrets for f in (s, quote(s, safe=""), quote(s), quote_plus(s), quote_plus(s, safe="")) if f}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def _error(response: httpx.Response, what: str, secrets: Iterable[str]) -> TiCDCError:
    code, message = "", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        code = str(body.get("error_code") or "")
        message = str(body.get("error_msg") or "")
        # TiCDC prefixes the message with its code: "[CDC:ErrXxx]changefeed not exists, ..."
        if code and message.startswith(f"[{code}]"):
            message = message[len(code) + 2 :]
    if not message:
        message = response.text.strip()[:300] or response.reason_phrase
    return TiCDCError(code, scrub(f"{what}: {message}", secrets), response.status_code)


# --- the client -------------------------------------------------------------------------------------------


class TiCDCClient(HttpClient):
    """TiCDC OpenAPI v2, one method per endpoint. Use as a context manager (it holds a connection pool)."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: tuple[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        namespace: str = "default",
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.namespace = namespace
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self.http = httpx.Client(
            base_url=self.base_url,
            auth=auth,
            timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s),
            transport=transport,
        )

    # --- endpoints --------------------------------------------------------------------------------------

    def health(self) -> None:
        """Raises TiCDCError unless the server answers healthy."""
        self._request("GET", "/api/v2/health", idempotent=True)

    def status(self) -> ServerStatus:
        b = self._request("GET", "/api/v2/status", idempotent=True)
        return ServerStatus(
            version=str(b.get("version", "")), git_hash=str(b.get("git_hash", "")), id=str(b.get("id", "")),
            pid=int(b.get("pid") or 0), is_owner=bool(b.get("is_owner")), liveness=int(b.get("liveness") or 0),
        )  # fmt: skip

    def list_changefeeds(self, state: str | None = None) -> list[ChangefeedSummary]:
        """Changefeeds in the namespace; `state="all"` includes finished/removed ones."""
        params = {"state": state} if state else {}
        b = self._request("GET", "/api/v2/changefeeds", idempotent=True, params=params)
        return [
            ChangefeedSummary(
                id=str(i.get("id", "")), namespace=str(i.get("namespace", "")), state=str(i.get("state", "")),
                checkpoint_ts=int(i.get("checkpoint_tso") or 0), checkpoint_time=str(i.get("checkpoint_time") or ""),
                error=_running_error(i.get("error")),
            )  # fmt: skip
            for i in b.get("items") or []
        ]

    def get(self, changefeed_id: str) -> ChangefeedInfo:
        return parse_changefeed_info(self._request("GET", self._path(changefeed_id), idempotent=True))

    def get_status(self, changefeed_id: str) -> ChangefeedStatus:
        b = self._request("GET", self._path(changefeed_id, "status"), idempotent=True)
        return ChangefeedStatus(
            state=str(b.get("state", "")), checkpoint_ts=int(b.get("checkpoint_ts") or 0),
            resolved_ts=int(b.get("resolved_ts") or 0), last_error=_running_error(b.get("last_error")),
            last_warning=_running_error(b.get("last_warning")),
        )  # fmt: skip

    def create(
        self, changefeed_id: str, sink_uri: str, replica_config: Mapping[str, Any], *, start_ts: int = 0
    ) -> ChangefeedInfo:
        body: dict[str, Any] = {
            "changefeed_id": changefeed_id,
            "namespace": self.namespace,
            "sink_uri": sink_uri,
            "replica_config": dict(replica_config),
        }
        if start_ts:
            body["start_ts"] = start_ts
        secrets = request_secrets(sink_uri, replica_config)
        b = self._request("POST", "/api/v2/changefeeds", idempotent=False, json=body, secrets=secrets)
        return parse_changefeed_info(b)

    def update(self, changefeed_id: str, sink_uri: str, replica_config: Mapping[str, Any]) -> ChangefeedInfo:
        """Replace the whole config; TiCDC accepts this only on a stopped or failed changefeed."""
        body = {"sink_uri": sink_uri, "replica_config": dict(replica_config)}
        secrets = request_secrets(sink_uri, replica_config)
        answer = self._request("PUT", self._path(changefeed_id), idempotent=False, json=body, secrets=secrets)
        return parse_changefeed_info(answer)

    def pause(self, changefeed_id: str) -> None:
        self._request("POST", self._path(changefeed_id, "pause"), idempotent=True)

    def resume(self, changefeed_id: str) -> None:
        # TiCDC binds a JSON body here: an empty body is a 400, `{}` means "resume from the checkpoint".
        self._request("POST", self._path(changefeed_id, "resume"), idempotent=True, json={})

    def delete(self, changefeed_id: str) -> None:
        self._request("DELETE", self._path(changefeed_id), idempotent=True)

    # --- plumbing ---------------------------------------------------------------------------------------

    def _path(self, changefeed_id: str, *rest: str) -> str:
        return "/".join(["/api/v2/changefeeds", quote(changefeed_id, safe=""), *rest])

    def _request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
    ) -> dict[str, Any]:
        secrets = list(secrets)
        what = f"{method} {path}"
        params = {"namespace": self.namespace, **(params or {})}
        connect_errors = (httpx.ConnectError, httpx.ConnectTimeout)  # never reached TiCDC: safe to send again

        def on_retry(reason: str, attempt: int, delay: float) -> None:
            # Only the status or the exception's type: the request body (secrets) is never logged.
            _log.warning("TiCDC %s failed (%s), retry %d/%d in %.1fs", what, reason, attempt, self.max_retries, delay)

        try:
            response = http_request(
                self.http, method, path, json=json, params=params, sleep=self._sleep,
                policy=RetryPolicy(self.max_retries, self.backoff_s, _MAX_BACKOFF_S),
                retry_status=lambda r: idempotent and r.status_code >= 500,
                retry_transport=lambda e: idempotent or isinstance(e, connect_errors),
                on_retry=on_retry,
            )
        except connect_errors as exc:
            raise TiCDCError("", f"{what}: cannot connect to {self.base_url} ({type(exc).__name__}); "
                             "is TiCDC running and TICDC_URL right?", 0) from None  # fmt: skip
        except httpx.TransportError as exc:
            raise TiCDCError("", f"{what}: {type(exc).__name__} talking to {self.base_url}", 0) from None
        if response.status_code < 400:
            return _json_object(response)
        raise _error(response, what, secrets)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    if not response.content.strip():
        return {}
    try:
        body = response.json()
    except ValueError:
        what = f"{response.request.method} {response.request.url.path}"
        message = f"{what}: the answer is not JSON; is TICDC_URL a TiCDC server?"
        raise TiCDCError("", message, response.status_code) from None
    return body if isinstance(body, dict) else {"value": body}


# --- the resource -----------------------------------------------------------------------------------------


class TiCDCResource(dg.ConfigurableResource):
    """TiCDC's OpenAPI v2 server; optional basic auth from TICDC_USER / TICDC_PASSWORD."""

    url: str = "http://127.0.0.1:8300"
    user: str | None = None
    password: str | None = Field(default=None, description="from TICDC_PASSWORD")
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    max_retries: int = 3
    backoff_s: float = 0.5

    def get_client(self) -> TiCDCClient:
        """A client; close it (or use `with`) when done."""
        auth = (self.user, self.password or "") if self.user else None
        return TiCDCClient(
            self.url,
            auth=auth,
            connect_timeout_s=self.connect_timeout_s,
            request_timeout_s=self.request_timeout_s,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
        )


def ticdc_resource(env: Mapping[str, str] | None = None) -> TiCDCResource:
    from tidb_pipeline.resources.env import secret, setting

    return TiCDCResource(
        url=setting("TICDC_URL", "http://127.0.0.1:8300", env),
        user=setting("TICDC_USER", "", env) or None,
        password=secret("TICDC_PASSWORD", env),
    )
