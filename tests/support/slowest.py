"""The slowest tests of one or more pytest runs, from their JUnit XML reports (`make test` prints 15).

`make test` runs pytest twice (the parallel part, then the tests that restart
the Docker engine alone), so pytest's own ``--durations`` would list each run
apart; this lists both together, each test's setup, call and teardown summed.

usage: python -m tests.support.slowest N REPORT.xml...
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def slowest(reports: list[Path], count: int) -> list[tuple[float, str]]:
    """The ``count`` longest test cases of ``reports`` (missing reports are skipped), longest first."""
    found: list[tuple[float, str]] = []
    for report in reports:
        if not report.exists():
            continue
        for case in ET.parse(report).getroot().iter("testcase"):
            module = case.get("classname", "").replace(".", "/")
            found.append((float(case.get("time", "0")), f"{module}.py::{case.get('name', '')}"))
    return sorted(found, reverse=True)[:count]


def main(argv: list[str]) -> int:
    count, reports = int(argv[0]), [Path(a) for a in argv[1:]]
    print(f"==== {count} slowest tests (setup + call + teardown) ====")
    for seconds, name in slowest(reports, count):
        print(f"{seconds:8.2f}s  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
