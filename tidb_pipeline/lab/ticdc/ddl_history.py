"""A stand-in for TiDB's DDL job history (`mysql.tidb_ddl_history`), kept by the lab change feed.

MariaDB has no DDL job history. The lab change feed sees every DDL as a binlog QueryEvent and gives it a
commit TSO like any transaction; for each DDL on a table the changefeed replicates, it inserts a row here with
TiDB's columns (`job_id, job_meta, db_name, table_name, schema_ids, table_ids, create_time`) and `job_meta`
shaped like TiDB's encoded job (`id`, `type`, `schema_name`, `table_name`, `query`, `state`,
`binlog.FinishedTS` = the TSO), so the pipeline's reader (`TiDBResource.ddl_jobs`,
`replication.schema_changes`) runs unchanged; only its `ddl_history_table` setting points here.

The row is written before the capture reads past the DDL, so no change committed after the DDL reaches Kafka
before its history row exists (as in TiDB, where a job is in the history before the new schema is public).
A capture replay after a restart records the DDL again under a new job id and a later TSO; the rows replayed
after it get later TSOs too, so the newest record is consistent with the stream.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

STANDIN_SCHEMA = "tidb_pipeline_lab"
STANDIN_TABLE = "tidb_ddl_history"
STANDIN = f"{STANDIN_SCHEMA}.{STANDIN_TABLE}"

# TiDB's model.ActionType numbers for the DDL the lab meets (pkg/meta/model/job.go); 0 = any other.
_ACTIONS = (
    (re.compile(r"^\s*TRUNCATE\b", re.I), 11),  # ActionTruncateTable
    (re.compile(r"^\s*CREATE\s+TABLE\b", re.I), 3),  # ActionCreateTable
    (re.compile(r"^\s*DROP\s+TABLE\b", re.I), 4),  # ActionDropTable
    (re.compile(r"^\s*RENAME\s+TABLE\b", re.I), 14),  # ActionRenameTable
    (re.compile(r"^\s*ALTER\s+TABLE\b.*\bADD\s+(COLUMN\s+)?(?!INDEX|KEY|UNIQUE|PRIMARY|CONSTRAINT)", re.I | re.S), 5),
    (re.compile(r"^\s*ALTER\s+TABLE\b.*\bDROP\s+(COLUMN\s+)?(?!INDEX|KEY|PRIMARY|CONSTRAINT)", re.I | re.S), 6),
    (re.compile(r"^\s*ALTER\s+TABLE\b.*\b(MODIFY|CHANGE|RENAME\s+COLUMN)\b", re.I | re.S), 12),  # ActionModifyColumn
)
_NAME = r"(?:`(?:[^`]|``)+`|[\w$]+)"
_TARGET = re.compile(
    rf"^\s*(?:TRUNCATE(?:\s+TABLE)?|ALTER(?:\s+ONLINE)?(?:\s+IGNORE)?\s+TABLE|CREATE\s+TABLE(?:\s+IF\s+NOT\s+EXISTS)?"
    rf"|DROP\s+TABLE(?:\s+IF\s+EXISTS)?|RENAME\s+TABLE)\s+({_NAME})(?:\s*\.\s*({_NAME}))?", re.I)
_JOB_DONE = 6  # TiDB's JobStateSynced


def _unquote(name: str) -> str:
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


def target(query: str, current_schema: str) -> tuple[str, str] | None:
    """(db, table) a DDL statement changes, or None for DDL on no single table (CREATE DATABASE, ...)."""
    m = _TARGET.match(query)
    if not m:
        return None
    if m.group(2):
        return _unquote(m.group(1)), _unquote(m.group(2))
    return current_schema, _unquote(m.group(1))


def action(query: str) -> int:
    return next((n for pattern, n in _ACTIONS if pattern.search(query)), 0)


def create_sql() -> list[str]:
    """The stand-in's DDL (also run by the lab MariaDB's init file, so it exists before any capture)."""
    return [
        f"CREATE DATABASE IF NOT EXISTS `{STANDIN_SCHEMA}`",
        f"CREATE TABLE IF NOT EXISTS `{STANDIN_SCHEMA}`.`{STANDIN_TABLE}` (job_id BIGINT NOT NULL AUTO_INCREMENT, "
        "job_meta LONGBLOB, db_name CHAR(64), table_name CHAR(64), schema_ids TEXT, table_ids TEXT, "
        "create_time DATETIME, PRIMARY KEY (job_id))",
    ]


def ensure(conn: Any) -> None:
    with conn.cursor() as cur:
        for sql in create_sql():
            cur.execute(sql)


def record(conn: Any, db: str, table: str, query: str, finished_ts: int) -> None:
    """Insert one finished job for `db.table` (`ensure` first)."""
    meta = {"id": 0, "type": action(query), "schema_name": db, "table_name": table, "state": _JOB_DONE,
            "query": query, "binlog": {"FinishedTS": finished_ts}}
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO `{STANDIN_SCHEMA}`.`{STANDIN_TABLE}` (job_meta, db_name, table_name, create_time) "
            "VALUES (%s, %s, %s, FROM_UNIXTIME(%s))",
            (json.dumps(meta).encode(), db, table, int(time.time())),
        )
