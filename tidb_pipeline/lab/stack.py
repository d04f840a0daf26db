"""The lab's parts, in one place, for the CLI and the test fixtures."""

from __future__ import annotations

import importlib

from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings

# name -> "module:Class"; imported lazily so a part's dependencies load only when it is used.
SERVICES: dict[str, str] = {
    "kafka": "tidb_pipeline.lab.kafka:KafkaService",
    "mariadb": "tidb_pipeline.lab.mariadb:MariaDBService",
    "registry": "tidb_pipeline.lab.registry:RegistryService",
    "snowflake": "tidb_pipeline.lab.snowflake:SnowflakeService",
    "ticdc": "tidb_pipeline.lab.ticdc.server:TiCDCService",
    "connect": "tidb_pipeline.lab.connect:ConnectService",
    "postgres": "tidb_pipeline.lab.postgres:PostgresService",
}


def service(name: str, settings: LabSettings) -> Service:
    """Build one lab part by name."""
    try:
        module_name, cls_name = SERVICES[name].split(":")
    except KeyError:
        raise ValueError(f"unknown lab service {name!r}; choose from {', '.join(SERVICES)}") from None
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(settings)


def services(settings: LabSettings, names: list[str] | None = None) -> list[Service]:
    """The named parts (default: all of them) plus whatever they depend on, in start order."""
    wanted = list(names or SERVICES)
    built: dict[str, Service] = {}
    while wanted:
        name = wanted.pop(0)
        if name in built:
            continue
        svc = service(name, settings)
        built[name] = svc
        wanted.extend(d for d in svc.depends_on if d not in built)
    return [built[n] for n in SERVICES if n in built]
