"""`tidb-pipeline discover`: write the table list from TiDB's information_schema.

Tables without a primary key or NOT NULL unique key are left out with a warning: TiCDC cannot replicate
them (`CDC:ErrTableIneligible`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.resources.tidb import TiDBResource


def discover_tables(
    tidb: TiDBResource, databases: Sequence[str], *, include: str = "*", existing: PipelineConfig | None = None
) -> tuple[list[TableConfig], list[str]]:
    """(eligible tables, skipped `db.table` names); keeps per-table settings already in `existing`."""
    previous = {(t.db, t.table): t for t in (existing.tables if existing else ())}
    tables: list[TableConfig] = []
    skipped: list[str] = []
    with tidb.get_connection() as conn, conn.cursor() as cur:
        for db in databases:
            cur.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                "AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                (db,),
            )
            names = [r[0] for r in cur.fetchall() if fnmatch.fnmatchcase(r[0], include)]
            for name in names:
                key = tidb.handle_key(db, name)
                if not key:
                    skipped.append(f"{db}.{name}")
                    continue
                old = previous.get((db, name))
                tables.append(old.model_copy(update={"key": key}) if old else TableConfig(db=db, table=name, key=key))
    return tables, skipped
