"""Our Docker client: the Docker SDK with a timeout and our own errors.

The engine is found the usual way (``DOCKER_HOST``, else the local socket).
Every failure comes out as `DockerUnavailable`, `ImageNotFound` or
`DockerError`, raised from the SDK's exception, so that callers never see
`requests` or `docker.errors` types.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import docker
import docker.errors
import docker.utils
import requests

from consul_operator.adapters import health
from consul_operator.core.errors import DockerError, DockerUnavailable, ImageNotFound

DEFAULT_TIMEOUT = 30.0  # seconds; a container stop may take its grace period on top


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Turn the Docker SDK's and requests' exceptions into ours; report the engine's reachability."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(f"image not found during {what}: {exc.explanation or exc}") from exc
    except docker.errors.NotFound as exc:
        raise DockerError(f"not found during {what}: {exc.explanation or exc}") from exc
    except docker.errors.APIError as exc:
        raise DockerError(f"Docker refused {what}: {exc.explanation or exc}") from exc
    except docker.errors.DockerException as exc:
        health.report("docker", False, str(exc))
        raise DockerUnavailable(f"Docker engine unreachable during {what}: {exc}") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        health.report("docker", False, str(exc))
        raise DockerUnavailable(f"Docker engine unreachable during {what}: {exc}") from exc
    health.report("docker", True)


def check_docker_url(url: str) -> str:
    """A Docker engine address as given (``unix:///…``, ``tcp://host:port``, ``ssh://…``); ValueError if
    the Docker SDK could not use it (checked before connecting: a usage error, not a failed start)."""
    try:
        docker.utils.parse_host(url, False, False)
    except docker.errors.DockerException as exc:
        raise ValueError(f"not a Docker engine address: {exc}") from exc
    return url


def connect(base_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> docker.DockerClient:
    """A Docker client for ``base_url``, or ``DOCKER_HOST``, or the local socket.

    Connecting does not talk to the engine yet: the first call does, and an
    engine that is down then raises `DockerUnavailable`.
    """
    with docker_errors("connecting to the Docker engine"):
        if base_url:
            return docker.DockerClient(base_url=base_url, timeout=int(timeout))
        return docker.from_env(timeout=int(timeout))


def ping(client: docker.DockerClient) -> None:
    """Raise `DockerUnavailable` unless the engine answers."""
    with docker_errors("a ping"):
        client.ping()


def engine_resources(client: docker.DockerClient) -> tuple[int, int]:
    """The engine's machine: total memory in bytes and the number of CPUs (``docker info``)."""
    with docker_errors("reading the engine's memory and CPUs"):
        info = client.info()
    try:
        return int(info["MemTotal"]), int(info["NCPU"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DockerError(f"docker info has no usable MemTotal and NCPU: {exc}") from exc
