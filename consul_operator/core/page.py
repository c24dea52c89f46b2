"""The live status page that `operator lb` and every agent serve on ``/`` of their metrics address (pure).

Rendered with Jinja2 with autoescape on: every value out of Consul (service
names, hosts, labels, event messages that carry Docker's and Consul's error
texts) is text, never markup. The page updates itself: a few lines of inline
script fetch the ``main`` fragment (``/?part=main``, rendered the same way)
every `REFRESH_S` seconds and put it in place. No framework, no asset from
outside the machine; without script, a ``<noscript>`` refresh reloads the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import jinja2
from markupsafe import Markup

from consul_operator.core.describe import event_line
from consul_operator.core.desired_state import Resources
from consul_operator.core.events import ServiceEvent
from consul_operator.core.status import StatusView, format_age

REFRESH_S: Final = 3


def fresh(read_at: float | None, now: float, every: float = REFRESH_S) -> bool:
    """Whether the page's data read at ``read_at`` still serves a request at ``now`` (monotonic seconds).

    The page shows nothing newer than its refresh interval anyway, so its
    data is read at most once per `REFRESH_S`, whatever the request rate
    (`status_page.status_page`). A clock that went back never counts as fresh.
    """
    return read_at is not None and 0 <= now - read_at < every


PAGE_EVENTS: Final = 50
"""Events shown on the page, newest first."""

_MAIN = """\
<main id="main" data-updated="{{ now }}">
<section id="leader"><h2>Leader</h2>
<p>{% if view.leader %}<span class="host">{{ view.leader }}</span>{% if view.leader_since %} for {{ age(view.now - view.leader_since) }}{% endif %}{% else %}<span class="bad">none</span>{% endif %}</p>
</section>
<section id="hosts"><h2>Hosts</h2>
<table><thead><tr><th>host</th><th>live</th><th>maintenance</th><th>capacity</th><th>labels</th></tr></thead><tbody>
{% for h in view.hosts %}<tr class="host-row" data-host="{{ h.name }}">
<td>{{ h.name }}</td><td class="{{ 'ok' if h.live else 'bad' }}">{{ 'live' if h.live else 'lost' }}</td>
<td>{% if h.drain %}draining ({{ h.drain.remaining }} left){% elif h.cordoned %}cordoned{% endif %}</td>
<td>{{ capacities.get(h.name, '') }}</td>
<td>{% for k, v in h.labels|dictsort %}{{ k }}={{ v }} {% endfor %}</td></tr>
{% endfor %}</tbody></table></section>
<section id="services"><h2>Services</h2>
<table><thead><tr><th>service</th><th>image</th><th>desired</th><th>running</th><th>healthy</th><th>drift</th><th>state</th><th>rollout</th></tr></thead><tbody>
{% for s in view.services %}<tr class="service-row {{ 'ok' if s.phase == 'Converged' else 'warn' }}" data-service="{{ s.name }}">
<td class="name">{{ s.name }}</td><td>{{ s.image }}</td><td>{{ s.desired }}</td><td>{{ s.running }}</td><td>{{ s.healthy }}</td>
<td class="drift">{{ s.drift }}</td><td class="state">{{ s.state }}</td>
<td>{% if s.rollout %}{{ s.rollout.state }} {{ s.rollout.updated }}/{{ s.rollout.total }}{% endif %}</td></tr>
{% endfor %}</tbody></table></section>
<section id="events"><h2>Recent events</h2>
<table><thead><tr><th>age</th><th>service</th><th>host</th><th>reason</th><th>message</th></tr></thead><tbody>
{% for e in events %}<tr class="event {{ 'warn' if e.warning else '' }}">
<td>{{ age(view.now - e.time) }}</td><td class="service">{{ e.service }}</td><td>{{ e.host }}</td><td class="reason">{{ e.reason }}</td>
<td class="message">{{ e.message }}{% if e.count > 1 %} (x{{ e.count }}){% endif %}</td></tr>
{% endfor %}</tbody></table></section>
</main>
"""  # noqa: E501 - markup, kept one element a line

_PAGE = """\
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>consul-operator: {{ cluster }}</title>
<noscript><meta http-equiv="refresh" content="{{ refresh }}"></noscript>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1em}th,td{padding:.2em .7em;text-align:left;border-bottom:1px solid #ddd}
th{background:#f3f3f3}.ok{color:#176f2c}.bad{color:#b00020;font-weight:bold}.warn td.state,.event.warn td.reason{color:#a15c00;font-weight:bold}
td{white-space:nowrap}td.message,td.state{white-space:normal}
h1{font-size:1.3em}h2{font-size:1.1em;margin-bottom:.3em}small{color:#777}
</style></head><body>
<h1>consul-operator <small>cluster {{ cluster }}, served by {{ served_by }}; updates every {{ refresh }}s</small></h1>
{{ main }}
<script>
setInterval(function () {
  fetch("?part=main").then(function (r) { return r.ok ? r.text() : null; }).then(function (html) {
    if (html !== null) { document.getElementById("main").outerHTML = html; }
  }).catch(function () {});
}, {{ refresh * 1000 }});
</script>
</body></html>
"""  # noqa: E501 - markup

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_MAIN_T = _ENV.from_string(_MAIN)
_PAGE_T = _ENV.from_string(_PAGE)


def render_main(
    view: StatusView, events: Sequence[ServiceEvent], capacities: Mapping[str, Resources] | None = None
) -> str:
    """The ``main`` fragment: leader, hosts, services, recent events (newest first)."""
    newest = list(reversed(events))[:PAGE_EVENTS]
    caps = {host: r.text() for host, r in (capacities or {}).items()}
    return _MAIN_T.render(
        view=view, events=newest, capacities=caps, now=round(view.now, 3), age=format_age, line=event_line
    )


def render_page(
    view: StatusView,
    events: Sequence[ServiceEvent],
    *,
    cluster: str,
    served_by: str,
    capacities: Mapping[str, Resources] | None = None,
) -> str:
    """The whole page around `render_main`."""
    main = Markup(render_main(view, events, capacities))  # already escaped by its own template
    return _PAGE_T.render(main=main, cluster=cluster, served_by=served_by, refresh=REFRESH_S)
