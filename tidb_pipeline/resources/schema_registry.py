"""The `schema_registry` resource: hands out `confluent_kafka`'s `SchemaRegistryClient`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from confluent_kafka.schema_registry import SchemaRegistryClient
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
