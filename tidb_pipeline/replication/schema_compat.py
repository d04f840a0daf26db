"""Registry compatibility in TiDB's terms: which column change the registry will refuse, and how to fix it.

Pure. TiCDC registers a table's new Avro schema on the first row after a DDL; when the subject's compatibility
level refuses it (HTTP 409) the changefeed only says `[CDC:ErrAvroSchemaAPIError]schema manager API error, %s`,
naming no table (spec/ticdc-avro.md, "Schema Registry use"). So the pipeline builds the schema TiCDC will
register from TiDB's current columns (`ticdc_schema`), runs the registry's own rules against the subject's
latest version(s) (`avro_compat`), and explains each problem as the column change behind it, with two fixes:
a DDL that makes the schema compatible (only for rows not yet written: TiCDC encodes each row with the table
version it was written under) and the registry call that lets the schema in (`PUT /config/<subject>`).

Which changes BACKWARD (the default) refuses: a column added NOT NULL without a default, a DECIMAL added NOT NULL
(TiCDC never gives a decimal a default), a rename of such a column (a drop plus an add), a narrowed type
(BIGINT -> INT, DOUBLE -> FLOAT, INT -> VARCHAR) and NULL -> NOT NULL.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from tidb_pipeline.replication.avro_compat import compatibility_problems, parse_avro
from tidb_pipeline.replication.ticdc_schema import sanitize_name

REGISTRY_ERROR_CODE = "CDC:ErrAvroSchemaAPIError"
_FIELD = re.compile(r"^(?:\w+ )?/fields/([^/:]+)")
# A TiDB type TiCDC writes as each Avro type, to name a type to change a column back to.
_TIDB_TYPE_FOR = {"int": "INT", "long": "BIGINT", "float": "FLOAT", "double": "DOUBLE", "string": "VARCHAR(...)",
                  "bytes": "BLOB", "boolean": "BOOLEAN"}


@dataclass(frozen=True)
class FieldShape:
    """One Avro field as TiCDC writes a column: its Avro type, TiDB type family, NULL-ability, default."""

    avro: str  # int, long, string, bytes, decimal(p,s), ...
    tidb_type: str  # connect.parameters.tidb_type (INT, BIGINT, TEXT, DECIMAL, ...) or ""
    nullable: bool
    has_default: bool

    def describe(self) -> str:
        kind = self.tidb_type or self.avro
        if self.avro.startswith("decimal"):
            kind = f"DECIMAL{self.avro.removeprefix('decimal')}"
        null = "NULL" if self.nullable else "NOT NULL"
        return f"{kind} {null}{'' if self.has_default else ' without a default'} (Avro {self.avro})"


def field_shapes(schema_json: str) -> dict[str, FieldShape]:
    """Field name -> shape, for the top-level fields of a TiCDC record schema."""
    record = json.loads(schema_json)
    out: dict[str, FieldShape] = {}
    for field in record.get("fields", []):
        t = field["type"]
        branches = t if isinstance(t, list) else [t]
        nullable = "null" in branches
        body = next((b for b in branches if b != "null"), "null")
        if isinstance(body, dict):
            params = body.get("connect.parameters") or {}
            avro = str(body.get("type"))
            if body.get("logicalType") == "decimal":
                avro = f"decimal({body.get('precision')},{body.get('scale', 0)})"
            tidb_type = str(params.get("tidb_type", ""))
        else:
            avro, tidb_type = str(body), ""
        out[field["name"]] = FieldShape(avro, tidb_type, nullable, "default" in field)
    return out


def _problem_fields(problems: Sequence[str]) -> list[str]:
    """Field names the problems are about, in order (`BACKWARD /fields/qty: ...` -> `qty`)."""
    out: list[str] = []
    for p in problems:
        m = _FIELD.match(p)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class ColumnChange:
    """One column change the registry refuses, in TiDB's words, and a DDL that would avoid it (or None)."""

    column: str
    change: str
    ddl: str | None


def explain(
    *, db: str, table: str, subject: str, level: str, latest_version: int, latest: str, new: str,
    problems: Sequence[str], columns: Mapping[str, str], column_types: Mapping[str, str] | None = None,
) -> list[ColumnChange]:
    """The column changes behind `problems` (new schema `new` vs the subject's `latest`).

    `columns` maps Avro field names to TiDB column names (TiCDC sanitises names); `column_types` maps TiDB column
    names to their current COLUMN_TYPE (`int(11)`, `decimal(10,2)`), for exact DDL.
    """
    types = column_types or {}
    old_fields, new_fields = field_shapes(latest), field_shapes(new)
    target = f"{_ident(db)}.{_ident(table)}"
    reads = {"BACKWARD": f"the new schema cannot read records written with version {latest_version}",
             "FORWARD": f"consumers on version {latest_version} cannot read the new records"}
    why = reads.get(level.removesuffix("_TRANSITIVE"), f"{reads['BACKWARD']}, or the reverse")
    out: list[ColumnChange] = []
    names = _problem_fields(problems)
    # A rename shows as a drop plus an add: name both sides when exactly one field left and one came.
    dropped = [f for f in old_fields if f not in new_fields]
    for name in names:
        col = columns.get(name, name)
        old, cur = old_fields.get(name), new_fields.get(name)
        if old is None and cur is not None:
            renamed = f" (renamed from `{columns.get(dropped[0], dropped[0])}`?)" if len(dropped) == 1 else ""
            change = f"column `{col}` added{renamed} as {cur.describe()}: TiCDC gives it no Avro default, so {why}"
            if cur.avro.startswith("decimal"):
                decl = types.get(col) or f"DECIMAL{cur.avro.removeprefix('decimal')}"
                ddl = f"ALTER TABLE {target} MODIFY COLUMN {_ident(col)} {decl} NULL"
            else:
                ddl = f"ALTER TABLE {target} ALTER COLUMN {_ident(col)} SET DEFAULT {_zero(cur)}"
        elif cur is None and old is not None:
            change = f"column `{col}` dropped (it was {old.describe()}): {why}"
            ddl = None
        elif old is not None and cur is not None:
            if old.nullable and not cur.nullable:
                change = f"column `{col}` changed from NULL to NOT NULL ({old.describe()} -> {cur.describe()}): {why}"
                decl = types.get(col) or _TIDB_TYPE_FOR.get(cur.avro, cur.tidb_type or cur.avro)
                ddl = f"ALTER TABLE {target} MODIFY COLUMN {_ident(col)} {decl} NULL"
            else:
                change = f"column `{col}` changed type: {old.describe()} -> {cur.describe()}: {why}"
                back = _TIDB_TYPE_FOR.get(old.avro, old.tidb_type or old.avro)
                ddl = f"ALTER TABLE {target} MODIFY COLUMN {_ident(col)} {back}{'' if old.nullable else ' NOT NULL'}"
        else:
            continue
        out.append(ColumnChange(col, change, ddl))
    if not out and problems:
        out.append(ColumnChange("", f"the new {subject} schema is refused under {level}: {'; '.join(problems)}", None))
    return out


def _zero(shape: FieldShape) -> str:
    if shape.avro in ("int", "long", "float", "double"):
        return "0"
    return "''"


def registry_base(url: str) -> str:
    """The registry URL without any `user:password@` (the credentials go in `-u` from the environment)."""
    parts = urlsplit(url.rstrip("/"))
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def set_compatibility_command(url: str, subject: str, level: str, *, with_auth: bool) -> str:
    """The exact `curl` that sets `subject`'s compatibility level (Confluent's `PUT /config/{subject}`)."""
    auth = ' -u "$SCHEMA_REGISTRY_API_KEY:$SCHEMA_REGISTRY_API_SECRET"' if with_auth else ""
    body = shlex.quote(json.dumps({"compatibility": level}))
    target = shlex.quote(f"{registry_base(url)}/config/{quote(subject, safe='')}")
    return (f"curl -sS -X PUT{auth} -H 'Content-Type: application/vnd.schemaregistry.v1+json' "
            f"--data {body} {target}")


def clear_compatibility_command(url: str, subject: str, *, with_auth: bool) -> str:
    """The exact `curl` that drops `subject`'s own level, so it follows the global one (`DELETE /config/{subject}`)."""
    auth = ' -u "$SCHEMA_REGISTRY_API_KEY:$SCHEMA_REGISTRY_API_SECRET"' if with_auth else ""
    target = shlex.quote(f"{registry_base(url)}/config/{quote(subject, safe='')}")
    return f"curl -sS -X DELETE{auth} {target}"


@dataclass(frozen=True)
class SubjectVerdict:
    """One subject whose next schema the registry will refuse (or already refused), and the fixes."""

    table: str  # db.table
    subject: str
    level: str
    latest_version: int
    changes: tuple[ColumnChange, ...]
    let_in: str  # the curl that lets TiCDC register the schema (level NONE for the subject)
    restore: str  # the curl that puts the level back once it has

    @property
    def ddl_fixes(self) -> tuple[str, ...]:
        return tuple(c.ddl for c in self.changes if c.ddl)

    @property
    def fixes(self) -> tuple[str, ...]:
        return (f"let TiCDC register the new schema: {self.let_in} ; once the changefeed is normal again, restore "
                f"the level: {self.restore}",
                *(f"before any row is written with the new columns (TiCDC encodes each row with the table version "
                  f"it was written under): {d}" for d in self.ddl_fixes))

    def text(self) -> str:
        changes = "; ".join(c.change for c in self.changes)
        return f"{self.table} ({self.subject}, {self.level}): {changes}"


def verdict(
    *, db: str, table: str, subject: str, level: str, versions: Sequence[tuple[int, str]], new: str,
    columns: Mapping[str, str], registry_url: str, with_auth: bool, column_types: Mapping[str, str] | None = None,
    subject_level: bool = False,
) -> SubjectVerdict | None:
    """None when `new` may follow `versions` ((version, schema) oldest first) under `level`, else the verdict.

    `subject_level`: the subject sets `level` itself; otherwise it follows the global level, and the restore
    command drops the subject's temporary level rather than pinning the global one on it.
    """
    if not versions or level == "NONE":
        return None
    latest_version, latest = versions[-1]
    compared = [parse_avro(s) for _, s in (versions if level.endswith("_TRANSITIVE") else versions[-1:])]
    new_schema = parse_avro(new)
    if any(new_schema.canonical == parse_avro(s).canonical for _, s in versions):
        return None  # TiCDC re-registering an existing version gets its id back, unchecked
    problems = compatibility_problems(level, new_schema, compared)
    if not problems:
        return None
    changes = explain(db=db, table=table, subject=subject, level=level, latest_version=latest_version,
                      latest=latest, new=new, problems=problems, columns=columns,
                      column_types=column_types)
    return SubjectVerdict(f"{db}.{table}", subject, level, latest_version, tuple(changes),
                          set_compatibility_command(registry_url, subject, "NONE", with_auth=with_auth),
                          set_compatibility_command(registry_url, subject, level, with_auth=with_auth) if subject_level
                          else clear_compatibility_command(registry_url, subject, with_auth=with_auth))


def is_registry_error(code: str | None, message: str | None) -> bool:
    """Whether a TiCDC running error is a registry refusal (also once failed as ErrChangefeedUnretryable)."""
    return code == REGISTRY_ERROR_CODE or REGISTRY_ERROR_CODE in (message or "")


def field_to_column(names: Sequence[str]) -> dict[str, str]:
    """Avro field name -> TiDB column name (TiCDC sanitises names for Avro)."""
    return {sanitize_name(n): n for n in names}

