"""Which landing offsets the next merge takes: per partition, from the merged watermark up to the first hole
(`MergeRange`, `Pending`), read from the landed-offsets table when there is one; the predicates that keep
a merge's landing reads inside those ranges; the watermark rows that end a merge. Pure SQL builders."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidb_pipeline.replication.ddl import Statement, TableRef
from tidb_pipeline.replication.holes import reach_sql

if TYPE_CHECKING:  # merge.py builds on this module; the plan is only a parameter type here
    from tidb_pipeline.replication.merge import MergePlan


@dataclass(frozen=True)
class MergeRange:
    """Landing offsets `(after_offset, through_offset]` of one partition; after_offset -1 = from the start."""

    partition: int
    after_offset: int
    through_offset: int


def _ranges_table(ranges: Sequence[MergeRange]) -> Statement:
    """The ranges as a VALUES table (P, LO, HI), for joins on other tables than the landing (`replication.modes`)."""
    if not ranges:
        raise ValueError("no merge ranges; check pending ranges first and skip the merge when there are none")
    rows = ", ".join("(%s, %s, %s)" for _ in ranges)
    params = tuple(x for r in ranges for x in (r.partition, r.after_offset, r.through_offset))
    return Statement(f'SELECT column1 AS "P", column2 AS "LO", column3 AS "HI" FROM VALUES {rows}', params)


def in_ranges_sql(ranges: Sequence[MergeRange], prefix: str = "l.") -> Statement:
    """A WHERE predicate keeping the landing rows inside `ranges`, with the bounds as constants.

    Constants (not a join to a ranges table) so Snowflake prunes the landing table's micro-partitions by the
    min/max it keeps for the `RECORD_METADATA` partition and offset paths: loads append in offset order, so
    a merge reads the files of its pending range, not the whole retained table.
    """
    if not ranges:
        raise ValueError("no merge ranges; check pending ranges first and skip the merge when there are none")
    part, off = f'{prefix}"RECORD_METADATA":"partition"::int', f'{prefix}"RECORD_METADATA":"offset"::int'
    one = f"({part} = %s AND {off} > %s AND {off} <= %s)"
    params = tuple(x for r in ranges for x in (r.partition, r.after_offset, r.through_offset))
    return Statement("(" + " OR ".join(one for _ in ranges) + ")", params)


@dataclass(frozen=True)
class Held:
    """A partition whose merge stops before a hole: offsets `first_missing..last_missing` have not landed,
    while landed offsets up to `highest_landed` wait above them."""

    partition: int
    merged_through: int  # the watermark after this merge
    first_missing: int
    last_missing: int
    highest_landed: int

    def __str__(self) -> str:
        return (f"partition {self.partition}: offsets {self.first_missing}..{self.last_missing} missing; "
                f"offsets up to {self.highest_landed} held back above them")


@dataclass(frozen=True)
class Pending:
    """What the next merge may take (`ranges`) and which partitions a hole holds back (`held`)."""

    ranges: tuple[MergeRange, ...]
    held: tuple[Held, ...] = ()


def pending_bounds_sql(plan: MergePlan) -> Statement:
    """Per landed partition of the plan's topic: partition, merged watermark or -1, highest landed offset.

    Reads two tiny tables (the landed offsets and the watermarks), never the landing table; only for a plan
    with `landed` (built-in landing).
    """
    if plan.landed is None:
        raise ValueError(f"merge plan for {plan.replica.label} has no landed-offsets table")
    return landed_bounds_sql(plan.landed, plan.watermarks, plan.replica, plan.landing, plan.topic)


def landed_bounds_sql(landed: TableRef, watermarks: TableRef, replica: TableRef, landing: TableRef,
                      topic: str) -> Statement:
    """`pending_bounds_sql` from the tables themselves (for readers without a merge plan, e.g. a check)."""
    return Statement(
        f'SELECT o."PARTITION", COALESCE(w."MERGED_OFFSET", -1), o."LAST_OFFSET" FROM {landed.sql} o '
        f'LEFT JOIN {watermarks.sql} w ON w."REPLICA_TABLE" = %s AND w."PARTITION" = o."PARTITION" '
        'WHERE o."LANDING_TABLE" = %s AND o."TOPIC" = %s ORDER BY 1',
        (replica.label, landing.label, topic),
    )


def parse_bounds(rows: Iterable[Sequence[Any]]) -> dict[int, tuple[int, int]] | None:
    """Partition -> (merged, highest landed) for partitions with something to merge; None when the
    landed-offsets table has no row for the topic (not seeded yet: the caller scans instead)."""
    rows = list(rows)
    if not rows:
        return None
    return {int(p): (int(lo), int(hi)) for p, lo, hi in rows if int(hi) > int(lo)}


def pending_ranges_sql(
    plan: MergePlan, max_offsets_per_partition: int | None = None,
    bounds: Mapping[int, tuple[int, int]] | None = None,
) -> Statement:
    """Per partition with unmerged rows: partition, merged watermark or -1, last offset to merge, then the
    first hole's first and last missing offset (NULL without a hole) and the highest present offset.

    The range ends just before the first missing offset above the watermark (equal to the watermark when
    the hole is right above it), so the watermark never claims an offset that has not landed.
    `max_offsets_per_partition` caps a batch (e.g. for a backfill). `bounds` (`pending_bounds_sql`) limits
    the landing rows read to each partition's `(merged, highest landed]` range, as constants Snowflake
    prunes on; without it every landing row is read (connector mode, where no table says what landed).
    """
    reach = reach_sql(plan.offsets, max_offsets_per_partition, bounds)
    hole = 'r."A" > r."PREV" + 1'
    return Statement(
        f'SELECT r."P", MAX(r."W") AS "LO", COALESCE(MIN(IFF({hole}, r."PREV", NULL)), MAX(r."B")) AS "HI", '
        f'MIN(IFF({hole}, r."PREV" + 1, NULL)) AS "HOLE_FIRST", MIN(IFF({hole}, r."A" - 1, NULL)) AS "HOLE_LAST", '
        f'MAX(r."B") AS "TOP"\n'
        f"FROM ({reach.sql}) r\n"
        "GROUP BY 1 ORDER BY 1",
        reach.params,
    )


def parse_pending(rows: Iterable[Sequence[Any]]) -> Pending:
    ranges, held = [], []
    for p, lo, hi, hole_first, hole_last, top in rows:
        if int(hi) > int(lo):
            ranges.append(MergeRange(int(p), int(lo), int(hi)))
        if hole_first is not None:
            held.append(Held(int(p), int(hi), int(hole_first), int(hole_last), int(top)))
    return Pending(tuple(ranges), tuple(held))


def parse_ranges(rows: Iterable[Sequence[Any]]) -> tuple[MergeRange, ...]:
    return parse_pending(rows).ranges


def watermark_statements(plan: MergePlan, ranges: Sequence[MergeRange], now: dt.datetime) -> list[Statement]:
    """Set each merged partition's watermark to its range's end (plain DML: no second MERGE, see merge.py's quirks)."""
    if not ranges:
        return []
    wm = plan.watermarks.sql
    label = plan.replica.label
    in_list = ", ".join("%s" for _ in ranges)
    rows = ", ".join("(%s, %s, %s, %s)" for _ in ranges)
    return [
        Statement(
            f'DELETE FROM {wm} WHERE "REPLICA_TABLE" = %s AND "PARTITION" IN ({in_list})',
            (label, *(r.partition for r in ranges)),
        ),
        Statement(
            f'INSERT INTO {wm} ("REPLICA_TABLE", "PARTITION", "MERGED_OFFSET", "MERGED_AT") VALUES {rows}',
            tuple(x for r in ranges for x in (label, r.partition, r.through_offset, now.replace(tzinfo=None))),
        ),
    ]
