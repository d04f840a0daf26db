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

Both run in the reconcile job with the other checks, and the alerts sensor reports their state changes. The
reads are `engine/source_watch.py`'s; nothing touches the network at definitions load.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pymysql
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.tables import changefeed_key
from tidb_pipeline.engine.source_watch import changefeed_status, read_tidb_tables, registry_verdicts, running_filter
from tidb_pipeline.replication import schema_compat
from tidb_pipeline.replication.table_coverage import coverage
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import ChangefeedStatus, TiCDCError, TiCDCResource
from tidb_pipeline.resources.tidb import TiDBResource

REGISTRY_CHECK = "registry_compatibility"
TABLES_CHECK = "changefeed_tables"


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
    found = registry_verdicts(config, tidb, registry)
    return registry_result(found.verdicts, found.levels, status, config.source.changefeed_id)


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
    flt = running_filter(ticdc, config)
    cov = coverage(configured=[(t.db, t.table) for t in config.tables], tidb=read_tidb_tables(tidb), rules=flt.rules,
                   case_sensitive=flt.case_sensitive, replicable=lambda db, t: bool(tidb.handle_key(db, t)),
                   output=output)
    metadata: dict[str, Any] = {"filter": f"{flt.source}: {len(flt.rules)} rule(s)"}
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
            return evaluate_registry(config, tidb, schema_registry, changefeed_status(ticdc, cf_id))
        return failed[0]

    @dg.asset_check(asset=key, name=TABLES_CHECK, blocking=False,
                    description="The changefeed's table filter, TiDB's tables and tidb_pipeline.yaml agree; names "
                                "the tables that differ and the `tidb-pipeline discover` command.")
    def _tables(tidb: TiDBResource, ticdc: TiCDCResource) -> dg.AssetCheckResult:
        with _errors_as_result("read TiDB or TiCDC") as failed:
            return tables_result(config, tidb, ticdc, output=os.environ.get("TIDB_PIPELINE_CONFIG") or None)
        return failed[0]

    return [_registry, _tables]
