"""The lab's stand-in for Confluent Schema Registry.

Serves the REST subset in spec/confluent.md, enough for TiCDC (which probes `GET /`), the lab change feed
and confluent-kafka's `SchemaRegistryClient` / `AvroSerializer` / `AvroDeserializer`:

- schema ids are global: the same schema text (after whitespace canonicalisation) gets the same id in
  every subject, as in Confluent;
- registration checks Avro compatibility against the subject's live versions (BACKWARD by default;
  NONE, FORWARD, FULL and the *_TRANSITIVE variants) with the reader/writer resolution rules of the Avro
  specification, the way Avro's `SchemaCompatibility` (which Confluent uses) does (`replication.avro_compat`,
  shared with the pipeline's `registry_compatibility` check), and refuses with Confluent's 409 body;
- `DELETE /subjects/{s}` soft-deletes (versions keep their numbers; a later registration continues after
  them), `?permanent=true` then removes them, as in Confluent;
- `GET /associations/...` answers 404, so confluent-kafka 2.16's default subject name strategy falls
  back to `{topic}-value`.

State lives in one SQLite database (WAL) under `--data`; this process is its only user.

    python -m tidb_pipeline.lab.registry --port 18081 --data .lab/registry
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from tidb_pipeline.lab.service import Service, python_command
from tidb_pipeline.replication import avro_compat
from tidb_pipeline.replication.avro_compat import (  # noqa: F401 - re-exported for the lab's tests
    COMPATIBILITY_LEVELS,
    DEFAULT_COMPATIBILITY,
    AvroSchema,
    InvalidAvroSchema,
    canonical_text,
    compatibility_problems,
    reader_incompatibilities,
)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPTED_BODY_TYPES = (CONTENT_TYPE, "application/vnd.schemaregistry+json", "application/json")

# Confluent's error codes (io.confluent.kafka.schemaregistry.rest.exceptions.Errors).
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
SUBJECT_SOFT_DELETED = 40404
SUBJECT_NOT_SOFT_DELETED = 40405
SUBJECT_COMPATIBILITY_NOT_CONFIGURED = 40408
INVALID_SCHEMA = 42201
INVALID_VERSION = 42202
INVALID_COMPATIBILITY_LEVEL = 42203
# Incompatible schema: HTTP 409 with error_code 40901 since confluentinc/schema-registry ef43652bfec (2025-12);
# earlier releases sent error_code 409. Clients must go by the HTTP status.
INCOMPATIBLE_SCHEMA = 40901
# Avro's SchemaIncompatibilityType for each kind of problem `avro_compat` reports.
_ERROR_TYPES = (
    ("has no default", "READER_FIELD_MISSING_DEFAULT_VALUE"),
    ("cannot read writer type", "TYPE_MISMATCH"),
    ("has no branch", "MISSING_UNION_BRANCH"),
    ("lacks writer symbols", "MISSING_ENUM_SYMBOLS"),
    ("fixed size", "FIXED_SIZE_MISMATCH"),
    ("does not match writer name", "NAME_MISMATCH"),
)


class RegistryError(Exception):
    """An API error: HTTP status plus Confluent's `error_code`."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def parse_avro(schema_text: str) -> AvroSchema:
    """Parse and validate (`replication.avro_compat`); raise RegistryError 422/42201 naming the problem."""
    try:
        return avro_compat.parse_avro(schema_text)
    except InvalidAvroSchema as exc:
        raise RegistryError(422, INVALID_SCHEMA, str(exc)) from None


def incompatible_message(subject: str, level: str, problems: Sequence[str], latest: Version) -> str:
    """Confluent's 409 message (SubjectVersionsResource, SchemaValidatorBuilder, AbstractSchemaRegistry):
    `..., details: [{errorType:'...', description:'...', additionalInfo:'...'}, {oldSchemaVersion: n},
    {oldSchema: '...'}, {validateFields: 'false', compatibility: '...'}]`. The descriptions are the lab's words."""
    details = []
    for problem in problems:
        error_type = next((t for marker, t in _ERROR_TYPES if marker in problem), "TYPE_MISMATCH")
        where = problem.split(" ", 1)[-1].split(":", 1)[0]
        details.append(f"{{errorType:'{error_type}', description:'{problem}', additionalInfo:'{where}'}}")
    details += [f"{{oldSchemaVersion: {latest.version}}}", f"{{oldSchema: '{latest.schema}'}}",
                f"{{validateFields: 'false', compatibility: '{level}'}}"]
    return (f'Schema being registered is incompatible with an earlier schema for subject "{subject}", '
            f"details: [{', '.join(details)}]")


# --- Storage ------------------------------------------------------------------------------------------

_DDL = """
CREATE TABLE IF NOT EXISTS schemas (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schema_type TEXT NOT NULL,
    schema TEXT NOT NULL,
    UNIQUE (schema_type, schema)
);
CREATE TABLE IF NOT EXISTS subject_versions (
    subject TEXT NOT NULL,
    version INTEGER NOT NULL,
    schema_id INTEGER NOT NULL REFERENCES schemas (id),
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, version)
);
CREATE TABLE IF NOT EXISTS config (
    scope TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL
);
"""

# Subjects are non-empty, so the empty string can stand for the global scope.
GLOBAL_SCOPE = ""


@dataclass(frozen=True)
class Version:
    subject: str
    version: int
    schema_id: int
    schema: str
    deleted: bool

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "version": self.version, "id": self.schema_id, "schema": self.schema}


class RegistryStore:
    """Subjects, versions, schemas and config in SQLite; one lock serialises every operation."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_DDL)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # reads used inside transactions
    @staticmethod
    def _versions(db: sqlite3.Connection, subject: str, *, deleted: bool) -> list[Version]:
        rows = db.execute(
            "SELECT v.version, v.schema_id, s.schema, v.deleted FROM subject_versions v"
            " JOIN schemas s ON s.id = v.schema_id WHERE v.subject = ? AND (? OR v.deleted = 0) ORDER BY v.version",
            (subject, deleted),
        ).fetchall()
        return [Version(subject, v, sid, text, bool(d)) for v, sid, text, d in rows]

    @staticmethod
    def _compatibility(db: sqlite3.Connection, subject: str | None) -> str | None:
        row = db.execute(
            "SELECT compatibility FROM config WHERE scope = ?", (GLOBAL_SCOPE if subject is None else subject,)
        ).fetchone()
        return row[0] if row else None

    def _effective_compatibility(self, db: sqlite3.Connection, subject: str) -> str:
        return self._compatibility(db, subject) or self._compatibility(db, None) or DEFAULT_COMPATIBILITY

    # operations
    def register(self, subject: str, schema: AvroSchema, schema_type: str) -> int:
        with self._tx(write=True) as db:
            live = self._versions(db, subject, deleted=False)
            for v in live:
                if v.schema == schema.canonical:
                    return v.schema_id
            level = self._effective_compatibility(db, subject)
            compared = live if level.endswith("_TRANSITIVE") else live[-1:]
            problems = compatibility_problems(level, schema, [parse_avro(v.schema) for v in compared])
            if problems:
                raise RegistryError(409, INCOMPATIBLE_SCHEMA, incompatible_message(subject, level, problems, compared[-1]))
            db.execute(
                "INSERT OR IGNORE INTO schemas (schema_type, schema) VALUES (?, ?)", (schema_type, schema.canonical)
            )
            (schema_id,) = db.execute(
                "SELECT id FROM schemas WHERE schema_type = ? AND schema = ?", (schema_type, schema.canonical)
            ).fetchone()
            # Soft-deleted versions keep their numbers, so the next one follows them (as in Confluent).
            (latest,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM subject_versions WHERE subject = ?", (subject,)
            ).fetchone()
            db.execute(
                "INSERT INTO subject_versions (subject, version, schema_id) VALUES (?, ?, ?)",
                (subject, latest + 1, schema_id),
            )
            return int(schema_id)

    def lookup(self, subject: str, schema: AvroSchema, *, deleted: bool) -> Version:
        with self._tx() as db:
            versions = self._versions(db, subject, deleted=deleted)
        if not versions:
            raise RegistryError(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
        for v in reversed(versions):
            if v.schema == schema.canonical:
                return v
        raise RegistryError(404, SCHEMA_NOT_FOUND, f"Schema not found in subject '{subject}'.")

    def schema_by_id(self, schema_id: int) -> str:
        with self._tx() as db:
            row = db.execute("SELECT schema FROM schemas WHERE id = ?", (schema_id,)).fetchone()
        if row is None:
            raise RegistryError(404, SCHEMA_NOT_FOUND, f"Schema {schema_id} not found")
        return str(row[0])

    def subjects(self, *, deleted: bool, deleted_only: bool, prefix: str) -> list[str]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT subject, MIN(deleted) FROM subject_versions GROUP BY subject ORDER BY subject"
            ).fetchall()
        # A subject is live while any version is live (MIN(deleted) = 0).
        chosen = [
            s
            for s, all_deleted in rows
            if s.startswith(prefix) and ((all_deleted == 1) if deleted_only else (deleted or all_deleted == 0))
        ]
        return chosen

    def versions(self, subject: str, *, deleted: bool) -> list[Version]:
        with self._tx() as db:
            versions = self._versions(db, subject, deleted=deleted)
        if not versions:
            raise RegistryError(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
        return versions

    def version(self, subject: str, version: str, *, deleted: bool) -> Version:
        versions = self.versions(subject, deleted=deleted)
        if version in ("latest", "-1"):
            live = [v for v in versions if not v.deleted] or versions
            return live[-1]
        try:
            number = int(version)
        except ValueError:
            number = 0
        if number < 1:
            raise RegistryError(
                422,
                INVALID_VERSION,
                f"The specified version '{version}' is not a valid version id. "
                "Allowed values are between [1, 2^31-1] and the string \"latest\"",
            )
        for v in versions:
            if v.version == number:
                return v
        raise RegistryError(404, VERSION_NOT_FOUND, f"Version {number} not found.")

    def delete_subject(self, subject: str, *, permanent: bool) -> list[int]:
        with self._tx(write=True) as db:
            versions = self._versions(db, subject, deleted=True)
            if not versions:
                raise RegistryError(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
            live = [v.version for v in versions if not v.deleted]
            if permanent:
                if live:
                    raise RegistryError(
                        404,
                        SUBJECT_NOT_SOFT_DELETED,
                        f"Subject '{subject}' was not deleted first before being permanently deleted",
                    )
                db.execute("DELETE FROM subject_versions WHERE subject = ?", (subject,))
                return [v.version for v in versions]
            if not live:
                raise RegistryError(
                    404,
                    SUBJECT_SOFT_DELETED,
                    f"Subject '{subject}' was soft deleted.Set permanent=true to delete permanently",
                )
            db.execute("UPDATE subject_versions SET deleted = 1 WHERE subject = ?", (subject,))
            db.execute("DELETE FROM config WHERE scope = ?", (subject,))
            return live

    def get_config(self, subject: str | None, *, default_to_global: bool) -> str:
        with self._tx() as db:
            if subject is None:
                return self._compatibility(db, None) or DEFAULT_COMPATIBILITY
            if default_to_global:
                return self._effective_compatibility(db, subject)
            level = self._compatibility(db, subject)
        if level is None:
            raise RegistryError(
                404,
                SUBJECT_COMPATIBILITY_NOT_CONFIGURED,
                f"Subject '{subject}' does not have subject-level compatibility configured",
            )
        return level

    def set_config(self, subject: str | None, level: str) -> None:
        with self._tx(write=True) as db:
            db.execute(
                "INSERT INTO config (scope, compatibility) VALUES (?, ?)"
                " ON CONFLICT (scope) DO UPDATE SET compatibility = excluded.compatibility",
                (GLOBAL_SCOPE if subject is None else subject, level),
            )

    def delete_config(self, subject: str) -> str:
        """Drop the subject's own level (it follows the global one again); the level it had, as Confluent answers."""
        with self._tx(write=True) as db:
            level = self._compatibility(db, subject)
            if level is None:
                raise RegistryError(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
            db.execute("DELETE FROM config WHERE scope = ?", (subject,))
            return level


# --- HTTP ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    parts: tuple[str, ...]
    query: dict[str, str]
    body: Any


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "false").lower() == "true"


def _schema_from_body(body: Any) -> tuple[AvroSchema, str]:
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryError(422, INVALID_SCHEMA, "Invalid schema: the body needs a 'schema' string")
    schema_type = body.get("schemaType") or "AVRO"
    if schema_type != "AVRO":
        raise RegistryError(
            422, INVALID_SCHEMA, f"Invalid schema: the lab registry supports only AVRO, not {schema_type}"
        )
    if body.get("references"):
        raise RegistryError(422, INVALID_SCHEMA, "Invalid schema: the lab registry does not support schema references")
    return parse_avro(body["schema"]), schema_type


def _compatibility_from_body(body: Any) -> str:
    level = body.get("compatibility") if isinstance(body, dict) else None
    if not isinstance(level, str) or level.upper() not in COMPATIBILITY_LEVELS:
        raise RegistryError(
            422,
            INVALID_COMPATIBILITY_LEVEL,
            f"Invalid compatibility level {level!r}; use one of {', '.join(COMPATIBILITY_LEVELS)}",
        )
    return level.upper()


def handle(store: RegistryStore, req: Request) -> Any:
    """Route one request to the store; returns the JSON body or raises RegistryError."""
    m, p, q = req.method, req.parts, req.query
    match p:
        case () if m == "GET":
            return {}
        case ("subjects",) if m == "GET":
            return store.subjects(
                deleted=_flag(q, "deleted"), deleted_only=_flag(q, "deleted_only"), prefix=q.get("subjectPrefix", "")
            )
        case ("subjects", subject) if m == "POST":
            schema, _ = _schema_from_body(req.body)
            return store.lookup(subject, schema, deleted=_flag(q, "deleted")).to_json()
        case ("subjects", subject) if m == "DELETE":
            return store.delete_subject(subject, permanent=_flag(q, "permanent"))
        case ("subjects", subject, "versions") if m == "GET":
            return [v.version for v in store.versions(subject, deleted=_flag(q, "deleted"))]
        case ("subjects", subject, "versions") if m == "POST":
            schema, schema_type = _schema_from_body(req.body)
            return {"id": store.register(subject, schema, schema_type)}
        case ("subjects", subject, "versions", version) if m == "GET":
            return store.version(subject, version, deleted=_flag(q, "deleted")).to_json()
        case ("schemas", "ids", schema_id) if m == "GET":
            if not schema_id.isdigit():
                raise RegistryError(404, SCHEMA_NOT_FOUND, f"Schema {schema_id} not found")
            return {"schema": store.schema_by_id(int(schema_id))}
        case ("config",) if m == "GET":
            return {"compatibilityLevel": store.get_config(None, default_to_global=True)}
        case ("config", subject) if m == "GET":
            return {"compatibilityLevel": store.get_config(subject, default_to_global=_flag(q, "defaultToGlobal"))}
        case ("config",) if m == "PUT":
            level = _compatibility_from_body(req.body)
            store.set_config(None, level)
            return {"compatibility": level}
        case ("config", subject) if m == "PUT":
            level = _compatibility_from_body(req.body)
            store.set_config(subject, level)
            return {"compatibility": level}
        case ("config", subject) if m == "DELETE":
            return {"compatibilityLevel": store.delete_config(subject)}
        case ("associations", "resources", _namespace, _resource):
            # No associations here: confluent-kafka's serializers treat 404 as "use the fallback strategy".
            raise RegistryError(404, 404, "HTTP 404 Not Found")
    raise RegistryError(404, 404, "HTTP 404 Not Found")


def _make_handler(store: RegistryStore) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the Python client reuses one connection
        # Headers and body go out in two writes; with Nagle on, keep-alive requests stall ~40 ms each.
        disable_nagle_algorithm = True
        server_version = "tidb-pipeline-lab-registry"

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self) -> None:
            url = urlsplit(self.path)
            # Split before unquoting so an encoded '/' inside a subject stays part of it.
            parts = tuple(unquote(s) for s in url.path.split("/") if s)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body: Any = None
                if raw:
                    ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                    if ctype and ctype not in ACCEPTED_BODY_TYPES:
                        raise RegistryError(415, 415, f"HTTP 415 Unsupported Media Type: {ctype}")
                    try:
                        body = json.loads(raw)
                    except ValueError as exc:
                        raise RegistryError(400, 400, f"Request body is not JSON: {exc}") from None
                result = handle(store, Request(self.command, parts, query, body))
                self._send(200, result)
            except RegistryError as exc:
                self._send(exc.status, {"error_code": exc.error_code, "message": exc.message})
            except Exception as exc:  # noqa: BLE001 - answer 500 like the real registry, keep serving
                self.log_error("internal error on %s %s: %r", self.command, url.path, exc)
                self._send(500, {"error_code": 50001, "message": f"Error in the backend data store: {exc}"})

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler


def serve(host: str, port: int, data: Path, *, on_ready: Callable[[], None] = lambda: None) -> None:
    """Run until SIGTERM/SIGINT, then close the database cleanly."""
    data.mkdir(parents=True, exist_ok=True)
    store = RegistryStore(data / "registry.sqlite")
    server = ThreadingHTTPServer((host, port), _make_handler(store))
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever(), which runs in this very thread: call it from another.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"lab schema registry listening on http://{host}:{port}, data in {data}", flush=True)
    on_ready()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        store.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The lab's Schema Registry stand-in")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder for the SQLite database")
    parser.add_argument("--host", default="127.0.0.1")
    # The lab appends a marker argument (--tidb-pipeline-lab=registry); ignore it and anything else.
    args, _ = parser.parse_known_args(argv)
    serve(args.host, args.port, args.data)


# --- Lab service ----------------------------------------------------------------------------------------


class RegistryService(Service):
    """The registry as a lab part."""

    name = "registry"
    port_names = ("registry",)
    ready_timeout = 30.0

    def command(self) -> list[str]:
        return python_command(
            "tidb_pipeline.lab.registry",
            self.name,
            "--port",
            str(self.settings.port("registry")),
            "--data",
            str(self.data_dir),
            "--host",
            self.settings.host,
        )

    def is_ready(self) -> bool:
        response = httpx.get(f"{self.address()}/", timeout=1.0)
        return response.status_code == 200 and response.json() == {}

    def address(self) -> str:
        return self.settings.registry_url


if __name__ == "__main__":
    main(sys.argv[1:])
