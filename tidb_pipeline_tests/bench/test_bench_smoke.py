"""Smoke test of `tidb-pipeline bench`: every figure's piece runs on tiny sizes and lands in the table.

No timing is asserted (speed is measured by the bench, never in tests); what is asserted is that each figure
the issue asks for is reported with a finite number beside its baseline, that the correctness checks the
figures carry hold (our replica equals the source, the recipe's does not), and that the report keeps the
hand-written part of BENCHMARKS.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from snowflake.connector import connect as snowflake_connect

from tidb_pipeline.bench import cli, report
from tidb_pipeline.bench.control import lab_down, parse_sensor_bench, private_lab_env
from tidb_pipeline.bench.freshness import MergeStep, assign, percentile, steps_between
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def measures(
    lab_settings: LabSettings, kafka: Service, registry: Service, snowflake: Service, mariadb: Service,
    ticdc: Service, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[list[report.Measure], dict]]:
    out: list[report.Measure] = []
    extra: dict = {}

    def add(got: tuple[list[report.Measure], dict]) -> None:
        out.extend(got[0])
        extra.update(got[1])

    env = private_lab_env(tmp_path_factory.mktemp("lab"))
    try:
        add(cli.lab_up_figure(env, ["registry"]))
    finally:
        lab_down(env)
    add(cli.landing_figure(3_000))
    with snowflake_connect(**connection_args(lab_settings)) as conn:
        add(cli.merge_figure(conn, (200, 2_000), 200))
        add(cli.recipe_figure(conn, 60, 2, 60))
    add(cli.freshness_figure(6.0, 0.01, 2.0))
    add(cli.control_figure(5, 5, lab_settings.kafka_bootstrap))
    add(cli.changefeed_figure(1_000, (200,), 2.0))
    add(cli.retention_figure((300, 3_000), 300, rounds=1))
    yield out, extra


def test_every_figure_is_reported_with_a_number(measures: tuple[list[report.Measure], dict]) -> None:
    got, _ = measures
    assert {m.figure for m in got} == set(report.FIGURES)
    for m in got:
        assert math.isfinite(m.value) and m.value >= 0, m
        if m.baseline_name:
            assert m.baseline is not None and m.baseline > 0 and m.ratio is not None, m
    text = report.text_table(got)
    for figure in report.FIGURES:
        assert figure in text
    # Every figure but `lab up` is measured beside a baseline of the same run.
    assert {m.figure for m in got if m.baseline_name} == set(report.FIGURES) - {"lab up"}
    lab = next(m for m in got if m.figure == "lab up")
    assert "registry" in lab.name and lab.value > 0


def test_correctness_carried_by_the_figures(measures: tuple[list[report.Measure], dict]) -> None:
    got, extra = measures
    recipe = extra["recipe"]
    assert recipe.ours.equal and not recipe.recipe.equal
    by_name = {m.name: m for m in got if m.figure == "recipe side by side"}
    assert [m.met for m in by_name.values()] == [False, False, True]
    # merge_scaling itself raises when pruned and unpruned replicas disagree or counts are off.
    assert {(p.size, p.prune) for p in extra["scaling"]} == {(200, False), (200, True), (2_000, False), (2_000, True)}
    fresh = extra["freshness"]
    assert fresh.rows == len(fresh.latencies) > 0
    assert fresh.p50 <= fresh.p95 <= fresh.max
    feed = extra["changefeed"]
    assert feed.sustained.rows == 1_000 and feed.sustained.rate > 0
    (paced,) = feed.paced
    assert paced.rows > 0 and not paced.missing and 0 <= paced.p50 <= paced.p95 <= paced.max
    assert fresh.runs >= 1
    # retention_scaling itself raises when a batch does not land and merge completely, by either path.
    assert [(p.retained, p.batch, p.rounds) for p in extra["retention"]] == [(300, 300, 1), (3_000, 300, 1)]


def test_report_writes_markdown_and_charts(measures: tuple[list[report.Measure], dict], tmp_path: Path) -> None:
    got, extra = measures
    charts = report.charts(got, tmp_path / "benchmarks", extra)
    assert sorted(p.name for p in charts) == sorted(
        ["landing_throughput.png", "merge_scaling.png", "recipe_side_by_side.png", "freshness.png",
         "control_plane.png"])
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in charts)
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nHand-written intro.\n\n## Closing note\n\nHand-written end.\n")
    facts = report.machine(report.load_average())
    report.write_markdown(doc, report.generated_section(got, facts, "tidb-pipeline bench --quick", charts, [], tmp_path))
    first = doc.read_text()
    report.write_markdown(doc, report.generated_section(got, facts, "tidb-pipeline bench --quick", charts, [], tmp_path))
    assert doc.read_text() == first  # replaced in place, not appended twice
    assert first.count(report.BEGIN) == 1 and "Hand-written intro." in first and "Hand-written end." in first
    for figure in report.FIGURES:
        assert f"| {figure} |" in first
    assert "](benchmarks/freshness.png)" in first


def test_freshness_assigns_each_row_to_the_merge_that_covered_it() -> None:
    steps = steps_between({("R.T", 0): 9}, {("R.T", 0): (20, 100.0), ("R.T", 1): (4, 101.0)}, 105.0)
    assert steps == [MergeStep("R.T", 0, 9, 20, 100.0, 105.0), MergeStep("R.T", 1, -1, 4, 101.0, 105.0)]
    assert assign(steps, "R.T", 0, 10) == steps[0]
    assert assign(steps, "R.T", 0, 9) is None
    assert assign(steps, "R.T", 1, 0) == steps[1]
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0


def test_sensor_bench_output_is_parsed_or_named() -> None:
    text = (
        "tick 1 (empty cursor: metadata + list_offsets): 120 ms; skip\n"
        "ticks 2..6 (no new data, list_offsets only): median 40 ms, max 55 ms; skip\n"
        "tick after 1 message in 100 topics: 70 ms; 100 observations\n"
        "one list_offsets call for 500 partitions on a connected client: median 12 ms (1 call, 0 errors)\n"
    )
    tick = parse_sensor_bench(text, 500)
    assert (tick.first_tick_ms, tick.tick_median_ms, tick.tick_max_ms, tick.moved_tick_ms, tick.list_offsets_ms) \
        == (120, 40, 55, 70, 12)
    with pytest.raises(RuntimeError, match="list_offsets_ms"):
        parse_sensor_bench(text.rsplit("one list_offsets", 1)[0], 500)

