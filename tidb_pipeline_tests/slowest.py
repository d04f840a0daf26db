"""The slowest tests across `make test`'s stages, read from each stage's JUnit XML.

`make test` runs the unit tier in parallel (pytest-xdist), then the integration tier serially, each writing
`--junitxml`; pytest's own `--durations` sees one stage only, so this prints one list over both:
`python -m tidb_pipeline_tests.slowest [-n 30] artifacts/test-unit.xml artifacts/test-integration.xml`.
A test's time is its setup, call and teardown together (pytest's default `junit_duration_report`).
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path


def durations(path: Path) -> list[tuple[float, str]]:
    """(seconds, test id) for every test case in one JUnit XML file; a missing file (a stage that did not
    start) has none."""
    if not path.exists():
        return []
    out = []
    for case in ET.parse(path).iter("testcase"):
        out.append((float(case.get("time") or 0.0), f"{case.get('classname', '')}::{case.get('name', '')}"))
    return out


def slowest(paths: list[Path], n: int) -> list[tuple[float, str]]:
    return sorted((d for p in paths for d in durations(p)), key=lambda d: -d[0])[:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="how many tests to list (default 30)")
    parser.add_argument("junit", nargs="+", type=Path, help="JUnit XML files, one per stage")
    args = parser.parse_args(argv)
    rows = slowest(args.junit, args.n)
    print(f"==== slowest {len(rows)} tests over {', '.join(p.name for p in args.junit)} (setup + call + teardown) ====")
    for seconds, test in rows:
        print(f"{seconds:8.2f}s  {test}")


if __name__ == "__main__":
    main()
