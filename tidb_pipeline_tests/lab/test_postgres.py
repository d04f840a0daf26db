"""The lab's PostgreSQL (SQL Server stand-in): a private cluster on 127.0.0.1 with password logins."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pg8000.native
import pytest

from tidb_pipeline.lab.postgres import LAB_DATABASE, PostgresService
from tidb_pipeline.lab.service import PortInUseError, down, port_open, up
from tidb_pipeline.lab.settings import LAB_DB_USER, LabSettings
from tidb_pipeline.lab.ports import free_port




def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_private_cluster_lifecycle(tmp_path: Path) -> None:
    # tmp_path sits under pytest's 0700 folder: as root this also proves the server user can reach it.
    settings = LabSettings(root=tmp_path, ports={"postgres": free_port()})
    svc = PostgresService(settings)
    up([svc], log=lambda _m: None)
    try:
        pid = svc.pid()
        assert pid is not None and svc.is_ready()
        if os.geteuid() == 0:
            assert _uid(pid) != 0, "PostgreSQL must not run as root"
        conn = pg8000.native.Connection(**svc.connect_kwargs())  # type: ignore[arg-type]
        try:
            settings_rows = conn.run(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('listen_addresses', 'port', 'unix_socket_directories', 'data_directory') ORDER BY name"
            )
            assert dict(settings_rows) == {
                "data_directory": str(svc.cluster_dir),
                "listen_addresses": "127.0.0.1",
                "port": str(settings.port("postgres")),
                "unix_socket_directories": str(svc.socket_dir),
            }
            assert conn.run("SELECT current_database(), current_user, "
                            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)") == [
                [LAB_DATABASE, LAB_DB_USER, True]]
            conn.run("CREATE TABLE kept (id int PRIMARY KEY, v text)")
            conn.run("INSERT INTO kept VALUES (1, 'survives a restart')")
        finally:
            conn.close()

        # TCP logins are checked (SCRAM): a wrong password is refused.
        with pytest.raises(pg8000.native.DatabaseError) as err:
            pg8000.native.Connection(**{**svc.connect_kwargs(), "password": "wrong"})  # type: ignore[arg-type]
        assert "password authentication failed" in str(err.value)

        down([svc], log=lambda _m: None)
        assert svc.pid() is None and not port_open("127.0.0.1", settings.port("postgres"))
        up([svc], log=lambda _m: None)
        conn = pg8000.native.Connection(**svc.connect_kwargs())  # type: ignore[arg-type]
        try:
            assert conn.run("SELECT id, v FROM kept") == [[1, "survives a restart"]]
        finally:
            conn.close()
    finally:
        down([svc], log=lambda _m: None)
    assert svc.pid() is None


def test_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        svc = PostgresService(LabSettings(root=tmp_path, ports={"postgres": port}))
        with pytest.raises(PortInUseError) as err:
            up([svc], log=lambda _m: None)
    assert str(port) in str(err.value) and "postgres" in str(err.value)
    assert svc.pid() is None


def test_command_carries_marker_and_binds_loopback(tmp_path: Path) -> None:
    svc = PostgresService(LabSettings(root=tmp_path, ports={"postgres": 25432}))
    argv = svc.command()
    server = argv.index(next(a for a in argv if a.endswith("/postgres")))
    assert argv[server + 1:server + 7] == ["-D", str(svc.cluster_dir), "-p", "25432", "-k", str(svc.socket_dir)]
    assert "listen_addresses=127.0.0.1" in argv
    assert argv[-1] == "--lab.tidb-pipeline-lab=postgres"
    if os.geteuid() == 0:
        assert argv[0].endswith("setpriv") and "--reuid=postgres" in argv
    else:
        assert argv[0].endswith("/postgres")
