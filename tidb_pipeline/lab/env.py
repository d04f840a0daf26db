"""The environment variables that point the pipeline's resources at the lab, and a way to apply them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER, LabSettings


def pipeline_env(settings: LabSettings) -> dict[str, str]:
    """What `tidb-pipeline lab env` prints: the resources' `dg.EnvVar`s, set for this lab."""
    from tidb_pipeline.lab.postgres import LAB_DATABASE
    from tidb_pipeline.lab.ticdc.ddl_history import STANDIN
    from tidb_pipeline.lab.snowflake import lab_env

    return {
        "TIDB_HOST": settings.host, "TIDB_PORT": str(settings.port("mariadb")),
        "TIDB_USER": LAB_DB_USER, "TIDB_PASSWORD": LAB_DB_PASSWORD,
        # MariaDB has no DDL job history: the lab change feed keeps TiDB's table as a stand-in there.
        "TIDB_DDL_HISTORY_TABLE": STANDIN,
        "TICDC_URL": settings.ticdc_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": settings.registry_url,
        # The lab's PostgreSQL stands in for SQL Server behind the built-in SQL applier.
        "SQLSERVER_DRIVER": "postgresql+pg8000", "SQLSERVER_HOST": settings.host,
        "SQLSERVER_PORT": str(settings.port("postgres")), "SQLSERVER_USER": LAB_DB_USER,
        "SQLSERVER_PASSWORD": LAB_DB_PASSWORD, "SQLSERVER_DATABASE": LAB_DATABASE,
        "KAFKA_CONNECT_FLAVOR": "self_managed", "KAFKA_CONNECT_URL": settings.connect_url,
        **lab_env(settings),
    }


@contextmanager
def applied(values: Mapping[str, str], *, unset: tuple[str, ...] = ()) -> Iterator[None]:
    """Set `values` (and remove `unset`) in `os.environ` for the block, then put back exactly what was there."""
    saved = {k: os.environ.get(k) for k in [*values, *unset]}
    os.environ.update(values)
    for k in unset:
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
