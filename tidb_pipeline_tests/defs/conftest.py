"""The end-to-end tests' shared source: one TPC-C database and its changefeeds for the whole `defs` package."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline_tests.defs.lab_pipeline import shared_tpcc_source


@pytest.fixture(scope="package")
def e2e_source(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service, ticdc: Service,
) -> Iterator[dict[str, Any]]:
    """`shared_tpcc_source`: prepared once, used by the builtin, connector and SQL Server end-to-end tests."""
    with shared_tpcc_source(lab_settings, mariadb) as source:
        yield source
