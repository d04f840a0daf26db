"""The go-tpc wrapper: finding the pinned binary, its arguments, tpmC from its summary, errors without secrets."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tidb_pipeline.workload import gotpc

CONN = {"host": "127.0.0.1", "port": 13306, "user": "u", "password": "s3cret-pw"}


def _fake(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "go-tpc"
    script.write_text("#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/argv\"\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_a_missing_binary_names_the_command_that_installs_it(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setenv("TIDB_PIPELINE_GO_TPC", str(tmp_path / "nope"))
    with pytest.raises(gotpc.GoTPCNotFound, match="TIDB_PIPELINE_GO_TPC=.*v1.0.12"):
        gotpc.binary()
    monkeypatch.delenv("TIDB_PIPELINE_GO_TPC")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gotpc.sysconfig, "get_path", lambda _name: str(tmp_path / "venv-bin"))
    with pytest.raises(gotpc.GoTPCNotFound, match=r"make install .*go install github.com/pingcap/go-tpc/cmd/go-tpc@v1.0.12"):
        gotpc.binary()


def test_run_passes_the_connection_and_reads_tpmc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _fake(tmp_path, "echo '[Current] NEW_ORDER - Takes(s): 5.0, Count: 10'\n"
                           "echo 'tpmC: 8492.6, tpmTotal: 19065.2, efficiency: 66038.7%'\n")
    monkeypatch.setenv("TIDB_PIPELINE_GO_TPC", str(fake))
    lines: list[str] = []
    result = gotpc.run(CONN, database="tpcc", threads=3, duration_s=7, on_line=lines.append)
    assert (result.tpmc, result.tpm_total) == (8492.6, 19065.2)
    assert lines[-1].startswith("tpmC: 8492.6")
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:2] == ["tpcc", "run"]
    for flag, value in (("-H", "127.0.0.1"), ("-P", "13306"), ("-U", "u"), ("-p", "s3cret-pw"), ("-D", "tpcc"),
                        ("-T", "3"), ("--time", "7s"), ("--warehouses", "1")):
        assert argv[argv.index(flag) + 1] == value, flag


def test_a_failed_run_shows_its_output_but_never_the_password(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    fake = _fake(tmp_path, "echo 'Error 1045: Access denied'\nexit 3\n")
    monkeypatch.setenv("TIDB_PIPELINE_GO_TPC", str(fake))
    with pytest.raises(RuntimeError, match="exited 3") as failure:
        gotpc.prepare(CONN, database="tpcc")
    assert "Access denied" in str(failure.value) and "s3cret-pw" not in str(failure.value)
    assert "--no-check" in (tmp_path / "argv").read_text()


def test_a_run_without_a_summary_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIDB_PIPELINE_GO_TPC", str(_fake(tmp_path, "echo 'no summary'\n")))
    with pytest.raises(RuntimeError, match="printed no tpmC summary"):
        gotpc.run(CONN, duration_s=1)
