"""Reading what the changefeed checks compare: TiDB's tables and columns, the registry's levels and versions,
the running changefeed's filter; and the registry verdict per table (`replication.schema_compat`).

I/O only through the `tidb`, `schema_registry` and `ticdc` resources; the Dagster checks that call it are in
`defs/changefeed_checks.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.engine.backfill import codec_config  # the Avro options the declared changefeed uses
from tidb_pipeline.replication import schema_compat, ticdc_schema
from tidb_pipeline.replication.avro_compat import DEFAULT_COMPATIBILITY
from tidb_pipeline.replication.changefeed import table_rule
from tidb_pipeline.resources.schema_registry import (
    SchemaRegistryResource,
    all_versions,
    compatibility_level,
    latest_version,
    subject_names,
)
from tidb_pipeline.resources.ticdc import ChangefeedStatus, TiCDCError, TiCDCResource
from tidb_pipeline.resources.tidb import TiDBResource

_SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys", "metrics_schema",
                   "inspection_schema", "tidb_pipeline_lab")
_COLUMN_FIELDS = ("TABLE_SCHEMA", "TABLE_NAME", "COLUMN_NAME", "DATA_TYPE", "COLUMN_TYPE", "IS_NULLABLE",
                  "COLUMN_DEFAULT", "NUMERIC_PRECISION", "NUMERIC_SCALE", "DATETIME_PRECISION",
                  "CHARACTER_OCTET_LENGTH", "EXTRA")
_INDEX_FIELDS = ("TABLE_SCHEMA", "TABLE_NAME", "INDEX_NAME", "NON_UNIQUE", "SEQ_IN_INDEX", "COLUMN_NAME")


# --- reading TiDB -----------------------------------------------------------------------------------------


def _in_sql(values: Sequence[str]) -> str:
    """One bind marker per value, for an IN list."""
    return ", ".join(["%s"] * len(values))


def read_table_infos(tidb: TiDBResource, tables: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """(db, table) -> (TableInfo, {column: COLUMN_TYPE}) for each of `tables` TiDB has; two queries in all.

    A table TiCDC cannot replicate (no handle key) maps to None.
    """
    dbs = sorted({db for db, _ in tables})
    if not dbs:
        return {}
    wanted = set(tables)
    columns: dict[tuple[str, str], list[dict[str, Any]]] = {}
    indexes: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tidb.get_connection() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(_COLUMN_FIELDS)} FROM information_schema.COLUMNS "
                    f"WHERE TABLE_SCHEMA IN ({_in_sql(dbs)}) ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION", dbs)
        for row in cur.fetchall():
            r = dict(zip(_COLUMN_FIELDS, row))
            if (r["TABLE_SCHEMA"], r["TABLE_NAME"]) in wanted:
                columns.setdefault((r["TABLE_SCHEMA"], r["TABLE_NAME"]), []).append(r)
        # No ORDER BY: the server's index order breaks ties between equally short unique keys, as in TiCDC.
        cur.execute(f"SELECT {', '.join(_INDEX_FIELDS)} FROM information_schema.STATISTICS "
                    f"WHERE TABLE_SCHEMA IN ({_in_sql(dbs)})", dbs)
        for row in cur.fetchall():
            r = dict(zip(_INDEX_FIELDS, row))
            indexes.setdefault((r["TABLE_SCHEMA"], r["TABLE_NAME"]), []).append(r)
    out: dict[tuple[str, str], Any] = {}
    for key, rows in columns.items():
        try:
            info = ticdc_schema.table_info(key[0], key[1], rows, indexes.get(key, []))
        except ticdc_schema.TableIneligibleError:
            out[key] = None
            continue
        out[key] = (info, {str(r["COLUMN_NAME"]): str(r["COLUMN_TYPE"]) for r in rows})
    return out


def read_tidb_tables(tidb: TiDBResource) -> list[tuple[str, str]]:
    """Every base table outside the system schemas (TiCDC never replicates those)."""
    with tidb.get_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' "
                    f"AND LOWER(TABLE_SCHEMA) NOT IN ({_in_sql(_SYSTEM_SCHEMAS)})", _SYSTEM_SCHEMAS)
        return [(str(db), str(t)) for db, t in cur.fetchall()]


# --- reading the registry -----------------------------------------------------------------------------------


def subject_versions(client: SchemaRegistryClient, subject: str, transitive: bool) -> list[tuple[int, str]]:
    """(version, schema) of the subject's live versions, oldest first: the latest only unless `transitive`;
    none when nothing is registered yet (TiCDC's first registration is always accepted)."""
    if transitive:
        return [(v.version, v.schema.schema_str) for v in all_versions(client, subject)]
    latest = latest_version(client, subject)
    return [] if latest is None else [(latest.version, latest.schema.schema_str)]


@dataclass(frozen=True)
class RegistryVerdicts:
    """Per subject whose next schema the registry refuses, the verdict; the global level and every subject's own."""

    verdicts: tuple[schema_compat.SubjectVerdict, ...]
    levels: dict[str, str]


def registry_verdicts(config: PipelineConfig, tidb: TiDBResource, registry: SchemaRegistryResource) -> RegistryVerdicts:
    """The schemas TiCDC will register next for each table (from TiDB's current columns) vs each subject."""
    client = registry.get_client()
    global_level = compatibility_level(client, None) or DEFAULT_COMPATIBILITY
    cfg = codec_config(config)
    infos = read_table_infos(tidb, [(t.db, t.table) for t in config.tables])
    verdicts: list[schema_compat.SubjectVerdict] = []
    levels: dict[str, str] = {"(global)": global_level}
    for t in config.tables:
        found = infos.get((t.db, t.table))
        if found is None:
            continue  # gone or not replicable: `changefeed_tables` reports it
        info, column_types = found
        names = schema_compat.field_to_column([c.name for c in info.columns])
        for subject, schema in zip(subject_names(config.topic(t)),
                                   (ticdc_schema.key_schema(info, cfg), ticdc_schema.value_schema(info, cfg))):
            own = compatibility_level(client, subject)
            level = own or global_level
            if own is not None:
                levels[subject] = own
            versions = subject_versions(client, subject, level.endswith("_TRANSITIVE")) if level != "NONE" else []
            v = schema_compat.verdict(db=t.db, table=t.table, subject=subject, level=level, versions=versions,
                                      new=schema, columns=names, registry_url=registry.url,
                                      with_auth=bool(registry.api_key), column_types=column_types,
                                      subject_level=own is not None)
            if v is not None:
                verdicts.append(v)
    return RegistryVerdicts(tuple(verdicts), levels)


def changefeed_status(ticdc: TiCDCResource, changefeed_id: str) -> ChangefeedStatus | None:
    """The changefeed's status; None when it does not exist or TiCDC does not answer (`changefeed_healthy` says)."""
    try:
        with ticdc.get_client() as client:
            return client.get_status(changefeed_id)
    except TiCDCError:
        return None


@dataclass(frozen=True)
class RunningFilter:
    rules: tuple[str, ...]
    case_sensitive: bool
    source: str  # "running" or "declared (...)"


def running_filter(ticdc: TiCDCResource, config: PipelineConfig) -> RunningFilter:
    """The running changefeed's filter rules (TiCDC's default `*.*` when it has none); the declared ones when it
    does not exist yet."""
    try:
        with ticdc.get_client() as client:
            running = client.get(config.source.changefeed_id).config
    except TiCDCError as exc:
        if exc.code != "CDC:ErrChangeFeedNotExists":
            raise
        return RunningFilter(tuple(table_rule(t) for t in config.tables), False,
                             "declared (the changefeed does not exist yet)")
    rules = (running.get("filter") or {}).get("rules") or ["*.*"]
    return RunningFilter(tuple(rules), bool(running.get("case_sensitive", False)), "running")
