"""The replica's FreshnessPolicy (what the UI shows) and the `replica_freshness` check give the same verdict.

Dagster's own evaluator (`TimeWindowFreshnessPolicyEvaluator`, what the freshness daemon runs) is applied to a
replica materialized in a real instance, at several ages, beside the check's verdict for the same age while
records wait.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.definitions.freshness_evaluator import TimeWindowFreshnessPolicyEvaluator
from dagster._core.loader import LoadingContextForTest
from dagster._core.test_utils import freeze_time

from tidb_pipeline.config import parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.check_results import Watermark, freshness_result
from tidb_pipeline.defs.tables import table_keys

_VERDICT = {FreshnessState.PASS: (True, None), FreshnessState.WARN: (False, dg.AssetCheckSeverity.WARN),
            FreshnessState.FAIL: (False, dg.AssetCheckSeverity.ERROR)}


def test_each_replica_declares_the_configured_policy() -> None:
    config = parse_config({"freshness": {"warn_after_minutes": 5, "fail_after_minutes": 30}, "tables": [
        {"db": "a", "table": "x"},
        {"db": "a", "table": "y", "freshness": {"warn_after_minutes": 60, "fail_after_minutes": 240}}]})
    graph = build_defs(config=config).resolve_asset_graph()
    x, y = (table_keys(config, t) for t in config.tables)
    assert graph.get(x.replica).freshness_policy == dg.FreshnessPolicy.time_window(
        fail_window=dt.timedelta(minutes=30), warn_window=dt.timedelta(minutes=5))
    assert graph.get(y.replica).freshness_policy == dg.FreshnessPolicy.time_window(
        fail_window=dt.timedelta(hours=4), warn_window=dt.timedelta(hours=1))
    assert graph.get(x.landing).freshness_policy is None  # only replicas promise freshness


_START = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
_CONFIG = parse_config({"freshness": {"warn_after_minutes": 10, "fail_after_minutes": 60},
                        "tables": [{"db": "a", "table": "x"}]})


@pytest.fixture(scope="module")
def materialized_at_start() -> Iterator[tuple[Any, dg.DagsterInstance]]:
    """The replica's asset node and an instance where it was materialized at `_START` (shared by the ages
    below: the evaluator and the check only read it)."""
    key = table_keys(_CONFIG, _CONFIG.tables[0]).replica
    node = build_defs(config=_CONFIG).resolve_asset_graph().get(key)
    with dg.instance_for_test() as instance:
        with freeze_time(_START):
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
        yield node, instance


@pytest.mark.parametrize("minutes", [0, 9.9, 10, 25, 59.9, 60, 61, 600])
def test_the_check_agrees_with_dagsters_evaluator(
        minutes: float, materialized_at_start: tuple[Any, dg.DagsterInstance]) -> None:
    node, instance = materialized_at_start
    config = _CONFIG
    now = _START + dt.timedelta(minutes=minutes)
    with freeze_time(now):
        state = asyncio.run(TimeWindowFreshnessPolicyEvaluator().evaluate_freshness(
            context=LoadingContextForTest(instance), node=node))
    last = instance.get_latest_materialization_event(node.key)
    naive = now.replace(tzinfo=None)
    materialized = dt.datetime.fromtimestamp(last.timestamp, dt.timezone.utc).replace(tzinfo=None)
    # Records wait; the merge watermark is older than the materialization (a verified_current record since).
    check = freshness_result({0: 3}, {0: Watermark(5, materialized - dt.timedelta(hours=5))}, naive,
                             config.freshness, last_materialized=materialized)
    assert (check.passed, check.severity if not check.passed else None) == _VERDICT[state]
