"""The `ksqldb` resource: a small client for ksqlDB's REST API (spec/confluent.md, "ksqlDB REST").

- `POST /ksql` takes `{"ksql": "<statements;>", "streamsProperties": {...}}` and answers a JSON array with one
  entity per statement. A failed statement answers 4xx/5xx with `{"@type": "statement_error" |
  "generic_error", "error_code", "message", ...}`; that becomes `KsqlDbError`. A CREATE/DROP entity whose
  `commandStatus.status` is ERROR is raised the same way by `execute`.
- 5xx and 429 answers and connection errors are retried a bounded number of times with backoff
  (`resources.http.request`). Retrying a POST can
  run a CREATE twice; callers re-describe after an "already exists" error (the stream asset does).
- Confluent Cloud ksqlDB uses HTTP Basic with a ksqlDB-cluster API key. Error texts come from the server and
  never include the credentials; the URL in messages is the configured one, which carries no userinfo.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import httpx
from pydantic import Field

from tidb_pipeline.resources.http import HttpClient, RetryPolicy, basic_auth_client
from tidb_pipeline.resources.http import request as http_request

KSQL_CONTENT_TYPE = "application/vnd.ksql.v1+json"
_RETRY_STATUSES = frozenset({500, 502, 503, 504})

_HINTS = {
    401: " (check KSQLDB_API_KEY/KSQLDB_API_SECRET: Confluent Cloud needs a ksqlDB-cluster API key)",
    403: " (the API key lacks access to this ksqlDB cluster)",
}


def quote_identifier(name: str) -> str:
    """A back-quoted ksqlDB identifier (case kept as given; a back-quote inside is doubled)."""
    return "`" + name.replace("`", "``") + "`"


def describe_statement(stream: str) -> str:
    return f"DESCRIBE {quote_identifier(stream)};"


@dataclass(frozen=True)
class StreamState:
    """What DESCRIBE says about an existing stream (only what the plan needs)."""

    topic: str
    key_format: str
    value_format: str
    value_columns: tuple[str, ...]


class KsqlDbError(RuntimeError):
    """A ksqlDB request or statement failed: `error_code` is ksqlDB's own (e.g. 40001), `status` the HTTP status."""

    def __init__(self, error_code: int | None, message: str, *, status: int | None = None,
                 statement: str = "", what: str = "") -> None:
        self.error_code = error_code
        self.message = message
        self.status = status
        self.statement = statement
        parts = [f"HTTP {status}" if status is not None else "", f"error {error_code}" if error_code else ""]
        where = ", ".join(p for p in parts if p)
        super().__init__(f"ksqlDB {what or 'request'} failed{f' ({where})' if where else ''}: {message}"
                         f"{_HINTS.get(status or 0, '')}")


def parse_error(response: httpx.Response) -> tuple[int | None, str, str]:
    """(error_code, message, statementText) of a `statement_error` / `generic_error` body, or of any other body."""
    try:
        body = response.json()
    except ValueError:
        return None, response.text.strip()[:300] or response.reason_phrase, ""
    if isinstance(body, dict) and ("error_code" in body or "message" in body):
        code = body.get("error_code")
        return (int(code) if isinstance(code, int) else None, str(body.get("message") or "").strip(),
                str(body.get("statementText") or ""))
    return None, str(body)[:300], ""


@dataclass(frozen=True)
class ServerInfo:
    version: str
    kafka_cluster_id: str
    ksql_service_id: str
    server_status: str


@dataclass(frozen=True)
class Health:
    healthy: bool
    details: Mapping[str, bool]


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as ksqlDB prints it, e.g. BIGINT, DECIMAL(10, 2), STRUCT<I_ID INTEGER>
    key: bool = False


@dataclass(frozen=True)
class StreamInfo:
    """A stream as DESCRIBE reports it."""

    name: str
    topic: str
    key_format: str
    value_format: str
    columns: tuple[Column, ...]
    statement: str = ""
    read_queries: tuple[str, ...] = ()
    write_queries: tuple[str, ...] = ()

    @property
    def key_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.key)

    @property
    def value_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if not c.key)

    def state(self) -> StreamState:
        return StreamState(topic=self.topic, key_format=self.key_format, value_format=self.value_format,
                           value_columns=tuple(c.name for c in self.value_columns))


def format_type(schema: Mapping[str, Any]) -> str:
    """ksqlDB's SchemaInfo (`type`, `fields`, `memberSchema`, `parameters`) as SQL type text."""
    kind = str(schema.get("type", "")).upper()
    if kind == "STRUCT":
        inner = ", ".join(f"{f['name']} {format_type(f['schema'])}" for f in schema.get("fields") or [])
        return f"STRUCT<{inner}>"
    if kind == "ARRAY":
        return f"ARRAY<{format_type(schema.get('memberSchema') or {})}>"
    if kind == "MAP":
        return f"MAP<STRING, {format_type(schema.get('memberSchema') or {})}>"
    if kind == "DECIMAL":
        params = schema.get("parameters") or {}
        return f"DECIMAL({params.get('precision')}, {params.get('scale')})"
    return kind


def parse_source_description(body: Mapping[str, Any]) -> StreamInfo:
    """StreamInfo from a `sourceDescription` entity."""
    desc = body.get("sourceDescription") or {}
    return StreamInfo(
        name=str(desc.get("name", "")),
        topic=str(desc.get("topic", "")),
        key_format=str(desc.get("keyFormat", "")),
        value_format=str(desc.get("valueFormat", "")),
        columns=tuple(Column(str(f["name"]), format_type(f.get("schema") or {}), f.get("type") == "KEY")
                      for f in desc.get("fields") or []),
        statement=str(desc.get("statement", "")),
        read_queries=tuple(_query_ids(desc.get("readQueries"))),
        write_queries=tuple(_query_ids(desc.get("writeQueries"))),
    )


def _query_ids(queries: Any) -> list[str]:
    return [str(q.get("id", q)) if isinstance(q, dict) else str(q) for q in queries or []]


@dataclass
class KsqlDbClient(HttpClient):
    """Plain client: one method per endpoint, bounded retries. Build it with `KsqlDbResource.get_client()`."""

    http: httpx.Client
    max_retries: int = 3
    backoff_s: float = 0.5
    max_retry_wait_s: float = 10.0
    sleep: Callable[[float], None] = field(default=time.sleep)

    def info(self) -> ServerInfo:
        info = self._request("GET", "/info", what="info").json().get("KsqlServerInfo") or {}
        return ServerInfo(version=str(info.get("version", "")), kafka_cluster_id=str(info.get("kafkaClusterId", "")),
                          ksql_service_id=str(info.get("ksqlServiceId", "")),
                          server_status=str(info.get("serverStatus", "")))

    def healthcheck(self) -> Health:
        """Health as reported; an unhealthy server answers 503 with the same body, which is an answer, not an error."""
        response = self._request("GET", "/healthcheck", what="healthcheck", ok_statuses={503})
        body = response.json()
        details = {str(k): bool(v.get("isHealthy")) for k, v in (body.get("details") or {}).items()
                   if isinstance(v, dict)}
        return Health(healthy=bool(body.get("isHealthy")), details=details)

    def ksql(self, statements: str | Sequence[str], streams_properties: Mapping[str, Any] | None = None, *,
             command_sequence_number: int | None = None) -> list[dict[str, Any]]:
        """Run statements; one entity per statement. `command_sequence_number` waits for an earlier command."""
        text = statements if isinstance(statements, str) else "\n".join(_terminated(s) for s in statements)
        body: dict[str, Any] = {"ksql": text, "streamsProperties": dict(streams_properties or {})}
        if command_sequence_number is not None:
            body["commandSequenceNumber"] = command_sequence_number
        entities = self._request("POST", "/ksql", json=body, what=f"statement {_short(text)!r}").json()
        if not isinstance(entities, list):
            raise KsqlDbError(None, f"expected a JSON array of entities, got {type(entities).__name__}",
                              statement=text, what=f"statement {_short(text)!r}")
        return entities

    def execute(self, statement: str, streams_properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run one CREATE/DROP-like statement; its `currentStatus` entity. A status of ERROR raises."""
        entities = self.ksql(statement, streams_properties)
        entity = entities[0] if entities else {}
        status = entity.get("commandStatus") or {}
        if str(status.get("status", "")).upper() == "ERROR":
            raise KsqlDbError(None, str(status.get("message", "")), statement=statement,
                              what=f"statement {_short(statement)!r}")
        return entity

    def list_streams(self) -> list[str]:
        entities = self.ksql("LIST STREAMS;")
        return sorted(str(s.get("name")) for e in entities for s in e.get("streams") or [])

    def describe_stream(self, name: str, *, command_sequence_number: int | None = None) -> StreamInfo | None:
        """The stream, or None if it does not exist (checked by listing, not by matching error texts)."""
        if name not in self.list_streams():
            return None
        entities = self.ksql(describe_statement(name), command_sequence_number=command_sequence_number)
        return parse_source_description(entities[0])

    def _request(self, method: str, path: str, *, what: str, json: Any = None,
                 ok_statuses: frozenset[int] | set[int] = frozenset()) -> httpx.Response:
        try:
            response = http_request(
                self.http, method, path, json=json, sleep=self.sleep,
                policy=RetryPolicy(self.max_retries, self.backoff_s, self.max_retry_wait_s),
                retry_status=lambda r: r.status_code in _RETRY_STATUSES and r.status_code not in ok_statuses,
            )
        except httpx.TransportError as exc:
            raise KsqlDbError(None, f"cannot reach {self.http.base_url} ({type(exc).__name__}) after "
                              f"{self.max_retries + 1} attempts; check KSQLDB_URL", what=what) from None
        if response.status_code < 400 or response.status_code in ok_statuses:
            return response
        code, message, statement = parse_error(response)
        raise KsqlDbError(code, message, status=response.status_code, statement=statement, what=what)


def _terminated(statement: str) -> str:
    statement = statement.strip()
    return statement if statement.endswith(";") else statement + ";"


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class KsqlDbResource(dg.ConfigurableResource):
    """ksqlDB's REST API (Confluent Cloud: the cluster's endpoint plus a ksqlDB-cluster API key)."""

    url: str = Field(default="http://127.0.0.1:8088",
                     description="e.g. https://pksqlc-xxxxx.us-west-2.aws.confluent.cloud:443")
    api_key: str | None = Field(default=None, description="Basic auth user (a ksqlDB-cluster API key)")
    api_secret: str | None = Field(default=None, description="Basic auth password")
    timeout_s: float = 30.0
    max_retries: int = 3

    def get_client(self, *, transport: httpx.BaseTransport | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> KsqlDbClient:
        http = basic_auth_client(self.url, api_key=self.api_key, api_secret=self.api_secret, timeout_s=self.timeout_s,
                                 accept=KSQL_CONTENT_TYPE, transport=transport)
        return KsqlDbClient(http=http, max_retries=self.max_retries, sleep=sleep)


def ksqldb_resource(env: Mapping[str, str] | None = None) -> KsqlDbResource:
    """From KSQLDB_URL and the secrets KSQLDB_API_KEY / KSQLDB_API_SECRET (`dg.EnvVar`s, resolved in runs)."""
    from tidb_pipeline.resources.env import secret, setting

    return KsqlDbResource(
        url=setting("KSQLDB_URL", "http://127.0.0.1:8088", env),
        api_key=secret("KSQLDB_API_KEY", env),
        api_secret=secret("KSQLDB_API_SECRET", env),
    )
