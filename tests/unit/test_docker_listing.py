"""The Docker actuator's listing of our containers, on a fake of the SDK's low-level API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import docker
import pytest
import requests

from consul_operator.adapters.actuators.docker import DockerActuator
from consul_operator.core.errors import DockerUnavailable
from consul_operator.core.model import LABEL_DRAIN, LABEL_PORT, LABEL_SERVICE, LABEL_STOP_GRACE, seconds_label

EXITED = {"Id": "c1", "Names": ["/web-1"], "State": "exited", "Labels": {LABEL_SERVICE: "web"}, "Created": 1}
INSPECTED = {
    "Id": "c1",
    "Name": "/web-1",
    "Config": {"Labels": {LABEL_SERVICE: "web"}},
    "State": {"Status": "exited", "ExitCode": 137},
    "NetworkSettings": {"Ports": {}},
}


@dataclass
class FakeApi:
    """`docker.APIClient`'s two calls of a listing; inspect answers, or raises what it is given."""

    inspect_raises: Exception | None = None

    def containers(self, **_: Any) -> list[dict[str, Any]]:
        return [EXITED]

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        if self.inspect_raises is not None:
            raise self.inspect_raises
        return INSPECTED


@dataclass
class FakeClient:
    api: FakeApi


def actuator(api: FakeApi) -> DockerActuator:
    return DockerActuator(FakeClient(api), cluster="c", host="h", advertise="127.0.0.1")


def test_an_exited_container_is_listed_with_its_inspect() -> None:
    """A stopped container is listed from its inspect (exit details)."""
    assert [c.name for c in actuator(FakeApi()).list_containers()] == ["web-1"]


def test_a_container_removed_between_list_and_inspect_is_left_out() -> None:
    """A 404 on inspect means the container went away meanwhile: it is simply not listed."""
    gone = docker.errors.NotFound("No such container: c1")
    assert actuator(FakeApi(inspect_raises=gone)).list_containers() == []


def test_an_inspect_that_times_out_fails_the_listing() -> None:
    """A timed-out inspect is no removal: the listing fails rather than leave the container out."""
    with pytest.raises(DockerUnavailable):
        actuator(FakeApi(inspect_raises=requests.ReadTimeout("read timed out"))).list_containers()


@pytest.mark.parametrize(
    ("labels", "primary"),
    [
        pytest.param({LABEL_PORT: "9100"}, 32001, id="labelled-primary"),
        pytest.param({}, 32000, id="unlabelled-lowest-host-port"),
        pytest.param({LABEL_PORT: "7"}, None, id="primary-not-published"),
    ],
)
def test_every_published_port_is_listed_with_the_primary(labels: dict[str, str], primary: int | None) -> None:
    """A container publishing several ports on the advertise address lists each (container port,
    host port), both from the listing and from an inspect; ``host_port`` is the one `LABEL_PORT`
    names. A port bound on another address is not ours to register."""
    summary = {
        "Id": "c2",
        "Names": ["/web-2"],
        "State": "running",
        "Labels": labels,
        "Ports": [
            {"PrivatePort": 5000, "PublicPort": 32000, "IP": "127.0.0.1"},
            {"PrivatePort": 9100, "PublicPort": 32001, "IP": "127.0.0.1"},
            {"PrivatePort": 9200, "PublicPort": 32002, "IP": "0.0.0.0"},
        ],
    }
    inspected = {
        "Id": "c2",
        "Name": "/web-2",
        "Config": {"Labels": labels},
        "State": {"Status": "running"},
        "NetworkSettings": {
            "Ports": {
                "5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32000"}],
                "9100/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32001"}],
                "9200/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32002"}],
            }
        },
    }
    docker_actuator = actuator(FakeApi())
    for info in (docker_actuator._from_summary(summary), docker_actuator._from_inspect(inspected)):
        assert info.host_ports == ((5000, 32000), (9100, 32001))
        assert info.host_port == primary


@pytest.mark.parametrize(
    ("labels", "drain", "stop_grace"),
    [
        pytest.param({LABEL_DRAIN: "0.5", LABEL_STOP_GRACE: "30.0"}, 0.5, 30.0, id="labelled"),
        pytest.param({}, None, None, id="started-before-the-labels"),
        pytest.param({LABEL_DRAIN: "soon", LABEL_STOP_GRACE: "nan"}, None, None, id="not-numbers"),
        pytest.param({LABEL_DRAIN: "-1", LABEL_STOP_GRACE: "1e9"}, None, None, id="out-of-bounds"),
    ],
)
def test_a_replicas_drain_and_stop_grace_are_read_from_its_labels(
    labels: dict[str, str], drain: float | None, stop_grace: float | None
) -> None:
    """What a replica was started with comes back from the listing and from an inspect; a label that
    is missing, not a number or out of the manifest's bounds reads as absent (the defaults apply)."""
    summary = {"Id": "c3", "Names": ["/web-3"], "State": "running", "Labels": labels, "Ports": []}
    inspected = {
        "Id": "c3",
        "Name": "/web-3",
        "Config": {"Labels": labels},
        "State": {"Status": "running"},
        "NetworkSettings": {"Ports": {}},
    }
    docker_actuator = actuator(FakeApi())
    for info in (docker_actuator._from_summary(summary), docker_actuator._from_inspect(inspected)):
        assert (info.drain, info.stop_grace) == (drain, stop_grace)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("2.0", 2.0, id="seconds"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("600", 600.0, id="at-the-limit"),
        pytest.param("600.5", None, id="past-the-limit"),
        pytest.param("inf", None, id="infinite"),
        pytest.param("1" * 40, None, id="too-long"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_seconds_label(text: str | None, seconds: float | None) -> None:
    """A seconds label is a number within [0, limit], or absent."""
    assert seconds_label(text, 600.0) == seconds
