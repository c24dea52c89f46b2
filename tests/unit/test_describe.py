"""`operator describe`'s view: replicas from status records, Consul health and events; events newest last."""

from __future__ import annotations

from dataclasses import replace

from consul_operator.core.describe import build_description, description_json, render_description
from consul_operator.core.events import CRASHED, PLACED, STARTED, ServiceEvent
from consul_operator.core.model import ServiceInstance
from consul_operator.core.records import StatusRecord
from consul_operator.core.status import HostPlacement, ServiceState, ServiceStatus

STATUS = ServiceStatus(
    "web",
    "hello:local",
    2,
    2,
    1,
    1,
    "Degraded",
    {"h1": HostPlacement(1, 1, 1), "h2": HostPlacement(1, 1, 0)},
    (),
    None,
    phase=ServiceState.DEGRADED,
)
RECORDS = {
    "h1": StatusRecord("web", "h1", instances=("web-h1-a",)),
    "h2": StatusRecord("web", "h2", instances=("web-h2-b",)),
}
HEALTH = [ServiceInstance("n1", "10.0.0.1", "web-h1-a", "web", "10.0.0.1", 32000, {}, "passing")]
EVENTS = [
    ServiceEvent(10.0, "h1", "web", PLACED, "replicas per host: h1=1, h2=1"),
    ServiceEvent(20.0, "h1", "web", STARTED, "started container web-h1-a (missing replica)"),
    replace(
        ServiceEvent(90.0, "h2", "web", CRASHED, "container web-h2-x exited with code 1"), count=3, first=40.0
    ),
    ServiceEvent(95.0, "h2", "web", STARTED, "started container web-h2-b (missing replica)"),
]


def test_replicas_carry_address_health_age_and_their_hosts_restarts() -> None:
    """A vouched-for container shows Consul's address and health, its Started time, its host's crashes."""
    d = build_description(100.0, STATUS, "name: web\n", RECORDS, HEALTH, EVENTS)
    got = [(r.container, r.host, r.address, r.health, r.started, r.restarts) for r in d.replicas]
    assert got == [
        ("web-h1-a", "h1", "10.0.0.1:32000", "passing", 20.0, 0),
        ("web-h2-b", "h2", "-", "unregistered", 95.0, 3),
    ]


def test_text_and_json_show_spec_and_events_newest_last() -> None:
    """The text has the spec and every event in time order, a storm with its count; --json the same data."""
    d = build_description(100.0, STATUS, "name: web\nimage: hello:local\n", RECORDS, HEALTH, EVENTS)
    text = render_description(d)
    assert "  image: hello:local" in text
    order = [text.index(e.message) for e in EVENTS]
    assert order == sorted(order)
    assert "(x3 over 50s)" in text
    shown = description_json(d, {"name": "web"})
    assert [e["reason"] for e in shown["events"]] == [PLACED, STARTED, CRASHED, STARTED]
    assert shown["replicas"][1]["restarts"] == 3
