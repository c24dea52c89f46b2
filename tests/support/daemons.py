"""Processes a test starts on its own, apart from the staging environment: a dev Consul, a daemon."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tests.support.staging import pid_alive, tool


@contextlib.contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours, stopped with SIGTERM (then SIGKILL) at the end."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        assert not pid_alive(proc.pid)


def consul_dev(
    address: str,
    data: Path,
    log: Path,
    *,
    node: str,
    ports: Mapping[str, int],
    hcl: Sequence[str] = (),
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """A single dev-mode Consul server on ``address``; ``ports``: http, server, serf_lan, serf_wan.

    ``hcl``: more configuration, one HCL snippet each (e.g. ``limits { ... }``).
    """
    return started(
        [
            tool("consul"),
            "agent",
            "-dev",
            f"-node={node}",
            f"-bind={address}",
            f"-client={address}",
            f"-http-port={ports['http']}",
            f"-serf-lan-port={ports['serf_lan']}",
            "-dns-port=-1",
            "-grpc-port=-1",
            f"-hcl=ports {{ server = {ports['server']}, serf_wan = {ports['serf_wan']} }}",
            "-hcl=disable_update_check = true",
            *(f"-hcl={snippet}" for snippet in hcl),
            f"-data-dir={data}",
        ],
        log,
    )
