"""The lab's process model: port clashes, idempotent `down`, never killing what it did not start."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tidb_pipeline.lab.mariadb import MariaDBService
from tidb_pipeline.lab.service import PortInUseError, down, up
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.ports import free_port




def test_port_in_use_names_port_and_service(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        settings = LabSettings(root=tmp_path, ports={"mariadb": port})
        with pytest.raises(PortInUseError) as err:
            up([MariaDBService(settings)], log=lambda _m: None)
    assert str(port) in str(err.value) and "mariadb" in str(err.value)
    assert MariaDBService(settings).pid() is None


def test_down_is_idempotent_and_spares_foreign_processes(tmp_path: Path) -> None:
    settings = LabSettings(root=tmp_path, ports={"mariadb": free_port()})
    svc = MariaDBService(settings)
    # A pid file pointing at a process the lab did not start (as after a pid is recycled).
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        svc.pid_file.write_text(str(stranger.pid))
        assert svc.pid() is None
        down([svc], log=lambda _m: None)
        down([svc], log=lambda _m: None)
        assert stranger.poll() is None, "down killed a process the lab did not start"
    finally:
        stranger.kill()
        stranger.wait()


def test_env_port_override_and_bad_value(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIDB_PIPELINE_LAB_KAFKA_PORT", "12345")
    assert LabSettings(root=tmp_path).port("kafka") == 12345
    monkeypatch.setenv("TIDB_PIPELINE_LAB_KAFKA_PORT", "abc")
    with pytest.raises(ValueError, match="TIDB_PIPELINE_LAB_KAFKA_PORT"):
        LabSettings(root=tmp_path)
