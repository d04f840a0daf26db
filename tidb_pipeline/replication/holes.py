"""Offset holes in a landing table: finding them, and deciding with Kafka whether they will ever fill (pure).

The Snowflake Sink's SNOWPIPE ingestion loads files asynchronously and in any order, and gives up on a file
that fails or stays unloaded for an hour (spec/confluent.md): offsets 8-9 of a partition can be visible
before 5-7, or 5-7 never. So the merge never passes a hole (`replication.merge.pending_ranges_sql` ends a
partition's range just before its first missing offset above the watermark), and this module says what a
hole is and what becomes of it.

An offset counts as present when a landing row has it, when the built-in loader quarantined it (the
dead-letter table), or when it is recorded here as one Kafka does not have. Kafka can lack an offset for
good: a transaction's commit/abort marker takes an offset no consumer ever sees, a compacted topic drops
superseded records, an aborted transaction's records are skipped by a read_committed consumer. Such
offsets would block the merge forever, so a hole is decided with the topic's real contents: a consumer
reads from the hole's first offset (`classify`), and what it returns splits the hole into
- `ABSENT` ranges: Kafka holds no record there (it returned a later offset first). They count as present
  from then on, for the merge and for the continuity check;
- `WAITING` ranges: Kafka has a record there that has not landed yet. The merge waits; the range keeps the
  time it was first seen, and `landing_continuity` turns ERROR once that is older than the grace period;
- `LOST` ranges: below Kafka's log start offset (deleted by retention) although the replica had already
  merged below them, so they will never arrive: ERROR at once (resnapshot with the backfill job).
  Below the log start with nothing merged yet is the topic's history before the pipeline began: ABSENT.

The records live in the control schema's `LANDING_OFFSET_GAPS` table, keyed by topic and partition.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tidb_pipeline.replication.ddl import Statement, TableRef

OFFSET_GAPS_TABLE = "LANDING_OFFSET_GAPS"
ABSENT: Literal["ABSENT"] = "ABSENT"
WAITING: Literal["WAITING"] = "WAITING"
LOST: Literal["LOST"] = "LOST"
Status = Literal["ABSENT", "WAITING", "LOST"]
# Holes read per query: the merge only ever needs the first one of each partition, the check a handful.
MAX_HOLES = 200

_MD_PARTITION = '"RECORD_METADATA":"partition"::int'
_MD_OFFSET = '"RECORD_METADATA":"offset"::int'


@dataclass(frozen=True)
class OffsetSources:
    """Where a replica's landed offsets live, and what else counts as present."""

    landing: TableRef
    watermarks: TableRef
    replica: TableRef
    topic: str = ""
    dead_letters: TableRef | None = None  # the built-in loader's quarantine (TOPIC, PARTITION, OFFSET)
    offset_gaps: TableRef | None = None  # `create_offset_gaps_sql`; its ABSENT ranges count as present


def create_offset_gaps_sql(table: TableRef) -> str:
    """Holes decided against Kafka: one row per (topic, partition, range) with its status."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table.sql} (\n"
        '  "TOPIC" VARCHAR NOT NULL,\n'
        '  "PARTITION" NUMBER(10,0) NOT NULL,\n'
        '  "FIRST_OFFSET" NUMBER(19,0) NOT NULL,\n'
        '  "LAST_OFFSET" NUMBER(19,0) NOT NULL,\n'
        '  "STATUS" VARCHAR NOT NULL,\n'
        '  "DETAIL" VARCHAR,\n'
        '  "SEEN_AT" TIMESTAMP_NTZ(6)\n'
        ")"
    )


def above_sql(above: Mapping[int, int]) -> Statement:
    """A WHERE predicate on the landing table keeping the rows above each partition's offset in `above`, and
    every row of a partition not in it, as constant ranges Snowflake prunes micro-partitions on (the rows of
    the partitions not listed are the integers below, between and above the listed ones)."""
    if not above:
        return Statement("TRUE")
    listed = sorted(above)
    clauses = [f"({_MD_PARTITION} = %s AND {_MD_OFFSET} > %s)" for _ in listed]
    params: list[Any] = [x for p in listed for x in (p, above[p])]
    clauses += [f"{_MD_PARTITION} < %s", f"{_MD_PARTITION} > %s"]
    params += [listed[0], listed[-1]]
    for lo, hi in zip(listed, listed[1:]):
        if hi > lo + 1:
            clauses.append(f"({_MD_PARTITION} > %s AND {_MD_PARTITION} < %s)")
            params += [lo, hi]
    return Statement("(" + " OR ".join(clauses) + ")", tuple(params))


def unmerged_tops_sql(landing: TableRef, above: Mapping[int, int]) -> Statement:
    """Per partition with landing rows above its offset in `above` (or without one): the highest landed offset,
    read from those rows only."""
    where = above_sql(above)
    return Statement(f'SELECT {_MD_PARTITION} AS "P", MAX({_MD_OFFSET}) FROM {landing.sql} WHERE {where.sql} '
                     "GROUP BY 1 ORDER BY 1", where.params)


def present_offsets_sql(src: OffsetSources, bounds: Mapping[int, tuple[int, int]] | None = None,
                        above: Mapping[int, int] | None = None) -> Statement:
    """Every present offset range as (P, A, B) rows, A <= B: landing rows, dead letters, ABSENT ranges.

    `bounds` (partition -> (after, through)) reads only the landing rows in those offset ranges, as constants
    Snowflake prunes the landing table's micro-partitions on; partitions not in it are not read. `above`
    (partition -> merged watermark, for a landing table no landed-offsets table describes) reads only the
    rows above the watermarks, and every row of a partition without one (`above_sql`).
    """
    landing = f'SELECT {_MD_PARTITION} AS "P", {_MD_OFFSET} AS "A", {_MD_OFFSET} AS "B" FROM {src.landing.sql}'
    params: tuple[Any, ...] = ()
    if bounds is not None:
        one = f"({_MD_PARTITION} = %s AND {_MD_OFFSET} > %s AND {_MD_OFFSET} <= %s)"
        landing += " WHERE " + (" OR ".join(one for _ in bounds) or "FALSE")
        params = tuple(x for p, (lo, hi) in sorted(bounds.items()) for x in (p, lo, hi))
    elif above is not None:
        where = above_sql(above)
        landing += f" WHERE {where.sql}"
        params = where.params
    parts = [landing]
    if src.dead_letters is not None:
        parts.append(f'SELECT "PARTITION"::int, "OFFSET"::int, "OFFSET"::int FROM {src.dead_letters.sql} '
                     'WHERE "TOPIC" = %s')
        params += (src.topic,)
    if src.offset_gaps is not None:
        parts.append(f'SELECT "PARTITION"::int, "FIRST_OFFSET"::int, "LAST_OFFSET"::int FROM {src.offset_gaps.sql} '
                     f"WHERE \"TOPIC\" = %s AND \"STATUS\" = '{ABSENT}'")
        params += (src.topic,)
    return Statement("\nUNION ALL ".join(parts), params)


def reach_sql(src: OffsetSources, max_offsets_per_partition: int | None = None,
              bounds: Mapping[int, tuple[int, int]] | None = None,
              above: Mapping[int, int] | None = None) -> Statement:
    """Present ranges above each partition's watermark, with the reach of everything before them.

    Columns P, W (watermark, -1 before the first merge), A, B (the range, clipped to above W and to the
    cap), PREV (the highest offset covered by earlier ranges, or W). A row with A > PREV + 1 follows a hole
    of offsets PREV + 1 .. A - 1. Gaps and islands with one window function over the rows above the
    watermark only, so the cost follows the unmerged rows, not the table. `bounds`, `above`: see
    `present_offsets_sql`.
    """
    present = present_offsets_sql(src, bounds, above)
    w = 'COALESCE(w."MERGED_OFFSET", -1)'
    params: tuple[Any, ...] = (*present.params, src.replica.label)
    hi, cap = 'o."B"', ""
    if max_offsets_per_partition is not None:
        if max_offsets_per_partition < 1:
            raise ValueError("max_offsets_per_partition must be at least 1")
        hi = f'LEAST(o."B", {w} + %s)'
        cap = f' AND GREATEST(o."A", {w} + 1) <= {w} + %s'
        # Placeholders in text order: the cap in the select list, the sources, the join, the cap again.
        params = (max_offsets_per_partition, *present.params, src.replica.label, max_offsets_per_partition)
    return Statement(
        'SELECT i."P", i."W", i."A", i."B", COALESCE(MAX(i."B") OVER (PARTITION BY i."P" ORDER BY i."A", i."B" '
        'ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), i."W") AS "PREV"\n'
        f'FROM (SELECT o."P", {w} AS "W", GREATEST(o."A", {w} + 1) AS "A", {hi} AS "B"\n'
        f"  FROM ({present.sql}) o\n"
        f'  LEFT JOIN {src.watermarks.sql} w ON w."REPLICA_TABLE" = %s AND w."PARTITION" = o."P"\n'
        f'  WHERE o."B" > {w}{cap}) i',
        params,
    )


def holes_sql(src: OffsetSources, bounds: Mapping[int, tuple[int, int]] | None = None,
              above: Mapping[int, int] | None = None) -> Statement:
    """Holes above the merged watermarks: (partition, first missing, last missing), lowest first, at most
    `MAX_HOLES` (the rest are decided on a later run). `bounds`, `above`: see `present_offsets_sql`."""
    reach = reach_sql(src, bounds=bounds, above=above)
    return Statement(
        f'SELECT r."P", r."PREV" + 1, r."A" - 1 FROM ({reach.sql}) r WHERE r."A" > r."PREV" + 1 '
        f'ORDER BY 1, 2 LIMIT {MAX_HOLES}',
        reach.params,
    )


@dataclass(frozen=True)
class Hole:
    """Offsets `first..last` of a partition missing from the landing table, above the merged watermark."""

    partition: int
    first: int
    last: int

    def __str__(self) -> str:
        return f"partition {self.partition}: offsets {self.first}..{self.last} missing"


def parse_holes(rows: Iterable[Sequence[Any]]) -> list[Hole]:
    return [Hole(int(p), int(a), int(b)) for p, a, b in rows]


@dataclass(frozen=True)
class Gap:
    """A decided part of a hole, as stored in the offset-gaps table."""

    partition: int
    first: int
    last: int
    status: Status
    detail: str = ""
    seen_at: dt.datetime | None = None

    def overlaps(self, other: Gap | Hole) -> bool:
        return self.partition == other.partition and self.first <= other.last and other.first <= self.last

    def describe(self, topic: str) -> str:
        text = f"topic {topic} partition {self.partition}: offsets {self.first}..{self.last}"
        if self.status == ABSENT:
            return f"{text} are not in Kafka ({self.detail}); skipped"
        if self.status == LOST:
            return f"{text} were deleted from Kafka before they landed ({self.detail}); they will never land"
        since = f" since {self.seen_at.isoformat(sep=' ', timespec='seconds')}" if self.seen_at else ""
        return f"{text} are in Kafka but have not landed{since}"


@dataclass(frozen=True)
class KafkaProbe:
    """What Kafka says about one partition: log start offset and the first offset it returned from a hole's start.

    `first_offset` is None when the read found nothing (end of the partition, or the read timed out): then
    nothing can be concluded about offsets above what was read.
    """

    log_start: int
    first_offset: int | None


def classify(hole: Hole, probe: KafkaProbe, *, watermark: int, now: dt.datetime) -> list[Gap]:
    """Split a hole into ABSENT / LOST / WAITING ranges from a read starting at `max(hole.first, log_start)`.

    `watermark` is the partition's merged offset (-1 before the first merge).
    """
    gaps: list[Gap] = []
    first = hole.first
    if first < probe.log_start:
        below = min(hole.last, probe.log_start - 1)
        if watermark < 0 and first == 0:
            gaps.append(Gap(hole.partition, first, below, ABSENT,
                            f"before the log start offset {probe.log_start}; nothing was merged before it", now))
        else:
            gaps.append(Gap(hole.partition, first, below, LOST, f"log start offset is now {probe.log_start}", now))
        first = below + 1
        if first > hole.last:
            return gaps
    if probe.first_offset is None:
        return [*gaps, Gap(hole.partition, first, hole.last, WAITING, "Kafka returned nothing from there yet", now)]
    if probe.first_offset > first:
        end = min(hole.last, probe.first_offset - 1)
        gaps.append(Gap(hole.partition, first, end, ABSENT,
                        "no record at these offsets (transaction markers, compaction or aborted records)", now))
        first = end + 1
    if first <= hole.last:
        gaps.append(Gap(hole.partition, first, hole.last, WAITING, f"Kafka has offset {probe.first_offset}", now))
    return gaps


def carry_seen_at(new: Sequence[Gap], old: Sequence[Gap]) -> list[Gap]:
    """New WAITING gaps keep the earliest first-seen time of the old WAITING gaps they overlap.

    A hole that shrinks (part of it landed) is the same hole: its clock does not restart.
    """
    out = []
    for gap in new:
        if gap.status == WAITING:
            earlier = [g.seen_at for g in old if g.status == WAITING and g.seen_at is not None and g.overlaps(gap)]
            if earlier and (gap.seen_at is None or min(earlier) < gap.seen_at):
                gap = Gap(gap.partition, gap.first, gap.last, gap.status, gap.detail, min(earlier))
        out.append(gap)
    return out


def read_gaps_sql(table: TableRef, topic: str) -> Statement:
    return Statement(
        f'SELECT "PARTITION", "FIRST_OFFSET", "LAST_OFFSET", "STATUS", "DETAIL", "SEEN_AT" FROM {table.sql} '
        'WHERE "TOPIC" = %s ORDER BY 1, 2',
        (topic,),
    )


def parse_gaps(rows: Iterable[Sequence[Any]]) -> list[Gap]:
    return [Gap(int(p), int(a), int(b), str(s), str(d or ""), at) for p, a, b, s, d, at in rows]  # type: ignore[arg-type]


def replace_gaps_statements(table: TableRef, topic: str, gaps: Sequence[Gap],
                            watermarks: Mapping[int, int]) -> list[Statement]:
    """Replace the topic's open (WAITING / LOST) records with `gaps`; drop the records the merge has passed.

    ABSENT records stay while they are above the watermark (the merge and the check still count them as
    present offsets); WAITING and LOST records are recomputed every time, so a hole that filled disappears.
    """
    out = [Statement(
        f'DELETE FROM {table.sql} WHERE "TOPIC" = %s AND "STATUS" IN (\'{WAITING}\', \'{LOST}\')', (topic,),
    )]
    for p, wm in sorted(watermarks.items()):
        out.append(Statement(
            f'DELETE FROM {table.sql} WHERE "TOPIC" = %s AND "PARTITION" = %s AND "LAST_OFFSET" <= %s',
            (topic, p, wm),
        ))
    if gaps:
        rows = ", ".join("(%s, %s, %s, %s, %s, %s, %s)" for _ in gaps)
        out.append(Statement(
            f'INSERT INTO {table.sql} ("TOPIC", "PARTITION", "FIRST_OFFSET", "LAST_OFFSET", "STATUS", "DETAIL", '
            f'"SEEN_AT") VALUES {rows}',
            tuple(x for g in gaps for x in (topic, g.partition, g.first, g.last, g.status, g.detail[:500],
                                             g.seen_at.replace(tzinfo=None) if g.seen_at else None)),
        ))
    return out
