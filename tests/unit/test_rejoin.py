"""Joining again the Consul members gossip declared failed (a healed partition settles in seconds)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from consul_operator.adapters import rejoin
from consul_operator.core.errors import ConsulPermissionDenied, ConsulUnavailable


@dataclass
class FakeConsul:
    """Failed members as the local agent lists them; joins recorded, some refused."""

    failed: list[tuple[str, str]]
    refuse: dict[str, Exception] = field(default_factory=dict)
    joined: list[str] = field(default_factory=list)
    looks: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def failed_members(self) -> list[tuple[str, str]]:
        self.looks += 1
        if self.looks >= 2:
            self.stop.set()
        return self.failed

    def join(self, address: str) -> None:
        self.joined.append(address)
        if address in self.refuse:
            raise self.refuse[address]


def run(consul: FakeConsul, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rejoin, "REJOIN_EVERY", 0.01)
    rejoin.rejoin_failed(consul, consul.stop)


def test_every_failed_member_is_joined_at_each_look_and_one_still_cut_off_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each look joins each failed member; a join that fails (still cut off) is tried again at the next."""
    consul = FakeConsul(
        failed=[("host-1", "10.0.0.1:8301"), ("host-2", "10.0.0.2:8301")],
        refuse={"10.0.0.1:8301": ConsulUnavailable("timed out")},
    )
    run(consul, monkeypatch)
    assert consul.joined == ["10.0.0.1:8301", "10.0.0.2:8301"] * 2


def test_a_join_the_acl_refuses_is_not_tried_again_for_other_members_in_that_look(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without agent:write (ACLs) the first refusal ends the look; the rest of it is not tried."""
    consul = FakeConsul(
        failed=[("host-1", "10.0.0.1:8301"), ("host-2", "10.0.0.2:8301")],
        refuse={"10.0.0.1:8301": ConsulPermissionDenied("403")},
    )
    run(consul, monkeypatch)
    assert consul.joined == ["10.0.0.1:8301", "10.0.0.1:8301"]
