from __future__ import annotations

import os

import pytest

from tidb_pipeline.cli import build_parser, main


def test_lab_rejects_unknown_part(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "status", "--only", "nope"]) == 2
    assert "unknown lab service 'nope'" in capsys.readouterr().err


def test_lab_actions_parse() -> None:
    args = build_parser().parse_args(["lab", "up", "--only", "kafka"])
    assert (args.action, args.only) == ("up", ["kafka"])


# --- discover against a server with a password (the lab's MariaDB) -------------------------------------------


@pytest.fixture()
def awkward_db(mariadb):  # noqa: ANN001, ANN201 - the lab service fixture; yields the database name
    import uuid

    import pymysql

    db = f"Disc-{uuid.uuid4().hex[:6]} DB"
    with pymysql.connect(autocommit=True, **mariadb.connect_kwargs()) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}`")
        cur.execute(f"CREATE TABLE `{db}`.`Order Items` (`Mixed Case` INT PRIMARY KEY, `select` INT)")
        cur.execute(f"CREATE TABLE `{db}`.`数据` (`id` INT NOT NULL, `v` INT, UNIQUE KEY (`id`))")
        cur.execute(f"CREATE TABLE `{db}`.`clash` (`id` INT PRIMARY KEY, `a b` INT, `a-b` INT)")
        cur.execute(f"CREATE TABLE `{db}`.`nokey` (`id` INT)")
    try:
        yield db
    finally:
        with pymysql.connect(autocommit=True, **mariadb.connect_kwargs()) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")


def _lab_tidb_env(settings, monkeypatch: pytest.MonkeyPatch, **override: str) -> None:  # noqa: ANN001
    from tidb_pipeline.lab.env import pipeline_env

    env = {k: v for k, v in pipeline_env(settings).items() if k.startswith("TIDB_")}
    for k, v in {**env, **override}.items():
        monkeypatch.setenv(k, v)


@pytest.mark.integration
def test_discover_works_with_a_password_and_awkward_names(
    awkward_db: str, lab_settings, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],  # noqa: ANN001
) -> None:
    from tidb_pipeline.config import load_config

    _lab_tidb_env(lab_settings, monkeypatch)
    assert os.environ["TIDB_PASSWORD"]  # the lab's user has a password: the EnvVar must be resolved
    out = tmp_path / "tidb_pipeline.yaml"
    assert main(["discover", "-d", awkward_db, "-o", str(out)]) == 0
    io = capsys.readouterr()
    assert io.out.strip() == f"wrote 2 tables to {out}"
    assert io.err.splitlines() == [
        f"skipped {awkward_db}.clash: columns 'a b' and 'a-b' both become Avro field 'a_b' (TiCDC cannot encode it; "
        "rename one)",
        f"skipped {awkward_db}.nokey: no primary key or NOT NULL unique key (TiCDC cannot replicate it)",
    ]
    config = load_config(out)
    assert [(t.db, t.table, t.key) for t in config.tables] == [
        (awkward_db, "Order Items", ("Mixed Case",)), (awkward_db, "数据", ("id",))]


@pytest.mark.integration
def test_discover_with_a_wrong_password_says_so_in_one_line(
    awkward_db: str, lab_settings, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],  # noqa: ANN001
) -> None:
    _lab_tidb_env(lab_settings, monkeypatch, TIDB_PASSWORD="not-the-password")
    out = tmp_path / "tidb_pipeline.yaml"
    assert main(["discover", "-d", awkward_db, "-o", str(out)]) == 1
    io = capsys.readouterr()
    host, port = lab_settings.host, lab_settings.port("mariadb")
    assert io.out == "" and len(io.err.splitlines()) == 1, io.err
    assert io.err.startswith(f"error: cannot read TiDB at {host}:{port} as user 'tidb_pipeline': Access denied")
    assert "Traceback" not in io.err and "not-the-password" not in io.err
    assert not out.exists()
    # A database that is not there is one clear line too (exit 2), with the near miss named.
    _lab_tidb_env(lab_settings, monkeypatch)
    assert main(["discover", "-d", awkward_db.lower(), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: database {awkward_db.lower()!r} not found on {host}:{port}; did you mean {awkward_db!r}? "
        "(names are matched exactly)")


@pytest.mark.integration
def test_discover_as_a_subprocess_prints_no_traceback(awkward_db: str, lab_settings, tmp_path) -> None:  # noqa: ANN001
    """The installed command, as a user runs it: exit status and stderr only."""
    import subprocess
    import sys

    from tidb_pipeline.lab.env import pipeline_env

    env = {**os.environ, **{k: v for k, v in pipeline_env(lab_settings).items() if k.startswith("TIDB_")}}
    ok = subprocess.run([sys.executable, "-m", "tidb_pipeline.cli", "discover", "-d", awkward_db, "-o",
                         str(tmp_path / "a.yaml")], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "wrote 2 tables" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "tidb_pipeline.cli", "discover", "-d", awkward_db, "-o",
                          str(tmp_path / "b.yaml")], env={**env, "TIDB_PASSWORD": "wrong"}, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr, bad.stderr
