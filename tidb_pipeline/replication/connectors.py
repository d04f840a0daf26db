"""Desired connector configs from the project config, and the diff/plan that reconciles them (pure).

Configs follow spec/confluent.md: the managed Snowflake Sink writes the landing tables in the connector's
layout under the names `PipelineConfig.landing_table` gives (so `snowflake.topic2table.map` is always set,
never left to the connector's own naming), and the managed SQL Server Sink upserts by record key with
deletes on tombstones. Every value is a string, as both Connect APIs require.

The Snowflake Sink's behaviour the merge depends on is pinned, never left to a default that differs between
connector versions (`PINNED_SNOWFLAKE_SINK`): deletes arrive as tombstone rows (`behavior.on.null.values=
DEFAULT`; IGNORE drops them, so deletes would be lost), the table keeps the two-VARIANT layout
(`snowflake.enable.schematization=false`; 4.x defaults to true, which has no RECORD_CONTENT), and every
metadata group is written (the merge reads topic, partition, offset and key; cleanup the timestamp).
Ingestion is `SNOWPIPE_STREAMING` by default (exactly-once, in order per partition; needs a role);
`SNOWPIPE` is allowed, and then the merge's hole rule keeps the replica right (`replication.holes`).

Comparing with what a Connect API returns differs by flavor: Confluent Cloud masks secrets on read and adds
keys of its own, so there a masked value matches anything and extra keys are ignored; a self-managed worker
returns exactly what was stored, so there the comparison is exact. A consequence worth knowing: on
Confluent Cloud a rotated secret alone is not seen as drift (pass `force_update` to push it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from tidb_pipeline.config import PipelineConfig, TableConfig

MASK = "****************"

Flavor = Literal["confluent_cloud", "self_managed"]
Step = Literal["create", "update", "resume"]

_PEM_LINE = re.compile(r"-----(BEGIN|END)[A-Z ]*-----")

# Snowflake Sink properties the landing layout depends on (module docstring); always sent as here.
PINNED_SNOWFLAKE_SINK: dict[str, str] = {
    "behavior.on.null.values": "DEFAULT",
    "snowflake.enable.schematization": "false",
    "snowflake.metadata.all": "true",
    "snowflake.metadata.topic": "true",
    "snowflake.metadata.offset.and.partition": "true",
    "snowflake.metadata.createtime": "true",
}


@dataclass(frozen=True)
class KafkaCredentials:
    """The Kafka API key the managed connector consumes with."""

    api_key: str
    api_secret: str


@dataclass(frozen=True)
class SnowflakeSinkSettings:
    """What the Snowflake Sink needs beyond the table list; database and schema come from `PipelineConfig`."""

    name: str
    kafka: KafkaCredentials
    url: str  # <account>.snowflakecomputing.com[:443]
    user: str
    private_key: str  # PEM or bare body; normalised to the bare body
    private_key_passphrase: str | None = None
    ingestion_method: Literal["SNOWPIPE", "SNOWPIPE_STREAMING"] = "SNOWPIPE_STREAMING"
    role: str | None = None  # required with SNOWPIPE_STREAMING
    buffer_flush_time_s: int = 120
    buffer_count_records: int = 10000
    buffer_size_bytes: int = 20_000_000
    tasks_max: int = 1


@dataclass(frozen=True)
class SqlServerSinkSettings:
    name: str
    kafka: KafkaCredentials
    host: str  # a host name, not a jdbc: URL
    port: int
    user: str
    password: str
    database: str
    table_name_format: str = "${topic}"
    tasks_max: int = 1


def private_key_body(key: str) -> str:
    """The key as the connector wants it: no PEM header/footer and no line breaks (also literal `\\n`)."""
    body = _PEM_LINE.sub("", key.replace("\\n", "\n"))
    return "".join(body.split())


def connector_tables(config: PipelineConfig) -> tuple[TableConfig, ...]:
    """Tables whose landing table the Snowflake Sink fills."""
    return tuple(t for t in config.tables if config.landing_mode_of(t) == "connector")


def snowflake_sink_config(config: PipelineConfig, settings: SnowflakeSinkSettings,
                          tables: Iterable[TableConfig] | None = None) -> dict[str, str]:
    """The managed Snowflake Sink's config for `tables` (default: those in `connector` landing mode)."""
    chosen = tuple(connector_tables(config) if tables is None else tables)
    if not chosen:
        raise ValueError(f"connector {settings.name!r}: no tables to sink; set landing_mode: connector on at "
                         "least one table in the config")
    if settings.ingestion_method == "SNOWPIPE_STREAMING" and not settings.role:
        raise ValueError(f"connector {settings.name!r}: SNOWPIPE_STREAMING needs a Snowflake role "
                         "(snowflake.role.name); set SNOWFLAKE_ROLE, or connectors.snowflake_ingestion_method: SNOWPIPE")
    topics = [config.topic(t) for t in chosen]
    out = {
        "connector.class": "SnowflakeSink",
        "name": settings.name,
        "topics": ",".join(topics),
        "input.data.format": "AVRO",
        "input.key.format": "AVRO",
        **_kafka_auth(settings.kafka),
        "snowflake.url.name": settings.url,
        "snowflake.user.name": settings.user,
        "snowflake.private.key": private_key_body(settings.private_key),
        "snowflake.database.name": config.snowflake.database,
        "snowflake.schema.name": config.snowflake.landing_schema,
        "snowflake.topic2table.map": ",".join(f"{config.topic(t)}:{config.landing_table(t)}" for t in chosen),
        "snowflake.ingestion.method": settings.ingestion_method,
        **PINNED_SNOWFLAKE_SINK,
        "buffer.flush.time": str(settings.buffer_flush_time_s),
        "buffer.count.records": str(settings.buffer_count_records),
        "buffer.size.bytes": str(settings.buffer_size_bytes),
        "tasks.max": str(settings.tasks_max),
    }
    if settings.private_key_passphrase:
        out["snowflake.private.key.passphrase"] = settings.private_key_passphrase
    if settings.role:
        out["snowflake.role.name"] = settings.role
    return out


def sqlserver_sink_config(config: PipelineConfig, settings: SqlServerSinkSettings,
                          tables: Iterable[TableConfig] | None = None) -> dict[str, str]:
    """The managed SQL Server Sink's config: upsert by record key, tombstone = delete, auto create/evolve."""
    chosen = tuple(config.tables if tables is None else tables)
    if not chosen:
        raise ValueError(f"connector {settings.name!r}: no tables to sink; list tables in the config")
    if settings.host.lower().startswith("jdbc:"):
        raise ValueError(f"connector {settings.name!r}: connection.host must be a host name, not a jdbc: URL")
    return {
        "connector.class": "MicrosoftSqlServerSink",
        "name": settings.name,
        "topics": ",".join(config.topic(t) for t in chosen),
        "input.data.format": "AVRO",
        "input.key.format": "AVRO",
        **_kafka_auth(settings.kafka),
        "connection.host": settings.host,
        "connection.port": str(settings.port),
        "connection.user": settings.user,
        "connection.password": settings.password,
        "db.name": settings.database,
        "insert.mode": "UPSERT",
        "pk.mode": "record_key",
        # Needs pk.mode=record_key; with deletes off a tombstone would fail the task.
        "delete.enabled": "true",
        "auto.create": "true",
        "auto.evolve": "true",
        "table.name.format": settings.table_name_format,
        "tasks.max": str(settings.tasks_max),
    }


def _kafka_auth(kafka: KafkaCredentials) -> dict[str, str]:
    return {"kafka.auth.mode": "KAFKA_API_KEY", "kafka.api.key": kafka.api_key, "kafka.api.secret": kafka.api_secret}


@dataclass(frozen=True)
class ConfigDiff:
    """Key names only (never values), so a diff is safe to log and to put in metadata."""

    changed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # desired but absent
    extra: tuple[str, ...] = ()  # present but not desired (counts only on self-managed)

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.extra)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(sorted({*self.changed, *self.missing, *self.extra}))


def diff(desired: Mapping[str, str], actual: Mapping[str, str], *, flavor: Flavor) -> ConfigDiff:
    """What differs between the desired config and the one a Connect API returned."""
    cloud = flavor == "confluent_cloud"
    changed, missing = [], []
    for key, want in desired.items():
        if key not in actual:
            missing.append(key)
        elif actual[key] != want and not (cloud and actual[key] == MASK):
            changed.append(key)
    extra = [] if cloud else [k for k in actual if k not in desired]
    return ConfigDiff(tuple(sorted(changed)), tuple(sorted(missing)), tuple(sorted(extra)))


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    diff: ConfigDiff = ConfigDiff()

    @property
    def action(self) -> str:
        """The main step, or "noop"."""
        return self.steps[0] if self.steps else "noop"


# States a resume moves back to RUNNING (STOPPED: self-managed Connect 3.5+).
_RESUMABLE = frozenset({"PAUSED", "STOPPED"})


def plan(desired: Mapping[str, str], actual: Mapping[str, str] | None, state: str | None, *, flavor: Flavor,
         force_update: bool = False) -> Plan:
    """Steps that bring a connector to `desired` and running: create, update and/or resume; none if equal.

    `actual` / `state` are the stored config and connector state (None when the connector does not exist).
    """
    if actual is None:
        return Plan(("create",))
    delta = diff(desired, actual, flavor=flavor)
    steps: list[Step] = ["update"] if delta or force_update else []
    if state in _RESUMABLE:
        steps.append("resume")
    return Plan(tuple(steps), delta)
