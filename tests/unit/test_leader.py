"""Leader election's bookkeeping, against a recording stand-in for our own Consul wrapper."""

from __future__ import annotations

import threading
from typing import Any

from structlog.testing import capture_logs

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.presence import ttl_check_id
from consul_operator.core.errors import ConsulError, ConsulUnavailable
from consul_operator.core.keys import Layout
from consul_operator.daemons.leader import SESSION_TTL, LeaderElection


class RecordingConsul:
    """Answers the few calls LeaderElection makes and records them (a fake of our wrapper only)."""

    def __init__(self, sessions: list[dict[str, Any]]) -> None:
        self.sessions = sessions
        self.calls: list[tuple[str, str]] = []

    def node_sessions(self, node: str) -> list[dict[str, Any]]:
        return list(self.sessions)

    def kv_release(self, key: str, session: str) -> bool:
        self.calls.append(("release", session))
        return True

    def session_destroy(self, session: str) -> None:
        self.calls.append(("destroy", session))

    def session_create(self, name: str, **options: object) -> str:
        self.calls.append(("create", name))
        self.options = options
        return "new"

    def session_info(self, session: str) -> dict[str, Any] | None:
        return {"ID": session}

    def kv_acquire(self, key: str, value: bytes, session: str) -> bool:
        self.calls.append(("acquire", session))
        return True


def _election(consul: RecordingConsul, layout: Layout | None = None) -> LeaderElection:
    fake: Any = consul
    client: ConsulClient = fake
    return LeaderElection(client, layout or Layout(), host="host-1", node="node-1", lock_delay=1.0)


def test_predecessor_sessions_are_released_then_destroyed_before_a_new_one() -> None:
    """A restarted agent frees the lock its killed predecessor's session holds, then makes its own."""
    probe = _election(RecordingConsul([]))
    consul = RecordingConsul(
        [
            {"ID": "dead", "Name": probe.session_name},
            {"ID": "other-env", "Name": "operator leader election of other/leader (host-1)"},
            {"ID": "foreign", "Name": "somebody else's lock"},
        ]
    )
    election = _election(consul)
    assert election._ensure_session() == "new"
    assert consul.calls == [("release", "dead"), ("destroy", "dead"), ("create", election.session_name)]


def test_session_name_names_the_lock_so_environments_sharing_a_node_stay_apart() -> None:
    """Two operator environments on one Consul node (other prefixes) never reap each other's sessions."""
    ours = _election(RecordingConsul([]))
    theirs = _election(RecordingConsul([]), Layout(operator_prefix="other/"))
    assert ours.session_name != theirs.session_name


def test_no_acquire_and_no_new_session_after_resign() -> None:
    """Once resigned (SIGTERM), the election thread can neither take the lock again nor make a session."""
    consul = RecordingConsul([])
    election = _election(consul)
    assert election._ensure_session() == "new"
    election.resign()
    consul.calls.clear()
    assert election._acquire("new") is False
    election._session = None
    assert election._ensure_session() is None
    assert not [c for c in consul.calls if c[0] in ("acquire", "create")]


def test_the_session_has_a_ttl_of_its_own_besides_its_checks() -> None:
    """A leader cut off from the servers but alive in gossip loses its session: it has Consul's
    minimum TTL, on top of the node's serfHealth and the agent's own TTL check."""
    consul = RecordingConsul([])
    election = _election(consul)
    election._ensure_session()
    assert consul.options == {
        "checks": ["serfHealth", ttl_check_id("host-1")],
        "lock_delay": 1.0,
        "ttl": SESSION_TTL,
    }


class RenewingConsul(RecordingConsul):
    """Renewals answered from ``answers`` (True: renewed, False: unknown session, an error: raised)."""

    def __init__(self, answers: list[bool | ConsulError], stop: threading.Event) -> None:
        super().__init__([])
        self.answers = answers
        self.stop = stop

    def session_renew(self, session: str) -> bool:
        self.calls.append(("renew", session))
        answer = self.answers.pop(0)
        if not self.answers:
            self.stop.set()
        if isinstance(answer, ConsulError):
            raise answer
        return answer


def test_renewals_go_on_through_errors_and_say_a_streak_of_them_once() -> None:
    """Every renewal is tried, whatever the last one's outcome; a run of failures is one warning,
    the first success after it one line; an ended session is said and left to the election."""
    stop = threading.Event()
    down = ConsulUnavailable("127.0.0.1:8500 unreachable during renewing a session: refused")
    consul = RenewingConsul([True, down, down, True, False], stop)
    election = _election(consul)
    election._session = "s1"
    with capture_logs() as logs:
        election.renew_session(stop, every=0.001)
    assert consul.calls == [("renew", "s1")] * 5
    assert [e["event"] for e in logs] == [
        "session not renewed; trying again",
        "session renewed again",
        "session ended before its renewal",
    ]
