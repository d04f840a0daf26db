"""The `schema_registry` resource and the one accessor every reader of the registry uses.

The resource hands out `confluent_kafka`'s `SchemaRegistryClient`; the functions below read it: subjects,
a subject's latest version, all its versions, a schema by id. A subject or id the registry does not know
is None (or empty); any other failure (down, refused, 5xx, auth) is `SchemaRegistryUnavailable`, naming the
registry without credentials. Subject names come from `subject_names` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
from confluent_kafka.schema_registry import RegisteredSchema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from pydantic import Field


class SchemaRegistryResource(dg.ConfigurableResource):
    """Confluent Schema Registry (or the lab's stand-in); Basic auth from SCHEMA_REGISTRY_API_KEY/SECRET."""

    url: str = "http://127.0.0.1:18081"
    api_key: str | None = Field(default=None)
    api_secret: str | None = Field(default=None)
    timeout_s: int = 30

    def get_client(self) -> SchemaRegistryClient:
        conf: dict[str, Any] = {"url": self.url, "timeout": self.timeout_s}
        if self.api_key:
            conf["basic.auth.user.info"] = f"{self.api_key}:{self.api_secret or ''}"
        return SchemaRegistryClient(conf)


def schema_registry_resource(env: Mapping[str, str] | None = None) -> SchemaRegistryResource:
    from tidb_pipeline.resources.env import secret, setting

    return SchemaRegistryResource(
        url=setting("SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081", env),
        api_key=secret("SCHEMA_REGISTRY_API_KEY", env),
        api_secret=secret("SCHEMA_REGISTRY_API_SECRET", env),
    )


# --- the accessor ---------------------------------------------------------------------------------------

T = TypeVar("T")


class SchemaRegistryUnavailable(ConnectionError):
    """The schema registry could not answer (down, refused, 5xx, auth); the message says what to do."""


def subject_names(topic: str) -> tuple[str, str]:
    """The subjects TiCDC registers a topic's schemas under: TopicNameStrategy after it replaces the topic's
    dots by `_` (tiflow avro.go `sanitizeTopic`), so `tidb_my.db_t` -> `tidb_my_db_t-key` / `-value`."""
    t = topic.replace(".", "_")
    return f"{t}-key", f"{t}-value"


def registry_url(registry: SchemaRegistryClient) -> str:
    """The registry's URL for messages, without any user:password@ part."""
    url = str(getattr(registry, "_conf", {}).get("url", "")).split(",")[0]
    parts = urlsplit(url)
    if not parts.hostname:
        return "(url unknown)"
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def registry_call(registry: SchemaRegistryClient, what: str, call: Callable[[], T]) -> T | None:
    """Run one registry call; None when it answers 404, `SchemaRegistryUnavailable` for anything else."""
    try:
        return call()
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            return None
        cause = f"HTTP {exc.http_status_code}: {exc.error_message}"
    except Exception as exc:  # noqa: BLE001 - connection refused, timeouts, TLS: all mean "not reachable now"
        cause = f"{type(exc).__name__}: {exc}"
    raise SchemaRegistryUnavailable(
        f"schema registry {registry_url(registry)} failed while {what} ({cause}); nothing was loaded or "
        "committed and no offset moved, so retry the load once the registry answers"
    )


def all_subjects(registry: SchemaRegistryClient) -> list[str]:
    return list(registry_call(registry, "listing subjects", registry.get_subjects) or [])


def latest_version(registry: SchemaRegistryClient, subject: str) -> RegisteredSchema | None:
    """The subject's latest version, or None if the registry has no such subject."""
    return registry_call(registry, f"reading the latest {subject}", lambda: registry.get_latest_version(subject))


def all_versions(registry: SchemaRegistryClient, subject: str) -> list[RegisteredSchema]:
    """Every version of the subject, oldest first; empty if the registry has no such subject."""
    out: list[RegisteredSchema] = []
    for version in registry_call(registry, f"listing versions of {subject}", lambda: registry.get_versions(subject)) or []:
        reg = registry_call(registry, f"reading {subject} version {version}",
                            lambda v=version: registry.get_version(subject, v))  # type: ignore[misc]
        if reg is not None:
            out.append(reg)
    return out


def compatibility_level(registry: SchemaRegistryClient, subject: str | None) -> str | None:
    """The subject's own compatibility level (`GET /config/{subject}`), or the global one (`GET /config`) when
    `subject` is None; None when the subject sets none (the global level applies)."""
    what = f"reading the compatibility level of {subject}" if subject else "reading the global compatibility level"
    return registry_call(registry, what, lambda: registry.get_compatibility(subject))


def schema_text(registry: SchemaRegistryClient, schema_id: int) -> str | None:
    """The schema registered under `schema_id`, or None if the registry does not know the id."""
    got = registry_call(registry, f"reading schema id {schema_id}", lambda: registry.get_schema(schema_id))
    return None if got is None else got.schema_str
