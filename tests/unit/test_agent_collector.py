"""The agent daemon sets the cyclic garbage collector once, at start-up (`agent.tune_collector`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from consul_operator.adapters.actuators.docker import DockerActuator
from consul_operator.core.keys import Layout
from consul_operator.daemons import agent


@pytest.fixture
def collector_restored() -> Iterator[None]:
    """The test process's collector as it was, after the test (the setting is process-wide)."""
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    yield
    if frozen == 0:
        gc.unfreeze()
    gc.set_threshold(*threshold)


class StartedUp(Exception):
    pass


@pytest.mark.usefixtures("collector_restored")
def test_tune_collector_freezes_start_up_and_raises_the_thresholds() -> None:
    """tune_collector moves what exists into the permanent generation and sets the daemon's thresholds."""
    gc.set_threshold(700, 10, 10)
    tracked = len(gc.get_objects())
    agent.tune_collector()
    assert gc.get_threshold() == agent.COLLECTOR_THRESHOLD == (50_000, 10, 10)
    assert gc.get_freeze_count() >= tracked // 2
    assert len(gc.get_objects()) < tracked // 2


def test_run_agent_tunes_the_collector_before_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_agent sets the collector first, before signals, Consul or the engine are touched."""

    def tuned() -> None:
        raise StartedUp

    def no_engine(*_: object) -> DockerActuator:
        raise AssertionError("the engine was made before the collector was set")

    monkeypatch.setattr(agent, "tune_collector", tuned)
    monkeypatch.setattr(agent, "stop_on_signals", lambda: pytest.fail("signals before the collector"))
    config = agent.AgentConfig(
        host="host-1",
        advertise="127.0.0.1",
        consul_addr="127.0.0.1:1",
        consul_token=None,
        docker_host=None,
        cluster="c",
        layout=Layout(),
        labels={},
        capacity=(None, None),
        metrics_addr=None,
        ttl=10.0,
        lock_delay=1.0,
        lost_grace=30.0,
        resync=60.0,
    )
    with pytest.raises(StartedUp):
        agent.run_agent(config, engine=no_engine)
