from __future__ import annotations

import pytest

from tidb_pipeline.cli import build_parser, main


def test_lab_rejects_unknown_part(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "status", "--only", "nope"]) == 2
    assert "unknown lab service 'nope'" in capsys.readouterr().err


def test_lab_actions_parse() -> None:
    args = build_parser().parse_args(["lab", "up", "--only", "kafka"])
    assert (args.action, args.only) == ("up", ["kafka"])
