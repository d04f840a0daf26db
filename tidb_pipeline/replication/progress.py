"""What a replica has merged, as offsets per partition, and whether anything is left to do (pure).

The idle gate (`defs/idle.py`) decides from Kafka's offsets and from what Dagster recorded about the last
landing and merge, so an idle pipeline issues no warehouse statement to learn that nothing moved. This
module holds the parts that need neither Kafka nor Dagster: the merged-offsets query the merge step runs
after each merge (its answer is written into the replica's materialization), parsing what was written, and
the comparisons.

Offsets follow two conventions, named everywhere: a *next* offset (Kafka's end offset, a consumer group's
committed offset, the landing's `offsets_after`) is one past the last record; a *last* offset (the merge
watermark, `merged_through`) is the record itself, -1 for none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tidb_pipeline.replication.ddl import Statement, TableRef

_PARTITION_OFFSET = re.compile(r"^p(\d+):\s*(-?\d+)$")


def merged_through_sql(watermarks: TableRef, replica: TableRef) -> Statement:
    """Per partition, the last offset merged into `replica` (the merge watermark rows; a tiny table)."""
    return Statement(
        f'SELECT "PARTITION", "MERGED_OFFSET" FROM {watermarks.sql} WHERE "REPLICA_TABLE" = %s ORDER BY 1',
        (replica.label,),
    )


def parse_partition_offsets(text: Any) -> dict[int, int] | None:
    """`"p0: 5, p1: 7"` (the landing's metadata texts) or a JSON object `{"0": 5}`; None when unreadable.

    `(none)` / `{}` is an empty map: no partition has anything.
    """
    if isinstance(text, Mapping):
        items = text.items()
    else:
        raw = str(text).strip()
        if raw in ("", "(none)", "(no partitions)"):
            return {}
        if raw.startswith("{"):
            try:
                items = json.loads(raw).items()
            except (ValueError, AttributeError):
                return None
        else:
            out: dict[int, int] = {}
            for part in raw.split(","):
                m = _PARTITION_OFFSET.match(part.strip())
                if m is None:
                    return None
                out[int(m.group(1))] = int(m.group(2))
            return out
    try:
        return {int(p): int(o) for p, o in items}
    except (TypeError, ValueError):
        return None


def unlanded(end_offsets: Mapping[int, int], landed_next: Mapping[int, int]) -> dict[int, int]:
    """Records in Kafka beyond what was landed, per partition that has any (both are next offsets)."""
    return {p: end - landed_next.get(p, 0) for p, end in sorted(end_offsets.items()) if end > landed_next.get(p, 0)}


def unmerged(available_next: Mapping[int, int], merged_last: Mapping[int, int]) -> dict[int, int]:
    """Offsets available (next) beyond the merged (last) ones, per partition that has any."""
    return {p: nxt - 1 - merged_last.get(p, -1) for p, nxt in sorted(available_next.items())
            if nxt - 1 > merged_last.get(p, -1)}


def offsets_text(offsets: Mapping[int, int]) -> str:
    return ", ".join(f"p{p}: {o}" for p, o in sorted(offsets.items())) or "(none)"
