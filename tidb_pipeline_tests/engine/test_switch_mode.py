"""Changing a table's mode: the merge refuses a replica in another mode's shape, naming the `switch_mode` job;
the job's work (`engine.switch_mode`) rebuilds it, and merging continues from the same watermark.

In-process fakesnow with a stub registry (the merge tests' schemas)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tidb_pipeline.engine.replica import forget_ensured, merge_replica
from tidb_pipeline.engine.switch_mode import switch_replica_mode
from tidb_pipeline.replication.mode_columns import HISTORY, REPLICA, SOFT_DELETE
from tidb_pipeline_tests.engine.test_replica import _Registry
from tidb_pipeline_tests.replication.support import NOW, Replica, fake_snowflake
from tidb_pipeline_tests.replication.test_merge import KEY, VALUE, k, v


def _merge(r: Replica, mode: str) -> Any:
    return merge_replica(connection=r.conn, registry=_Registry(KEY, VALUE), topic="tidb_test_t", landing=r.plan.landing,
                         replica=r.plan.replica, watermarks=r.plan.watermarks, now=NOW, mode=mode)


def test_a_mode_change_needs_the_switch_then_merging_resumes_in_the_new_shape() -> None:
    forget_ensured()
    with fake_snowflake() as conn:
        r = Replica(conn, KEY, VALUE)
        conn.cursor().execute(f"DROP TABLE {r.plan.replica.sql}")  # merge_replica creates it
        r.land([(0, 0, k(1), v(1, "a", commit_ts=1 << 18)), (0, 1, k(2), v(2, "b", commit_ts=2 << 18))])
        _merge(r, REPLICA)
        r.land([(0, 2, k(1), v(1, "a2", commit_ts=3 << 18)), (0, 3, k(2), None)])
        with pytest.raises(ValueError, match="switch_mode job"):
            _merge(r, SOFT_DELETE)
        switched = switch_replica_mode(connection=conn, registry=_Registry(KEY, VALUE), topic="tidb_test_t",
                                       replica=r.plan.replica, mode=SOFT_DELETE, now=NOW)
        assert switched is not None and (switched.old, switched.new, switched.rows_after) == (REPLICA, SOFT_DELETE, 2)
        outcome = _merge(r, SOFT_DELETE)
        assert outcome is not None and outcome.ranges[0].after_offset == 1  # the watermark was kept
        deleted_at = NOW.replace(tzinfo=None)  # the tombstone's record timestamp
        assert r.rows() == [(1, "a2", Decimal("1.00"), False, None), (2, "b", Decimal("1.00"), True, deleted_at)]
        # On to history: the live row is one current version, the deleted one a delete version keeping its values.
        switch_replica_mode(connection=conn, registry=_Registry(KEY, VALUE), topic="tidb_test_t",
                            replica=r.plan.replica, mode=HISTORY, now=NOW)
        r.land([(0, 4, k(1), v(1, "a3", commit_ts=4 << 18))])
        _merge(r, HISTORY)
        cur = conn.cursor()
        cur.execute(f'SELECT "id", "name", "_OP", "_IS_CURRENT" FROM {r.plan.replica.sql} '
                    'ORDER BY "id", "_COMMIT_TS", ("_OP" = \'d\')')
        assert cur.fetchall() == [(1, "a2", "s", False), (1, "a3", "c", True), (2, "b", "d", False)]
        again = switch_replica_mode(connection=conn, registry=_Registry(KEY, VALUE), topic="tidb_test_t",
                                    replica=r.plan.replica, mode=HISTORY, now=NOW)
        assert again is not None and not again.switched
    forget_ensured()
