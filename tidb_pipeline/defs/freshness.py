"""Replica freshness, one rule for Dagster's freshness policy and the `replica_freshness` check.

Each replica declares `dg.FreshnessPolicy.time_window(warn, fail)` from the config's `freshness` (or its
table's override), so the UI's freshness status shows it: Dagster measures the time since the replica's
last materialization. A merge materializes the replica, and while idle the offsets sensor records a
`verified_current` materialization on every replica that holds all of Kafka (`defs/idle.py`), so
"materialized recently" means "held everything in Kafka recently".

The `replica_freshness` check applies the same windows to the same clock whenever records wait: seconds
since the replica's last materialization in the Dagster instance (the merge watermark's time when Dagster
has none), FAIL as ERROR, WARN as WARN, with Dagster's own boundaries (`>=`). When nothing waits it passes.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import dagster as dg

from tidb_pipeline.config import FreshnessConfig

State = Literal["PASS", "WARN", "FAIL"]


def replica_freshness_policy(limits: FreshnessConfig) -> dg.FreshnessPolicy:
    return dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(minutes=limits.fail_after_minutes),
                                          warn_window=dt.timedelta(minutes=limits.warn_after_minutes))


def freshness_state(seconds_since_update: float, limits: FreshnessConfig) -> State:
    """Dagster's time-window rule (`TimeWindowFreshnessPolicyEvaluator`): FAIL at or past fail, then WARN."""
    if seconds_since_update >= limits.fail_after_minutes * 60:
        return "FAIL"
    if seconds_since_update >= limits.warn_after_minutes * 60:
        return "WARN"
    return "PASS"
