"""The agent's own run of a replica's health check, before Consul's first one.

Consul runs a new check for the first time after a random part of its
interval, and until then the instance is critical: NGINX does not serve it.
The agent therefore runs the very check it registers (the same URL or
address, the same timeout, Consul's rule for passing) right after the
container starts, a few times if the application is still coming up, and
registers the instance with the initial status ``passing`` only once that
check has passed (`catalog.service_definition`, ``initial_passing``).
Consul's own runs take over from there: a replica that fails later turns
critical at Consul's next run, as it would have without us.
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

PROBE_EVERY = 0.05
"""Seconds between two runs while the application is coming up."""
MAX_BUDGET = 10.0
"""Seconds at most that a start's registration waits for its check to pass (else it starts critical)."""
USER_AGENT = "Consul Health Check"  # what Consul's HTTP check sends


def run_check(check: Mapping[str, Any], timeout: float) -> bool:
    """One run of a check definition (``HTTP`` or ``TCP``), passing by Consul's rules.

    HTTP: a GET of the URL, passing on a 2xx answer (Consul counts 429 as
    warning and anything else as critical). A redirect is never followed
    (``http.client`` follows none): a 3xx does not pass, and whatever it
    points at, a loopback or a cloud metadata URL, is never asked. TCP: a
    connection that opens.
    """
    try:
        if "HTTP" in check:
            url = urllib.parse.urlsplit(str(check["HTTP"]))
            if url.scheme != "http" or url.hostname is None:
                return False  # not a check we run ourselves: Consul decides
            conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
            try:
                path = url.path or "/"
                conn.request(
                    "GET", f"{path}?{url.query}" if url.query else path, headers={"User-Agent": USER_AGENT}
                )
                return 200 <= conn.getresponse().status < 300
            finally:
                conn.close()
        if "TCP" in check:
            host, _, port = str(check["TCP"]).rpartition(":")
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return True
    except (OSError, http.client.HTTPException, ValueError):
        return False
    return False


def passes_within(
    check: Mapping[str, Any],
    timeout: float,
    budget: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    run: Callable[[Mapping[str, Any], float], bool] = run_check,
) -> bool:
    """Run ``check`` until it passes or ``budget`` seconds are over; whether it passed."""
    deadline = clock() + budget
    while True:
        if run(check, timeout):
            return True
        left = deadline - clock()
        if left <= 0:
            return False
        sleep(min(PROBE_EVERY, left))
