"""Reading resource settings from the environment at definitions load (no network).

Non-secret settings are read as plain values with a lab default; secrets become `dg.EnvVar`s, resolved
only inside a run, so they never reach definitions, logs or the UI. A secret that is not set is left out
(`None`) rather than turned into an `EnvVar` that would fail every run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import dagster as dg


def setting(name: str, default: str, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get(name) or default


def int_setting(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    raw = setting(name, str(default), env)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer; fix or unset it") from None


def secret(name: str, env: Mapping[str, str] | None = None) -> dg.EnvVar | None:
    env = os.environ if env is None else env
    return dg.EnvVar(name) if env.get(name) else None


def resolve_secret(name: str, what: str) -> str:
    """The value of the secret `dg.EnvVar(name)`, read now (inside a run); an error naming the variable,
    never showing a value, when it is unset or empty. `what` says what needs it."""
    value = dg.EnvVar(name).get_value()
    if not value:
        raise ValueError(f"environment variable {name} is not set (or empty): {what} needs it; set it in the "
                         "environment of the Dagster code location and of the runs")
    return value


def hash_salt_reader(env_name: str | None, table: str) -> Callable[[], str]:
    """Reads the column policy's salt of `table` from `env_name` when called (only by a run that hashes)."""
    def read() -> str:
        if not env_name:
            raise ValueError(f"{table} hashes columns but names no hash_salt_env in tidb_pipeline.yaml")
        return resolve_secret(env_name, f"hashing columns of {table}")
    return read
