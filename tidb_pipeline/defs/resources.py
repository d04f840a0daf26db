"""The resources every definition uses, configured from the environment with lab defaults.

Non-secret settings are plain values read at load; secrets are `dg.EnvVar`s resolved inside runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidb_pipeline.resources.env import int_setting, secret, setting
from tidb_pipeline.resources.kafka import kafka_resource
from tidb_pipeline.resources.schema_registry import schema_registry_resource
from tidb_pipeline.resources.snowflake import snowflake_resource
from tidb_pipeline.resources.ticdc import ticdc_resource
from tidb_pipeline.resources.tidb import TiDBResource


def tidb_resource(env: Mapping[str, str] | None = None) -> TiDBResource:
    return TiDBResource(
        host=setting("TIDB_HOST", "127.0.0.1", env),
        port=int_setting("TIDB_PORT", 4000, env),
        user=setting("TIDB_USER", "root", env),
        password=secret("TIDB_PASSWORD", env),
    )


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "tidb": tidb_resource(env),
        "kafka": kafka_resource(env),
        "schema_registry": schema_registry_resource(env),
        "snowflake": snowflake_resource(env),
        "ticdc": ticdc_resource(env),
    }
