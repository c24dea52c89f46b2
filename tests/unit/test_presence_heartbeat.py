"""The agent's heartbeat against a Consul that hangs: a beat gives up within the TTL, not after 5 s."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from consul_operator.adapters.consul_client import DEFAULT_TIMEOUT, ConsulClient
from consul_operator.adapters.presence import Presence
from tests.support.hanging import HangingServer, hanging_server
from tests.support.staging import wait_until

TTL = 1.5


@pytest.fixture
def hanging_consul() -> Iterator[HangingServer]:
    """A Consul stand-in on 127.0.0.1 that accepts and never answers."""
    with hanging_server("hanging-consul") as server:
        yield server


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
