"""How many Hypothesis examples a property test runs in this test tier.

`make test` (everything, as CI) sets `TIDB_PIPELINE_TEST_TIER=full` and each property test runs the examples it
names; `make test-unit` (and a bare `pytest`) runs a quarter of them, at least 5, so the quick tier still checks
each property on random histories but in seconds.
"""

from __future__ import annotations

import os

FULL = os.environ.get("TIDB_PIPELINE_TEST_TIER") == "full"


def examples(full: int) -> int:
    """`full` in the full tier, else a quarter of it (at least 5)."""
    return full if FULL else max(5, full // 4)
