"""The status page's markup: what Consul holds is shown as text, never as markup; the page polls itself."""

from __future__ import annotations

from consul_operator.core.events import CRASHED, ServiceEvent
from consul_operator.core.page import render_main, render_page
from consul_operator.core.status import HostRow, ServiceState, ServiceStatus, StatusView

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'


def view(name: str) -> StatusView:
    service = ServiceStatus(
        name, "hello:local", 2, 2, 1, 1, "Degraded", {}, (), None, phase=ServiceState.DEGRADED
    )
    return StatusView(100.0, "host-1", 50.0, (HostRow("host-1", True, {"zone": HOSTILE}),), (service,))


def test_values_from_consul_are_escaped() -> None:
    """A hostile service name, label or event message appears escaped, never as a tag."""
    event = ServiceEvent(99.0, "host-1", HOSTILE, CRASHED, HOSTILE)
    html = render_page(view(HOSTILE), [event], cluster=HOSTILE, served_by="agent host-1")
    assert "<script>alert" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in html


def test_page_polls_its_main_fragment() -> None:
    """The page fetches ?part=main every few seconds; the fragment is the same main element."""
    html = render_page(view("web"), [], cluster="c", served_by="agent host-1")
    assert 'fetch("?part=main")' in html and "http://" not in html and "https://" not in html
    assert render_main(view("web"), []).startswith('<main id="main"')
