"""The `snowflake` resource: `dagster_snowflake.SnowflakeResource` configured from the environment.

Environment variables (read when definitions load; secrets stay `dg.EnvVar`s resolved only in the run):
- `SNOWFLAKE_ACCOUNT`, `SNOWFLAKE_USER` — required.
- `SNOWFLAKE_PASSWORD` — password authentication, or instead
  `SNOWFLAKE_PRIVATE_KEY` (PEM text, optionally base64) with `SNOWFLAKE_PRIVATE_KEY_PASSWORD` — key-pair
  authentication, chosen when `SNOWFLAKE_PRIVATE_KEY` is set.
- `SNOWFLAKE_DATABASE`, `SNOWFLAKE_SCHEMA`, `SNOWFLAKE_WAREHOUSE`, `SNOWFLAKE_ROLE` — optional session defaults;
  left out of the config when unset (an unset `dg.EnvVar` would fail the run instead of meaning "none").
- `SNOWFLAKE_HOST`, `SNOWFLAKE_PORT`, `SNOWFLAKE_PROTOCOL` — only to reach something other than
  `<account>.snowflakecomputing.com`, i.e. the lab's fakesnow server (`tidb_pipeline.lab.snowflake.lab_env`).
  They are not secrets and go to `additional_snowflake_connection_args`. The protocol defaults to `http` for a
  loopback host (the lab) and `https` otherwise.

Nothing here opens a connection; the resource connects when an asset asks for one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_snowflake import SnowflakeResource

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_OPTIONAL_FIELDS = {
    "database": "SNOWFLAKE_DATABASE",
    "schema_": "SNOWFLAKE_SCHEMA",
    "warehouse": "SNOWFLAKE_WAREHOUSE",
    "role": "SNOWFLAKE_ROLE",
}


def endpoint_args(env: Mapping[str, str]) -> dict[str, Any]:
    """`host`/`port`/`protocol` connection arguments from SNOWFLAKE_HOST etc., or {} when no host is set."""
    host = env.get("SNOWFLAKE_HOST", "").strip()
    if not host:
        return {}
    args: dict[str, Any] = {
        "host": host,
        "protocol": env.get("SNOWFLAKE_PROTOCOL") or ("http" if host in _LOOPBACK_HOSTS else "https"),
    }
    if port := env.get("SNOWFLAKE_PORT", "").strip():
        try:
            args["port"] = int(port)
        except ValueError as exc:
            raise ValueError(f"SNOWFLAKE_PORT={port!r} is not a port number; set it to an integer or unset it") from exc
    if args["protocol"] not in ("http", "https"):
        raise ValueError(f"SNOWFLAKE_PROTOCOL={args['protocol']!r} must be 'http' or 'https'")
    return args


def snowflake_resource(env: Mapping[str, str] | None = None) -> SnowflakeResource:
    """The project's Snowflake resource; `env` defaults to `os.environ` (only presence and endpoint are read)."""
    env = os.environ if env is None else env
    auth: dict[str, Any]
    if env.get("SNOWFLAKE_PRIVATE_KEY"):
        auth = {"private_key": dg.EnvVar("SNOWFLAKE_PRIVATE_KEY")}
        if env.get("SNOWFLAKE_PRIVATE_KEY_PASSWORD"):
            auth["private_key_password"] = dg.EnvVar("SNOWFLAKE_PRIVATE_KEY_PASSWORD")
    else:
        auth = {"password": dg.EnvVar("SNOWFLAKE_PASSWORD")}
    optional = {field: dg.EnvVar(var) for field, var in _OPTIONAL_FIELDS.items() if env.get(var)}
    return SnowflakeResource(
        account=dg.EnvVar("SNOWFLAKE_ACCOUNT"),
        user=dg.EnvVar("SNOWFLAKE_USER"),
        **auth,
        **optional,
        additional_snowflake_connection_args=endpoint_args(env) or None,
    )
