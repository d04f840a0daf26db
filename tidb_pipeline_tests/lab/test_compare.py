"""The lab's full-content comparison: canonical values and the by-key diff."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from tidb_pipeline.lab.compare import _diff, canonical


def test_canonical_values_match_across_drivers() -> None:
    assert canonical("decimal", Decimal("12.50")) == canonical("decimal", Decimal("12.5"))
    assert canonical("time", dt.timedelta(hours=-1, minutes=-2, seconds=-3, microseconds=-400000)) == "-01:02:03.4"
    assert canonical("time", "-01:02:03.400000") == "-01:02:03.4"
    assert canonical("bit", b"\x00\x00\x05") == canonical("bit", b"\x05") == 5
    assert canonical("json", '{"a": [1, 2.5]}') == canonical("json", '{"a":[1,2.5]}')
    assert canonical("datetime", "2024-01-02 03:04:05.000001") == dt.datetime(2024, 1, 2, 3, 4, 5, 1)
    assert canonical("varchar", None) is None


def test_diff_reports_missing_extra_and_different_rows() -> None:
    columns = [("id", "int"), ("price", "decimal")]
    source = [(1, Decimal("1.00")), (2, Decimal("2.00")), (3, Decimal("3.00"))]
    target = [(1, Decimal("1.0")), (2, Decimal("2.50")), (4, Decimal("4.00"))]
    result = _diff("db.t", "R.T", columns, ["id"], source, target)
    assert (result.missing, result.extra, result.different, result.equal) == (1, 1, 1, False)
    assert result.examples == ("key (2,): price: Decimal('2.00') != Decimal('2.50')", "missing key (3,)", "extra key (4,)")
    assert _diff("db.t", "R.T", columns, ["id"], source, list(reversed(source))).equal
