"""Waiting for the changefeed: the one helper every lab test that needs "everything is on Kafka" uses."""

from __future__ import annotations

import time

from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.ticdc.codec import tso_from_ms
from tidb_pipeline.resources.ticdc import TiCDCError, TiCDCResource


def wait_for_checkpoint(ticdc: LabSettings | TiCDCResource, changefeed_id: str, *, target: int | None = None,
                        stall_s: float = 300) -> None:
    """Until every change committed before `target` (default: now) is on Kafka (the checkpoint passed it).

    Waits on progress, not on a deadline: it fails when the changefeed is failed or stopped, or when its
    checkpoint has not moved for `stall_s` seconds (far longer than the change feed's longest retry backoff,
    30 s, plus a broker or server restart on a busy machine). A busy machine that replicates slowly but
    steadily never fails it.
    """
    target = tso_from_ms(int(time.time() * 1000)) if target is None else target
    resource = TiCDCResource(url=ticdc.ticdc_url, max_retries=10) if isinstance(ticdc, LabSettings) else ticdc
    seen: tuple[int, str] | None = None  # (checkpoint, state) last read
    last_progress = time.monotonic()
    with resource.get_client() as client:
        while True:
            try:
                status = client.get_status(changefeed_id)
            except TiCDCError as exc:
                if exc.status:  # an answer, not an unreachable server (it may be restarting)
                    raise
                status = None
            if status is not None:
                if status.checkpoint_ts >= target:
                    return
                assert status.state in ("normal", "warning"), (
                    f"changefeed {changefeed_id} {status.state}: {status.last_error or status.last_warning}")
                if seen is None or status.checkpoint_ts > seen[0]:
                    last_progress = time.monotonic()
                seen = (status.checkpoint_ts, status.state)
            stalled = time.monotonic() - last_progress
            assert stalled < stall_s, (
                f"changefeed {changefeed_id} made no progress for {stalled:.0f}s (checkpoint {seen and seen[0]}, "
                f"state {seen and seen[1]}, {'last warning ' + str(status.last_warning) if status else 'unreachable'})")
            time.sleep(0.2)
