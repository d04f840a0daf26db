"""The `snowflake` resource: `dagster_snowflake.SnowflakeResource` configured from the environment.

Environment variables (read when definitions load; secrets stay `dg.EnvVar`s resolved only in the run):
- `SNOWFLAKE_ACCOUNT`, `SNOWFLAKE_USER` — required.
- `SNOWFLAKE_PASSWORD` — password authentication, or instead
  `SNOWFLAKE_PRIVATE_KEY` (PEM text, optionally base64) with `SNOWFLAKE_PRIVATE_KEY_PASSWORD` — key-pair
  authentication, chosen when `SNOWFLAKE_PRIVATE_KEY` is set.
- `SNOWFLAKE_DATABASE`, `SNOWFLAKE_SCHEMA`, `SNOWFLAKE_WAREHOUSE`, `SNOWFLAKE_ROLE` — optional session defaults;
  left out of the config when unset (an unset `dg.EnvVar` would fail the run instead of meaning "none").
- `SNOWFLAKE_HOST`, `SNOWFLAKE_PORT`, `SNOWFLAKE_PROTOCOL` — only to reach something other than
  `<account>.snowflakecomputing.com`, i.e. the lab's Snowflake stand-in (`tidb_pipeline.lab.snowflake.lab_env`).
  The protocol defaults to `http` for a loopback host (the lab) and `https` otherwise.
- `SNOWFLAKE_NETWORK_TIMEOUT`, `SNOWFLAKE_SOCKET_TIMEOUT` — optional seconds. The network timeout bounds the
  connector's retries (unset, it retries an HTTP 500 forever); the socket timeout bounds one request.
Host, port, protocol and socket timeout are not secrets and go to `additional_snowflake_connection_args`.

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


def _int_var(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"{name}={value!r} is not an integer; set it to a whole number or unset it") from exc


def connection_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Non-secret connector arguments from SNOWFLAKE_HOST/PORT/PROTOCOL/SOCKET_TIMEOUT; {} when none is set."""
    args: dict[str, Any] = {}
    if host := env.get("SNOWFLAKE_HOST", "").strip():
        protocol = env.get("SNOWFLAKE_PROTOCOL", "").strip() or ("http" if host in _LOOPBACK_HOSTS else "https")
        if protocol not in ("http", "https"):
            raise ValueError(f"SNOWFLAKE_PROTOCOL={protocol!r} must be 'http' or 'https'")
        args.update(host=host, protocol=protocol)
        if (port := _int_var(env, "SNOWFLAKE_PORT")) is not None:
            args["port"] = port
    if (socket_timeout := _int_var(env, "SNOWFLAKE_SOCKET_TIMEOUT")) is not None:
        args["socket_timeout"] = socket_timeout
    return args


def snowflake_resource(env: Mapping[str, str] | None = None) -> SnowflakeResource:
    """The project's Snowflake resource; `env` defaults to `os.environ` (secrets are only named, not read)."""
    env = os.environ if env is None else env
    auth: dict[str, Any]
    if env.get("SNOWFLAKE_PRIVATE_KEY"):
        auth = {"private_key": dg.EnvVar("SNOWFLAKE_PRIVATE_KEY")}
        if env.get("SNOWFLAKE_PRIVATE_KEY_PASSWORD"):
            auth["private_key_password"] = dg.EnvVar("SNOWFLAKE_PRIVATE_KEY_PASSWORD")
    else:
        auth = {"password": dg.EnvVar("SNOWFLAKE_PASSWORD")}
    optional: dict[str, Any] = {field: dg.EnvVar(var) for field, var in _OPTIONAL_FIELDS.items() if env.get(var)}
    if (network_timeout := _int_var(env, "SNOWFLAKE_NETWORK_TIMEOUT")) is not None:
        optional["network_timeout"] = network_timeout
    return SnowflakeResource(
        account=dg.EnvVar("SNOWFLAKE_ACCOUNT"),
        user=dg.EnvVar("SNOWFLAKE_USER"),
        **auth,
        **optional,
        additional_snowflake_connection_args=connection_overrides(env) or None,
    )
