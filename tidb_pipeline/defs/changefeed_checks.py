"""Checks on `ticdc/<changefeed>` for what TiCDC reports badly or not at all: refused schemas and table drift.

- `registry_compatibility`: for each table, the schemas TiCDC will register next (built from TiDB's current
  columns, `replication.ticdc_schema`) against each subject's latest version under the subject's
  compatibility level (`GET /config/{subject}`, else the global `GET /config`, BACKWARD when neither is set).
  A refused one is WARN while the changefeed runs (it stops at that table's next row change) and ERROR once TiCDC
  reports the refusal, which it does only as `CDC:ErrAvroSchemaAPIError` / `schema manager API error, %s`,
  naming no table (spec/ticdc-avro.md). The result names the table, the column change and the fixes: the exact
  `curl` that sets the subject's compatibility, and a DDL that keeps the schema compatible.
- `changefeed_tables`: the running changefeed's filter vs TiDB's tables vs the config's list
  (`replication.table_coverage`): tables TiCDC replicates that the config lacks, listed tables gone from TiDB or
  not matched by the filter, new tables in the config's databases; with the `tidb-pipeline discover` command.

Both run in the reconcile job with the other checks, and the alerts sensor reports their state changes.
Nothing here touches the network at definitions load.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pymysql
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.backfill import codec_config  # the Avro options the declared changefeed uses
from tidb_pipeline.defs.tables import changefeed_key
from tidb_pipeline.replication import schema_compat, ticdc_schema
from tidb_pipeline.replication.avro_compat import DEFAULT_COMPATIBILITY
from tidb_pipeline.replication.changefeed import table_rule
from tidb_pipeline.replication.table_coverage import coverage
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import ChangefeedStatus, TiCDCError, TiCDCResource
from tidb_pipeline.resources.tidb import TiDBResource

REGISTRY_CHECK = "registry_compatibility"
TABLES_CHECK = "changefeed_tables"
_SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys", "metrics_schema",
                   "inspection_schema", "tidb_pipeline_lab")
_COLUMN_FIELDS = ("TABLE_SCHEMA", "TABLE_NAME", "COLUMN_NAME", "DATA_TYPE", "COLUMN_TYPE", "IS_NULLABLE",
                  "COLUMN_DEFAULT", "NUMERIC_PRECISION", "NUMERIC_SCALE", "DATETIME_PRECISION",
                  "CHARACTER_OCTET_LENGTH", "EXTRA")
_INDEX_FIELDS = ("TABLE_SCHEMA", "TABLE_NAME", "INDEX_NAME", "NON_UNIQUE", "SEQ_IN_INDEX", "COLUMN_NAME")
_NOT_FOUND = (40401, 40403)  # subject / schema not found
_NO_SUBJECT_LEVEL = 40408


# --- reading TiDB -----------------------------------------------------------------------------------------


def _in(values: Sequence[str]) -> str:
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
                    f"WHERE TABLE_SCHEMA IN ({_in(dbs)}) ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION", dbs)
        for row in cur.fetchall():
            r = dict(zip(_COLUMN_FIELDS, row))
            if (r["TABLE_SCHEMA"], r["TABLE_NAME"]) in wanted:
                columns.setdefault((r["TABLE_SCHEMA"], r["TABLE_NAME"]), []).append(r)
        # No ORDER BY: the server's index order breaks ties between equally short unique keys, as in TiCDC.
        cur.execute(f"SELECT {', '.join(_INDEX_FIELDS)} FROM information_schema.STATISTICS "
                    f"WHERE TABLE_SCHEMA IN ({_in(dbs)})", dbs)
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
                    f"AND LOWER(TABLE_SCHEMA) NOT IN ({_in(_SYSTEM_SCHEMAS)})", _SYSTEM_SCHEMAS)
        return [(str(db), str(t)) for db, t in cur.fetchall()]


# --- reading the registry -----------------------------------------------------------------------------------


def _level(client: SchemaRegistryClient, subject: str | None) -> str | None:
    """The subject's (or the global) compatibility level; None when the subject sets none."""
    try:
        return client.get_compatibility(subject)
    except SchemaRegistryError as exc:
        if subject is not None and exc.http_status_code == 404:  # 40408 (no subject level) or 40401
            return None
        raise


def subject_versions(client: SchemaRegistryClient, subject: str, transitive: bool) -> list[tuple[int, str]]:
    """(version, schema) of the subject's live versions, oldest first: the latest only unless `transitive`."""
    try:
        latest = client.get_latest_version(subject)
        if not transitive:
            return [(latest.version, latest.schema.schema_str)]
        return [(v, client.get_version(subject, v).schema.schema_str) for v in client.get_versions(subject)]
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404 and exc.error_code in _NOT_FOUND:
            return []  # nothing registered yet: TiCDC's first registration is always accepted
        raise


# --- the checks -----------------------------------------------------------------------------------------------


def _running_error(status: ChangefeedStatus | None) -> tuple[str, str] | None:
    for err in (status.last_error, status.last_warning) if status else ():
        if err is not None and schema_compat.is_registry_error(err.code, err.message):
            return err.code, err.message
    return None


def registry_result(
    verdicts: Sequence[schema_compat.SubjectVerdict], levels: dict[str, str], status: ChangefeedStatus | None,
    changefeed_id: str,
) -> dg.AssetCheckResult:
    """PASS, WARN (a refusal ahead) or ERROR (TiCDC reports one), naming the table, the change and the fixes."""
    stuck = _running_error(status)
    metadata: dict[str, Any] = {}
    if verdicts:
        first = verdicts[0]
        metadata.update({
            "table": first.table, "subject": first.subject, "compatibility": first.level,
            "change": "; ".join(c.change for c in first.changes),
            "fix": first.let_in, "then restore": first.restore,
        })
        if first.ddl_fixes:
            metadata["or, before rows are written"] = "; ".join(first.ddl_fixes)
    if stuck:
        metadata["ticdc_error"] = f"{stuck[0]}: {stuck[1]}"
    if verdicts:
        metadata["refused"] = dg.MetadataValue.json([
            {"table": v.table, "subject": v.subject, "compatibility": v.level, "latest_version": v.latest_version,
             "changes": [c.change for c in v.changes], "fixes": list(v.fixes)} for v in verdicts])
    metadata["compatibility_levels"] = dg.MetadataValue.json(levels)
    if verdicts:
        tables = ", ".join(dict.fromkeys(v.table for v in verdicts))
        change = verdicts[0].changes[0].change.split(":", 1)[0] if verdicts[0].changes else "a schema change"
        if stuck:
            description = (f"TiCDC changefeed {changefeed_id} is stuck: the registry refuses {tables}'s new schema "
                           f"({change}); TiCDC only says {stuck[0]}. Fix: see `fix`.")
        else:
            description = (f"the registry will refuse {tables}'s next schema ({change}): TiCDC stops at that table's "
                           f"next row change. Fix: see `fix`.")
        severity = dg.AssetCheckSeverity.ERROR if stuck else dg.AssetCheckSeverity.WARN
        return dg.AssetCheckResult(passed=False, severity=severity, description=description[:500], metadata=metadata)
    if stuck:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
            description=(f"TiCDC reports a Schema Registry error ({stuck[0]}) but no table's current columns conflict "
                         "with its subject: a table changed again since, or the registry refused for another reason "
                         "(credentials, an invalid schema); TiCDC's log line 'Failed to register schema to the "
                         "Registry' names the subject and the registry's answer")[:500])
    return dg.AssetCheckResult(passed=True, metadata=metadata)


def evaluate_registry(config: PipelineConfig, tidb: TiDBResource, registry: SchemaRegistryResource,
                      status: ChangefeedStatus | None) -> dg.AssetCheckResult:
    client = registry.get_client()
    global_level = _level(client, None) or DEFAULT_COMPATIBILITY
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
        for subject, schema in zip(ticdc_schema.subject_names(config.topic(t)),
                                   (ticdc_schema.key_schema(info, cfg), ticdc_schema.value_schema(info, cfg))):
            level = _level(client, subject) or global_level
            if level != global_level:
                levels[subject] = level
            versions = subject_versions(client, subject, level.endswith("_TRANSITIVE")) if level != "NONE" else []
            v = schema_compat.verdict(db=t.db, table=t.table, subject=subject, level=level, versions=versions,
                                      new=schema, columns=names, registry_url=registry.url,
                                      with_auth=bool(registry.api_key), column_types=column_types)
            if v is not None:
                verdicts.append(v)
    return registry_result(verdicts, levels, status, config.source.changefeed_id)


def _status(ticdc: TiCDCResource, changefeed_id: str) -> ChangefeedStatus | None:
    try:
        with ticdc.get_client() as client:
            return client.get_status(changefeed_id)
    except TiCDCError:
        return None  # not created yet, or TiCDC unreachable: `changefeed_healthy` says which


@contextmanager
def _errors_as_result(what: str) -> Iterator[list[dg.AssetCheckResult]]:
    out: list[dg.AssetCheckResult] = []
    try:
        yield out
    except (SchemaRegistryError, TiCDCError, pymysql.MySQLError, OSError, RuntimeError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        out.append(dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                       description=f"cannot {what}: {error}"[:500], metadata={"error": error}))


def tables_result(config: PipelineConfig, tidb: TiDBResource, ticdc: TiCDCResource,
                  output: str | None = None) -> dg.AssetCheckResult:
    cf_id = config.source.changefeed_id
    rules: list[str] = [table_rule(t) for t in config.tables]
    case_sensitive = False
    source = "declared (the changefeed does not exist yet)"
    try:
        with ticdc.get_client() as client:
            running = client.get(cf_id).config
        rules = list((running.get("filter") or {}).get("rules") or ["*.*"])  # TiCDC's default filter is *.*
        case_sensitive = bool(running.get("case_sensitive", False))
        source = "running"
    except TiCDCError as exc:
        if exc.code != "CDC:ErrChangeFeedNotExists":
            raise
    cov = coverage(configured=[(t.db, t.table) for t in config.tables], tidb=read_tidb_tables(tidb), rules=rules,
                   case_sensitive=case_sensitive, replicable=lambda db, t: bool(tidb.handle_key(db, t)), output=output)
    metadata: dict[str, Any] = {"filter": f"{source}: {len(rules)} rule(s)"}
    lines: list[str] = []
    if cov.unconfigured:
        metadata["replicated but not in the config"] = list(cov.unconfigured)
        lines.append(f"TiCDC replicates {', '.join(cov.unconfigured)} but the config lists them not (no asset lands "
                     "their topics)")
    if cov.gone:
        metadata["in the config but not in TiDB"] = list(cov.gone)
        lines.append(f"{', '.join(cov.gone)} no longer exist in TiDB (dropped or renamed)")
    if cov.unfiltered:
        metadata["in the config but not in the filter"] = list(cov.unfiltered)
        lines.append(f"the running filter leaves out {', '.join(cov.unfiltered)}: materialise "
                     f"{changefeed_key(config).to_user_string()} to update it")
    if cov.new:
        metadata["new in TiDB"] = list(cov.new)
        lines.append(f"new table(s) {', '.join(cov.new)} in a replicated database, not replicated")
    if cov.clean:
        return dg.AssetCheckResult(passed=True, metadata=metadata)
    if cov.unconfigured or cov.gone or cov.new:
        metadata["command"] = cov.command
        lines.append(f"run `{cov.command}`, review the diff, then reload the definitions and materialise "
                     f"{changefeed_key(config).to_user_string()}")
    severity = dg.AssetCheckSeverity.ERROR if cov.gone or cov.unfiltered else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(passed=False, severity=severity, description="; ".join(lines)[:1000],
                               metadata=metadata)


def build_changefeed_table_checks(*, config: PipelineConfig) -> list[dg.AssetChecksDefinition]:
    """`registry_compatibility` and `changefeed_tables` on the changefeed asset."""
    key = changefeed_key(config)
    cf_id = config.source.changefeed_id

    @dg.asset_check(asset=key, name=REGISTRY_CHECK, blocking=False,
                    description=f"Every table's next TiCDC schema is accepted by its registry subject's compatibility "
                                f"level; names the table, the column change and the fix when not (changefeed {cf_id}).")
    def _registry(tidb: TiDBResource, ticdc: TiCDCResource,
                  schema_registry: SchemaRegistryResource) -> dg.AssetCheckResult:
        with _errors_as_result("read the registry, TiDB or TiCDC") as failed:
            return evaluate_registry(config, tidb, schema_registry, _status(ticdc, cf_id))
        return failed[0]

    @dg.asset_check(asset=key, name=TABLES_CHECK, blocking=False,
                    description="The changefeed's table filter, TiDB's tables and tidb_pipeline.yaml agree; names "
                                "the tables that differ and the `tidb-pipeline discover` command.")
    def _tables(tidb: TiDBResource, ticdc: TiCDCResource) -> dg.AssetCheckResult:
        with _errors_as_result("read TiDB or TiCDC") as failed:
            return tables_result(config, tidb, ticdc, output=os.environ.get("TIDB_PIPELINE_CONFIG") or None)
        return failed[0]

    return [_registry, _tables]
