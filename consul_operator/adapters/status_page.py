"""The status page's reads: the cluster as `operator status` sees it and the recent events (`page`)."""

from __future__ import annotations

import time

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.event_log import read_events
from consul_operator.adapters.metrics import PageFn
from consul_operator.adapters.snapshot import read_snapshot
from consul_operator.core.keys import Layout
from consul_operator.core.page import render_main, render_page
from consul_operator.core.status import build_status


def status_page(consul: ConsulClient, layout: Layout, cluster: str, served_by: str) -> PageFn:
    """The page function `metrics.serve` serves on ``/``: read Consul on each request, render."""

    def page(fragment: bool) -> str:
        now = time.time()
        snapshot = read_snapshot(consul, layout, cluster, now)
        view = build_status(snapshot)
        events = read_events(consul, layout, now=now)
        if fragment:
            return render_main(view, events, snapshot.capacities)
        return render_page(view, events, cluster=cluster, served_by=served_by, capacities=snapshot.capacities)

    return page
