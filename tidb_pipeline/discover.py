"""`tidb-pipeline discover`: write the table list from TiDB's information_schema.

Tables TiCDC cannot replicate are left out with the reason: without a primary key or NOT NULL unique key
(`CDC:ErrTableIneligible`), or with two columns whose Avro field names collide (TiCDC sanitises names for
Avro, `Mixed Case` -> `Mixed_Case`, and refuses a record whose fields repeat a name).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from tidb_pipeline.config import PipelineConfig, TableConfig
from tidb_pipeline.replication.ticdc_schema import sanitize_name
from tidb_pipeline.resources.tidb import TiDBResource


class DiscoverError(ValueError):
    """What was asked cannot be discovered (an unknown database); the message says what to do."""


def field_collisions(columns: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of column names that TiCDC would write as the same Avro field name."""
    seen: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    for name in columns:
        field = sanitize_name(name)
        if field in seen:
            out.append((seen[field], name))
        else:
            seen[field] = name
    return out


def discover_tables(
    tidb: TiDBResource, databases: Sequence[str], *, include: str = "*", existing: PipelineConfig | None = None
) -> tuple[list[TableConfig], list[tuple[str, str]]]:
    """(eligible tables, skipped (`db.table`, reason)); keeps per-table settings already in `existing`."""
    previous = {(t.db, t.table): t for t in (existing.tables if existing else ())}
    tables: list[TableConfig] = []
    skipped: list[tuple[str, str]] = []
    with tidb.get_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
        schemas = [r[0] for r in cur.fetchall()]
        for db in databases:
            if db not in schemas:
                near = [s for s in schemas if s.lower() == db.lower()]
                hint = f"; did you mean {near[0]!r}? (names are matched exactly)" if near else ""
                raise DiscoverError(f"database {db!r} not found on {tidb.host}:{tidb.port}{hint}")
            cur.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                "AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                (db,),
            )
            names = [r[0] for r in cur.fetchall() if fnmatch.fnmatchcase(r[0], include)]
            for name in names:
                key = tidb.handle_key(db, name)
                if not key:
                    skipped.append((f"{db}.{name}", "no primary key or NOT NULL unique key (TiCDC cannot replicate it)"))
                    continue
                clashes = field_collisions([c.name for c in tidb.columns(db, name)])
                if clashes:
                    a, b = clashes[0]
                    skipped.append((f"{db}.{name}", f"columns {a!r} and {b!r} both become Avro field "
                                    f"{sanitize_name(a)!r} (TiCDC cannot encode it; rename one)"))
                    continue
                old = previous.get((db, name))
                tables.append(old.model_copy(update={"key": key}) if old else TableConfig(db=db, table=name, key=key))
    return tables, skipped
