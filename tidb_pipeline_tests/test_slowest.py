"""`make test`'s combined slowest-tests report over its two stages' JUnit XML (tidb_pipeline_tests/slowest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidb_pipeline_tests import slowest


def _junit(path: Path, cases: dict[str, float]) -> Path:
    body = "".join(f'<testcase classname="pkg.test_{path.stem}" name="{n}" time="{t}"/>' for n, t in cases.items())
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    return path


def test_one_list_over_both_stages_slowest_first_and_a_missing_stage_has_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unit = _junit(tmp_path / "unit.xml", {"a": 1.5, "b": 0.25})
    integration = _junit(tmp_path / "integration.xml", {"c": 30.0, "d": 0.5})
    assert slowest.slowest([unit, integration, tmp_path / "absent.xml"], 3) == [
        (30.0, "pkg.test_integration::c"), (1.5, "pkg.test_unit::a"), (0.5, "pkg.test_integration::d")]
    slowest.main(["-n", "2", str(unit), str(integration)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["   30.00s  pkg.test_integration::c", "    1.50s  pkg.test_unit::a"]
