"""The built-in landing loader: one Kafka topic -> its landing table, exactly once, in bulk.

This is what materialising a `builtin` landing asset does (DESIGN.md, "Two ways to fill the landing
table"). The rows are byte-for-byte the Confluent Snowflake Sink's layout (spec/confluent.md), so the
merge downstream cannot tell which way the table was filled.

One load, step by step:
1. Create what is missing (IF NOT EXISTS): the landing table, and in the control schema the stage
   `LANDING_STAGE`, the dead-letter table `LANDING_DEAD_LETTER`, the lock table `LANDING_LOADS` (with the
   landing table's row) and the landed-offsets table `LANDING_OFFSETS`. A landing table found empty here
   (created again after a drop) forgets its landed offsets. A process remembers what it has made sure of (the warehouse seam's DDL memo, per
   server, account, database and tables) and skips these ~10 statements on its next loads; a statement that
   fails because an object is missing (someone dropped a table) drops that memory, and the load runs again
   from this step, once.
2. Read where the table ends: per partition the highest offset of the topic already landed *or
   quarantined* (a poison record's offset is consumed too; without counting it, a poison record at the
   end of a partition would be read and quarantined again by every load). It comes from `LANDING_OFFSETS`
   (a few rows), so a load costs the same however many rows the landing table retains. A topic with no row
   there (a deployment from before the table) is seeded once, under the lock row, from a scan of the
   landing and dead-letter tables.
3. Read Kafka's end offsets once. The load reads up to them and stops: a bounded run that never chases
   new data; `max_records` bounds it further.
4. Fetch the topic's key/value schemas from the registry (every version of both subjects). A registry
   that is down stops the load here with `SchemaRegistryUnavailable`, before anything is read or written.
5. Create the load's own table in the control schema: `LOAD_<landing>_<batch>_ROWS` (the two landing
   columns), TEMPORARY, so it is private to this session and vanishes with it (dropped after the load too).
6. Readers (`replication.wire.read_ranges`) consume the offset ranges with explicit offsets (nothing is
   committed to Kafka), decode each value (and the key, unless its fields can be read from the value),
   build both landing columns' JSON texts with the compiled `RecordEncoder`, and write Parquet files of
   `ROWS_PER_FILE` rows with two string columns. Large loads are split into equal offset ranges, one per
   core, each read by its own process, and this process only coordinates: as soon as a reader finishes a
   file it is `PUT` on the stage under `<topic>/<batch uuid>/` and `COPY`ed, parsing both texts, straight
   into the ROWS table (`replication.landing.stage_file_statements`) while the readers go on, so the
   warehouse works in parallel with the reading. A small load is read in this
   process and its files staged afterwards. A record whose schema id the registry did not list under the
   topic's subjects is looked up by id afterwards, and one that still cannot be decoded (bad magic byte,
   unknown id, truncated body) becomes a dead letter.
7. One short transaction: lock the landing table's row in `LANDING_LOADS` (the first statement, so the rest
   runs under the lock), read the landed offsets again, `INSERT ... SELECT` from the ROWS table only
   the rows above the landed offset of their partition and empty it, insert the dead letters above it,
   rewrite the moved partitions' rows of `LANDING_OFFSETS` (with the load's id), commit. Then the load's
   tables are dropped.

Exactly once: offsets live only in the warehouse (the landing table and `LANDING_OFFSETS`, moved in one
transaction), and step 7 decides inside the transaction which rows are
new; everything before it writes only to the load's private tables and the stage. A crash before the commit
leaves nothing behind in the landing and dead-letter tables (the next load reads the same records again); a
load that raced another, or follows one that committed after this one started reading, inserts only what the
other did not. Two loads of one table are serialised by the lock row: Snowflake makes the second wait (up
to the session's LOCK_TIMEOUT), and its later statements see the first's rows. Nothing is ever TRUNCATEd.

Stage files are Parquet, Snappy-compressed by the readers, and PUT with `AUTO_COMPRESS = FALSE` (otherwise
the Snowflake connector would gzip each file again in this process, single-threaded, at level 9); one
`COPY ... FROM (SELECT PARSE_JSON($1:RECORD_METADATA), PARSE_JSON($1:RECORD_CONTENT) FROM @stage/file)`
fills both landing columns in one pass (`engine.staging`, the one staging path). Staged files are removed
after the commit. Measured costs are in BENCHMARKS.md ("Figures from the module docstrings").

Every statement goes through the warehouse seam (`tidb_pipeline.resources.warehouse`) and names its database
and schema, so the session's current schema does not matter.

`python -m tidb_pipeline.bench.landing --bench N` measures the loader on the lab (see `bench`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient

import tidb_pipeline
from tidb_pipeline.engine.replica import ensure_schema
from tidb_pipeline.engine.staging import Stager, remove_staged
from tidb_pipeline.replication.ddl import TableRef, create_dead_letter_sql, create_landing_sql
from tidb_pipeline.replication.landing import (
    DeadLetter,
    create_landed_offsets_sql,
    create_load_lock_sql,
    create_load_rows_sql,
    dead_letter_insert_sql,
    ensure_lock_row_sql,
    forget_landed_offsets_sql,
    land_rows_statements,
    landed_offsets_sql,
    read_landed_offsets_sql,
    take_load_lock_sql,
    write_landed_offsets_statements,
)
from tidb_pipeline.replication.wire import (
    FileSink,
    LineBuilder,
    ParquetFiles,
    PoisonRecord,
    RangeJob,
    RangeResult,
    RawRecord,
    UnknownSchemaId,
    poison_metadata,
    read_ranges,
    schema_id,
)
from tidb_pipeline.resources.kafka import KafkaResource
# Re-exported: the loader's documented error (a ConnectionError, so Dagster retries the step).
from tidb_pipeline.resources.schema_registry import SchemaRegistryUnavailable as SchemaRegistryUnavailable
from tidb_pipeline.resources.schema_registry import all_versions, schema_text, subject_names
from tidb_pipeline.resources.warehouse import Warehouse

STAGE = "LANDING_STAGE"
DEAD_LETTER_TABLE = "LANDING_DEAD_LETTER"
LOCK_TABLE = "LANDING_LOADS"
LANDED_OFFSETS_TABLE = "LANDING_OFFSETS"
# Below this many records a load reads in-process: starting a reader process costs ~0.2 s.
PARALLEL_MIN_RECORDS = 50_000
MAX_READERS = os.cpu_count() or 1
# Files are staged and COPYed while the readers go on; smaller files shorten what is left after the last
# record is read (one file's PUT + COPY), larger ones cost fewer round trips.
ROWS_PER_FILE = 50_000
DEAD_LETTER_BATCH = 500
_TOPIC = re.compile(r"^[A-Za-z0-9._-]+$")
_WORKER = "from tidb_pipeline.replication.wire import worker_main; worker_main()"


@dataclass(frozen=True)
class LandingResult:
    topic: str
    rows_loaded: int
    quarantined: int  # poison records written to the dead-letter table
    offsets_before: dict[int, int]  # next offset per partition before the load
    offsets_after: dict[int, int]  # next offset per partition after the load
    end_offsets: dict[int, int]  # Kafka high watermarks seen at the start
    seconds: float


@dataclass(frozen=True)
class LandingTables:
    """Everything one topic's load writes, derived from the landing table and the control schema."""

    landing: TableRef
    load: TableRef
    dead_letter: TableRef
    locks: TableRef
    stage: str  # quoted stage name, for `@<stage>/path`
    offsets: TableRef  # highest landed offset per partition (`LANDING_OFFSETS`), written with each load


    @classmethod
    def of(cls, landing: TableRef, control: TableRef) -> LandingTables:
        def ref(name: str) -> TableRef:
            return TableRef(control.schema, name, control.database)

        return cls(landing, ref(f"LOAD_{landing.name}"), ref(DEAD_LETTER_TABLE), ref(LOCK_TABLE), ref(STAGE).sql,
                   ref(LANDED_OFFSETS_TABLE))


# --- pure planning --------------------------------------------------------------------------------------


def plan_ranges(
    next_offsets: Mapping[int, int], end_offsets: Mapping[int, int], max_records: int | None = None
) -> dict[int, tuple[int, int]]:
    """Per partition, the [start, stop) offsets to read; `max_records` is shared out evenly (water-filling)."""
    wanted = {p: (next_offsets.get(p, 0), end) for p, end in end_offsets.items() if end > next_offsets.get(p, 0)}
    if max_records is None:
        return dict(sorted(wanted.items()))
    given = dict.fromkeys(wanted, 0)
    left = max(0, max_records)
    active = sorted(wanted)
    while left > 0 and active:
        share = max(1, left // len(active))
        for p in list(active):
            start, stop = wanted[p]
            take = min(share, stop - start - given[p], left)
            given[p] += take
            left -= take
            if given[p] == stop - start:
                active.remove(p)
            if left == 0:
                break
    return {p: (wanted[p][0], wanted[p][0] + n) for p, n in sorted(given.items()) if n > 0}


def split_ranges(ranges: Mapping[int, tuple[int, int]], parts: int) -> list[tuple[tuple[int, int, int], ...]]:
    """Cut the ranges into `parts` groups of about equal offset count; at most one range per partition each."""
    total = sum(stop - start for start, stop in ranges.values())
    if total == 0:
        return []
    per = -(-total // max(1, parts))
    groups: list[list[tuple[int, int, int]]] = [[]]
    room = per
    for p, (start, stop) in sorted(ranges.items()):
        while start < stop:
            if room == 0:
                groups.append([])
                room = per
            take = min(room, stop - start)
            groups[-1].append((p, start, start + take))
            start += take
            room -= take
    return [tuple(g) for g in groups]


# --- registry -------------------------------------------------------------------------------------------


def subjects(topic: str) -> list[str]:
    """Every subject a record of `topic` may carry a schema id of: TiCDC's (dots replaced), and for a dotted
    topic the literal TopicNameStrategy ones a Confluent producer would use."""
    names = list(subject_names(topic))
    if "." in topic:
        names += [f"{topic}-key", f"{topic}-value"]
    return names


def topic_schemas(registry: SchemaRegistryClient, topic: str) -> dict[int, str]:
    """Schema text by id for every version of the topic's key and value subjects."""
    return {reg.schema_id: reg.schema.schema_str for subject in subjects(topic) for reg in all_versions(registry, subject)}


# --- reading --------------------------------------------------------------------------------------------


def consumer_config(kafka: KafkaResource, topic: str) -> dict[str, Any]:
    """The reader's consumer: explicit offsets, never commits, reports partition ends, fetches big batches."""
    config = {
        **kafka.client_config(),
        "group.id": f"tidb-pipeline-landing-{topic}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "fetch.max.bytes": 64 * 1024 * 1024,
    }
    config.pop("logger", None)  # a logger object does not cross into a reader process
    return config


def _read_replies(proc: subprocess.Popen[bytes]) -> Iterator[tuple[Any, ...]]:
    """The pickled messages a reader process writes on stdout, in order, until EOF."""
    assert proc.stdout is not None
    while True:
        try:
            yield pickle.load(proc.stdout)  # noqa: S301 - our own child process
        except EOFError:
            return


def run_readers(jobs: Sequence[RangeJob], on_file: FileSink | None = None) -> list[RangeResult]:
    """Read every job, each in its own Python process, all at once; results in the order of `jobs`.

    Without `on_file` the first job is read in this process and the files are only listed in the results.
    With it, this process only coordinates: it calls `on_file(path, rows)` for each file as soon as a
    reader has finished it, while the readers go on.
    """
    if not jobs:
        return []
    if on_file is not None and len(jobs) == 1:
        return [read_ranges(jobs[0], on_file)]
    env = dict(os.environ)
    # The reader must import this very checkout of the package, wherever the parent was started.
    root = str(Path(tidb_pipeline.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    remote = list(jobs) if on_file is not None else list(jobs[1:])
    procs: list[subprocess.Popen[bytes]] = []
    # One thread per reader turns its stdout into queue items, so files are staged in finishing order.
    inbox: queue.Queue[tuple[int, tuple[Any, ...] | None]] = queue.Queue()

    def pump(i: int, proc: subprocess.Popen[bytes]) -> None:
        try:
            for message in _read_replies(proc):
                inbox.put((i, message))
        finally:
            inbox.put((i, None))

    try:
        for i, job in enumerate(remote):
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps(job))
            proc.stdin.close()
            threading.Thread(target=pump, args=(i, proc), daemon=True, name=f"landing-reader-{i}").start()
        local = [] if on_file is not None else [read_ranges(jobs[0])]
        replies: dict[int, RangeResult] = {}
        running = len(procs)
        while running:
            i, message = inbox.get()
            failed = None
            if message is None:
                running -= 1
                if i not in replies:
                    failed = f"exit code {procs[i].wait()}, no reply"
            elif message[0] == "file":
                if on_file is not None:
                    on_file(message[1], message[2])
            elif message[0] == "ok":
                replies[i] = message[1]
            else:
                failed = message[1]
            if failed is not None:
                raise RuntimeError(
                    f"landing reader for topic {remote[i].topic} ranges {list(remote[i].ranges)} failed:\n{failed}"
                )
        for proc in procs:
            proc.wait()
        return local + [replies[i] for i in range(len(procs))]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _resolve_unknown(
    registry: SchemaRegistryClient, topic: str, schemas: dict[int, str], records: Sequence[RawRecord], folder: str,
    on_file: FileSink | None = None,
) -> tuple[RangeResult, list[tuple[RawRecord, str]]]:
    """Records whose schema ids were not under the topic's subjects: look the ids up, then build or quarantine."""
    ids = {schema_id(d) for r in records for d in (r.key, r.value) if d is not None and len(d) >= 5} - set(schemas)
    found = dict(schemas)
    for sid in sorted(ids):
        text = schema_text(registry, sid)
        if text is not None:
            found[sid] = text
    builder = LineBuilder(topic, found)
    files = ParquetFiles(folder, "resolved", ROWS_PER_FILE, on_file)
    poison: list[tuple[RawRecord, str]] = []
    for r in records:
        try:
            files.add_row(*builder.row(r.partition, r.offset, r.timestamp_type, r.timestamp, r.key, r.value))
        except PoisonRecord as exc:
            poison.append((r, exc.reason))
        except UnknownSchemaId as exc:
            poison.append((r, f"schema id {exc.schema_id} is not in the schema registry"))
    files.flush()
    return RangeResult(tuple(files.paths), files.rows, (), ()), poison


# --- writing --------------------------------------------------------------------------------------------


def ensure_tables(warehouse: Warehouse, tables: LandingTables) -> None:
    """Create the landing table and the loader's control objects if missing (all IF NOT EXISTS)."""
    ensure_schema(warehouse, tables.landing, once=True)
    ensure_schema(warehouse, tables.locks, once=True)
    warehouse.execute(create_landing_sql(tables.landing))
    for sql in (  # shared by every topic: created once per process (`Warehouse.ensure_once`)
        create_dead_letter_sql(tables.dead_letter),
        create_load_lock_sql(tables.locks),
        create_landed_offsets_sql(tables.offsets),
        f"CREATE STAGE IF NOT EXISTS {tables.stage}",
    ):
        warehouse.ensure_once(sql)
    warehouse.execute(ensure_lock_row_sql(tables.locks, tables.landing))
    # An empty landing table (just created again after someone dropped it, or emptied by hand) has landed
    # nothing, whatever its offsets rows say: forget them, and the load seeds them again from a scan (which
    # also counts the dead letters). COUNT(*) of a whole table is answered from Snowflake's metadata. This
    # runs once per process and after any missing-object error, like the rest of this DDL step.
    (count,) = warehouse.execute(f"SELECT COUNT(*) FROM {tables.landing.sql}")[0]
    if int(count) == 0:
        warehouse.execute(forget_landed_offsets_sql(tables.offsets, tables.landing))


def landed_offsets(warehouse: Warehouse, tables: LandingTables, topic: str) -> dict[int, int]:
    """Highest landed or quarantined offset per partition, from the landed-offsets table.

    A topic with no row there (a deployment from before the table, or the table was dropped) but with
    landing rows is seeded once from a scan of the landing and dead-letter tables, in a transaction under the
    landing table's lock row, so it cannot overwrite what a concurrent load commits.
    """
    landed = _read_landed(warehouse, tables, topic)
    if landed or not _scan_landed(warehouse, tables, topic):
        return landed  # nothing landed yet: the first load's commit writes the rows
    with warehouse.transaction():
        _lock(warehouse, tables)
        landed = _read_landed(warehouse, tables, topic)
        if landed:
            return landed
        scanned = _scan_landed(warehouse, tables, topic)
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        for stmt in write_landed_offsets_statements(tables.offsets, tables.landing, topic, scanned, "seed", now):
            warehouse.execute(stmt)
    return scanned


def _read_landed(warehouse: Warehouse, tables: LandingTables, topic: str) -> dict[int, int]:
    return {int(p): int(o) for p, o in warehouse.execute(read_landed_offsets_sql(tables.offsets, tables.landing, topic))}


def _scan_landed(warehouse: Warehouse, tables: LandingTables, topic: str) -> dict[int, int]:
    """The seeding scan: what the landing and dead-letter tables hold (cost grows with the landing table)."""
    return {int(p): int(o) for p, o in warehouse.execute(landed_offsets_sql(tables.landing, tables.dead_letter, topic))}


def _lock(wh: Warehouse, tables: LandingTables) -> None:
    """Take the landing table's lock row: the first statement of a transaction that writes its offsets."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    locked = wh.execute(take_load_lock_sql(tables.locks, tables.landing, now))
    if locked and locked[0] and int(locked[0][0] or 0) == 0:
        # The lock row is gone (ensure_tables is skipped on repeat loads): put it back, in this transaction.
        wh.execute(ensure_lock_row_sql(tables.locks, tables.landing))


def rows_table_name(tables: LandingTables, batch: str) -> str:
    """The quoted, qualified name of one load's rows table, in the control schema."""
    return TableRef(tables.locks.schema, f"LOAD_{tables.landing.name}_{batch[:12]}_ROWS", tables.locks.database).sql


def commit_load(
    connection: Warehouse | Any,
    tables: LandingTables,
    topic: str,
    rows_table: str | None,
    first_offsets: Mapping[int, int],
    dead: Sequence[DeadLetter],
    load_id: str = "",
    *,
    last_read: Mapping[int, int],
) -> tuple[int, int]:
    """The load transaction; returns (rows inserted, dead letters inserted). Rolls back on any error.

    Lock, re-read the landed offsets (the landed-offsets table; seeded from a scan when it has no row for
    the topic), insert the staged rows (`rows_table`) above them, then the dead letters above them, set the
    landed offsets to the new highest ones, commit: the offsets move in the same transaction as the rows.
    `last_read` is the highest offset the readers consumed per partition: every consumed record is a staged
    row or a dead letter, so it is the highest of both, without scanning the rows table in the transaction.
    """
    wh = Warehouse.of(connection)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with wh.transaction():
        _lock(wh, tables)
        recorded = _read_landed(wh, tables, topic)
        landed = recorded or _scan_landed(wh, tables, topic)
        # Only a partition whose landed offsets reach into this batch needs a filter (a race or a retry).
        above = {p: o for p, o in landed.items() if p in first_offsets and o >= first_offsets[p]}
        rows = 0
        last = dict(landed)
        # Rows at or below `landed` are not inserted, and cannot raise the maximum either.
        for p, o in last_read.items():
            last[p] = max(last.get(p, -1), o)
        if rows_table is not None:
            for i, stmt in enumerate(land_rows_statements(tables.landing, rows_table, above)):
                result = wh.execute(stmt)
                if i == 0:
                    rows = int(result[0][0]) if result else 0
        fresh = [d for d in dead if d.offset > landed.get(d.partition, -1)]
        for d in fresh:
            last[d.partition] = max(last.get(d.partition, -1), d.offset)
        for i in range(0, len(fresh), DEAD_LETTER_BATCH):
            wh.execute(dead_letter_insert_sql(tables.dead_letter, fresh[i : i + DEAD_LETTER_BATCH], now))
        # Only partitions that moved; after a seeding scan, every partition it found goes in too.
        moved = {p: o for p, o in last.items() if o != recorded.get(p)}
        for stmt in write_landed_offsets_statements(tables.offsets, tables.landing, topic, moved, load_id, now):
            wh.execute(stmt)
    return rows, len(fresh)


# --- the load -------------------------------------------------------------------------------------------


def load_topic(
    *,
    kafka: KafkaResource,
    registry: SchemaRegistryClient,
    connection: Warehouse | Any,
    topic: str,
    landing: TableRef,
    control: TableRef,
    max_records: int | None = None,
    log: logging.Logger | None = None,
) -> LandingResult:
    """Load the topic's new records into its landing table, exactly once; see the module docstring.

    `connection` is the warehouse session (a `Warehouse`, or a connection it wraps).
    """
    log = log or logging.getLogger(__name__)
    if not _TOPIC.match(topic):
        raise ValueError(f"topic {topic!r} has characters Kafka does not allow in a topic name")
    tables = LandingTables.of(landing, control)
    wh = Warehouse.of(connection)
    # A retry after a missing object is safe: nothing was committed (the error came before or inside the
    # transaction), so the load reads the same records again.
    return wh.ensured(("landing", tables), lambda: ensure_tables(wh, tables),
                      lambda: _load(kafka, registry, wh, topic, tables, max_records, log),
                      what=f"load of topic {topic}", log=log)


def _load(
    kafka: KafkaResource,
    registry: SchemaRegistryClient,
    wh: Warehouse,
    topic: str,
    tables: LandingTables,
    max_records: int | None,
    log: logging.Logger,
) -> LandingResult:
    started = time.perf_counter()
    landed = landed_offsets(wh, tables, topic)
    end = kafka.end_offsets([topic]).get(topic, {})
    before = {p: landed.get(p, -1) + 1 for p in sorted({*end, *landed})}
    ranges = plan_ranges(before, end, max_records)
    total = sum(stop - start for start, stop in ranges.values())

    def outcome(rows: int = 0, quarantined: int = 0, after: Mapping[int, int] | None = None) -> LandingResult:
        return LandingResult(topic, rows, quarantined, before, dict(after or before), dict(end),
                             time.perf_counter() - started)

    if not ranges:
        log.info("topic %s: nothing new to land (end offsets %s)", topic, end or "none: no such topic")
        return outcome()
    schemas = topic_schemas(registry, topic)
    # Each reader gets at least half of PARALLEL_MIN_RECORDS, so a process start is always worth it.
    parts = max(1, min(MAX_READERS, total // max(1, PARALLEL_MIN_RECORDS // 2))) if total >= PARALLEL_MIN_RECORDS else 1
    folder = tempfile.mkdtemp(prefix=f"landing-{topic}-")
    batch = uuid.uuid4().hex
    stage_path = f"@{tables.stage}/{topic}/{batch}/"
    rows_table = rows_table_name(tables, batch)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
        cleanup.enter_context(wh.temporary_table(create_load_rows_sql(rows_table), rows_table, log))
        stager = Stager(wh, rows_table, stage_path)
        config = consumer_config(kafka, topic)
        jobs = [
            RangeJob(config, topic, group, schemas, folder, f"part{i}", ROWS_PER_FILE)
            for i, group in enumerate(split_ranges(ranges, parts))
        ]
        t_read = time.perf_counter()
        if len(jobs) == 1:
            # A small load: read here, then stage its files.
            results = run_readers(jobs)
            t_tail = time.perf_counter()
            for r in results:
                for path in r.files:
                    stager(path, 0)
        else:
            results = run_readers(jobs, on_file=stager)
            t_tail = time.perf_counter()
        poison = [x for r in results for x in r.poison]
        unknown = [x for r in results for x in r.unknown]
        if unknown:
            resolved, more_poison = _resolve_unknown(registry, topic, schemas, unknown, folder, stager)
            results.append(resolved)
            poison += more_poison
        staged = stager.files > 0
        t_commit = time.perf_counter()
        dead = [
            DeadLetter(topic, r.partition, r.offset, poison_metadata(topic, r.partition, r.offset, r.timestamp_type,
                       r.timestamp), r.key, r.value, reason)
            for r, reason in poison
        ]
        first = {p: start for p, (start, _) in ranges.items()}
        consumed: dict[int, int] = {}
        for r in results:
            for p, o in r.next_offsets.items():
                consumed[p] = max(consumed.get(p, 0), o)
        rows, quarantined = commit_load(wh, tables, topic, rows_table if staged else None, first, dead, batch,
                                        last_read={p: o - 1 for p, o in consumed.items()})
        t_done = time.perf_counter()
        if staged:
            remove_staged(wh, stage_path, log)
    after = {p: max(before.get(p, 0), consumed.get(p, 0)) for p in before}
    if poison:
        log.warning("topic %s: %d record(s) could not be decoded and went to %s, e.g. partition %d offset %d: %s",
                    topic, len(poison), tables.dead_letter.label, poison[0][0].partition, poison[0][0].offset,
                    poison[0][1])
    log.info(
        "topic %s: landed %d rows (%d quarantined) from %d offsets in %.2fs: read %.2fs in %d reader(s) "
        "(%.2f CPU-s), %d file(s) staged in %.2fs (%.2fs of it after the last record), commit %.2fs",
        topic, rows, quarantined, total, time.perf_counter() - started, t_tail - t_read, len(jobs),
        sum(r.cpu_seconds for r in results), stager.files, stager.seconds, t_commit - t_tail, t_done - t_commit,
    )
    return outcome(rows, quarantined, after)
