"""Every KV key is built and parsed by `keys.Layout`: each parser reads back what its builder wrote."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.core.keys import Layout

LAYOUTS = [Layout(), Layout("tenant-a/services/", "tenant-a/operator/")]
SEGMENT = st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True).filter(lambda s: s not in (".", ".."))


@pytest.mark.parametrize("layout", LAYOUTS, ids=["default", "prefixed"])
@given(service=SEGMENT, second=SEGMENT)
def test_property_every_key_parses_back(layout: Layout, service: str, second: str) -> None:
    """Status, revision, placement, rollout, rollback, host and event keys parse back to their parts."""
    assert layout.status_of(layout.status_key(service, second)) == (service, second)
    assert layout.revision_of(layout.revision_key(service, second)) == (service, second)
    assert layout.under(layout.placement_prefix, layout.placement_key(service)) == service
    assert layout.under(layout.rollout_prefix, layout.rollout_key(service)) == service
    assert layout.under(layout.rollback_prefix, layout.rollback_key(service)) == service
    assert layout.record_of(layout.hosts_prefix, layout.host_key(second)) == second
    assert layout.events_service(layout.service_events_prefix(service)) == service
    assert layout.events_key(service, second).startswith(layout.service_events_prefix(service))


@pytest.mark.parametrize(
    ("key", "status", "revision", "placement"),
    [
        pytest.param("operator/status/web", None, None, None, id="status-without-host"),
        pytest.param("operator/status/web/h1/x", None, None, None, id="status-too-deep"),
        pytest.param("operator/status//h1", None, None, None, id="status-no-service"),
        pytest.param("operator/revisions/web/a/b", None, ("web", "a/b"), None, id="stray-revision"),
        pytest.param("operator/placement/a/b", None, None, "a/b", id="stray-placement"),
        pytest.param("operator/placement/", None, None, None, id="the-prefix-itself"),
        pytest.param("services/web", None, None, None, id="a-manifest"),
    ],
)
def test_keys_of_other_shapes(
    key: str, status: tuple[str, str] | None, revision: tuple[str, str] | None, placement: str | None
) -> None:
    """A key of another shape parses to None, but a stray key under a leader's prefix reads whole
    (the leader then removes it as a record of no manifest)."""
    layout = Layout()
    assert layout.status_of(key) == status
    assert layout.revision_of(key) == revision
    assert layout.under(layout.placement_prefix, key) == placement
