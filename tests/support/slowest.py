"""The slowest tests of one or more pytest runs, from their JUnit XML reports (`make test` prints 15).

`make test` runs pytest twice (the parallel part, then the tests that restart
the Docker engine alone), so pytest's own ``--durations`` would list each run
apart; this lists both together, each test's setup, call and teardown summed.

With ``--save FILE`` it writes instead each work unit's seconds (a module, or
the node tests together: tests/support/scheduling.py), which the scheduler
reads to hand out the longest units first.

usage: python -m tests.support.slowest N REPORT.xml...
       python -m tests.support.slowest --save tests/support/durations.json REPORT.xml...
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support.scheduling import scope_of


def cases(reports: list[Path]) -> list[tuple[float, str]]:
    """Every test case of ``reports`` (missing reports are skipped): its seconds and its node id."""
    found: list[tuple[float, str]] = []
    for report in reports:
        if not report.exists():
            continue
        for case in ET.parse(report).getroot().iter("testcase"):
            module = case.get("classname", "").replace(".", "/")
            found.append((float(case.get("time", "0")), f"{module}.py::{case.get('name', '')}"))
    return found


def slowest(reports: list[Path], count: int) -> list[tuple[float, str]]:
    """The ``count`` longest test cases of ``reports``, longest first."""
    return sorted(cases(reports), reverse=True)[:count]


def unit_seconds(reports: list[Path]) -> dict[str, float]:
    """Seconds per work unit of the scheduler, summed over ``reports``, rounded to 0.1 s."""
    total: dict[str, float] = {}
    for seconds, nodeid in cases(reports):
        total[scope_of(nodeid)] = total.get(scope_of(nodeid), 0.0) + seconds
    return {unit: round(seconds, 1) for unit, seconds in sorted(total.items())}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--save"]:
        target, reports = Path(argv[1]), [Path(a) for a in argv[2:]]
        target.write_text(json.dumps(unit_seconds(reports), indent=1) + "\n")
        return 0
    count, reports = int(argv[0]), [Path(a) for a in argv[1:]]
    print(f"==== {count} slowest tests (setup + call + teardown) ====")
    for seconds, name in slowest(reports, count):
        print(f"{seconds:8.2f}s  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
