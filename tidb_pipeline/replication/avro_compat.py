"""Avro schema compatibility as Confluent Schema Registry decides it: who may read whom, per level.

Pure. The reader/writer resolution rules of the Avro specification, the way Avro's `SchemaCompatibility`
(which Confluent's `AvroSchema.isBackwardCompatible` calls) applies them, and Confluent's levels on top:
BACKWARD (the default) = the new schema reads data written with the latest one; FORWARD = the latest reads
the new; FULL = both; `_TRANSITIVE` = against every earlier version, not just the latest; NONE = no check.

The lab's registry enforces it on registration; the pipeline's `registry_compatibility` check
(`defs/changefeed_checks.py`) runs it ahead of TiCDC on the schema TiDB's current columns will produce.
Problems are texts whose first part is a location, `/fields/<name>[/<branch>]`, so a caller can name the column.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastavro.schema import parse_schema

COMPATIBILITY_LEVELS = (
    "NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"
)
DEFAULT_COMPATIBILITY = "BACKWARD"  # Confluent's, when neither the subject nor the registry sets one


class InvalidAvroSchema(ValueError):
    """Not a valid Avro schema (Confluent answers 422 / 42201)."""


PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# (writer, reader) pairs the Avro specification lets a reader promote.
PROMOTIONS = frozenset(
    {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
)


@dataclass(frozen=True)
class AvroSchema:
    """A validated Avro schema: its canonical text and the parsed form the compatibility check walks."""

    canonical: str
    parsed: Any
    named: dict[str, Any]


def canonical_text(schema_text: str) -> str:
    """Whitespace-free JSON with the author's key order: equal schemas get equal text, hence equal ids."""
    return json.dumps(json.loads(schema_text), separators=(",", ":"), ensure_ascii=False)


def parse_avro(schema_text: str) -> AvroSchema:
    """Parse and validate with fastavro; raise InvalidAvroSchema naming the problem."""
    try:
        raw = json.loads(schema_text)
    except (TypeError, ValueError) as exc:
        raise InvalidAvroSchema(f"Invalid schema: not JSON ({exc})") from None
    named: dict[str, Any] = {}
    try:
        parsed = parse_schema(raw, named_schemas=named)
    except Exception as exc:  # noqa: BLE001 - fastavro raises several unrelated types for bad schemas
        raise InvalidAvroSchema(f"Invalid schema: {exc}") from None
    # fastavro accepts a record without "fields"; Avro (and so Confluent) does not.
    for definition in _walk(raw):
        if definition.get("type") in ("record", "error") and not isinstance(definition.get("fields"), list):
            raise InvalidAvroSchema(f"Invalid schema: record {definition.get('name')!r} has no 'fields' list")
    return AvroSchema(canonical_text(schema_text), parsed, named)


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in a schema document that defines a type (field defaults are data, not types)."""
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key != "default":
                yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    """A primitive name, a union list, or a complex-type dict; logical types read as their base type."""
    while True:
        if isinstance(schema, str):
            if schema in PRIMITIVES:
                return schema
            schema = named[schema]
        elif isinstance(schema, dict) and (
            isinstance(schema.get("type"), (dict, list)) or schema.get("type") in PRIMITIVES | named.keys()
        ):
            schema = schema["type"]
        else:
            return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return str(schema["type"])


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _names_match(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    # Avro's SchemaCompatibility.schemaNameEquals: unqualified names, or a reader alias naming the writer.
    if _short(reader["name"]) == _short(writer["name"]):
        return True
    return any(alias in (writer["name"], _short(writer["name"])) for alias in reader.get("aliases") or ())


def reader_incompatibilities(reader: AvroSchema, writer: AvroSchema) -> list[str]:
    """Why data written with `writer` cannot be read with `reader` (empty when it can)."""
    in_progress: set[tuple[str, str]] = set()

    def check(r: Any, w: Any, path: str) -> list[str]:
        r, w = _resolve(r, reader.named), _resolve(w, writer.named)
        if isinstance(w, list):
            # Every branch the writer may have used must be readable.
            return [p for i, branch in enumerate(w) for p in check(r, branch, f"{path}/{i}")]
        if isinstance(r, list):
            tried = [check(branch, w, path) for branch in r]
            if any(not problems for problems in tried):
                return []
            # Name the branch the writer's type was meant for, if there is one: its problems say most.
            for branch, branch_problems in zip(r, tried):
                resolved = _resolve(branch, reader.named)
                if _kind(resolved) == _kind(w) and (
                    not isinstance(resolved, dict) or "name" not in resolved or _names_match(resolved, w)
                ):
                    return branch_problems
            return [f"{path}: reader union has no branch that reads the writer's {_kind(w)}"]
        rk, wk = _kind(r), _kind(w)
        if rk != wk:
            if (wk, rk) in PROMOTIONS:
                return []
            return [f"{path}: reader type {rk} cannot read writer type {wk}"]
        if rk in PRIMITIVES:
            return []
        if rk in ("record", "error", "enum", "fixed") and not _names_match(r, w):
            return [f"{path}: reader name {r['name']} does not match writer name {w['name']}"]
        if rk == "fixed":
            if r["size"] != w["size"]:
                return [f"{path}: fixed size {r['size']} cannot read fixed size {w['size']}"]
            return []
        if rk == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and "default" not in r:
                return [f"{path}: reader enum {r['name']} lacks writer symbols {missing}"]
            return []
        if rk == "array":
            return check(r["items"], w["items"], f"{path}/items")
        if rk == "map":
            return check(r["values"], w["values"], f"{path}/values")
        # Records may nest themselves; a pair already being checked is assumed compatible (as Avro does).
        # Full names identify a record within its schema.
        key = (r["name"], w["name"])
        if key in in_progress:
            return []
        in_progress.add(key)
        problems: list[str] = []
        writer_fields = {f["name"]: f for f in w["fields"]}
        for field in r["fields"]:
            candidates = [field["name"], *(field.get("aliases") or ())]
            match = next((writer_fields[n] for n in candidates if n in writer_fields), None)
            field_path = f"{path}/fields/{field['name']}"
            if match is None:
                if "default" not in field:
                    problems.append(f"{field_path}: reader field has no default and the writer lacks it")
            else:
                problems.extend(check(field["type"], match["type"], field_path))
        in_progress.discard(key)
        return problems

    return check(reader.parsed, writer.parsed, "")


def compatibility_problems(level: str, new: AvroSchema, existing: Sequence[AvroSchema]) -> list[str]:
    """Why `new` may not follow `existing` (oldest first) under `level`; empty when it may."""
    if level == "NONE" or not existing:
        return []
    against = existing if level.endswith("_TRANSITIVE") else existing[-1:]
    base = level.removesuffix("_TRANSITIVE")
    problems: list[str] = []
    for old in against:
        if base in ("BACKWARD", "FULL"):
            problems.extend(f"BACKWARD {p}" for p in reader_incompatibilities(new, old))
        if base in ("FORWARD", "FULL"):
            problems.extend(f"FORWARD {p}" for p in reader_incompatibilities(old, new))
    return problems
