"""ksqlDB streams over the TiCDC topics: names, statement text and the create/replace plan (pure).

One stream per topic, declared without columns so ksqlDB infers them from the topic's latest `-value` and
`-key` subjects (spec/confluent.md). Inference happens once, when the statement runs: a stream does not
follow later subject versions, so a new version (TiCDC registers one on every DDL) needs a
`CREATE OR REPLACE STREAM` to refresh the columns. The plan decides between create, replace and nothing.

Drift is judged on two signals, either of which is enough:
- the subject versions recorded when the stream was last (re)created, if the caller kept them (the asset keeps
  them in its materialization metadata), against the subjects' latest versions — this catches type changes;
- the stream's value column names against the value schema's field names, compared case-insensitively since
  ksqlDB upper-cases inferred names — this works without any record, e.g. for a stream someone else created.
Names are compared rather than types because a mismatch in this module's idea of ksqlDB's type mapping would
otherwise replace the stream on every run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from tidb_pipeline.resources.ksqldb import StreamState, quote_identifier

# Columns ksqlDB adds to every source; DESCRIBE may list them, inference never produces them.
PSEUDO_COLUMNS = frozenset({"ROWTIME", "ROWPARTITION", "ROWOFFSET"})

Action = Literal["create", "replace", "noop", "wait"]


class StreamConflict(ValueError):
    """The existing stream cannot be brought to the declared one by CREATE OR REPLACE."""


def stream_name(topic: str) -> str:
    """The stream for a topic: upper-cased, every character outside [A-Z0-9_] as `_`, never starting with a digit."""
    name = re.sub(r"[^A-Z0-9_]", "_", topic.upper())
    return f"S_{name}" if not name or name[0].isdigit() else name


def string_literal(value: str) -> str:
    """A single-quoted ksqlDB string literal (a quote inside is doubled)."""
    return "'" + value.replace("'", "''") + "'"


def create_statement(stream: str, topic: str, *, replace: bool = False) -> str:
    """`CREATE [OR REPLACE] STREAM` over an Avro topic, columns inferred from the registry."""
    verb = "CREATE OR REPLACE STREAM" if replace else "CREATE STREAM"
    return (f"{verb} {quote_identifier(stream)} WITH (KAFKA_TOPIC={string_literal(topic)}, "
            "VALUE_FORMAT='AVRO', KEY_FORMAT='AVRO');")


def split_statements(text: str) -> list[str]:
    """Split a request body into statements at `;` outside quotes; each keeps its `;`."""
    statements, start, quote = [], 0, ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""  # a doubled quote closes and reopens, which nets out the same
        elif ch in "'`\"":
            quote = ch
        elif ch == ";":
            statements.append(text[start:i + 1].strip())
            start = i + 1
    tail = text[start:].strip()
    if tail:
        statements.append(tail)
    return [s for s in statements if s.strip(" ;\n\t")]


@dataclass(frozen=True)
class SubjectVersion:
    """The latest version of one registry subject."""

    subject: str
    version: int
    schema_id: int
    fields: tuple[str, ...]  # record field names as registered; () for a non-record schema


def record_fields(schema_text: str) -> tuple[str, ...]:
    """Top-level field names of an Avro record schema; () for anything else."""
    schema = json.loads(schema_text)
    if isinstance(schema, dict) and schema.get("type") == "record":
        return tuple(str(f["name"]) for f in schema.get("fields", []))
    return ()


@dataclass(frozen=True)
class RecordedVersions:
    """Subject versions the stream was last (re)created from; None where unknown."""

    value: int | None = None
    key: int | None = None


@dataclass(frozen=True)
class StreamPlan:
    action: Action
    statement: str | None
    reasons: tuple[str, ...] = ()


def _names(columns: Iterable[str]) -> set[str]:
    return {c.upper() for c in columns} - PSEUDO_COLUMNS


def plan_stream(*, stream: str, topic: str, existing: StreamState | None, value: SubjectVersion | None,
                key: SubjectVersion | None, recorded: RecordedVersions = RecordedVersions()) -> StreamPlan:
    """Create when missing, replace when the subjects moved on, nothing otherwise ("wait" without both schemas)."""
    missing = [f"{topic}-{part}" for part, s in (("value", value), ("key", key)) if s is None]
    if value is None or key is None:
        # ksqlDB would reject the statement: nothing to infer columns from until TiCDC registers the schemas.
        return StreamPlan("wait", None, tuple(f"subject {s} has no schema yet" for s in missing))
    if existing is None:
        return StreamPlan("create", create_statement(stream, topic), ("stream missing",))
    if existing.topic != topic:
        raise StreamConflict(f"stream {stream} reads topic {existing.topic!r}, not {topic!r}; CREATE OR REPLACE "
                             "cannot change the topic: drop the stream (terminate its queries first) or rename it")
    formats = (existing.key_format.upper(), existing.value_format.upper())
    if formats != ("AVRO", "AVRO"):
        raise StreamConflict(f"stream {stream} has KEY_FORMAT={formats[0]}, VALUE_FORMAT={formats[1]}, not AVRO; "
                             "CREATE OR REPLACE cannot change formats: drop the stream (terminate its queries "
                             "first) and materialize again")
    reasons: list[str] = []
    if recorded.value is not None and recorded.value != value.version:
        reasons.append(f"{value.subject} is at version {value.version}, the stream was built from {recorded.value}")
    if recorded.key is not None and recorded.key != key.version:
        reasons.append(f"{key.subject} is at version {key.version}, the stream was built from {recorded.key}")
    have, want = _names(existing.value_columns), _names(value.fields)
    if value.fields and have != want:
        added, removed = sorted(want - have), sorted(have - want)
        reasons.append("value columns differ: " + "; ".join(
            part for part in (f"new {', '.join(added)}" if added else "",
                              f"gone {', '.join(removed)}" if removed else "") if part))
    if reasons:
        return StreamPlan("replace", create_statement(stream, topic, replace=True), tuple(reasons))
    return StreamPlan("noop", None)
