"""A loopback TCP server that accepts connections and never answers: a Consul or a registry that hangs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class HangingServer:
    """Where it listens, and how long each client stayed before hanging up (seconds)."""

    address: str = ""
    held: list[float] = field(default_factory=list)


@contextmanager
def hanging_server(name: str) -> Iterator[HangingServer]:
    """Listen on 127.0.0.1 (a free port), read whatever comes and never answer, until the block ends."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    found = HangingServer(address=f"127.0.0.1:{server.getsockname()[1]}")
    done = threading.Event()

    def hold(conn: socket.socket) -> None:
        opened = time.monotonic()
        conn.settimeout(0.1)
        with conn:
            while not done.is_set():
                try:
                    if not conn.recv(65536):
                        found.held.append(time.monotonic() - opened)
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=hold, args=(conn,), name=f"{name}-conn", daemon=True).start()

    thread = threading.Thread(target=serve, name=name, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        done.set()
        thread.join(timeout=5)
        server.close()
