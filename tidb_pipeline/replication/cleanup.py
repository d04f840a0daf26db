"""Landing cleanup: delete only what the replica already holds, and only once it is old enough.

The recipe this project replaces TRUNCATEs the landing table on a timer, which loses rows that landed after
the last merge. Here a row is deleted only when all of these hold:
- its offset is at or below its partition's merged watermark for the replica (it is in the replica);
- its timestamp is older than the retention window (recent rows stay for debugging): the Kafka timestamp
  (`CreateTime`, or `LogAppendTime` on such topics), else the connector's `SnowflakeConnectorPushTime`
  (Snowpipe Streaming, connector 4.x). A row with none of them (metadata groups switched off, another
  writer) has no age to wait for and goes as soon as it is merged: a missing timestamp must not keep a row
  forever;
- it is not the highest landed offset of its partition: that row must survive so the built-in landing's
  landed offsets can always be seeded again from the landing table (`replication.landing`), or a partition
  would be re-read from the start. With the landed-offsets table (built-in mode) the highest offset is read
  from it, not from a scan of the landing table; in connector mode the landing table's MAX is used.
Both connector generations' layouts qualify alike (3.x `RECORD_CONTENT = {}` tombstones and `schema_id`
fields, 4.x NULL tombstones): only partition, offset and the timestamps are read.
"""

from __future__ import annotations

import datetime as dt

from tidb_pipeline.replication.ddl import Statement, TableRef

_PARTITION = '"RECORD_METADATA":"partition"::int'
_OFFSET = '"RECORD_METADATA":"offset"::int'
# A landing row's age as the cleanup judges it (epoch ms; the landing table's alias is `l`). No timestamp at
# all counts as 0 (older than any cutoff), so such rows go once merged. The merge records the MIN/MAX of the
# same expression over the rows it reads, so the cleanup gate (`defs/cleanup_due.py`) knows when they age out.
RECORD_TIME_SQL = ('COALESCE(l."RECORD_METADATA":"CreateTime"::int, l."RECORD_METADATA":"LogAppendTime"::int, '
                   'l."RECORD_METADATA":"SnowflakeConnectorPushTime"::int, 0)')


def cutoff_ms(now: dt.datetime, retention: dt.timedelta) -> int:
    """The cleanup's cutoff: rows whose `RECORD_TIME_SQL` is below it are old enough to go."""
    if now.tzinfo is None:
        raise ValueError("pass a timezone-aware `now` (e.g. datetime.now(timezone.utc)) to compute the cutoff")
    if retention < dt.timedelta(0):
        raise ValueError("retention must not be negative")
    return int((now - retention).timestamp() * 1000)


def cleanup_sql(
    landing: TableRef, watermarks: TableRef, replica: TableRef, now: dt.datetime, retention: dt.timedelta,
    landed: TableRef | None = None, topic: str = "",
) -> Statement:
    """One DELETE (never TRUNCATE); `now` must be timezone-aware so the cutoff is an exact epoch ms.

    `landed` (the landed-offsets table, built-in mode) with `topic` gives each partition's highest landed
    offset; without it the landing table's MAX per partition is computed (connector mode).
    """
    cutoff = cutoff_ms(now, retention)
    if landed is not None:
        highest = (f'SELECT "PARTITION" AS "P", "LAST_OFFSET" AS "MAX_OFFSET" FROM {landed.sql} '
                   'WHERE "LANDING_TABLE" = %s AND "TOPIC" = %s')
        highest_params: tuple[str, ...] = (landing.label, topic)
    else:
        highest = f'SELECT {_PARTITION} AS "P", MAX({_OFFSET}) AS "MAX_OFFSET" FROM {landing.sql} GROUP BY 1'
        highest_params = ()
    return Statement(
        f"DELETE FROM {landing.sql} l USING (\n"
        f'  SELECT w."PARTITION" AS "P", w."MERGED_OFFSET" AS "WM", m."MAX_OFFSET" AS "MX"\n'
        f"  FROM {watermarks.sql} w\n"
        f"  JOIN ({highest}) m\n"
        f'    ON m."P" = w."PARTITION"\n'
        f'  WHERE w."REPLICA_TABLE" = %s\n'
        f") k\n"
        f'WHERE l.{_PARTITION} = k."P" AND l.{_OFFSET} <= k."WM" AND l.{_OFFSET} < k."MX" '
        f"AND {RECORD_TIME_SQL} < %s",
        (*highest_params, replica.label, cutoff),
    )


def record_times_sql(landing: TableRef, where: str) -> str:
    """Two scalar subqueries: MIN and MAX record time (the cleanup's notion of age) of the landing rows `where`
    selects (alias `l`); each takes the where clause's parameters once."""
    return ", ".join(f"(SELECT {fn}({RECORD_TIME_SQL}) FROM {landing.sql} l {where})" for fn in ("MIN", "MAX"))
