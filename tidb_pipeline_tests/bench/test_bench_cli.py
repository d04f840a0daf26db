"""`tidb-pipeline bench` on a fresh install: optional profilers stay optional."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

from tidb_pipeline.bench import cli, control
from tidb_pipeline.bench.report import Measure


def _stand_in_freshness(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The freshness figure without a lab: one made-up measure; what it was asked to profile goes in the dict."""
    seen: dict[str, object] = {}

    def figure(duration_s, scale, tick_s, profile=None, rate_tps=None):  # noqa: ANN001, ANN202 - a stand-in
        seen["profile"] = profile
        return [Measure("end-to-end freshness", "p95", 1.0, "s", "feed", 1.0)], {}

    monkeypatch.setattr(cli, "freshness_figure", figure)
    monkeypatch.setattr(control, "private_lab", lambda: contextlib.nullcontext({}))
    return seen


def test_freshness_runs_without_pyinstrument_and_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "pyinstrument", None)  # not installed: importing it raises
    assert not cli.profiler_available()
    seen = _stand_in_freshness(monkeypatch)
    out = tmp_path / "BENCH.md"
    assert cli.main(["--quick", "--only", "freshness", "--no-charts", "--output", str(out)]) == 0
    assert seen == {"profile": None}
    assert "pyinstrument is not installed" in capsys.readouterr().out
    assert "end-to-end freshness" in out.read_text()


def test_with_a_profiler_the_freshness_run_is_profiled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "profiler_available", lambda: True)
    seen = _stand_in_freshness(monkeypatch)
    assert cli.main(["--quick", "--only", "freshness", "--no-charts", "--output", str(tmp_path / "B.md"),
                     "--charts-dir", str(tmp_path)]) == 0
    assert seen["profile"] == tmp_path / "profile_freshness_run.txt"
