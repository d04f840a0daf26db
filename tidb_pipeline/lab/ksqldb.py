"""A stand-in for ksqlDB's REST API, in process, as an `httpx.MockTransport`. It is not ksqlDB.

No ksqlDB runs here, so the `ksqldb` client and the stream assets are tested against this: it follows the
request/response shapes of spec/confluent.md ("ksqlDB REST") and implements only the statements the
project issues, over an in-memory metastore:

- `POST /ksql` `{"ksql", "streamsProperties"}` → a JSON array, one entity per statement:
  `CREATE [OR REPLACE] STREAM [IF NOT EXISTS] s WITH (KAFKA_TOPIC=..., VALUE_FORMAT=..., KEY_FORMAT=...)` and
  `DROP STREAM [IF EXISTS] s` → `currentStatus` (`commandStatus` {status, message}, `commandSequenceNumber`);
  `DESCRIBE s` → `sourceDescription`; `LIST|SHOW STREAMS` → `streams`; `TERMINATE q` → `currentStatus`.
  Statements run in order; the first failure answers 400 `{"@type": "statement_error", "error_code": 40001,
  "message", "statementText", "entities"}` with the entities of the statements before it (which did run).
  The body is checked strictly (an unknown key such as `streamProperties` is a 400), stricter than needed,
  so a misspelt key fails a test instead of being ignored.
- Columns are inferred when a CREATE runs, from the topic's latest `<topic>-value` / `<topic>-key` subjects in
  the schema registry at `registry_url` (the lab's): value record fields become columns with upper-cased
  names, the key becomes one `ROWKEY` column (a STRUCT for a record key — ksqlDB does not unwrap inferred
  keys). A stream keeps those columns: later subject versions are not followed until CREATE OR REPLACE.
- `DROP STREAM` fails while a query reads it (`add_query` registers one; `TERMINATE` removes it).
- `GET /info` → `{"KsqlServerInfo": {...}}`; `GET /healthcheck` → `{"isHealthy", "details"}`.
- HTTP Basic with one key when `api_key` is set; otherwise 401 `generic_error` 40100.
- `fail_next(n)` makes the next n requests answer 503 `generic_error` (to exercise retries).
Messages imitate ksqlDB's; the Avro → SQL type mapping follows Kafka Connect's AvroData as ksqlDB uses it
(inferred, not read from ksqlDB's source).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from tidb_pipeline.replication.ksqldb import split_statements

STATEMENT_ERROR = 40001
BAD_REQUEST = 40000
UNAUTHORIZED = 40100
UNAVAILABLE = 50300
BODY_KEYS = frozenset({"ksql", "streamsProperties", "commandSequenceNumber", "sessionVariables"})
VERSION = "stand-in-0.29"

_TOKEN = re.compile(r"""\s*(?:(?P<bq>`(?:[^`]|``)*`)|(?P<dq>"(?:[^"]|"")*")|(?P<str>'(?:[^']|'')*')"""
                    r"""|(?P<num>\d+)|(?P<word>[A-Za-z_][A-Za-z0-9_@$]*)|(?P<punct>[(),=;]))""")


class StatementError(Exception):
    """A statement ksqlDB would reject (400, `statement_error` 40001)."""


# --- Avro → ksqlDB SQL types (SchemaInfo: type, fields, memberSchema, parameters) ---------------------

_PRIMITIVES = {"boolean": "BOOLEAN", "int": "INTEGER", "long": "BIGINT", "float": "DOUBLE", "double": "DOUBLE",
               "string": "STRING", "bytes": "BYTES", "fixed": "BYTES", "enum": "STRING"}
_LOGICAL = {"date": "DATE", "time-millis": "TIME", "timestamp-millis": "TIMESTAMP"}


def _info(kind: str, *, fields: Any = None, member: Any = None, parameters: Any = None) -> dict[str, Any]:
    info: dict[str, Any] = {"type": kind, "fields": fields, "memberSchema": member}
    if parameters is not None:
        info["parameters"] = parameters
    return info


def schema_info(avro: Any) -> dict[str, Any]:
    """ksqlDB's SchemaInfo for an Avro schema (nullable unions collapse to their type)."""
    if isinstance(avro, list):
        members = [m for m in avro if m != "null"]
        if len(members) != 1:
            raise StatementError(f"the stand-in does not infer unions of several types: {json.dumps(avro)}")
        return schema_info(members[0])
    if isinstance(avro, str):
        if avro not in _PRIMITIVES:
            raise StatementError(f"the stand-in does not infer named type references ({avro!r})")
        return _info(_PRIMITIVES[avro])
    kind, logical = avro.get("type"), avro.get("logicalType")
    if logical == "decimal" and kind in ("bytes", "fixed"):
        return _info("DECIMAL", parameters={"precision": avro["precision"], "scale": avro.get("scale", 0)})
    if logical in _LOGICAL:
        return _info(_LOGICAL[logical])
    if kind == "record":
        return _info("STRUCT", fields=[{"name": f["name"].upper(), "schema": schema_info(f["type"])}
                                       for f in avro.get("fields", [])])
    if kind == "array":
        return _info("ARRAY", member=schema_info(avro["items"]))
    if kind == "map":
        return _info("MAP", member=schema_info(avro["values"]))
    return schema_info(kind)


# --- statement parsing ---------------------------------------------------------------------------------

@dataclass
class _Tokens:
    items: list[tuple[str, str]]
    pos: int = 0

    @classmethod
    def of(cls, text: str) -> _Tokens:
        items, pos = [], 0
        text = text.rstrip().rstrip(";")
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m:
                raise StatementError(f"line 1:{pos + 1}: Syntax error at or near '{text[pos:pos + 10].strip()}'")
            kind = m.lastgroup or ""
            items.append((kind, m.group(kind)))
            pos = m.end()
        return cls(items)

    def peek_word(self, *words: str) -> bool:
        if self.pos + len(words) > len(self.items):
            return False
        return all(self.items[self.pos + i][0] == "word" and self.items[self.pos + i][1].upper() == w
                   for i, w in enumerate(words))

    def accept(self, *words: str) -> bool:
        if self.peek_word(*words):
            self.pos += len(words)
            return True
        return False

    def expect(self, *words: str) -> None:
        if not self.accept(*words):
            raise StatementError(f"Syntax error: expected {' '.join(words)} at {self._near()}")

    def punct(self, char: str) -> None:
        if self.pos < len(self.items) and self.items[self.pos] == ("punct", char):
            self.pos += 1
            return
        raise StatementError(f"Syntax error: expected '{char}' at {self._near()}")

    def identifier(self) -> str:
        """Unquoted identifiers are upper-cased; quoted ones keep their case (as in ksqlDB)."""
        if self.pos >= len(self.items):
            raise StatementError("Syntax error: expected an identifier at end of statement")
        kind, text = self.items[self.pos]
        self.pos += 1
        if kind == "word":
            return text.upper()
        if kind in ("bq", "dq"):
            q = text[0]
            return text[1:-1].replace(q + q, q)
        raise StatementError(f"Syntax error: expected an identifier, got {text}")

    def literal(self) -> str:
        kind, text = self.items[self.pos] if self.pos < len(self.items) else ("", "")
        self.pos += 1
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind in ("num", "word"):
            return text
        raise StatementError(f"Syntax error: expected a literal, got {text or 'end of statement'}")

    def done(self) -> None:
        if self.pos != len(self.items):
            raise StatementError(f"Syntax error: unexpected {self._near()}")

    def _near(self) -> str:
        return repr(self.items[self.pos][1]) if self.pos < len(self.items) else "end of statement"


# --- the stand-in ------------------------------------------------------------------------------------

@dataclass
class _Stream:
    name: str
    topic: str
    key_format: str
    value_format: str
    fields: list[dict[str, Any]]
    statement: str


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    body: Any
    authorization: str | None


@dataclass
class KsqlDbStandIn:
    """The stand-in's state; `transport()` serves it to an httpx client."""

    registry_url: str
    api_key: str | None = None
    api_secret: str | None = None
    url: str = "https://pksqlc-standin.us-west-2.aws.confluent.cloud:443"
    streams: dict[str, _Stream] = field(default_factory=dict)
    queries: dict[str, str] = field(default_factory=dict)  # query id → the stream it reads
    requests: list[Recorded] = field(default_factory=list)
    command_sequence: int = 0
    _failures: list[int] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def fail_next(self, times: int = 1, status: int = 503) -> None:
        self._failures.extend([status] * times)

    def add_query(self, query_id: str, reads: str) -> None:
        """Pretend a persistent query reads `reads` (so DROP STREAM fails until it is terminated)."""
        self.queries[query_id] = reads

    # --- HTTP ----------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        try:
            body = json.loads(request.content) if request.content else None
        except ValueError:
            body = request.content.decode(errors="replace")
        self.requests.append(Recorded(request.method, request.url.path, body, request.headers.get("Authorization")))
        if self._failures:
            status = self._failures.pop(0)
            return _generic(status, UNAVAILABLE, "The service is temporarily unavailable")
        if not self._authorized(request):
            return _generic(401, UNAUTHORIZED, "Unauthorized")
        match (request.method, request.url.path.rstrip("/")):
            case ("GET", "/info"):
                return httpx.Response(200, json={"KsqlServerInfo": {
                    "version": VERSION, "kafkaClusterId": "lkc-standin", "ksqlServiceId": "pksqlc-standin",
                    "serverStatus": "RUNNING"}})
            case ("GET", "/healthcheck"):
                return httpx.Response(200, json={"isHealthy": True, "details": {
                    "metastore": {"isHealthy": True}, "kafka": {"isHealthy": True},
                    "commandRunner": {"isHealthy": True}}})
            case ("POST", "/ksql"):
                return self._ksql(body)
        return _generic(404, 40400, f"HTTP {request.method} {request.url.path} not found")

    def _authorized(self, request: httpx.Request) -> bool:
        if not self.api_key:
            return True
        expected = base64.b64encode(f"{self.api_key}:{self.api_secret or ''}".encode()).decode()
        return request.headers.get("Authorization") == f"Basic {expected}"

    def _ksql(self, body: Any) -> httpx.Response:
        if not isinstance(body, dict) or not isinstance(body.get("ksql"), str):
            return _generic(400, BAD_REQUEST, 'request body must be a JSON object with a "ksql" string')
        unknown = sorted(set(body) - BODY_KEYS)
        if unknown:
            return _generic(400, BAD_REQUEST, f"Unrecognized field(s) {', '.join(unknown)} "
                                              f"(known: {', '.join(sorted(BODY_KEYS))})")
        if not isinstance(body.get("streamsProperties", {}), dict):
            return _generic(400, BAD_REQUEST, '"streamsProperties" must be a JSON object')
        entities: list[dict[str, Any]] = []
        for statement in split_statements(body["ksql"]):
            try:
                entities.append(self._run(statement))
            except StatementError as exc:
                return httpx.Response(400, json={"@type": "statement_error", "error_code": STATEMENT_ERROR,
                                                 "message": str(exc), "statementText": statement,
                                                 "entities": entities})
        return httpx.Response(200, json=entities)

    # --- statements ----------------------------------------------------------------------------
    def _run(self, statement: str) -> dict[str, Any]:
        t = _Tokens.of(statement)
        if t.accept("CREATE"):
            replace = t.accept("OR", "REPLACE")
            t.expect("STREAM")
            if_not_exists = t.accept("IF", "NOT", "EXISTS")
            name = t.identifier()
            if t.pos < len(t.items) and t.items[t.pos] == ("punct", "("):
                raise StatementError("the stand-in does not support explicit column lists; omit them to infer")
            t.expect("WITH")
            props = self._properties(t)
            t.done()
            return self._create(statement, name, props, replace=replace, if_not_exists=if_not_exists)
        if t.accept("DROP", "STREAM"):
            if_exists = t.accept("IF", "EXISTS")
            name = t.identifier()
            delete_topic = t.accept("DELETE", "TOPIC")
            t.done()
            if delete_topic:
                raise StatementError("the stand-in does not delete topics; drop without DELETE TOPIC")
            return self._drop(statement, name, if_exists=if_exists)
        if t.accept("DESCRIBE"):
            name = t.identifier()
            t.accept("EXTENDED")
            t.done()
            return self._describe(statement, name)
        if t.accept("LIST", "STREAMS") or t.accept("SHOW", "STREAMS"):
            t.accept("EXTENDED")
            t.done()
            return {"@type": "streams", "statementText": statement, "warnings": [], "streams": [
                {"type": "STREAM", "name": s.name, "topic": s.topic, "keyFormat": s.key_format,
                 "valueFormat": s.value_format, "isWindowed": False}
                for s in sorted(self.streams.values(), key=lambda s: s.name)]}
        if t.accept("TERMINATE"):
            query_id = t.identifier()
            t.done()
            if self.queries.pop(query_id, None) is None:
                raise StatementError(f"Unknown queryId: {query_id}")
            return self._status(statement, f"terminate/{query_id}/execute", "Query terminated.")
        raise StatementError(f"the stand-in does not support this statement: {' '.join(statement.split())[:80]}")

    @staticmethod
    def _properties(t: _Tokens) -> dict[str, str]:
        t.punct("(")
        props: dict[str, str] = {}
        while True:
            key = t.identifier().upper()
            t.punct("=")
            props[key] = t.literal()
            if t.pos < len(t.items) and t.items[t.pos] == ("punct", ","):
                t.pos += 1
                continue
            t.punct(")")
            return props

    def _create(self, statement: str, name: str, props: dict[str, str], *, replace: bool,
                if_not_exists: bool) -> dict[str, Any]:
        topic = props.get("KAFKA_TOPIC")
        if not topic:
            raise StatementError('Missing required property "KAFKA_TOPIC" which has no default value.')
        value_format = (props.get("VALUE_FORMAT") or props.get("FORMAT") or "").upper()
        key_format = (props.get("KEY_FORMAT") or props.get("FORMAT") or "KAFKA").upper()
        if not value_format:
            raise StatementError('Missing required property "VALUE_FORMAT" which has no default value.')
        if value_format != "AVRO" or key_format != "AVRO":
            raise StatementError("the stand-in infers columns for KEY_FORMAT='AVRO', VALUE_FORMAT='AVRO' only")
        existing = self.streams.get(name)
        if existing is not None and not replace:
            if if_not_exists:
                return self._status(statement, f"stream/`{name}`/create", "Stream already exists.")
            raise StatementError(f"Cannot add stream '{name}': A stream with the same name already exists")
        if existing is not None and existing.topic != topic:
            raise StatementError(f"Cannot upgrade data source: DataSource '{name}' has topic = {existing.topic} "
                                 f"which is not upgradeable to topic = {topic}")
        value = self._latest(f"{topic}-value", topic, "values")
        key = self._latest(f"{topic}-key", topic, "keys")
        fields = [{"name": "ROWKEY", "schema": schema_info(key), "type": "KEY"}]
        if isinstance(value, dict) and value.get("type") == "record":
            fields += [{"name": f["name"].upper(), "schema": schema_info(f["type"])} for f in value["fields"]]
        else:
            fields.append({"name": "ROWVAL", "schema": schema_info(value)})
        self.streams[name] = _Stream(name, topic, key_format, value_format, fields, statement)
        return self._status(statement, f"stream/`{name}`/create", "Stream created")

    def _latest(self, subject: str, topic: str, what: str) -> Any:
        response = httpx.get(f"{self.registry_url.rstrip('/')}/subjects/{quote(subject, safe='')}/versions/latest",
                             timeout=10)
        if response.status_code == 404:
            raise StatementError(f"Schema for message {what} on topic '{topic}' does not exist in the Schema "
                                 f"Registry.Subject: {subject}")
        response.raise_for_status()
        return json.loads(response.json()["schema"])

    def _drop(self, statement: str, name: str, *, if_exists: bool) -> dict[str, Any]:
        stream = self.streams.get(name)
        if stream is None:
            if if_exists:
                return self._status(statement, f"stream/`{name}`/drop", f"Source `{name}` does not exist.")
            raise StatementError(f"Stream {name} does not exist.")
        readers = sorted(q for q, src in self.queries.items() if src == name)
        if readers:
            raise StatementError(f"Cannot drop {name}.\nThe following queries read from this source: "
                                 f"[{', '.join(readers)}].\nThe following queries write into this source: [].\n"
                                 "You need to terminate them before dropping " + name + ".")
        del self.streams[name]
        return self._status(statement, f"stream/`{name}`/drop", f"Source `{name}` (topic: {stream.topic}) was dropped.")

    def _describe(self, statement: str, name: str) -> dict[str, Any]:
        stream = self.streams.get(name)
        if stream is None:
            raise StatementError(f"Could not find STREAM/TABLE '{name}' in the Metastore")
        return {"@type": "sourceDescription", "statementText": statement, "warnings": [], "sourceDescription": {
            "name": stream.name, "windowType": None,
            "readQueries": [{"id": q} for q, src in sorted(self.queries.items()) if src == name],
            "writeQueries": [], "fields": stream.fields, "type": "STREAM", "timestamp": "", "statistics": "",
            "errorStats": "", "extended": False, "keyFormat": stream.key_format, "valueFormat": stream.value_format,
            "topic": stream.topic, "partitions": 0, "replication": 0, "statement": stream.statement,
            "queryOffsetSummaries": [], "sourceConstraints": []}}

    def _status(self, statement: str, command_id: str, message: str) -> dict[str, Any]:
        self.command_sequence += 1
        return {"@type": "currentStatus", "statementText": statement, "commandId": command_id,
                "commandStatus": {"status": "SUCCESS", "message": message, "queryId": None},
                "commandSequenceNumber": self.command_sequence, "warnings": []}


def _generic(status: int, code: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"@type": "generic_error", "error_code": code, "message": message})
