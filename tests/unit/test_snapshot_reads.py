"""`snapshot.read_cluster_state`: one view reads each service's passing instances once, so that a
template and the count of the service it names see one moment."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from consul_operator.adapters.consul_client import Indexed
from consul_operator.adapters.presence import AGENT_SERVICE
from consul_operator.adapters.snapshot import every_service, read_cluster_state
from consul_operator.core.model import ServiceInstance
from tests.unit.test_work_keys import LAYOUT, FakeConsul, FakeElection

APP = b"""name: app
image: hello:1
replicas: 1
templates:
  - path: /etc/app.conf
    change_mode: restart
    source: "{% for r in service('db') %}db = {{ r.address }}{% endfor %}"
"""


@dataclass
class CountingCatalog(FakeConsul):
    """No instances; counts each service's health reads."""

    reads: Counter[str] = field(default_factory=Counter)

    def health_service(self, service: str, **_: object) -> Indexed[list[ServiceInstance]]:
        """No instances, counted."""
        self.reads[service] += 1
        return Indexed(1, [])


def test_a_template_and_its_service_s_count_come_from_one_read() -> None:
    """A service that a template names and whose count the view shows is read from the catalog once:
    read twice, a replica passing between the reads made the service Converged while the template
    still rendered without it (`operator wait` then returned before the leader rendered it again)."""
    consul = CountingCatalog(FakeElection(kv={LAYOUT.service_key("app"): APP}))
    state = read_cluster_state(consul, LAYOUT, "c", passing_of=lambda s: every_service(s) | {"db"})
    assert consul.reads == Counter({AGENT_SERVICE: 1, "db": 1, "app": 1})
    assert set(state.passing) == {"app", "db"}
