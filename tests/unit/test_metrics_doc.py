"""docs/metrics.md stays true: it lists every metric of metrics.py, each with a test that exists."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from consul_operator.adapters import metrics

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(operator_[a-z_]+)(?:\{[a-z_,]+\})?`[^|]*\|[^|]*\|[^|]*\|(.*)\|$")
TEST = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _documented() -> dict[str, list[tuple[str, str]]]:
    """Metric name -> the (file, test) pairs its row names."""
    rows = {}
    for line in DOC.read_text().splitlines():
        found = ROW.match(line)
        if found:
            rows[found.group(1)] = TEST.findall(found.group(2))
    return rows


def _defined() -> set[str]:
    """The names of every metric metrics.py defines, as a scrape shows them (counters end in _total)."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_every_metric_is_documented_and_nothing_else() -> None:
    """The table in docs/metrics.md has exactly one row per metric that metrics.py defines."""
    assert set(_documented()) == _defined()


def test_every_documented_metric_names_a_test_that_exists() -> None:
    """Each row names at least one test, and each named test is defined in the file named."""
    for name, tests in _documented().items():
        assert tests, f"{name}: no test named"
        for path, test in tests:
            source = ROOT / path
            assert source.is_file(), f"{name}: {path} does not exist"
            defined = re.search(rf"^def {test}\(", source.read_text(), re.MULTILINE)
            assert defined, f"{name}: no {test} in {path}"
