"""Property, extending `replication/test_merge_property.py` (which covers insert / update / delete /
key change / replay / duplicate delivery over random merge boundaries): the same histories, now also with
merges that die at a random statement of their transaction, merges capped to a few offsets per partition,
and landing cleanup between merges. After every step the replica and the watermarks equal the model of
what was merged; after the last merge the replica equals the source."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tidb_pipeline.lab.faults import MERGE_STATEMENTS
from tidb_pipeline.replication.cleanup import cleanup_sql
from tidb_pipeline.replication.merge import run_merge
from tidb_pipeline.resources.warehouse import Warehouse
from tidb_pipeline_tests.replication.support import NOW, Replica, fake_snowflake
from tidb_pipeline_tests.replication.test_merge_property import KEY, PARTITIONS, VALUE, Source
from tidb_pipeline_tests.replication.test_merge_property import keys as key_ids
from tidb_pipeline_tests.tiers import examples


class Crash(Exception):
    """Stands in for the process dying: the session's transaction is rolled back (the seam's ROLLBACK)."""


steps = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), key_ids, st.sampled_from([None, "a", "b"]), st.integers(0, 99999)),
        st.tuples(st.just("delete"), key_ids),
        st.tuples(st.just("pk_change"), key_ids, key_ids),
        st.tuples(st.just("replay"), st.floats(0, 1)),
        st.tuples(st.just("land"), st.lists(st.floats(0, 1), min_size=PARTITIONS, max_size=PARTITIONS), st.booleans()),
        st.tuples(st.just("merge"), st.none() | st.integers(1, 3)),
        st.tuples(st.just("crash_merge"), st.integers(1, MERGE_STATEMENTS)),
        st.tuples(st.just("cleanup")),
    ),
    min_size=1,
    max_size=30,
)


def merged_state(source: Source, watermarks: dict[int, int]) -> list[tuple]:
    """The replica the model predicts: every key's latest version among the merged offsets.

    Landing offsets are the topic's offsets here (the model lands each partition in order), and every
    version of a key sits in one partition, so a per-partition prefix decides each key.
    """
    state: dict[int, Any] = {}
    for p in range(PARTITIONS):
        for key, row in source.topic[p][: watermarks.get(p, -1) + 1]:
            state[key] = row
    return sorted((k, *row) for k, row in state.items() if row is not None)


def _crashing_execute(real: Any, at: int) -> Any:
    seen = {"in_txn": False, "n": 0}

    def execute(self: Warehouse, stmt: Any, params: Any = ()) -> Any:
        sql = stmt if isinstance(stmt, str) else stmt.sql
        if sql == "BEGIN":
            seen["in_txn"] = True
        out = real(self, stmt, params)
        if seen["in_txn"] and sql not in ("COMMIT", "ROLLBACK"):
            seen["n"] += 1
            if seen["n"] == at:
                raise Crash(f"died after statement {at} of the merge transaction")
        return out

    return execute


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(history=steps)
# One history known to crash after the MERGE statement itself, with rows pending, then clean up and merge.
@example(history=[("upsert", 1, "a", 5), ("upsert", 2, "b", 7), ("land", [1.0, 1.0, 1.0], False),
                  ("crash_merge", 4), ("merge", 1), ("cleanup",), ("pk_change", 1, 4), ("crash_merge", 6),
                  ("land", [1.0, 1.0, 1.0], True), ("merge", None), ("cleanup",)])
def test_merges_that_crash_capped_merges_and_cleanup_never_lose_a_change(history: list[tuple], monkeypatch: pytest.MonkeyPatch) -> None:
    source = Source()
    with fake_snowflake() as conn:
        replica = Replica(conn, KEY, VALUE)
        for op in history:
            if op[0] == "land":
                source.land(replica, op[1], op[2])
            elif op[0] == "merge":
                run_merge(conn, replica.plan, NOW, max_offsets_per_partition=op[1])
            elif op[0] == "crash_merge":
                before = (replica.rows(), replica.watermarks())
                with monkeypatch.context() as m:
                    m.setattr(Warehouse, "execute", _crashing_execute(Warehouse.execute, op[1]))
                    try:
                        run_merge(conn, replica.plan, NOW)
                    except Crash:
                        pass
                assert (replica.rows(), replica.watermarks()) == before, "a crashed merge left part of itself behind"
            elif op[0] == "cleanup":
                stmt = cleanup_sql(replica.plan.landing, replica.plan.watermarks, replica.plan.replica,
                                   NOW + dt.timedelta(days=1), dt.timedelta(hours=1))
                conn.cursor().execute(stmt.sql, stmt.params)
            else:
                source.apply(op)
            assert replica.rows() == merged_state(source, dict(replica.watermarks()))
        source.land(replica, [1.0] * PARTITIONS, duplicate=True)
        run_merge(conn, replica.plan, NOW)
        assert replica.rows() == sorted((k, *row) for k, row in source.rows.items())
