"""Deciding a landing table's holes with Kafka and recording them (the I/O of `replication.holes`).

The merge calls `resolve_holes` when a hole holds a partition back, and `landing_continuity` calls it on
every check: each hole above the merged watermark is read from Kafka (one record per hole), split into
ABSENT / WAITING / LOST ranges, and the topic's records in the offset-gaps table are rewritten, keeping each
WAITING hole's first-seen time. ABSENT ranges then count as present offsets, so the next pending-ranges
query passes them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from tidb_pipeline.replication.ddl import Statement
from tidb_pipeline.replication.holes import (
    Gap,
    KafkaProbe,
    OffsetSources,
    carry_seen_at,
    classify,
    holes_sql,
    parse_gaps,
    parse_holes,
    read_gaps_sql,
    replace_gaps_statements,
)
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.warehouse import Warehouse


def utc_now() -> dt.datetime:
    """Now as the naive UTC datetime TIMESTAMP_NTZ columns hold."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def resolve_holes(session: Warehouse | Any, kafka: KafkaResource | None, src: OffsetSources,
                  now: dt.datetime | None = None, bounds: Mapping[int, tuple[int, int]] | None = None,
                  above: Mapping[int, int] | None = None) -> list[Gap]:
    """Classify every hole above the merged watermarks and record the result; returns the current gaps.

    Without `kafka` every hole is WAITING (nothing can be skipped without reading the topic). `bounds`
    (partition -> (merged, highest landed), from the landed-offsets table) reads only those landing rows;
    `above` (partition -> merged watermark) only the rows above them (`replication.holes.above_sql`).
    """
    if src.offset_gaps is None:
        raise ValueError("resolve_holes needs OffsetSources.offset_gaps, the table its decisions are kept in")
    now = (now or utc_now()).replace(tzinfo=None)
    wh = Warehouse.of(session)
    holes = parse_holes(wh.execute(holes_sql(src, bounds, above)))
    old = parse_gaps(wh.execute(read_gaps_sql(src.offset_gaps, src.topic)))
    watermarks = {int(p): int(o) for p, o in wh.execute(Statement(
        f'SELECT "PARTITION", "MERGED_OFFSET" FROM {src.watermarks.sql} WHERE "REPLICA_TABLE" = %s',
        (src.replica.label,)))}
    if not holes and not any(g.status != "ABSENT" or g.last <= watermarks.get(g.partition, -1) for g in old):
        return []  # nothing open and nothing stale: no write
    if kafka is not None and holes:
        probes = [KafkaProbe(low, first) for low, first in kafka.first_offsets(
            src.topic, [(h.partition, h.first) for h in holes])]
    else:
        probes = [KafkaProbe(0, None) for _ in holes]
    gaps: list[Gap] = []
    for hole, probe in zip(holes, probes):
        gaps += classify(hole, probe, watermark=watermarks.get(hole.partition, -1), now=now)
    gaps = carry_seen_at(gaps, old)
    for stmt in replace_gaps_statements(src.offset_gaps, src.topic, gaps, watermarks):
        wh.execute(stmt)
    return gaps


def overdue(gaps: Sequence[Gap], now: dt.datetime, grace_s: float) -> list[Gap]:
    """Gaps that make `landing_continuity` ERROR: LOST ones, and WAITING ones first seen over `grace_s` ago."""
    now = now.replace(tzinfo=None)
    return [g for g in gaps if g.status == "LOST" or (
        g.status == "WAITING" and g.seen_at is not None and (now - g.seen_at).total_seconds() > grace_s)]
