"""A private MariaDB (the lab's MariaDBService) on a free port with its data in a tmp folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tidb_pipeline.lab.mariadb import MariaDBService
from tidb_pipeline_tests.lab_resources import private_part


@pytest.fixture(scope="module")
def private_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBService]:
    with private_part(MariaDBService, tmp_path_factory.mktemp("workload-lab")) as svc:
        yield svc
