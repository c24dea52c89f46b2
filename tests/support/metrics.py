"""A daemon's /metrics read the way Prometheus reads it: with prometheus_client's own text parser."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape, by sample name (``operator_x_total``, ``operator_y_count``...)."""

    samples: tuple[Sample, ...]

    def get(self, name: str, /, **labels: str) -> float | None:
        """The sample with exactly these labels, or None when the daemon exports none."""
        for sample in self.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
        return None

    def value(self, name: str, /, **labels: str) -> float:
        """The sample with exactly these labels; 0 when absent (a counter not yet moved)."""
        found = self.get(name, **labels)
        return 0.0 if found is None else found

    def total(self, name: str, /, **labels: str) -> float:
        """The sum over every sample of ``name`` whose labels include ``labels``."""
        return sum(
            float(s.value)
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def names(self, prefix: str = "") -> set[str]:
        """Names of the samples present (starting with ``prefix``)."""
        return {s.name for s in self.samples if s.name.startswith(prefix)}


def parse(text: str) -> Scrape:
    """A scrape from the Prometheus text format."""
    return Scrape(tuple(s for family in text_string_to_metric_families(text) for s in family.samples))


def scrape(address: str) -> Scrape:
    """GET http://ADDRESS/metrics (``host:port``) and parse it."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return parse(response.read().decode())
