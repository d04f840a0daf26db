"""Backfill at a consistent point: snapshot tables that already hold data, load them, start the changefeed there.

A changefeed only carries changes, so a table that held rows before its changefeed existed needs those rows
loaded once. One backfill, step by step (the idea of PingCAP's tidb2dw):

1. Take one snapshot for every selected table: a TSO `T` and a read view at exactly `T`. On TiDB that is
   `SELECT TIDB_CURRENT_TSO()` then `SET @@tidb_snapshot = T` on the reading session (`TiDBSnapshotSource`);
   the lab reads MariaDB in a consistent-snapshot transaction whose binlog position it records under a TSO
   (`tidb_pipeline.lab.snapshot`). Writers are never blocked: both are MVCC reads.
2. Per table: the TiCDC key/value Avro schemas from the table's information_schema metadata at `T`
   (`replication.ticdc_schema`, byte-for-byte TiCDC's), hence the replica's columns (`replica_columns`) exactly
   as the merges will later see them in the registry; create the replica, empty it, and stream the rows in
   chunks: each row becomes the Avro datum TiCDC would send, then the landing encoder's JSON text, staged as the
   landing stages it (`engine.staging`: Parquet, PUT, one COPY with `PARSE_JSON` into the load's TEMPORARY rows
   table), and one `INSERT ... SELECT` with the merge's own casts (`merge.json_to_sql`). So a snapshot value and the same value arriving through the changefeed become the
   same typed value. No `executemany` (one bind per row: slow on Snowflake).
3. Create the changefeed with `start_ts = T` (`desired_changefeed(..., start_ts=T)` + `reconcile_changefeed`):
   it replicates exactly the commits after `T`, so there is no gap and nothing is applied twice. The merge
   watermark of a new topic starts empty, so every landed change applies on top of the snapshot.

Why the changefeed comes last: until it exists there is no schema in the registry and no topic, so a merge
scheduled meanwhile does nothing (`merge_replica` returns None) and cannot race the load; a failed backfill is
simply run again (the replica is emptied first). The price: `T` must stay readable for the whole load. TiDB
keeps MVCC versions for `tidb_gc_life_time` (default 10m); raise it above the expected backfill time, or the
read and then the changefeed creation (`start_ts` before the GC safe point) fail loudly rather than lose data.

Adding tables to a changefeed that already runs: the changefeed is paused first, so its checkpoint `C` is
before `T`; after the load an update adds the tables and resumes from `C`. The new tables' changes in `(C, T]`
then arrive once more on top of the snapshot; they are full-row images applied in commit order per key, so the
replica converges to the source exactly as after one of TiCDC's at-least-once replays. Tables the changefeed
already replicates are refused (their landing rows and watermarks belong to the running stream). Creating a
changefeed for only some of the configured tables is refused too: it would start the others at `T` without
their earlier rows.

The Dagster job that runs this is `defs.backfill_job.build_backfill_job`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pymysql.cursors

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.engine.changefeed import NOT_EXISTS, ReconcileResult, desired_changefeed, reconcile_changefeed
from tidb_pipeline.engine.replica import ensure_replica, ensure_schema
from tidb_pipeline.engine.staging import copy_file, put_file
from tidb_pipeline.replication import ticdc_schema
from tidb_pipeline.replication.avro_types import ReplicaColumn, replica_columns
from tidb_pipeline.replication.changefeed import RUNNING_STATES, table_rule
from tidb_pipeline.replication.ddl import Statement, TableRef, create_unconverted_sql, quote_ident, stage_folder
from tidb_pipeline.replication.columns import needs_salt, set_salt_statement
from tidb_pipeline.replication.landing import LOAD_COLUMN, compile_record_encoder, create_load_rows_sql
from tidb_pipeline.replication.wire import ParquetFiles
from tidb_pipeline.resources.env import hash_salt_reader
from tidb_pipeline.replication.merge import json_to_sql, record_unconverted_from_load_sql, unconverted_table
from tidb_pipeline.replication.modes import snapshot_mode_values
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import TiCDCClient, TiCDCError
from tidb_pipeline.resources.tidb import TiDBResource, quote_mysql
from tidb_pipeline.resources.warehouse import Warehouse

_log = logging.getLogger("tidb_pipeline.backfill")

STAGE = "BACKFILL_STAGE"
DEFAULT_CHUNK_ROWS = 50_000
# TiCDC renders TIMESTAMP in its server's zone (`cdc server --tz`); the snapshot must read them in the same.
DEFAULT_TIME_ZONE = "+00:00"


class BackfillError(RuntimeError):
    """The backfill cannot run as asked; nothing was changed."""


# --- snapshots ------------------------------------------------------------------------------------------------


class Snapshot(Protocol):
    """A read view of the source at one TSO."""

    @property
    def tso(self) -> int: ...

    def table_info(self, db: str, table: str) -> ticdc_schema.TableInfo: ...

    def read(self, db: str, table: str, columns: Sequence[str], chunk_rows: int) -> Iterator[list[tuple]]: ...


class SnapshotSource(Protocol):
    """Opens a snapshot; leaving the context ends it."""

    def open(self) -> contextlib.AbstractContextManager[Snapshot]: ...


_COLUMNS_SQL = (
    "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, NUMERIC_PRECISION, NUMERIC_SCALE, "
    "DATETIME_PRECISION, CHARACTER_OCTET_LENGTH, EXTRA FROM information_schema.COLUMNS "
    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION"
)
# EXTRA names virtual generated columns: TiCDC never sends them, so the snapshot neither reads nor loads them.
_COLUMN_FIELDS = ("COLUMN_NAME", "DATA_TYPE", "COLUMN_TYPE", "IS_NULLABLE", "COLUMN_DEFAULT", "NUMERIC_PRECISION",
                  "NUMERIC_SCALE", "DATETIME_PRECISION", "CHARACTER_OCTET_LENGTH", "EXTRA")  # fmt: skip
# No ORDER BY: the server's index order breaks ties between equally short unique keys, as TiDB's index ids do.
_INDEX_SQL = (
    "SELECT INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME FROM information_schema.STATISTICS "
    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s"
)
_INDEX_FIELDS = ("INDEX_NAME", "NON_UNIQUE", "SEQ_IN_INDEX", "COLUMN_NAME")


class MySQLSnapshot:
    """Reads over one MySQL-protocol connection already positioned at the snapshot."""

    def __init__(self, connection: Any, tso: int) -> None:
        self.connection = connection
        self.tso = tso

    def _rows(self, sql: str, params: tuple[Any, ...], names: Sequence[str]) -> list[dict[str, Any]]:
        with self.connection.cursor() as cur:
            cur.execute(sql, params)
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def table_info(self, db: str, table: str) -> ticdc_schema.TableInfo:
        columns = self._rows(_COLUMNS_SQL, (db, table), _COLUMN_FIELDS)
        if not columns:
            raise BackfillError(f"table {db}.{table} does not exist in the source; check the config's table list")
        indexes = self._rows(_INDEX_SQL, (db, table), _INDEX_FIELDS)
        return ticdc_schema.table_info(db, table, columns, indexes)

    def read(self, db: str, table: str, columns: Sequence[str], chunk_rows: int) -> Iterator[list[tuple]]:
        """The table's rows in chunks, streamed (an unbuffered cursor never holds the whole table)."""
        sql = f"SELECT {', '.join(quote_mysql(c) for c in columns)} FROM {quote_mysql(db)}.{quote_mysql(table)}"
        with self.connection.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(sql)
            while chunk := cur.fetchmany(chunk_rows):
                yield list(chunk)


@contextlib.contextmanager
def tidb_snapshot(connection: Any, *, time_zone: str = DEFAULT_TIME_ZONE) -> Iterator[MySQLSnapshot]:
    """Pin `connection` to TiDB's current TSO (`tidb_snapshot`) for the duration of the block."""
    with connection.cursor() as cur:
        cur.execute("SELECT TIDB_CURRENT_TSO()")
        tso = int(cur.fetchone()[0])
        cur.execute("SET @@session.time_zone = %s", (time_zone,))
        # information_schema follows tidb_snapshot too, so the columns read are the ones at the TSO.
        cur.execute("SET @@tidb_snapshot = %s", (str(tso),))
    try:
        yield MySQLSnapshot(connection, tso)
    finally:
        with connection.cursor() as cur:
            cur.execute("SET @@tidb_snapshot = ''")


class TiDBSnapshotSource:
    """Snapshots of TiDB through the `tidb` resource."""

    def __init__(self, tidb: TiDBResource, *, time_zone: str = DEFAULT_TIME_ZONE) -> None:
        self.tidb = tidb
        self.time_zone = time_zone

    @contextlib.contextmanager
    def open(self) -> Iterator[Snapshot]:
        with self.tidb.get_connection() as conn, tidb_snapshot(conn, time_zone=self.time_zone) as snap:
            yield snap


# --- loading one table ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableBackfill:
    source: str  # db.table
    replica: TableRef
    rows: int
    chunks: int
    seconds: float


@dataclass(frozen=True)
class BackfillResult:
    tso: int
    tables: tuple[TableBackfill, ...]
    changefeed: ReconcileResult

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


def codec_config(config: PipelineConfig) -> ticdc_schema.CodecConfig:
    """The Avro options the declared changefeed uses, so the schemas built here are the ones it registers."""
    src = config.source
    return ticdc_schema.CodecConfig(
        enable_tidb_extension=src.enable_tidb_extension,
        decimal_handling_mode=config.decimal_handling,  # resolved: string in connector mode
        bigint_unsigned_handling_mode=src.bigint_unsigned_handling,
    )


def schemas_for(info: ticdc_schema.TableInfo, cfg: ticdc_schema.CodecConfig) -> tuple[str, str]:
    """(key schema, value schema) exactly as TiCDC registers them for this table."""
    return ticdc_schema.key_schema(info, cfg), ticdc_schema.value_schema(info, cfg)


def insert_from_load_sql(replica: TableRef, load: TableRef, columns: Sequence[ReplicaColumn], mode: str = "replica",
                         tso: int = 0) -> Statement:
    """Typed rows from the load table's JSON objects, cast exactly as the merge casts landing content.

    In soft_delete and history mode the mode's columns are filled too (`modes.snapshot_mode_values`: a
    history row is one version at the snapshot's TSO `tso`).
    """
    mode_names, mode_values, params = snapshot_mode_values(mode, tso)
    names = ", ".join([*(quote_ident(c.name) for c in columns), *mode_names])
    values = ", ".join([*(f'{json_to_sql(c, "l." + quote_ident(LOAD_COLUMN) + ":" + quote_ident(c.field))} AS {quote_ident(c.name)}'
                          for c in columns), *mode_values])  # fmt: skip
    return Statement(f"INSERT INTO {replica.sql} ({names}) SELECT {values} FROM {load.sql} l", params)


def load_table(
    *,
    connection: Warehouse | Any,
    snapshot: Snapshot,
    table: TableConfig,
    replica: TableRef,
    control: TableRef,
    cfg: ticdc_schema.CodecConfig,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    log: logging.Logger | Any = _log,
) -> TableBackfill:
    """Replace the replica's contents with the table as the snapshot sees it."""
    started = time.perf_counter()
    info = snapshot.table_info(table.db, table.table)
    if table.key and tuple(table.key) != info.handle_key:
        raise BackfillError(
            f"{table.db}.{table.table}: the config says key {list(table.key)} but TiCDC keys it by "
            f"{list(info.handle_key)}; fix the config (or rerun `tidb-pipeline discover`)"
        )
    key_schema, value_schema = schemas_for(info, cfg)
    # The replica takes TiDB's column names; the load rows carry TiCDC's (sanitised) Avro field names.
    columns = replica_columns(value_schema, key_schema,
                              {ticdc_schema.sanitize_name(c.name): c.name for c in info.columns})
    # The encoder needs no `_tidb_*` fields: they are metadata, and the replica has no columns for them.
    encode = compile_record_encoder(ticdc_schema.value_schema(info, _without_extension(cfg)))
    wh = Warehouse.of(connection)
    # The column policy (`replication.columns`) as the merge applies it; the salt is read only when needed.
    columns, _ = ensure_replica(wh, replica, columns, policy=table.column_policy, source=f"{table.db}.{table.table}",
                                mode=table.mode)
    if needs_salt(columns):
        wh.execute_secret(set_salt_statement(hash_salt_reader(table.hash_salt_env, f"{table.db}.{table.table}")()))
    ensure_schema(wh, control)
    stage = TableRef(control.schema, STAGE, control.database).sql
    load = TableRef(control.schema, f"BACKFILL_ROWS_{replica.name}", control.database)
    wh.execute(f"CREATE STAGE IF NOT EXISTS {stage}")
    wh.execute(create_load_rows_sql(load.sql))
    wh.execute(f"DELETE FROM {replica.sql}")
    # Values Snowflake cannot hold (e.g. zero dates) become NULL, recorded as the merge records them.
    unconverted = unconverted_table(control)
    wh.execute(create_unconverted_sql(unconverted))
    wh.execute(Statement(f'DELETE FROM {unconverted.sql} WHERE "REPLICA_TABLE" = %s', (replica.label,)))
    insert = insert_from_load_sql(replica, load, columns, table.mode, snapshot.tso)
    record = record_unconverted_from_load_sql(unconverted, replica, load, columns, dt.datetime.now(dt.timezone.utc))
    batch, folder_name = uuid.uuid4().hex, stage_folder(replica.name)
    rows = chunks = 0
    with tempfile.TemporaryDirectory(prefix="backfill-") as folder:
        for chunk in snapshot.read(table.db, table.table, [c.name for c in info.columns], chunk_rows):
            chunks += 1
            # The one staging path (engine.staging): a snapshot row has no Kafka position, so no metadata.
            files = ParquetFiles(folder, f"chunk-{chunks:06d}", len(chunk) + 1)
            for row in chunk:
                files.add_row(None, encode(ticdc_schema.snapshot_datum(info, row, cfg)))
            files.flush()
            stage_dir = f"@{stage}/{folder_name}/{batch}/{chunks:06d}/"
            wh.execute(Statement(f"DELETE FROM {load.sql}"))
            for path in files.paths:
                copy_file(wh, load.sql, put_file(wh, path, stage_dir))
                os.remove(path)
            for stmt in (insert, *([record] if record else []), Statement(f"DELETE FROM {load.sql}")):
                wh.execute(stmt)
            rows += len(chunk)
            log.info("%s.%s: %d rows loaded into %s", table.db, table.table, rows, replica.label)
    try:
        wh.execute(f"REMOVE @{stage}/{folder_name}/{batch}/")
    except Exception as exc:  # noqa: BLE001 - housekeeping after the load: a file left costs storage only
        log.warning("could not remove the staged files of %s: %s", replica.label, exc)
    return TableBackfill(f"{table.db}.{table.table}", replica, rows, chunks, time.perf_counter() - started)


def _without_extension(cfg: ticdc_schema.CodecConfig) -> ticdc_schema.CodecConfig:
    return ticdc_schema.CodecConfig(
        namespace=cfg.namespace, enable_tidb_extension=False, decimal_handling_mode=cfg.decimal_handling_mode,
        bigint_unsigned_handling_mode=cfg.bigint_unsigned_handling_mode, time_zone=cfg.time_zone,
    )


# --- the whole backfill ---------------------------------------------------------------------------------------


def _existing(client: TiCDCClient, changefeed_id: str) -> Any | None:
    try:
        return client.get(changefeed_id)
    except TiCDCError as exc:
        if exc.code != NOT_EXISTS:
            raise
        return None


def check_selection(config: PipelineConfig, tables: Sequence[TableConfig], existing: Any | None) -> None:
    """Refuse selections that would leave a gap or fight the running stream (see the module docstring)."""
    unknown = [f"{t.db}.{t.table}" for t in tables if t not in config.tables]
    if unknown:
        raise BackfillError(f"tables {unknown} are not in the config; add them to the config first")
    if not tables:
        raise BackfillError("no tables selected; name tables from the config (db.table)")
    cf_id = config.source.changefeed_id
    if existing is None:
        missing = [f"{t.db}.{t.table}" for t in config.tables if t not in tables]
        if missing:
            raise BackfillError(
                f"changefeed {cf_id} does not exist yet and will start at the snapshot for every configured table, "
                f"so {missing} would miss their earlier rows; backfill all configured tables in one run"
            )
        return
    rules = set((existing.config or {}).get("filter", {}).get("rules", []))
    replicated = [f"{t.db}.{t.table}" for t in tables if table_rule(t) in rules]
    if replicated:
        raise BackfillError(
            f"changefeed {cf_id} already replicates {replicated}; a backfill only loads tables the changefeed does "
            "not carry yet (to reload one, remove it from the changefeed, drop its topic, landing rows and "
            "watermarks, then backfill it)"
        )


def backfill(
    *,
    tidb: TiDBResource | None,
    snowflake_connection: Any,
    ticdc_client: TiCDCClient,
    kafka: KafkaResource,
    registry: SchemaRegistryResource,
    config: PipelineConfig,
    tables: Sequence[TableConfig],
    snapshot: SnapshotSource | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    log: logging.Logger | Any = _log,
) -> BackfillResult:
    """Snapshot `tables` at one TSO, load them into their replicas, start the changefeed at that TSO."""
    if snapshot is None:
        if tidb is None:
            raise ValueError("pass a snapshot source or the tidb resource to snapshot TiDB")
        snapshot = TiDBSnapshotSource(tidb)
    warehouse = Warehouse.of(snowflake_connection, config.snowflake.session)
    cf_id = config.source.changefeed_id
    existing = _existing(ticdc_client, cf_id)
    check_selection(config, tables, existing)
    cfg = codec_config(config)
    paused = False
    if existing is not None and existing.state in RUNNING_STATES:
        # Freeze the checkpoint before the snapshot, so the tables added later start at or before it.
        ticdc_client.pause(cf_id)
        paused = True
        log.info("paused changefeed %s so its checkpoint stays before the snapshot", cf_id)
    try:
        loaded: list[TableBackfill] = []
        with snapshot.open() as snap:
            log.info("snapshot at TSO %d", snap.tso)
            for t in tables:
                sf = config.snowflake  # the same names as defs.tables.table_names
                loaded.append(load_table(connection=warehouse, snapshot=snap, table=t,
                                         replica=TableRef(sf.replica_schema, config.replica_table(t), sf.database),
                                         control=TableRef(sf.control_schema, "", sf.database), cfg=cfg,
                                         chunk_rows=chunk_rows, log=log))  # fmt: skip
        result = reconcile_changefeed(ticdc_client, desired_changefeed(config, kafka, registry, start_ts=snap.tso),
                                      log=log)  # fmt: skip
    except BaseException:
        if paused:
            # Leave the running tables replicating; the failed backfill can simply be run again.
            ticdc_client.resume(cf_id)
        raise
    log.info("changefeed %s: %s (state %s) from TSO %d", cf_id, result.action, result.state, snap.tso)
    return BackfillResult(snap.tso, tuple(loaded), result)
