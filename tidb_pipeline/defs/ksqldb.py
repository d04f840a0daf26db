"""`ksqldb/<STREAM>` assets: one ksqlDB stream over each table's topic, kept in step with its schema.

Materialising describes the stream first, then (replication.ksqldb.plan_stream) creates it when missing,
runs `CREATE OR REPLACE STREAM` when the topic's subjects have a newer version than the one the stream was
built from (ksqlDB infers columns once, at execution time), and does nothing otherwise — so it is safe to
run on every schedule tick. The subject versions a stream was built from are kept in this asset's
materialization metadata; that is where the next run reads them. Until TiCDC has registered the topic's
schemas there is nothing to infer from, and the asset reports that instead of failing.

Not wired into `build_defs` here: add `build_all_ksqldb_assets(config=...)` to the assets and
`"ksqldb": ksqldb_resource(env)` to the resources to enable it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
from confluent_kafka.schema_registry import SchemaRegistryClient

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.defs.tables import group_name, table_keys
from tidb_pipeline.replication.ksqldb import (
    RecordedVersions,
    StreamPlan,
    SubjectVersion,
    plan_stream,
    record_fields,
    stream_name,
)
from tidb_pipeline.resources.ksqldb import KsqlDbClient, KsqlDbError, KsqlDbResource, StreamInfo
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource, latest_version, subject_names

VALUE_VERSION_KEY = "value_subject_version"
KEY_VERSION_KEY = "key_subject_version"


def ksqldb_key(config: PipelineConfig, t: TableConfig) -> dg.AssetKey:
    return dg.AssetKey(["ksqldb", stream_name(config.topic(t))])


def latest_subject(registry: SchemaRegistryClient, subject: str) -> SubjectVersion | None:
    registered = latest_version(registry, subject)
    if registered is None:
        return None
    return SubjectVersion(subject=subject, version=int(registered.version), schema_id=int(registered.schema_id),
                          fields=record_fields(registered.schema.schema_str))


@dataclass(frozen=True)
class StreamResult:
    stream: str
    topic: str
    plan: StreamPlan
    info: StreamInfo | None
    value: SubjectVersion | None
    key: SubjectVersion | None
    recorded: RecordedVersions
    command_message: str = ""

    @property
    def versions(self) -> RecordedVersions:
        """What the stream is now known to be built from: the latest after a (re)create, else what was recorded."""
        if self.plan.action in ("create", "replace") and self.value and self.key:
            return RecordedVersions(value=self.value.version, key=self.key.version)
        return self.recorded

    def metadata(self) -> dict[str, Any]:
        """Names, versions and statement text only (statements carry no credentials)."""
        out: dict[str, Any] = {
            "stream": self.stream,
            "topic": self.topic,
            "action": self.plan.action,
            "reasons": "; ".join(self.plan.reasons) or "(up to date)",
            "statement": self.plan.statement or "(none)",
        }
        if self.command_message:
            out["command_status"] = self.command_message
        if self.value is not None:
            out["latest_value_subject_version"] = self.value.version
            out["value_schema_id"] = self.value.schema_id
        # Only versions the stream is known to be built from; the next run compares against these.
        if self.versions.value is not None:
            out[VALUE_VERSION_KEY] = self.versions.value
        if self.versions.key is not None:
            out[KEY_VERSION_KEY] = self.versions.key
        if self.info is not None:
            out["dagster/column_schema"] = dg.TableSchema(columns=[
                dg.TableColumn(c.name, c.type, description="key" if c.key else None) for c in self.info.columns
            ])
            out["read_queries"] = ", ".join(self.info.read_queries) or "(none)"
        return out


def reconcile_stream(client: KsqlDbClient, registry: SchemaRegistryClient, *, stream: str, topic: str,
                     recorded: RecordedVersions = RecordedVersions(),
                     log: Callable[[str], None] = lambda _msg: None) -> StreamResult:
    """Describe, plan, then create / replace / do nothing."""
    key_subject, value_subject = subject_names(topic)
    value = latest_subject(registry, value_subject)
    key = latest_subject(registry, key_subject)
    existing = client.describe_stream(stream)
    plan = plan_stream(stream=stream, topic=topic, existing=existing.state() if existing else None,
                       value=value, key=key, recorded=recorded)
    if plan.statement is None:
        return StreamResult(stream, topic, plan, existing, value, key, recorded)
    log(f"ksqlDB stream {stream}: {plan.action} ({'; '.join(plan.reasons)})")
    sequence: int | None = None
    message = ""
    try:
        entity = client.execute(plan.statement)
        sequence = entity.get("commandSequenceNumber")
        message = str((entity.get("commandStatus") or {}).get("message", ""))
    except KsqlDbError:
        # A retried request may have run the CREATE already, or another run created it meanwhile: that is
        # success if the stream now exists on our topic; the replace it may need happens on the next run.
        now = client.describe_stream(stream) if plan.action == "create" else None
        if now is None or now.topic != topic:
            raise
        log(f"ksqlDB stream {stream} already exists (created concurrently or by a retried request)")
        return StreamResult(stream, topic, StreamPlan("noop", None, ("created concurrently",)), now, value, key,
                            recorded)
    # Passing the command's sequence number makes the describe wait until this server has applied it.
    info = client.describe_stream(stream, command_sequence_number=sequence)
    return StreamResult(stream, topic, plan, info, value, key, recorded, message)


def _recorded(context: dg.AssetExecutionContext) -> RecordedVersions:
    event = context.instance.get_latest_materialization_event(context.asset_key)
    materialization = event.asset_materialization if event else None
    metadata = materialization.metadata if materialization else {}

    def version(name: str) -> int | None:
        entry = metadata.get(name)
        return int(entry.value) if entry is not None and isinstance(entry.value, int) else None

    return RecordedVersions(value=version(VALUE_VERSION_KEY), key=version(KEY_VERSION_KEY))


def build_ksqldb_assets(*, config: PipelineConfig, table: TableConfig) -> list[dg.AssetsDefinition]:
    """The ksqlDB stream over one table's topic."""
    topic = config.topic(table)
    stream = stream_name(topic)

    @dg.asset(
        key=ksqldb_key(config, table), deps=[table_keys(config, table).kafka], group_name=group_name(table),
        kinds={"ksqldb"},
        description=(f"ksqlDB stream `{stream}` over topic `{topic}` (Avro key and value, columns inferred from "
                     "the registry). Materialising creates it if missing and replaces it when the topic's schema "
                     "has a newer version."),
        metadata={"topic": topic},
    )
    def _stream(context: dg.AssetExecutionContext, ksqldb: KsqlDbResource,
                schema_registry: SchemaRegistryResource) -> dg.MaterializeResult:
        with ksqldb.get_client() as client:
            result = reconcile_stream(client, schema_registry.get_client(), stream=stream, topic=topic,
                                      recorded=_recorded(context), log=context.log.info)
        return dg.MaterializeResult(metadata=result.metadata())

    return [_stream]


def build_all_ksqldb_assets(*, config: PipelineConfig) -> list[dg.AssetsDefinition]:
    return [a for t in config.tables for a in build_ksqldb_assets(config=config, table=t)]
