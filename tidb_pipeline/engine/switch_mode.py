"""Switch a live replica to another mode (`mode:` in the config): the table is rebuilt in the new shape.

The statements are `replication.modes.switch_statements` (what each direction keeps is explained there and in
README "Replica modes"); the replica's TiDB columns come from the topic's latest schema, as the merge reads
them, limited to the columns the replica has. The merge watermarks are left as they are, so the next merge
continues where the last one stopped, in the new shape. Pause the table's merges while it runs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tidb_pipeline.engine.replica import forget_ensured, latest_schemas
from tidb_pipeline.replication.avro_types import replica_columns, source_names, with_names
from tidb_pipeline.replication.columns import Policy, apply_policy
from tidb_pipeline.replication.ddl import TableRef, table_columns_sql
from tidb_pipeline.replication.mode_columns import mode_of_columns
from tidb_pipeline.replication.modes import switch_statements
from tidb_pipeline.resources.warehouse import Warehouse


@dataclass(frozen=True)
class ModeSwitch:
    replica: TableRef
    old: str
    new: str
    rows_before: int
    rows_after: int

    @property
    def switched(self) -> bool:
        return self.old != self.new


def switch_replica_mode(
    *, connection: Warehouse | Any, registry: Any, topic: str, replica: TableRef, mode: str,
    source_columns: Callable[[], Sequence[str]] | None = None, now: dt.datetime | None = None,
    log: logging.Logger | Any | None = None, policy: Policy | None = None, source: str = "",
) -> ModeSwitch | None:
    """Rebuild `replica` in `mode` when its shape says another mode; None when it does not exist yet (its
    first merge creates it in the configured mode). `policy` is the table's column policy, as the merge
    applies it (the rebuilt table keeps hashed columns as text); `source` names the TiDB table in errors."""
    log = log or logging.getLogger(__name__)
    wh = Warehouse.of(connection)
    existing = [r[0] for r in wh.execute(table_columns_sql(replica))]
    if not existing:
        log.info("%s does not exist yet: its first merge creates it in mode %s", replica.label, mode)
        return None
    old = mode_of_columns(existing)
    (before,) = wh.execute(f"SELECT COUNT(*) FROM {replica.sql}")[0]
    if old == mode:
        log.info("%s is already in mode %s", replica.label, mode)
        return ModeSwitch(replica, old, mode, int(before), int(before))
    schemas = latest_schemas(registry, topic)
    if schemas is None:
        raise ValueError(f"topic {topic} has no schema in the registry, so the columns of {replica.label} are not "
                         "known; switch it once the changefeed has written to the topic")
    key_schema, value_schema, _ = schemas
    fields = replica_columns(value_schema, key_schema)
    names = source_names([c.field for c in fields], replica=existing, source=source_columns)
    named = apply_policy(with_names(fields, names), policy, source or replica.label)
    columns = tuple(c for c in named if c.name in set(existing))
    # Each statement commits on its own (DDL does in Snowflake); re-running after a failure starts over cleanly.
    for stmt in switch_statements(replica, columns, old, mode, now or dt.datetime.now(dt.timezone.utc)):
        wh.execute(stmt)
    forget_ensured()  # the merge's DDL memo knew the old shape
    (after,) = wh.execute(f"SELECT COUNT(*) FROM {replica.sql}")[0]
    log.info("switched %s from mode %s to %s (%s rows -> %s)", replica.label, old, mode, before, after)
    return ModeSwitch(replica, old, mode, int(before), int(after))
