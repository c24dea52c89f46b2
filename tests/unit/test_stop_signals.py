"""How a daemon is asked to stop (`loop.stop_on_signals`): a real signal to a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# A daemon's main thread that logs without pause: a signal handler that logged too would
# wait for the log's write lock, held by the very thread it interrupted.
BUSY_DAEMON = textwrap.dedent(
    """
    import signal, sys
    import structlog
    from consul_operator.adapters.logs import configure
    from consul_operator.daemons.loop import stop_on_signals

    configure(json=True, daemon="test")
    stop = stop_on_signals()
    log = structlog.get_logger()
    print("ready", flush=True)
    while not stop.is_set():
        log.info("busy", padding="x" * 200)
    print("stopped", flush=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_daemon_busy_logging_stops_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM or SIGINT stops a daemon whose main thread is writing a log line when it comes."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    failures = []
    for _ in range(5):  # the handler's chance of landing inside a write, five times over
        out = tmp_path / "daemon.log"  # the logs: on stderr
        with out.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", BUSY_DAEMON], stdout=subprocess.PIPE, stderr=log, text=True, env=env
            )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            proc.send_signal(sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                failures.append(f"still running 20 s after {sig.name}")
                continue
            assert proc.returncode == 0 and proc.stdout.read() == "stopped\n"
            assert f'"signal": "{sig.name}"' in out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert failures == []
