"""The agent's heartbeat against a Consul that hangs: a beat gives up within the TTL, not after 5 s."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from consul_operator.consul_client import DEFAULT_TIMEOUT, ConsulClient
from consul_operator.presence import Presence
from tests.support.staging import wait_until

TTL = 1.5


@dataclass
class HangingServer:
    """A loopback TCP server that reads requests and never answers; notes when each client hung up."""

    address: str = ""
    held: list[float] = field(default_factory=list)  # seconds each connection stayed open


@pytest.fixture
def hanging_consul() -> Iterator[HangingServer]:
    """A Consul stand-in on 127.0.0.1 that accepts and never answers."""
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

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=hold, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, name="hanging-consul", daemon=True)
    thread.start()
    yield found
    done.set()
    thread.join(timeout=5)
    server.close()


def test_heartbeat_gives_up_within_the_ttl(hanging_consul: HangingServer) -> None:
    """With Consul not answering, the heartbeat's check-pass gives up after TTL/3, well within the TTL."""
    assert DEFAULT_TIMEOUT > TTL  # the client's own timeout would outlast the check
    presence = Presence(
        ConsulClient(hanging_consul.address),
        host="host-1",
        cluster="c",
        advertise="127.0.0.1",
        labels={},
        ttl=TTL,
    )
    presence.registered.set()  # the beats only, not the registration
    stop = threading.Event()
    beats = threading.Thread(target=presence.heartbeat, args=(stop,), name="heartbeat", daemon=True)
    beats.start()
    try:
        wait_until(lambda: hanging_consul.held, timeout=DEFAULT_TIMEOUT + 5, what="the first beat to end")
    finally:
        stop.set()
    assert hanging_consul.held[0] < TTL * 2 / 3, f"a beat waited {hanging_consul.held[0]:.1f}s for Consul"
    beats.join(timeout=DEFAULT_TIMEOUT + 5)
