"""The resources every definition uses, configured from the environment with lab defaults.

Non-secret settings are plain values read at load; secrets are `dg.EnvVar`s resolved inside runs. The
fan-out resources (`sqlserver`, `ksqldb`, `kafka_connect`) are added only when the config enables what
uses them, so a config without them needs none of their settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.replication.connectors import connector_tables
from tidb_pipeline.resources.env import int_setting, secret, setting
from tidb_pipeline.resources.kafka import kafka_resource
from tidb_pipeline.resources.kafka_connect import kafka_connect_resource
from tidb_pipeline.resources.notify import SmtpResource, WebhookResource
from tidb_pipeline.resources.ksqldb import ksqldb_resource
from tidb_pipeline.resources.schema_registry import schema_registry_resource
from tidb_pipeline.resources.snowflake import snowflake_resource
from tidb_pipeline.resources.sqlserver import SqlServerResource, sqlserver_resource
from tidb_pipeline.resources.ticdc import ticdc_resource
from tidb_pipeline.resources.tidb import TiDBResource


def tidb_resource(env: Mapping[str, str] | None = None) -> TiDBResource:
    return TiDBResource(
        host=setting("TIDB_HOST", "127.0.0.1", env),
        port=int_setting("TIDB_PORT", 4000, env),
        user=setting("TIDB_USER", "root", env),
        password=secret("TIDB_PASSWORD", env),
        ddl_history_table=setting("TIDB_DDL_HISTORY_TABLE", "mysql.tidb_ddl_history", env),
    )


def sqlserver_for(config: PipelineConfig, env: Mapping[str, str] | None = None) -> SqlServerResource:
    """The `sqlserver` resource with the config's database and schema unless SQLSERVER_DATABASE/_SCHEMA say
    otherwise; a contradiction fails at load rather than in every run."""
    env = os.environ if env is None else env
    declared = {"SQLSERVER_DATABASE": config.sqlserver.database, "SQLSERVER_SCHEMA": config.sqlserver.db_schema}
    for name, value in declared.items():
        if value is not None and env.get(name) and env[name] != value:
            raise ValueError(f"{name}={env[name]!r} but the config's sqlserver section says {value!r}; "
                             f"unset {name} or make the two agree")
    merged = {**env, **{k: v for k, v in declared.items() if v is not None and not env.get(k)}}
    return sqlserver_resource(merged)


def alert_resources(config: PipelineConfig, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A resource per alert destination whose secret is set (the alerts sensor says which are missing)."""
    from dagster_msteams import MSTeamsResource
    from dagster_slack import SlackResource

    env = os.environ if env is None else env
    a, out = config.alerts, dict[str, dg.ConfigurableResource]()
    if a.slack is not None and env.get(a.slack.token_env):
        out["alert_slack"] = SlackResource(token=dg.EnvVar(a.slack.token_env))
    if a.teams is not None and env.get(a.teams.webhook_url_env):
        out["alert_teams"] = MSTeamsResource(hook_url=dg.EnvVar(a.teams.webhook_url_env))
    if a.webhook is not None and env.get(a.webhook.url_env):
        out["alert_webhook"] = WebhookResource(url=dg.EnvVar(a.webhook.url_env))
    if a.email is not None and (a.email.password_env is None or env.get(a.email.password_env)):
        e = a.email
        out["alert_email"] = SmtpResource(
            host=e.smtp_host, port=e.smtp_port, security=e.security, sender=e.sender, recipients=list(e.recipients),
            username=dg.EnvVar(e.username_env) if e.username_env and env.get(e.username_env) else None,
            password=dg.EnvVar(e.password_env) if e.password_env else None, timeout_s=e.timeout_s,
        )
    return out


def build_resources(env: Mapping[str, str] | None = None, *, config: PipelineConfig | None = None) -> dict[str, Any]:
    """The core resources, plus those the config's fan-out needs (none without a config)."""
    resources: dict[str, Any] = {
        "tidb": tidb_resource(env),
        "kafka": kafka_resource(env),
        "schema_registry": schema_registry_resource(env),
        "snowflake": snowflake_resource(env),
        "ticdc": ticdc_resource(env),
    }
    if config is None:
        return resources
    if config.sqlserver.enabled:
        resources["sqlserver"] = sqlserver_for(config, env)
    if config.ksqldb.enabled:
        resources["ksqldb"] = ksqldb_resource(env)
    if connector_tables(config) or (config.sqlserver.enabled and config.sqlserver.mode == "connector"):
        resources["kafka_connect"] = kafka_connect_resource(env)
    resources.update(alert_resources(config, env))
    return resources
