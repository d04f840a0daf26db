"""The lab change feed's capture: MariaDB binlog -> TiCDC's Avro records on Kafka, at least once.

One `Capture` serves one changefeed. It reads the ROW binlog with mysql-replication from the changefeed's
stored position, buffers each transaction's row changes, and at its commit (XID event, or `COMMIT` for
non-transactional engines) gives the transaction a commit TSO, encodes every row with `codec`, and produces
it to the topic and partition TiCDC's dispatcher would choose. The checkpoint (binlog position at that
transaction boundary + its commit TSO) is saved only once Kafka acknowledged every record of that and all
earlier transactions, so after a crash capture resumes there and replays what may already be on Kafka.

Commit TSOs come from the XID event's timestamp (seconds on MariaDB) in milliseconds, made strictly
increasing through the logical bits and never at or below the stored checkpoint, so a replay after restart
gets TSOs above the checkpoint (TiCDC's contract: commit_ts > checkpoint_ts means "not yet acknowledged").

Without a stored position (new changefeed, or a resume with `overwrite_checkpoint_ts`), capture maps the
checkpoint TSO to a position: exactly, if `snapshot_position` recorded that TSO, else by scanning the binlog
for the first transaction whose commit second could lie after it (an earlier transaction of the same second
is replayed rather than risked).

`CaptureManager(store, mysql_conn_kwargs)` runs one capture thread per changefeed in state `normal` (or
`warning`), stops it when the changefeed leaves those states, and marks the changefeed `failed` with TiCDC's
error shape when its capture fails for good (a bad sink config, an unreachable registry at start). A lost
upstream connection, any Kafka failure (a broker down or restarting: "Failed to get metadata", delivery
errors) and a registry refusing a schema (TiCDC's bare `[CDC:ErrAvroSchemaAPIError]schema manager API error, %s`)
are retryable, as in TiCDC: the changefeed turns `warning` (the error shows as `last_warning`), capture
retries from its checkpoint with exponential backoff, returns to `normal` once its checkpoint passes the one it
restarted from, and only fails once its checkpoint has not moved for `retry_max_elapsed_s` (TiCDC's
`changefeed_error_stuck_duration`, default 30 minutes). Rows of a table without a handle key are skipped
with a warning, as TiCDC's schema storage skips ineligible tables at run time (the API refuses them at
create time).

TIMESTAMP values are rendered in the *capture server's* time zone, as TiCDC does: its processor builds the
mounter with `config.GetGlobalServerConfig().TZ` (`cdc server --tz`, default the host's zone), and no
changefeed or Kafka sink-URI setting changes it (`time-zone=` in a sink URI applies to MySQL sinks only).
So the zone is a `CaptureManager(time_zone=...)` / `Capture(time_zone=...)` argument (IANA name, "UTC",
or "System" for the host's zone), default UTC, and `time-zone=` in a Kafka sink URI is ignored here too.

`python -m tidb_pipeline.bench.capture --rows 50000` measures row changes/s, binlog -> acked Kafka.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from tidb_pipeline.lab.ticdc import codec, ddl_history
from tidb_pipeline.lab.ticdc.store import Changefeed, ChangefeedStore, running_error
from tidb_pipeline.replication import table_filter, ticdc_schema
from tidb_pipeline.replication.changefeed import mask_netloc

log = logging.getLogger(__name__)

SYSTEM_SCHEMAS = frozenset(
    {"mysql", "information_schema", "performance_schema", "sys", "metrics_schema", "inspection_schema"}
)
# Where snapshot_position records TSO -> binlog position; never replicated.
BOOKKEEPING_SCHEMA = "tidb_pipeline_lab"
_EXCLUDED_SCHEMAS = SYSTEM_SCHEMAS | {BOOKKEEPING_SCHEMA}


# What TiCDC reports when the registry refuses a schema (errors.toml: "schema manager API error, %s").
REGISTRY_CODE = "CDC:ErrAvroSchemaAPIError"
REGISTRY_MESSAGE = "[CDC:ErrAvroSchemaAPIError]schema manager API error, %s"


class CaptureError(RuntimeError):
    """A capture cannot go on; `code` is the TiCDC error code the changefeed reports."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SchemaRefused(CaptureError):
    """The registry answered a schema registration with an error (409 incompatible, 422, 401, ...)."""


# --- configuration -----------------------------------------------------------------------------------------


class TableFilter(table_filter.TableFilter):
    """TiDB table-filter rules (`table_filter`; the last matching rule wins), case-insensitive unless the
    changefeed sets `case_sensitive`; no rules means `*.*`.

    System schemas are never replicated, whatever the rules say.
    """

    def __init__(self, rules: Sequence[str] | None = None, *, case_sensitive: bool = False) -> None:
        super().__init__(list(rules or ["*.*"]), case_sensitive=case_sensitive)

    def matches(self, schema: str, table: str) -> bool:
        return schema.lower() not in _EXCLUDED_SCHEMAS and super().matches(schema, table)


@dataclass(frozen=True)
class DispatchRule:
    matcher: TableFilter
    topic: str | None  # a `{schema}`/`{table}` expression, a static topic, or None for the default topic
    partition: str  # the rule as configured; `codec.partition_kind` says which dispatcher it names
    columns: tuple[str, ...] = ()  # for the `columns` rule


@dataclass(frozen=True)
class Route:
    """Where a table's rows go: topic and partition dispatcher (TiCDC's EventRouter for one table)."""

    topic: str
    partition: str
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class SinkConfig:
    """Everything a capture needs from a changefeed's sink URI and replica config."""

    bootstrap: str
    default_topic: str
    partition_num: int
    replication_factor: int
    auto_create_topic: bool
    max_message_bytes: int
    codec: codec.CodecConfig
    registry_url: str
    filter: TableFilter
    dispatchers: tuple[DispatchRule, ...] = field(default_factory=tuple)
    kafka_extra: tuple[tuple[str, str], ...] = ()

    def route(self, schema: str, table: str) -> Route:
        """The first matching dispatcher's topic and partition rule; a table none matches goes to the default
        topic with the default (table) dispatcher, as TiCDC's router ends with an implicit `*.*` rule."""
        for rule in self.dispatchers:
            if rule.matcher.matches(schema, table):
                if not rule.topic:
                    topic = self.default_topic
                elif codec.is_static_topic(rule.topic):
                    topic = rule.topic
                else:
                    topic = codec.topic_name(rule.topic, schema, table)
                return Route(topic, codec.partition_kind(rule.partition), rule.columns)
        return Route(self.default_topic, codec.partition_kind("default"))


def _filter(rules: Sequence[str] | None, case_sensitive: bool) -> TableFilter:
    try:
        return TableFilter(rules, case_sensitive=case_sensitive)
    except table_filter.FilterSyntaxError as exc:
        raise CaptureError("CDC:ErrFilterRuleInvalid", f"filter rule is invalid: {exc}") from None


def _bool(v: Any) -> bool:
    return str(v).lower() in ("true", "1", "yes")


def mask_url(url: str) -> str:
    """`url` with the password of a `user:password@` masked, for error messages (they show in the API)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=mask_netloc(parts.netloc)))


def kafka_bootstrap(netloc: str) -> str:
    """The broker list of a sink URI's authority: `host:port[,host:port]`, without any `user:password@`.

    TiCDC reads brokers from Go's `url.Host`, which excludes userinfo; credentials go in `sasl-user` /
    `sasl-password` parameters, never to Kafka as part of an address.
    """
    return netloc.rpartition("@")[2]


def parse_sink(sink_uri: str, replica_config: Mapping[str, Any], *, time_zone: str = "UTC") -> SinkConfig:
    """Parse `kafka://host:port/topic?protocol=avro&...` plus `replica_config` the way TiCDC reads them.

    As in tiflow's codec config (`mergeConfig`), a URI parameter wins over the replica config. `time_zone` is
    the capture server's zone (TiCDC: `cdc server --tz`), not a changefeed setting: see `Capture`.
    """
    parts = urlsplit(sink_uri)
    if parts.scheme not in ("kafka", "kafka+ssl"):
        raise CaptureError("CDC:ErrSinkURIInvalid", f"sink URI scheme {parts.scheme!r} is not kafka; use kafka://host:port/topic")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    sink = dict(replica_config.get("sink") or {})
    protocol = params.get("protocol") or sink.get("protocol") or ""
    if protocol != "avro":
        raise CaptureError("CDC:ErrSinkURIInvalid", f"protocol {protocol!r} is not supported by the lab change feed; use protocol=avro")
    codec_cfg = dict(((sink.get("kafka_config") or {}).get("codec_config") or {}))

    def opt(uri_key: str, cfg_key: str, default: Any) -> Any:
        if uri_key in params:
            return params[uri_key]
        if codec_cfg.get(cfg_key) is not None:
            return codec_cfg[cfg_key]
        return default

    registry = params.get("schema-registry") or sink.get("schema_registry") or ""
    if not registry:
        raise CaptureError(
            "CDC:ErrCodecInvalidConfig",
            'Avro protocol requires parameter "schema-registry" or "glue-schema-registry" to specify the schema '
            "registry; add schema-registry=<url> to the sink URI or set replica_config.sink.schema_registry",
        )
    case_sensitive = _bool(replica_config.get("case_sensitive", False))
    dispatchers = []
    for d in sink.get("dispatchers") or []:
        topic = d.get("topic") or None
        if topic and not codec.is_static_topic(topic):
            try:
                codec.validate_topic_expression(topic)
            except ValueError as exc:
                raise CaptureError("CDC:ErrKafkaTopicExprInvalid", str(exc)) from None
        # An empty or unknown rule is TiCDC's default dispatcher (the table one), never index-value.
        dispatchers.append(DispatchRule(_filter(d.get("matcher"), case_sensitive), topic, str(d.get("partition") or ""),
                                        tuple(d.get("columns") or ())))
    filter_rules = ((replica_config.get("filter") or {}).get("rules")) or ["*.*"]
    cfg = codec.CodecConfig(
        enable_tidb_extension=_bool(opt("enable-tidb-extension", "enable_tidb_extension", False)),
        decimal_handling_mode=str(opt("avro-decimal-handling-mode", "avro_decimal_handling_mode", "precise")),
        bigint_unsigned_handling_mode=str(
            opt("avro-bigint-unsigned-handling-mode", "avro_bigint_unsigned_handling_mode", "long")
        ),
        time_zone=time_zone,
    )
    extra = []
    if _bool(params.get("enable-tls", "false")):
        extra.append(("security.protocol", "SASL_SSL" if params.get("sasl-user") else "SSL"))
    elif params.get("sasl-user"):
        extra.append(("security.protocol", "SASL_PLAINTEXT"))
    if params.get("sasl-user"):
        extra += [
            ("sasl.mechanism", (params.get("sasl-mechanism") or "PLAIN").upper()),
            ("sasl.username", unquote(params["sasl-user"])),
            ("sasl.password", unquote(params.get("sasl-password", ""))),
        ]
    return SinkConfig(
        bootstrap=kafka_bootstrap(parts.netloc),
        default_topic=parts.path.lstrip("/") or "",
        partition_num=int(params.get("partition-num", 3)),
        replication_factor=int(params.get("replication-factor", 1)),
        auto_create_topic=_bool(params.get("auto-create-topic", "true")),
        max_message_bytes=int(params.get("max-message-bytes", 10 * 1024 * 1024)),
        codec=cfg,
        registry_url=registry,
        filter=_filter(filter_rules, case_sensitive),
        dispatchers=tuple(dispatchers),
        kafka_extra=tuple(extra),
    )


# --- MariaDB helpers -----------------------------------------------------------------------------------------


def _connect(mysql_conn_kwargs: Mapping[str, Any]):
    import pymysql

    return pymysql.connect(autocommit=True, **dict(mysql_conn_kwargs))


def master_position(conn) -> tuple[str, int]:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    if not row:
        raise CaptureError("CDC:ErrReaderBinlog", "binary logging is off on the upstream; start MariaDB with --log-bin")
    return str(row[0]), int(row[1])


def _now_tso() -> int:
    return codec.tso_from_ms(int(time.time() * 1000))


def snapshot_position(conn) -> tuple[str, int, int]:
    """Open a consistent snapshot on `conn` and return (binlog_file, pos, tso) that match it exactly.

    Read the tables inside the still-open transaction on `conn`, then COMMIT; a changefeed created with
    `start_ts=tso` replicates exactly the commits after the snapshot. The TSO -> position pair is recorded in
    MariaDB (`tidb_pipeline_lab.tso_positions`) so the capture, in another process, can find it.
    """
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
        status = {str(k).lower(): v for k, v in cur.fetchall()}
    file, pos = str(status["binlog_snapshot_file"]), int(status["binlog_snapshot_position"])
    if not file:
        raise CaptureError("CDC:ErrReaderBinlog", "binary logging is off on the upstream; start MariaDB with --log-bin")
    tso = _now_tso()
    side = _connect(
        {"host": conn.host, "port": conn.port, "user": conn.user, "password": conn.password, "charset": "utf8mb4"}
    )
    try:
        with side.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{BOOKKEEPING_SCHEMA}`")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS `{BOOKKEEPING_SCHEMA}`.tso_positions "
                "(tso BIGINT UNSIGNED PRIMARY KEY, binlog_file VARCHAR(255) NOT NULL, binlog_pos BIGINT NOT NULL)"
            )
            cur.execute(
                f"REPLACE INTO `{BOOKKEEPING_SCHEMA}`.tso_positions VALUES (%s, %s, %s)", (tso, file, pos)
            )
    finally:
        side.close()
    return file, pos, tso


def _recorded_position(conn, tso: int) -> tuple[str, int] | None:
    with conn.cursor() as cur:
        try:
            cur.execute(
                f"SELECT binlog_file, binlog_pos FROM `{BOOKKEEPING_SCHEMA}`.tso_positions WHERE tso = %s", (tso,)
            )
        except Exception:  # noqa: BLE001 - no snapshot was ever recorded
            return None
        row = cur.fetchone()
    return (str(row[0]), int(row[1])) if row else None


class PositionHistory:
    """(TSO, binlog end position) samples taken while the change feed server runs, like a tiny PD.

    A position read *before* its TSO was taken bounds every commit after that TSO from below, so a
    changefeed created with `start_ts=0` ("now") scans only the binlog written since the newest sample at or
    below its TSO, instead of the whole file (hundreds of MB on a busy lab: minutes in Python).
    """

    def __init__(self, keep: int = 7200) -> None:
        self._samples: collections.deque[tuple[int, str, int]] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def record(self, conn) -> None:
        file, pos = master_position(conn)  # position first, then the TSO: the order makes the bound safe
        with self._lock:
            self._samples.append((_now_tso(), file, pos))

    def floor(self, tso: int) -> tuple[str, int] | None:
        """The newest sampled position whose TSO is at or below `tso`, if any."""
        with self._lock:
            found = None
            for ts, file, pos in self._samples:
                if ts > tso:
                    break
                found = (file, pos)
            return found


def position_for_tso(
    conn, mysql_conn_kwargs: Mapping[str, Any], tso: int, *, not_before: tuple[str, int] | None = None
) -> tuple[str, int]:
    """The binlog position from which every commit after `tso` is read (a few of the same second may replay).

    `not_before` is a position known to precede every commit after `tso` (see `PositionHistory`); the scan
    starts there instead of at the start of a binlog file.
    """
    recorded = _recorded_position(conn, tso)
    if recorded:
        return recorded
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import GtidEvent, MariadbGtidEvent, QueryEvent, XidEvent

    cutoff_s = (codec.ms_from_tso(tso) - 999) / 1000
    end_file, end_pos = master_position(conn)
    if not_before is not None:
        start, start_pos = not_before
    else:
        with conn.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            files = [str(r[0]) for r in cur.fetchall()]
        # Start from the newest file whose first transaction is not after the cutoff.
        start, start_pos = files[0], 4
        for name in reversed(files):
            first = _first_transaction_time(mysql_conn_kwargs, name)
            if first is None or first <= cutoff_s:
                start = name
                break
    if (start, start_pos) >= (end_file, end_pos):
        return end_file, end_pos
    stream = BinLogStreamReader(
        connection_settings=dict(mysql_conn_kwargs), server_id=_server_id(), log_file=start, log_pos=start_pos,
        resume_stream=True, blocking=False, only_events=[MariadbGtidEvent, GtidEvent, QueryEvent, XidEvent],
    )
    try:
        boundary = (start, start_pos)
        for event in stream:
            if isinstance(event, (MariadbGtidEvent, GtidEvent)):
                if event.timestamp >= cutoff_s:
                    return boundary
            elif isinstance(event, XidEvent) or (isinstance(event, QueryEvent) and event.query != "BEGIN"):
                boundary = (stream.log_file, stream.log_pos)
            if (stream.log_file, stream.log_pos) >= (end_file, end_pos):
                break
    finally:
        stream.close()
    return end_file, end_pos


def _first_transaction_time(mysql_conn_kwargs: Mapping[str, Any], file: str) -> float | None:
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import GtidEvent, MariadbGtidEvent

    stream = BinLogStreamReader(
        connection_settings=dict(mysql_conn_kwargs), server_id=_server_id(), log_file=file, log_pos=4,
        resume_stream=True, blocking=False, only_events=[MariadbGtidEvent, GtidEvent],
    )
    try:
        for event in stream:
            return float(event.timestamp)
        return None
    finally:
        stream.close()


def _server_id() -> int:
    # Two binlog readers with one server id evict each other; pick ids far from the lab's server (1).
    return random.randint(100_000, 2**31 - 1)


_COLUMNS_SQL = (
    "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, NUMERIC_PRECISION, NUMERIC_SCALE, "
    "DATETIME_PRECISION, CHARACTER_OCTET_LENGTH, EXTRA FROM information_schema.COLUMNS "
    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION"
)
# No ORDER BY: rows come in the server's key order, which is the closest MariaDB offers to TiDB's index ids.
_INDEX_SQL = (
    "SELECT INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME FROM information_schema.STATISTICS "
    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s"
)
_JSON_SQL = (
    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
    "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s"
)


def load_table(conn, schema: str, table: str, version: int = 0) -> codec.TableInfo:
    """A table's current metadata from information_schema (raises TableIneligibleError without a handle key).

    Virtual generated columns are left out, as TiCDC leaves them out (`ticdc_schema.table_info`).
    """
    return load_table_columns(conn, schema, table, version)[0]


def load_table_columns(conn, schema: str, table: str, version: int = 0) -> tuple[codec.TableInfo, tuple[str, ...]]:
    """`load_table` plus every column name in table order, virtual ones included (MariaDB's binlog has them)."""
    import pymysql.cursors

    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(_COLUMNS_SQL, (schema, table))
        rows = cur.fetchall()
        if not rows:
            raise CaptureError("CDC:ErrSchemaStorageTableMiss", f"table {schema}.{table} does not exist upstream")
        cur.execute(_JSON_SQL, (schema, table))
        checks = {str(r["CHECK_CLAUSE"]) for r in cur.fetchall()}
        cur.execute(_INDEX_SQL, (schema, table))
        index_rows = cur.fetchall()
    # MariaDB's JSON is a LONGTEXT alias with a json_valid() check; TiDB would report DATA_TYPE json.
    json_columns = [
        r["COLUMN_NAME"] for r in rows
        if f"json_valid(`{r['COLUMN_NAME']}`)" in checks and str(r["DATA_TYPE"]).lower() == "longtext"
    ]
    info = ticdc_schema.table_info(schema, table, rows, index_rows, json_columns=json_columns, version=version)
    return info, tuple(str(r["COLUMN_NAME"]) for r in rows)


# --- records ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowChange:
    """One row change as TiCDC emits it: op c/u/d, the new row (None for d), the old row (None for c)."""

    table: codec.TableInfo
    op: str
    row: dict[str, Any] | None
    old: dict[str, Any] | None


def _key_of(info: codec.TableInfo, row: Mapping[str, Any]) -> tuple:
    return tuple(row[c.name] for c in info.key_columns)


def should_split(info: codec.TableInfo, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """tiflow's `ShouldSplitUpdateEvent`: a column of the handle key or of any unique index changed its value."""
    return any(
        codec.value_string(c, old[c.name]) != codec.value_string(c, new[c.name]) for c in info.unique_columns
    )


def split_update(info: codec.TableInfo, old: dict[str, Any], new: dict[str, Any]) -> list[RowChange]:
    """An UPDATE as TiCDC emits it: DELETE old + INSERT new when a handle or unique key column changed."""
    if should_split(info, old, new):
        return [RowChange(info, "d", None, old), RowChange(info, "c", new, None)]
    return [RowChange(info, "u", new, old)]


_DML_ORDER = {"d": 0, "u": 1, "c": 2}  # tiflow txnRows.Less: delete < update < insert


def transaction_rows(changes: Sequence[RowChange]) -> list[RowChange]:
    """One transaction's binlog row changes -> the row changes TiCDC emits for it.

    TiKV keeps one mutation per row per transaction, so TiCDC sees each row once, from its value before the
    transaction to its value after; MariaDB's binlog has every statement's change. So the changes of one row
    (handle key) are folded into one first (a row inserted and deleted again leaves nothing; a handle-key
    change is the old row's delete plus the new row's insert, as TiKV writes it), then each UPDATE that
    changed a unique key column is split into DELETE + INSERT, and if any was split the transaction's rows
    are sorted delete < update < insert (tiflow `trySplitAndSortUpdateEvent`; Go's sort is not stable, a
    stable one is one of the orders it may produce).
    """
    rows: dict[tuple, list[Any]] = {}  # (schema, table, key) -> [table version, before or None, after or None]
    for change in changes:
        info = change.table
        if change.op == "u" and _key_of(info, change.old) != _key_of(info, change.row):
            steps = [("d", change.old, None), ("c", None, change.row)]
        else:
            steps = [(change.op, change.old, change.row)]
        for op, old, new in steps:
            slot_key = (info.schema, info.table, _key_of(info, new if new is not None else old))
            slot = rows.get(slot_key)
            if slot is None:
                rows[slot_key] = [info, None if op == "c" else old, new]
            else:
                slot[0], slot[2] = info, new
    out: list[RowChange] = []
    split = False
    for info, before, after in rows.values():
        if before is None and after is None:
            continue
        if before is None:
            out.append(RowChange(info, "c", after, None))
        elif after is None:
            out.append(RowChange(info, "d", None, before))
        else:
            parts = split_update(info, before, after)
            split = split or len(parts) > 1
            out.extend(parts)
    if split:
        out.sort(key=lambda ch: _DML_ORDER[ch.op])
    return out


# --- the capture ----------------------------------------------------------------------------------------------


class _Pending:
    """Transactions produced but not all acknowledged, in commit order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: collections.deque[list] = collections.deque()  # [remaining, commit_ts, file, pos]
        self.error: str | None = None

    def add(self, remaining: int, commit_ts: int, file: str, pos: int) -> list:
        entry = [remaining, commit_ts, file, pos]
        with self.lock:
            self.queue.append(entry)
        return entry

    def acked(self, entry: list, err: Any) -> None:
        with self.lock:
            if err is not None:
                self.error = self.error or str(err)
            entry[0] -= 1

    def pop_done(self) -> tuple[int, str, int] | None:
        """The newest checkpoint whose transaction and all earlier ones are fully acknowledged."""
        last = None
        with self.lock:
            while self.queue and self.queue[0][0] <= 0:
                _, ts, file, pos = self.queue.popleft()
                last = (ts, file, pos)
        return last


@dataclass
class _Target:
    """One table version's codec, route, partition count and schema ids (the value's once registered)."""

    info: codec.TableInfo
    codec: codec.TableCodec
    route: Route
    partitions: int
    key_id: int
    value_subject: str
    value_id: int | None = None


class Capture:
    """Replicates one changefeed until `stop()` (graceful: flush and checkpoint) or `crash()` (abandon)."""

    def __init__(
        self,
        changefeed: Changefeed,
        store: ChangefeedStore,
        mysql_conn_kwargs: Mapping[str, Any],
        *,
        checkpoint_interval: float = 0.2,
        linger_ms: int = 20,
        time_zone: str = "UTC",
        history: PositionHistory | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        self.cf = changefeed
        # Called once, when this capture first saves a checkpoint above the one it started from: TiCDC turns a
        # `warning` changefeed back to `normal` only when its checkpoint passes the one of the last warning
        # (tiflow feedStateManager.checkAndChangeState), not when the sink merely restarts.
        self.on_started = on_started
        self.started: float | None = None  # monotonic time the binlog stream opened
        self.history = history
        self.store = store
        self.mysql = dict(mysql_conn_kwargs)
        try:
            self.sink = parse_sink(changefeed.sink_uri, changefeed.replica_config, time_zone=time_zone)
        except ValueError as exc:  # an unknown decimal/bigint mode or time zone
            raise CaptureError("CDC:ErrCodecInvalidConfig", str(exc)) from None
        self.checkpoint_interval = checkpoint_interval
        self.linger_ms = linger_ms
        self._stop = threading.Event()
        self._crashed = threading.Event()
        self._tables: dict[tuple[str, str], codec.TableInfo] = {}
        self._binlog_columns: dict[tuple[str, str], tuple[str, ...]] = {}  # every column, virtual ones included
        self._ineligible: set[tuple[str, str]] = set()
        self._versions: dict[tuple[str, str], int] = {}
        self._schema_ids: dict[tuple[str, str], int] = {}
        self._targets: dict[int, _Target] = {}
        self._routes: dict[tuple[str, str], Route] = {}
        self._topics: dict[str, int] = {}
        self._pending = _Pending()
        self._last_ts = changefeed.checkpoint_ts
        self._boundary: tuple[str, int] = ("", 0)
        self._history_ready = False
        self.error: BaseException | None = None

    # lifecycle
    def stop(self) -> None:
        self._stop.set()

    def wait_stopped(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True as soon as the capture is stopped."""
        return self._stop.wait(timeout)

    def crash(self) -> None:
        """Stop without flushing or saving anything more (a kill -9 as far as the checkpoint knows)."""
        self._crashed.set()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # setup
    def _check_registry(self) -> None:
        import httpx

        url = self.sink.registry_url
        shown = mask_url(url)
        try:
            resp = httpx.get(url.rstrip("/") + "/", timeout=10)
        except (httpx.HTTPError, ValueError) as exc:
            # The exception text may quote the URL, password included.
            detail = str(exc).replace(url, shown)
            raise CaptureError(
                "CDC:ErrAvroSchemaAPIError",
                f"schema registry {shown} unreachable: {type(exc).__name__}: {detail}; check the URL and that it runs",
            ) from None
        if resp.status_code != 200 or resp.text.strip() != "{}":
            raise CaptureError(
                "CDC:ErrAvroSchemaAPIError",
                f"schema registry {shown} answered GET / with {resp.status_code} {resp.text[:100]!r}; "
                "TiCDC requires exactly {}",
            )

    def _registry(self):
        from confluent_kafka.schema_registry import SchemaRegistryClient

        parts = urlsplit(self.sink.registry_url)
        conf: dict[str, Any] = {"url": self.sink.registry_url}
        if parts.username:
            netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
            conf = {
                "url": parts._replace(netloc=netloc).geturl(),
                "basic.auth.user.info": f"{unquote(parts.username)}:{unquote(parts.password or '')}",
            }
        return SchemaRegistryClient(conf)

    def _kafka_conf(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.sink.bootstrap, **dict(self.sink.kafka_extra)}

    def _ensure_topic(self, admin, topic: str) -> int:
        if topic in self._topics:
            return self._topics[topic]
        from confluent_kafka.admin import NewTopic

        md = self._metadata(admin, None)
        if topic not in md.topics or md.topics[topic].error is not None:
            if not self.sink.auto_create_topic:
                raise CaptureError("CDC:ErrKafkaTopicNotExists", f"topic {topic} does not exist and auto-create-topic=false")
            rf = max(1, min(self.sink.replication_factor, len(md.brokers)))
            fut = admin.create_topics([NewTopic(topic, self.sink.partition_num, rf)])[topic]
            try:
                fut.result(30)
            except Exception as exc:  # noqa: BLE001 - another capture may have created it meanwhile
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise CaptureError("CDC:ErrKafkaCreateTopic", f"creating topic {topic} failed: {exc}") from None
            md = self._metadata(admin, topic)
        self._topics[topic] = len(md.topics[topic].partitions) or self.sink.partition_num
        return self._topics[topic]

    @staticmethod
    def _metadata(admin, topic: str | None):
        from confluent_kafka import KafkaException

        try:
            return admin.list_topics(topic=topic, timeout=10)
        except KafkaException as exc:  # the broker is down or restarting: retryable, as in TiCDC
            raise CaptureError("CDC:ErrKafkaCreateTopic", f"getting Kafka metadata failed: {exc}") from None

    def _schema_id(self, registry, subject: str, schema_json: str) -> int:
        key = (subject, schema_json)
        if key not in self._schema_ids:
            from confluent_kafka.schema_registry import Schema
            from confluent_kafka.schema_registry.error import SchemaRegistryError

            try:
                self._schema_ids[key] = registry.register_schema(subject, Schema(schema_json, "AVRO"))
            except SchemaRegistryError as exc:
                # TiCDC logs the subject and the registry's answer, but its error names neither: any non-200
                # answer (409 incompatible, 422 invalid, 401, ...) is `ErrAvroSchemaAPIError.GenWithStackByArgs()`
                # with no argument, so the message keeps its template's `%s` (tiflow confluent_schema_registry.go
                # Register; pingcap/errors GetMsg formats only when there are args). The sink retries it as any
                # sink error: the changefeed stays `warning` until fixed or stuck for 30 minutes.
                log.error("Failed to register schema to the Registry, HTTP error: status=%s subject=%s "
                          "responseBody=%s", exc.http_status_code, subject, exc.error_message)
                raise SchemaRefused(REGISTRY_CODE, REGISTRY_MESSAGE) from None
        return self._schema_ids[key]

    def _table(self, conn, schema: str, table: str, names: Sequence[str] | None) -> codec.TableInfo | None:
        """The table's current metadata, or None for a table TiCDC would skip (no handle key)."""
        key = (schema, table)
        if key in self._ineligible:
            return None
        info = self._tables.get(key)
        if info is None or (names is not None and self._binlog_columns.get(key) != tuple(names)):
            version = self._versions.get(key, 0) + 1
            self._versions[key] = version
            try:
                info, self._binlog_columns[key] = load_table_columns(conn, schema, table, version)
            except codec.TableIneligibleError as exc:
                # TiCDC checks eligibility when a changefeed is created (CDC:ErrTableIneligible unless
                # ignore_ineligible_table); at run time its schema storage skips such a table with a
                # warning ("skip ineligible table"), so a later CREATE of one never fails the changefeed.
                log.warning("changefeed %s: skip ineligible table %s.%s: %s", self.cf.id, schema, table, exc)
                self._ineligible.add(key)
                return None
            self._tables[key] = info
        return info

    # the loop
    def run(self) -> None:
        """Replicate until stopped; raise CaptureError (or another error) on failure."""
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient
        from pymysqlreplication import BinLogStreamReader
        from pymysqlreplication.event import HeartbeatLogEvent, QueryEvent, RotateEvent, XidEvent
        from pymysqlreplication.row_event import DeleteRowsEvent, TableMapEvent, UpdateRowsEvent, WriteRowsEvent

        self._check_registry()
        registry = self._registry()
        admin = AdminClient(self._kafka_conf())
        producer = Producer(
            {
                **self._kafka_conf(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": self.linger_ms,
                "message.max.bytes": self.sink.max_message_bytes,
                "queue.buffering.max.messages": 500_000,
                # A broker that stays away fails the deliveries within a minute (librdkafka's default is 5),
                # so the changefeed shows `warning` and retries from its checkpoint, as TiCDC's sink does
                # after its write timeout and retries.
                "message.timeout.ms": 60_000,
            }
        )
        conn = _connect(self.mysql)
        try:
            ddl_history.ensure(conn)  # also made by the lab MariaDB's init file; a server started before has none
            self._history_ready = True
            file, pos = self._start_position(conn)
            self._boundary = (file, pos)
            stream = BinLogStreamReader(
                connection_settings=self.mysql, server_id=_server_id(), log_file=file, log_pos=pos,
                resume_stream=True, blocking=True, slave_heartbeat=0.5,
                # A table id's TABLE_MAP is parsed once, not before every row event (it was ~30% of the feed's
                # time beside go-tpc: py-spy). MariaDB gives a table a new id when its definition changes, and
                # `_loop` forgets the ids at every DDL and binlog file switch (ids restart with the server).
                freeze_schema=True,
                only_schemas=self._schema_prefilter(conn),
                only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent, RotateEvent,
                             TableMapEvent, HeartbeatLogEvent],
            )
            try:
                self._loop(stream, conn, registry, admin, producer)
            finally:
                stream.close()
        finally:
            conn.close()
            if not self._crashed.is_set():
                producer.flush(30)
                self._save_checkpoint()
            else:
                producer.purge()

    def _schema_prefilter(self, conn) -> list[str] | None:
        """Schemas whose row events are worth parsing, so other databases' traffic costs almost nothing.

        Only when the rules name their schemas literally; the names are matched case-insensitively against the
        server's databases (the filter is case-insensitive, MariaDB's names are not). A database created later
        under a different spelling than the rule would be missed, so it is resolved again at every start.
        """
        literal = self.sink.filter.literal_schemas()
        if literal is None:
            return None
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES")
            existing = [r[0] for r in cur.fetchall()]
        return sorted(literal | {name for name in existing if name.lower() in literal})

    def _start_position(self, conn) -> tuple[str, int]:
        if self.cf.binlog_file and self.cf.binlog_pos:
            return self.cf.binlog_file, self.cf.binlog_pos
        hint = self.history.floor(self.cf.checkpoint_ts) if self.history is not None else None
        file, pos = position_for_tso(conn, self.mysql, self.cf.checkpoint_ts, not_before=hint)
        self.store.update_progress(self.cf.id, checkpoint_ts=self.cf.checkpoint_ts, binlog_file=file, binlog_pos=pos)
        return file, pos

    def _loop(self, stream, conn, registry, admin, producer) -> None:
        from pymysqlreplication.event import HeartbeatLogEvent, QueryEvent, RotateEvent, XidEvent
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        txn: list[RowChange] = []
        last_save = time.monotonic()
        tz = self.sink.codec.time_zone
        for event in stream:
            if self._stop.is_set():
                return
            if self.started is None:  # the first event (a heartbeat at the latest): the binlog reads again
                self.started = time.monotonic()
            if isinstance(event, (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)):
                if not self.sink.filter.matches(event.schema, event.table):
                    continue
                names = [c.name for c in event.columns]
                info = self._table(conn, event.schema, event.table, names)
                if info is None:
                    continue
                for r in event.rows:
                    if isinstance(event, WriteRowsEvent):
                        txn.append(RowChange(info, "c", codec.row_internal(info, r["values"], r["none_sources"], tz=tz), None))
                    elif isinstance(event, DeleteRowsEvent):
                        txn.append(RowChange(info, "d", None, codec.row_internal(info, r["values"], r["none_sources"], tz=tz)))
                    else:
                        old = codec.row_internal(info, r["before_values"], r["before_none_sources"], tz=tz)
                        new = codec.row_internal(info, r["after_values"], r["after_none_sources"], tz=tz)
                        txn.append(RowChange(info, "u", new, old))
            elif isinstance(event, XidEvent) or (isinstance(event, QueryEvent) and event.query != "BEGIN"):
                ddl_target = None
                if isinstance(event, QueryEvent) and event.query != "COMMIT":
                    # DDL: forget the schema's table metadata so the next row reloads it (and re-registers).
                    schema = event.schema.decode() if isinstance(event.schema, bytes) else event.schema
                    ddl_target = ddl_history.target(event.query, schema)
                    # The session's schema, and the one a qualified name (`ALTER TABLE db.t`) names.
                    stale = {schema, ddl_target[0] if ddl_target else schema}
                    self._tables = {k: v for k, v in self._tables.items() if k[0] not in stale}
                    self._ineligible = {k for k in self._ineligible if k[0] not in stale}  # a key may have been added
                    stream.table_map.clear()  # freeze_schema: the next TABLE_MAP of any table is parsed again
                self._boundary = (stream.log_file, stream.log_pos)
                self._commit(transaction_rows(txn), event.timestamp, *self._boundary, registry, admin, producer)
                txn = []
                if ddl_target is not None and self.sink.filter.matches(*ddl_target):
                    # TiDB's DDL history stand-in, at the TSO the DDL just got, before any later change is read.
                    self._record_ddl(conn, *ddl_target, event.query, self._last_ts)
            elif isinstance(event, RotateEvent):
                stream.table_map.clear()  # a new file may follow a server restart, which reuses table ids
                continue
            elif isinstance(event, HeartbeatLogEvent) and not txn:
                # Caught up: nothing committed before now is unread, so the checkpoint may move to now.
                self._commit([], time.time(), *self._boundary, registry, admin, producer)
            else:
                continue  # delivery reports and the checkpoint are served at transaction boundaries only
            # Once per transaction, not per row event: poll() was ~8% of the feed's time (py-spy).
            producer.poll(0)
            if self._pending.error:
                raise CaptureError("CDC:ErrKafkaAsyncSendMessage", f"Kafka rejected a record: {self._pending.error}")
            now = time.monotonic()
            if now - last_save >= self.checkpoint_interval:
                self._save_checkpoint()
                last_save = now

    def _record_ddl(self, conn, db: str, table: str, query: str, ts: int) -> None:
        if not self._history_ready:
            ddl_history.ensure(conn)
            self._history_ready = True
        ddl_history.record(conn, db, table, query, ts)

    def _commit_ts(self, seconds: float) -> int:
        ts = max(codec.tso_from_ms(int(seconds * 1000)), self._last_ts + 1)
        self._last_ts = ts
        return ts

    def _commit(self, txn: list[RowChange], seconds: float, file: str, pos: int, registry, admin, producer) -> None:
        commit_ts = self._commit_ts(seconds)
        entry = self._pending.add(len(txn), commit_ts, file, pos)
        if not txn:
            return
        acked = self._pending.acked

        def cb(err: Any, _msg: Any) -> None:  # one per transaction, not one per record
            acked(entry, err)

        for change in txn:
            info = change.table
            target = self._targets.get(id(info))
            if target is None or target.info is not info:
                target = self._target(info, registry, admin)
            source = change.row if change.row is not None else change.old
            tc = target.codec
            key = tc.encode_key(target.key_id, source)
            value = None
            if change.op != "d":
                if target.value_id is None:  # registered at the table's first non-delete, as before
                    target.value_id = self._schema_id(registry, target.value_subject, tc.value_schema)
                value = tc.encode_value(target.value_id, change.row, op=change.op, commit_ts=commit_ts)
            route = target.route
            partition = codec.partition_for(route.partition, info, source, target.partitions, commit_ts=commit_ts,
                                            columns=route.columns)
            while True:
                try:
                    producer.produce(route.topic, value=value, key=key, partition=partition, on_delivery=cb)
                    break
                except BufferError:
                    producer.poll(0.05)

    def _target(self, info: codec.TableInfo, registry, admin) -> _Target:
        """Where and how one table version's rows go, resolved once per version instead of once per row."""
        tc = self._codec(info)
        route = self._routes.get((info.schema, info.table)) or self._route(info)
        partitions = self._ensure_topic(admin, route.topic)
        key_subject, value_subject = codec.subject_names(route.topic)
        key_id = self._schema_id(registry, key_subject, tc.key_schema)
        target = self._targets[id(info)] = _Target(info, tc, route, partitions, key_id, value_subject)
        return target

    def _codec(self, info: codec.TableInfo) -> codec.TableCodec:
        """Built once per table version: `_target`, its only caller, caches what it returns."""
        try:
            return codec.TableCodec(info, self.sink.codec)
        except codec.FieldNameCollisionError as exc:  # TiCDC: goavro refuses the schema
            raise CaptureError("CDC:ErrAvroSchemaAPIError", str(exc)) from None

    def _route(self, info: codec.TableInfo) -> Route:
        route = self._routes[(info.schema, info.table)] = self.sink.route(info.schema, info.table)
        return route

    def _save_checkpoint(self) -> None:
        if self._crashed.is_set():
            return
        done = self._pending.pop_done()
        if done is None:
            return
        ts, file, pos = done
        self.store.update_progress(self.cf.id, checkpoint_ts=ts, binlog_file=file, binlog_pos=pos)
        if self.on_started is not None and ts > self.cf.checkpoint_ts:
            callback, self.on_started = self.on_started, None
            callback()


# --- the manager ----------------------------------------------------------------------------------------------


class CaptureManager:
    """Runs one capture thread per changefeed in state `normal`/`warning`; the TiCDC server process owns one."""

    def __init__(self, store: ChangefeedStore, mysql_conn_kwargs: Mapping[str, Any], *, poll_interval: float = 0.5,
                 addr: str = "", time_zone: str = "UTC", retry_initial_s: float = 1.0, retry_max_s: float = 30.0,
                 retry_max_elapsed_s: float = 1800.0) -> None:
        self.store = store
        self.retry_initial_s, self.retry_max_s, self.retry_max_elapsed_s = retry_initial_s, retry_max_s, retry_max_elapsed_s
        self.mysql = dict(mysql_conn_kwargs)
        self.time_zone = time_zone
        self.history = PositionHistory()
        self.poll_interval = poll_interval
        self.addr = addr
        self._captures: dict[str, tuple[Capture, threading.Thread]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ticdc-capture-manager", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            running = list(self._captures.values())
            self._captures.clear()
        for cap, _ in running:
            cap.stop()
        for _, thread in running:
            thread.join(timeout)

    def running(self) -> list[str]:
        with self._lock:
            return [cf_id for cf_id, (_, t) in self._captures.items() if t.is_alive()]

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                conn = conn or _connect(self.mysql)
                self.history.record(conn)
            except Exception:  # noqa: BLE001 - without samples captures fall back to a full binlog scan
                log.warning("capture manager: cannot sample the binlog position", exc_info=True)
                if conn is not None:
                    conn.close()
                conn = None
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - a store hiccup must not kill the manager
                log.exception("capture manager: reconcile failed")
            self._stop.wait(self.poll_interval)
        if conn is not None:
            conn.close()

    def reconcile(self) -> None:
        """Start captures for normal changefeeds, stop the others."""
        wanted = {cf.id: cf for cf in self.store.list() if cf.state in _CAPTURED_STATES}
        with self._lock:
            for cf_id, (cap, thread) in list(self._captures.items()):
                if cf_id not in wanted or not thread.is_alive():
                    cap.stop()
                    if not thread.is_alive():
                        del self._captures[cf_id]
            for cf_id, cf in wanted.items():
                if cf_id in self._captures:
                    continue
                try:
                    cap = Capture(cf, self.store, self.mysql, time_zone=self.time_zone, history=self.history,
                                  on_started=lambda cf_id=cf_id: self._recovered(cf_id))
                except CaptureError as exc:
                    self.store.set_state(cf_id, "failed", running_error(exc.code, str(exc), addr=self.addr))
                    continue
                thread = threading.Thread(target=self._run_capture, args=(cap,), name=f"ticdc-capture-{cf_id}", daemon=True)
                self._captures[cf_id] = (cap, thread)
                thread.start()

    def _run_capture(self, cap: Capture) -> None:
        """Run `cap`; on a retryable failure keep the changefeed `warning` and start again from its checkpoint.

        As TiCDC's owner (`feedStateManager`): the backoff doubles from `retry_initial_s` up to `retry_max_s`
        and starts over once the checkpoint moved again; an unretryable error fails the changefeed at once, and
        a retryable one fails it once the checkpoint has not moved for `retry_max_elapsed_s` (TiCDC's
        `changefeed_error_stuck_duration`, code CDC:ErrChangefeedUnretryable).
        """
        cf_id = cap.cf.id
        delay = self.retry_initial_s
        last_checkpoint: int | None = None
        stuck_since = time.monotonic()
        while True:
            try:
                cap.run()
                return
            except Exception as exc:  # noqa: BLE001 - every failure is retried or fails the changefeed, visibly
                cap.error = exc
                if cap.stopping:
                    return
                code = exc.code if isinstance(exc, CaptureError) else "CDC:ErrProcessorUnknown"
                message = str(exc) if isinstance(exc, CaptureError) else f"{type(exc).__name__}: {exc}"
                current = self.store.get(cf_id)
                checkpoint = current.checkpoint_ts if current is not None else None
                now = time.monotonic()
                if checkpoint != last_checkpoint:  # progress since the last failure: a fresh start
                    last_checkpoint, stuck_since, delay = checkpoint, now, self.retry_initial_s
                if not retryable(exc):
                    log.error("capture %s failed: %s", cf_id, message)
                    self.store.set_state(cf_id, "failed", running_error(code, message, addr=self.addr))
                    return
                if now - stuck_since > self.retry_max_elapsed_s:
                    log.error("capture %s: checkpoint stuck for %.0fs; failing it: %s", cf_id, now - stuck_since, message)
                    self.store.set_state(cf_id, "failed", running_error("CDC:ErrChangefeedUnretryable", message,
                                                                        addr=self.addr))
                    return
                log.warning("capture %s: %s; retrying from the checkpoint in %.1fs", cf_id, message, delay)
                self.store.set_state(cf_id, "warning", running_error(code, message, addr=self.addr))
                if cap.wait_stopped(delay):
                    return
                delay = min(self.retry_max_s, delay * 2)
                cap = self._replace_capture(cf_id, cap)
                if cap is None:
                    return

    def _replace_capture(self, cf_id: str, old: Capture) -> Capture | None:
        """A fresh capture from the stored checkpoint, in `old`'s place (None when the changefeed went away)."""
        cf = self.store.get(cf_id)
        if cf is None or cf.state not in _CAPTURED_STATES:
            return None
        new = Capture(cf, self.store, self.mysql, time_zone=self.time_zone, history=self.history,
                      on_started=lambda: self._recovered(cf_id))
        with self._lock:
            current = self._captures.get(cf_id)
            if current is None or current[0] is not old or old.stopping:
                return None
            self._captures[cf_id] = (new, current[1])
        return new

    def _recovered(self, cf_id: str) -> None:
        cf = self.store.get(cf_id)
        if cf is not None and cf.state == "warning":
            self.store.set_state(cf_id, "normal", None)
            log.info("capture %s: reading the binlog again; changefeed back to normal", cf_id)


_CAPTURED_STATES = ("normal", "warning")


# Lab codes of Kafka failures (a broker down, restarting or unreachable): TiCDC retries those, never fails
# the changefeed for them (only tiflow's `changefeedUnRetryableErrors` do that).
RETRYABLE_CODES = frozenset({
    "CDC:ErrKafkaAsyncSendMessage", "CDC:ErrKafkaCreateTopic", "CDC:ErrKafkaNewProducer", "CDC:ErrKafkaTopicNotExists",
})  # fmt: skip


def retryable(exc: BaseException) -> bool:
    """Errors TiCDC retries with the changefeed in `warning`: a lost upstream connection, any Kafka failure,
    a registry refusing a schema.

    The other lab errors (bad sink config, an unreachable registry, an unreadable binlog) fail the changefeed
    as before.
    """
    import pymysql
    from confluent_kafka import KafkaException

    if isinstance(exc, SchemaRefused):
        # A sink error like any other: TiCDC's sink manager retries every one not in `changefeedUnRetryableErrors`
        # (tiflow cdc/processor/sinkmanager/manager.go, pkg/errors/helper.go), with the changefeed `warning`.
        return True
    if isinstance(exc, CaptureError):
        return exc.code in RETRYABLE_CODES
    if isinstance(exc, (KafkaException, pymysql.err.OperationalError, pymysql.err.InterfaceError, ConnectionError,
                        TimeoutError)):  # fmt: skip
        return True
    return isinstance(exc, OSError) and exc.errno is not None
