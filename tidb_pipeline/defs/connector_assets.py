"""`confluent/<connector>` assets: the Confluent sinks Dagster owns, reconciled to the declared config.

    kafka/<topic> ...  ─▶  confluent/<snowflake sink>   (writes snowflake/<landing_schema>/<TOPIC_UPPER>)
                           built when any table uses `connector` landing mode
    kafka/<topic> ...  ─▶  confluent/<sqlserver sink>  ─▶  sqlserver/<database>/<topic>  (external: the sink writes it)
                           built when `sqlserver.enabled` and `sqlserver.mode: connector`

Materialising one reads the connector's stored config and state, then creates it, updates it with the
full desired config (never with what was read back: Confluent Cloud masks secrets), resumes it if paused,
or does nothing (`engine.connectors.reconcile_connector`). The desired config is built inside the run from
the resources, so credentials are resolved only there: the Kafka API key from `kafka`, the Snowflake
account, user and key pair from `snowflake` (the managed sink authenticates with a key pair only), the
SQL Server login from `sqlserver`. Metadata carries key names, states and counts, never a config value
that could be a secret.

Building these objects reads only the config; no network at load.
"""

# No `from __future__ import annotations`: Dagster reads the asset function's annotations at runtime.
import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dagster as dg
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.engine.connectors import ReconcileResult, raise_if_failed, reconcile_connector
from tidb_pipeline.defs.tables import group_name, table_keys
from tidb_pipeline.replication.connectors import (
    KafkaCredentials,
    SnowflakeSinkSettings,
    SqlServerSinkSettings,
    connector_tables,
    snowflake_sink_config,
    sqlserver_sink_config,
)
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.kafka_connect import KafkaConnectResource
from tidb_pipeline.resources.sqlserver import SqlServerResource

GROUP = "confluent"


class ConnectorSettingsError(ValueError):
    """A resource lacks what the connector config needs; the message names the setting to provide."""


class ConnectorRunConfig(dg.Config):
    """Run options of a connector asset."""

    force_update: bool = False  # push the config even if it looks equal (e.g. after rotating a secret)
    wait_running_s: float | None = None  # wait until the connector and its tasks run; None: report the state


def confluent_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["confluent", name])


def sqlserver_connector_key(config: PipelineConfig, topic: str) -> dg.AssetKey:
    """Same key the built-in applier's asset has: the table is named after the topic (`table.name.format=${topic}`)."""
    return dg.AssetKey(["sqlserver", config.sqlserver.database, topic])


# --- settings from resources, inside the run ------------------------------------------------------------
def kafka_credentials(kafka: KafkaResource, connector: str) -> KafkaCredentials:
    if not (kafka.sasl_username and kafka.sasl_password):
        raise ConnectorSettingsError(
            f"connector {connector!r} consumes with a Kafka API key (kafka.auth.mode=KAFKA_API_KEY); set "
            "KAFKA_API_KEY and KAFKA_API_SECRET"
        )
    return KafkaCredentials(kafka.sasl_username, kafka.sasl_password)


def _pem_text(raw: str) -> str:
    """The key as PEM or bare body; dagster-snowflake also accepts base64 of the PEM file, so undo that."""
    if "-----BEGIN" in raw:
        return raw
    try:
        decoded = base64.b64decode("".join(raw.split()), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return raw
    return decoded if "-----BEGIN" in decoded else raw


def snowflake_sink_settings(config: PipelineConfig, kafka: KafkaResource, snowflake: SnowflakeResource) -> SnowflakeSinkSettings:
    name = config.connectors.snowflake_sink_name
    if not snowflake.account or not snowflake.user:
        raise ConnectorSettingsError(f"connector {name!r} needs the Snowflake account and user; set "
                                     "SNOWFLAKE_ACCOUNT and SNOWFLAKE_USER")
    if snowflake.private_key_path:
        with open(snowflake.private_key_path) as f:
            key = f.read()
    elif snowflake.private_key:
        key = snowflake.private_key
    else:
        raise ConnectorSettingsError(
            f"connector {name!r} authenticates to Snowflake with a key pair only; set SNOWFLAKE_PRIVATE_KEY "
            "(and SNOWFLAKE_PRIVATE_KEY_PASSWORD if it is encrypted) for SNOWFLAKE_USER"
        )
    c = config.connectors
    if c.snowflake_ingestion_method == "SNOWPIPE_STREAMING" and not snowflake.role:
        raise ConnectorSettingsError(
            f"connector {name!r} ingests with SNOWPIPE_STREAMING, which needs a Snowflake role "
            "(snowflake.role.name); set SNOWFLAKE_ROLE, or set connectors.snowflake_ingestion_method: SNOWPIPE")
    return SnowflakeSinkSettings(
        name=name,
        kafka=kafka_credentials(kafka, name),
        url=f"{snowflake.account}.snowflakecomputing.com:443",
        user=snowflake.user,
        private_key=_pem_text(key),
        private_key_passphrase=snowflake.private_key_password or None,
        ingestion_method=c.snowflake_ingestion_method,
        role=snowflake.role or None,
        buffer_flush_time_s=c.buffer_flush_time_s,
        buffer_count_records=c.buffer_count_records,
        buffer_size_bytes=c.buffer_size_bytes,
        tasks_max=c.tasks_max,
    )


def sqlserver_sink_settings(config: PipelineConfig, kafka: KafkaResource, sqlserver: SqlServerResource) -> SqlServerSinkSettings:
    name = config.connectors.sqlserver_sink_name
    if sqlserver.dialect != "mssql":
        raise ConnectorSettingsError(f"connector {name!r} writes SQL Server only, but SQLSERVER_DRIVER is "
                                     f"{sqlserver.drivername!r}; use mssql+pytds or sqlserver.mode: builtin")
    if not sqlserver.password:
        raise ConnectorSettingsError(f"connector {name!r} needs the SQL Server login's password; set SQLSERVER_PASSWORD")
    return SqlServerSinkSettings(
        name=name, kafka=kafka_credentials(kafka, name), host=sqlserver.host, port=sqlserver.port,
        user=sqlserver.username, password=sqlserver.password, database=sqlserver.database,
        tasks_max=config.connectors.tasks_max,
    )


# --- the reconcile step shared by both assets (the I/O is engine.connectors) -------------------------------------------------------------
def reconcile_metadata(result: ReconcileResult, *, flavor: str, topics: Sequence[str]) -> dict[str, Any]:
    """Names, states and counts only (safe for the UI)."""
    return {
        **result.metadata(),
        "action": result.action,
        "flavor": flavor,
        "topics": len(topics),
        "task_states": ", ".join(f"{t.id}: {t.state}" for t in result.status.tasks) if result.status else "(none)",
    }


def reconcile(
    kafka_connect: KafkaConnectResource, name: str, desired: Mapping[str, str], run: ConnectorRunConfig,
    *, log: Callable[[str], None], topics: Sequence[str],
) -> dg.MaterializeResult:
    with kafka_connect.get_client() as client:
        result = reconcile_connector(client, name, desired, force_update=run.force_update,
                                     wait_running_s=run.wait_running_s)
    log(f"connector {name}: {result.action} (changed keys: {', '.join(result.plan.diff.keys) or 'none'})")
    raise_if_failed(result, desired)
    return dg.MaterializeResult(metadata=reconcile_metadata(result, flavor=client.flavor, topics=topics))


# --- asset factories --------------------------------------------------------------------------------------
def build_snowflake_sink_asset(*, config: PipelineConfig) -> dg.AssetsDefinition | None:
    """The Snowflake Sink filling the landing tables of tables in `connector` landing mode; None if there are none."""
    tables = connector_tables(config)
    if not tables:
        return None
    pipeline = config  # the asset's own `config` parameter is its run config
    name = config.connectors.snowflake_sink_name
    topics = [config.topic(t) for t in tables]

    @dg.asset(
        key=confluent_key(name), deps=[table_keys(config, t).kafka for t in tables], group_name=GROUP,
        kinds={"confluent", "snowflake"},
        description=(f"Confluent Snowflake Sink `{name}`: writes {len(tables)} topic(s) into the landing tables of "
                     f"`{config.snowflake.database}`.`{config.snowflake.landing_schema}` in the connector's layout. "
                     "Materialising creates, updates or resumes it to match the declared config."),
        metadata={"connector_class": "SnowflakeSink", "topics": ", ".join(topics),
                  "landing_tables": ", ".join(config.landing_table(t) for t in tables)},
    )
    def _snowflake_sink(
        context: dg.AssetExecutionContext, config: ConnectorRunConfig, kafka_connect: KafkaConnectResource,
        kafka: KafkaResource, snowflake: SnowflakeResource,
    ) -> dg.MaterializeResult:
        desired = snowflake_sink_config(pipeline, snowflake_sink_settings(pipeline, kafka, snowflake), tables)
        return reconcile(kafka_connect, name, desired, config, log=context.log.info, topics=topics)

    return _snowflake_sink


def build_sqlserver_sink_assets(*, config: PipelineConfig) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """The SQL Server Sink and the tables it writes (external); empty unless sqlserver is in `connector` mode."""
    s = config.sqlserver
    if not (s.enabled and s.mode == "connector" and config.tables):
        return []
    pipeline = config  # the asset's own `config` parameter is its run config
    name = config.connectors.sqlserver_sink_name
    topics = [config.topic(t) for t in config.tables]
    key = confluent_key(name)

    @dg.asset(
        key=key, deps=[table_keys(config, t).kafka for t in config.tables], group_name=GROUP,
        kinds={"confluent", "sqlserver"},
        description=(f"Confluent Microsoft SQL Server Sink `{name}`: upserts {len(topics)} topic(s) into database "
                     f"`{s.database}` by record key, tombstone = delete, tables auto-created and evolved."),
        metadata={"connector_class": "MicrosoftSqlServerSink", "topics": ", ".join(topics)},
    )
    def _sqlserver_sink(
        context: dg.AssetExecutionContext, config: ConnectorRunConfig, kafka_connect: KafkaConnectResource,
        kafka: KafkaResource, sqlserver: SqlServerResource,
    ) -> dg.MaterializeResult:
        if sqlserver.database != s.database:
            raise ConnectorSettingsError(f"connector {name!r} is declared for database {s.database!r} but the "
                                         f"sqlserver resource names {sqlserver.database!r}; make them agree")
        desired = sqlserver_sink_config(pipeline, sqlserver_sink_settings(pipeline, kafka, sqlserver))
        return reconcile(kafka_connect, name, desired, config, log=context.log.info, topics=topics)

    tables = [
        dg.AssetSpec(
            sqlserver_connector_key(config, config.topic(t)), deps=[table_keys(config, t).kafka, key],
            group_name=group_name(t), kinds={"sqlserver"},
            description=(f"SQL Server table `{config.topic(t)}` with TiDB `{t.db}`.`{t.table}`'s rows, written by "
                         f"the SQL Server Sink `{name}`."),
            metadata={"source": f"{t.db}.{t.table}", "topic": config.topic(t), "written_by": name},
        )
        for t in config.tables
    ]
    return [_sqlserver_sink, *tables]


def build_all_connector_assets(*, config: PipelineConfig) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    snowflake_sink = build_snowflake_sink_asset(config=config)
    return [*([snowflake_sink] if snowflake_sink else []), *build_sqlserver_sink_assets(config=config)]
