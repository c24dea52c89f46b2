"""Daemons a test starts itself (a dev Consul, a Consul client, an operator daemon); their JSON logs."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.staging import pid_alive, tool


@contextlib.contextmanager
def started(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours, output to ``log``, stopped with SIGTERM (then SIGKILL) at the end."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
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


def consul_client_argv(node: str, address: str, join: Sequence[str], data: Path, *hcl: str) -> list[str]:
    """A Consul *client* agent on ``address`` (default ports) joining the servers at ``join``.

    ``hcl``: more configuration, e.g. ``http_config { block_endpoints = [...] }``.
    """
    return [
        tool("consul"),
        "agent",
        f"-node={node}",
        f"-bind={address}",
        f"-client={address}",
        f"-advertise={address}",
        f"-data-dir={data}",
        "-dns-port=-1",
        "-hcl=disable_update_check = true",
        *(f"-hcl={h}" for h in hcl),
        *(f"-retry-join={a}" for a in join),
    ]


def operator_argv(command: str, *args: str) -> list[str]:
    """``operator COMMAND ARGS...`` as this interpreter runs it, with JSON log lines."""
    return [sys.executable, "-m", "consul_operator", command, "--log-json", *args]


def healthz(address: str) -> tuple[int, str]:
    """Status and body of GET http://ADDRESS/healthz."""
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def log_size(path: Path) -> int:
    """Where the log ends now: read from here later to see only what comes after."""
    return path.stat().st_size if path.exists() else 0


def json_lines(path: Path, since: int = 0) -> list[dict[str, Any]]:
    """Every line of a daemon's log from byte ``since`` on, parsed; a line that is not a JSON object fails."""
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(since)
        data = f.read()
    # A line still being written has no newline yet: leave it for the next read.
    complete = data[: data.rfind(b"\n") + 1]
    records = []
    for number, raw in enumerate(complete.decode().splitlines(), 1):
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise AssertionError(
                f"{path.name}: line {number} after byte {since} is not a JSON object: {raw!r}"
            )
        records.append(record)
    return records
