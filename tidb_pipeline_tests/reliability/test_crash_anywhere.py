"""Crash anywhere: kill -9 the landing load or the merge at a seeded stage, re-run, nothing lost or doubled.

One small source table gets a seeded history (inserts, updates, deletes, primary-key changes) through the
lab change feed. Each trial then lands and merges that topic from scratch into its own tables, in two
rounds (a capped load, then the rest), with one or two SIGKILLs at seeded stages
(`tidb_pipeline.lab.faults`). After the reruns the replica must equal the source row for row and the
landing table must hold every (partition, offset) of the topic exactly once. The history-mode trials also
prove one version per record: none missing, none doubled.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tidb_pipeline.config import parse_config
from tidb_pipeline.lab.faults import LANDING_STAGES, CrashRun, Fault, plan_faults, run_killed
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.replication.ddl import TableRef
from tidb_pipeline.replication.mode_columns import HISTORY
from tidb_pipeline.replication.modes import current_rows_sql
from tidb_pipeline.resources.tidb import quote_mysql
from tidb_pipeline_tests.reliability.support import (
    ITEMS_DDL,
    Target,
    assert_landed_exactly_once,
    assert_replica_equals_source,
    delete_changefeed,
    kafka_of,
    land,
    landing_offsets,
    merge,
    mysql_kwargs,
    private_services,
    start_changefeed,
    wait_for_checkpoint,
    warehouse,
    write_history,
)

pytestmark = pytest.mark.integration

TRIALS = 20
CHANGES = 160
KEY = ("id",)


@pytest.fixture(scope="module")
def topic_with_history(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    with private_services(lab_settings, tmp_path_factory.mktemp("crash-lab"), ["ticdc"]) as own:
        yield from _topic_with_history(lab_settings, own)


def _topic_with_history(lab_settings: LabSettings, own: LabSettings) -> Iterator[dict[str, Any]]:
    suffix = uuid.uuid4().hex[:6]
    db, table = f"rel_crash_{suffix}", "items"
    config = parse_config({"source": {"changefeed_id": f"rel-crash-{suffix}"}, "tables": [{"db": db, "table": table}]})
    with pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {quote_mysql(db)}")
        cur.execute(ITEMS_DDL.format(t=f"{quote_mysql(db)}.{quote_mysql(table)}"))
    start_changefeed(own, config)
    try:
        with pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn:
            write_history(conn, db, table, seed=2026, changes=CHANGES)
        wait_for_checkpoint(own, config.source.changefeed_id)
        topic = config.topic(config.tables[0])
        end = kafka_of(lab_settings).end_offsets([topic])[topic]
        assert sum(end.values()) >= CHANGES, f"expected at least {CHANGES} records on {topic}, found {end}"
        database = f"REL_CRASH_{suffix.upper()}"
        with warehouse(lab_settings) as sf:
            sf.cursor().execute(f'CREATE DATABASE IF NOT EXISTS "{database}"')
        yield {"db": db, "table": table, "topic": topic, "end": end, "database": database}
    finally:
        delete_changefeed(own, config.source.changefeed_id)
        with pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_mysql(db)}")


def _trial_plan(seed: int, total: int) -> tuple[int, list[tuple[int, Fault]]]:
    """(records in the first, capped load; faults with the round (0 or 1) each one strikes in)."""
    rng = random.Random(seed * 7919)
    first = rng.randint(total // 4, 3 * total // 4)
    faults = plan_faults(seed, records=min(first, total - first))
    # Two faults strike in different rounds, so the second always finds work to die in.
    rounds = [rng.randint(0, 1)] if len(faults) == 1 else rng.sample([0, 1], 2)
    return first, list(zip(rounds, faults))


def _landed(sf: Any, target: Target) -> int:
    try:
        return sum(len(v) for v in landing_offsets(sf, target.landing).values())
    except Exception as exc:  # noqa: BLE001 - before the first load creates the table
        if "does not exist" in str(exc):
            return 0
        raise


def _faulted_rounds(settings: LabSettings, sf: Any, target: Target, goals: tuple[int, int],
                    faults: list[tuple[int, Fault]], workdir: Path, mode: str = "replica") -> list[Any]:
    """Land and merge `target` in rounds (round 0 lands the first `goals[0]` records, round 1 the rest; a load
    is capped at what its round lacks), running each fault's killed child in its round before the clean
    landing (landing stages) or before the clean merge (merge stages); returns the killed runs' outcomes."""
    injected = []
    for round_, goal in enumerate(goals):
        for when, fault in faults:
            if when == round_ and fault.stage in LANDING_STAGES:
                injected.append(run_killed(CrashRun(
                    fault.stage, fault.hit, settings, target.topic, target.landing, target.control,
                    max_records=goal - _landed(sf, target), workdir=str(workdir))))
        if (lacking := goal - _landed(sf, target)) > 0:
            land(settings, sf, target, max_records=lacking)
        for when, fault in faults:
            if when == round_ and fault.stage not in LANDING_STAGES:
                injected.append(run_killed(CrashRun(
                    fault.stage, fault.hit, settings, target.topic, target.landing, target.control,
                    replica=target.replica, watermarks=target.watermarks, workdir=str(workdir), mode=mode)))
        merge(settings, sf, target, mode=mode)
    return injected


@pytest.mark.parametrize("seed", range(TRIALS))
def test_kill_9_at_a_seeded_stage_then_rerun_loses_and_doubles_nothing(
    seed: int, topic_with_history: dict[str, Any], lab_settings: LabSettings, tmp_path: Path,
) -> None:
    h = topic_with_history
    total = sum(h["end"].values())
    first, faults = _trial_plan(seed, total)
    target = Target.fresh(h["topic"], h["database"], f"T{seed}")
    with warehouse(lab_settings) as sf:
        injected = _faulted_rounds(lab_settings, sf, target, (first, total), faults, tmp_path)
        assert [o.killed for o in injected] == [True] * len(faults)
        assert_landed_exactly_once(sf, target.landing, h["end"])
        assert_replica_equals_source(lab_settings, sf, h["db"], h["table"], target.replica, KEY)


def current_rows_table(sf: Any, replica: TableRef, mode: str) -> TableRef:
    """A copy of the rows that stand for the source in `mode` (`current_rows_sql`), for `compare_table`."""
    copy = TableRef(replica.schema, f"{replica.name}_CURRENT", replica.database)
    sf.cursor().execute(f"CREATE OR REPLACE TABLE {copy.sql} AS SELECT * FROM {current_rows_sql(replica, mode)}")
    return copy


def history_rows(sf: Any, replica: TableRef) -> list[tuple]:
    cur = sf.cursor()
    cur.execute(f'SELECT * FROM {replica.sql} ORDER BY "id", "_COMMIT_TS", ("_OP" = \'d\')')
    return [tuple(r) for r in cur.fetchall()]


# The merge stages of a history merge, one trial each (landing stages do not depend on the mode, and the
# trials above cover them): after the INSERT of the versions, after the re-link, after the watermark DELETE
# (`merge.mid_merge` counts BEGIN and the counts query too), before and after COMMIT; round 0 or 1 (a first
# merge, or one that closes versions merged before).
HISTORY_FAULTS = [(Fault("merge.mid_merge", 3), 0), (Fault("merge.mid_merge", 4), 1), (Fault("merge.mid_merge", 5), 0),
                  (Fault("merge.before_commit", 1), 1), (Fault("merge.after_commit", 1), 0)]


@pytest.mark.parametrize(("fault", "when"), HISTORY_FAULTS, ids=[f"{f.stage}-{f.hit}-r{w}" for f, w in HISTORY_FAULTS])
def test_kill_9_during_history_merges_leaves_no_duplicate_or_missing_version(
    fault: Fault, when: int, topic_with_history: dict[str, Any], lab_settings: LabSettings, tmp_path: Path,
) -> None:
    """The trials for a history-mode replica: after the rerun it holds exactly one version per record of the
    topic (the fresh changefeed replays nothing, so every record is a version), equal in full to a history
    merged from the same landing table without faults, and its current rows equal the source."""
    h = topic_with_history
    total = sum(h["end"].values())
    first, faults = total // 2, [(when, fault)]
    target = Target.fresh(h["topic"], h["database"], f"H{HISTORY_FAULTS.index((fault, when))}")
    with warehouse(lab_settings) as sf:
        injected = _faulted_rounds(lab_settings, sf, target, (first, total), faults, tmp_path, mode=HISTORY)
        assert [o.killed for o in injected] == [True] * len(faults)
        assert_landed_exactly_once(sf, target.landing, h["end"])
        got = history_rows(sf, target.replica)
        identities = [(r[0], r[-6], r[-7] == "d") for r in got]  # id, _COMMIT_TS, delete (mode columns last)
        assert len(set(identities)) == len(identities), "a version is in the history twice"
        assert len(got) == total, f"{len(got)} versions for {total} records: versions are missing or doubled"
        reference = dataclasses.replace(target, replica=TableRef(target.replica.schema, "REFERENCE", h["database"]))
        merge(lab_settings, sf, reference, mode=HISTORY)
        assert got == history_rows(sf, reference.replica)
        assert_replica_equals_source(lab_settings, sf, h["db"], h["table"],
                                     current_rows_table(sf, target.replica, HISTORY), KEY)
