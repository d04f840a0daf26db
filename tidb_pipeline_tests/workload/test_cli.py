"""Workload CLI parsing: durations and connection defaults (no server)."""

from __future__ import annotations

import argparse

import pytest

from tidb_pipeline.workload.cli import connection_kwargs, parse_duration, register


@pytest.mark.parametrize("text, seconds", [("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("45", 45.0),
                                           ("500ms", 0.5), ("1.5m", 90.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10 minutes", "0s", "-5s"])
def test_bad_durations_say_what_to_write(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        parse_duration(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_connection_defaults_come_from_the_environment() -> None:
    args = _parser().parse_args(["workload", "run", "--duration", "2m", "--threads", "8"])
    env = {"TIDB_HOST": "tidb.example", "TIDB_PORT": "4001", "TIDB_USER": "bench", "TIDB_PASSWORD": "s3cret"}
    assert connection_kwargs(args, env) == {"host": "tidb.example", "port": 4001, "user": "bench", "password": "s3cret"}
    assert (args.duration, args.threads, args.warehouses, args.database) == (120.0, 8, None, "tpcc")


def test_flags_override_the_environment_and_empty_env_has_defaults() -> None:
    args = _parser().parse_args(["workload", "prepare", "--warehouses", "3", "--scale", "0.1", "--host", "h",
                                 "--port", "3306", "--user", "u", "--password", ""])
    assert connection_kwargs(args, {"TIDB_HOST": "x", "TIDB_PASSWORD": "p"}) == {
        "host": "h", "port": 3306, "user": "u", "password": ""}
    assert (args.warehouses, args.scale, args.database) == (3, 0.1, "tpcc")
    bare = _parser().parse_args(["workload", "check"])
    assert connection_kwargs(bare, {}) == {"host": "127.0.0.1", "port": 4000, "user": "root", "password": ""}


def test_bad_port_in_environment_names_the_variable() -> None:
    args = _parser().parse_args(["workload", "check"])
    with pytest.raises(SystemExit, match="TIDB_PORT"):
        connection_kwargs(args, {"TIDB_PORT": "four"})


def test_warehouses_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["workload", "prepare", "--warehouses", "0"])
    assert "must be at least 1" in capsys.readouterr().err
