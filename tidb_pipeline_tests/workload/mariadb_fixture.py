"""A private MariaDB (the lab's MariaDBService) on a free port with its data in a tmp folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tidb_pipeline.lab.mariadb import MariaDBService
from tidb_pipeline.lab.service import down, up
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.ports import free_port




def start_mariadb(root: Path) -> MariaDBService:
    svc = MariaDBService(LabSettings(root=root, ports={"mariadb": free_port()}))
    up([svc], log=lambda _msg: None)
    return svc


@pytest.fixture(scope="module")
def private_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBService]:
    svc = start_mariadb(tmp_path_factory.mktemp("workload-lab"))
    try:
        yield svc
    finally:
        down([svc], log=lambda _msg: None)
