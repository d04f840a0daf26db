"""The production-rate benchmark's own logic (the figures themselves are measured, never asserted)."""

import pytest

from tidb_pipeline.bench.production import Poller
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.workload import gotpc


def test_a_row_is_visible_from_the_first_watermark_move_that_covers_it():
    poller = Poller(LabSettings(), '"DB"."S"."MERGE_WATERMARKS"')  # not started: no warehouse needed
    poller.record("R.T", 0, 9, 100.0, 101.0)
    poller.record("R.T", 0, 9, 100.0, 102.0)  # read again, not moved: no step
    poller.record("R.T", 0, 20, 110.0, 111.0)
    poller.record("R.T", 1, 5, 120.0, 121.0)
    assert [(s.after, s.through, s.seen) for s in poller.steps if s.partition == 0] == [(-1, 9, 101.0), (9, 20, 111.0)]
    assert poller.visible("R.T", 0, 0).seen == 101.0
    assert poller.visible("R.T", 0, 9).seen == 101.0
    assert poller.visible("R.T", 0, 10).seen == 111.0
    assert poller.visible("R.T", 0, 21) is None  # not merged yet
    assert poller.visible("R.T", 1, 5).merged_at == 120.0
    assert poller.visible("R.OTHER", 0, 1) is None


@pytest.mark.parametrize("duty", [0, -0.5, 1.5])
def test_go_tpc_duty_cycle_must_be_a_fraction_of_a_second(duty):
    with pytest.raises(ValueError, match="fraction of every second"):
        gotpc.run({}, duration_s=1, duty=duty)
