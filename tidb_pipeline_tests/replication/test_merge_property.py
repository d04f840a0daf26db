"""Property: any mix of inserts, updates, deletes, key changes and replays, merged at any boundaries,
leaves the replica equal to the source table (checked against an in-memory model)."""

from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidb_pipeline.replication.merge import run_merge
from tidb_pipeline_tests.replication.support import NOW, Replica, decimal_type, fake_snowflake, field, record, with_extension
from tidb_pipeline_tests.tiers import examples

PARTITIONS = 3
KEY = record("t", [field("id", "long", "BIGINT")])
VALUE = with_extension(
    record(
        "t",
        [field("id", "long", "BIGINT"), field("name", "string", "TEXT", nullable=True), field("price", decimal_type(6, 2), "DECIMAL")],
    )
)

keys = st.integers(0, 7)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), keys, st.sampled_from([None, "a", "b", "c"]), st.integers(0, 99999)),
        st.tuples(st.just("delete"), keys),
        st.tuples(st.just("pk_change"), keys, keys),
        st.tuples(st.just("replay"), st.floats(0, 1)),
        st.tuples(st.just("merge"), st.lists(st.floats(0, 1), min_size=PARTITIONS, max_size=PARTITIONS), st.booleans()),
    ),
    min_size=1,
    max_size=30,
)


class Source:
    """The TiDB table, the Kafka topic TiCDC writes (index-value dispatch) and how much of it has landed."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str | None, Decimal]] = {}
        self.log: list[tuple[int, tuple | None]] = []  # every change, in commit order
        self.topic: list[list[tuple[int, tuple | None]]] = [[] for _ in range(PARTITIONS)]
        self.landed = [0] * PARTITIONS

    def send(self, key: int, row: tuple | None) -> None:
        self.topic[key % PARTITIONS].append((key, row))

    def change(self, key: int, row: tuple | None) -> None:
        self.log.append((key, row))
        self.send(key, row)
        if row is None:
            del self.rows[key]
        else:
            self.rows[key] = row

    def apply(self, op: tuple) -> None:
        if op[0] == "upsert":
            self.change(op[1], (op[2], Decimal(op[3]) / 100))
        elif op[0] == "delete" and op[1] in self.rows:
            self.change(op[1], None)
        elif op[0] == "pk_change" and op[1] in self.rows and op[2] not in self.rows:
            row = self.rows[op[1]]
            self.change(op[1], None)  # TiCDC splits a key change into delete(old) + insert(new)
            self.change(op[2], row)
        elif op[0] == "replay":
            # At-least-once: TiCDC restarts from an old checkpoint and re-sends everything after it.
            for key, row in self.log[int(op[1] * len(self.log)) :]:
                self.send(key, row)

    def land(self, replica: Replica, fractions: list[float], duplicate: bool) -> None:
        records = []
        for p, frac in enumerate(fractions):
            end = self.landed[p] + round(frac * (len(self.topic[p]) - self.landed[p]))
            for offset in range(self.landed[p], end):
                key, row = self.topic[p][offset]
                value = None if row is None else {"id": key, "name": row[0], "price": row[1], "_tidb_op": "u", "_tidb_commit_ts": offset, "_tidb_commit_physical_time": 0}
                records.append((p, offset, {"id": key}, value))
            self.landed[p] = end
        if duplicate and records:
            records.append(records[len(records) // 2])  # the connector delivered one row twice
        replica.land(records)

    def landed_state(self) -> list[tuple]:
        """What the replica must hold once everything landed so far is merged."""
        state: dict[int, tuple | None] = {}
        for p in range(PARTITIONS):
            for key, row in self.topic[p][: self.landed[p]]:
                state[key] = row
        return sorted((k, *row) for k, row in state.items() if row is not None)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_replica_equals_source_after_any_history(history):
    source = Source()
    with fake_snowflake() as conn:
        replica = Replica(conn, KEY, VALUE)
        for op in history:
            if op[0] == "merge":
                source.land(replica, op[1], op[2])
                run_merge(conn, replica.plan, NOW)
                assert replica.rows() == source.landed_state()
            else:
                source.apply(op)
        source.land(replica, [1.0] * PARTITIONS, duplicate=True)
        run_merge(conn, replica.plan, NOW)
        rows = replica.rows()
        assert rows == sorted((k, *row) for k, row in source.rows.items())
        assert rows == source.landed_state()
        counts, _ = run_merge(conn, replica.plan, NOW)
        assert (counts.landing_rows, replica.rows()) == (0, rows)
