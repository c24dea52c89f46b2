"""The node environment of the tests: three systemd nodes on a network of their own, up for the session.

NODES_TEST_NAME and NODES_TEST_SUBNET move it (two checkouts on one engine
need different ones); by default "nodes-test" on 198.18.0.0/24, apart from
`make nodes-up` (198.18.1.0/24).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.chaos.nodes import start_node_environment
from tests.support.cluster import Cluster
from tests.support.nodes import Nodes

NAME = os.environ.get("NODES_TEST_NAME", "nodes-test")
SUBNET = os.environ.get("NODES_TEST_SUBNET", "198.18.0.0/24")


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[Cluster]:
    """The nodes, up (the image built first when missing), torn down after the session."""
    cluster = start_node_environment(NAME, SUBNET)
    yield cluster
    cluster.staging.run("down")


@pytest.fixture(scope="session")
def nodes(node_cluster: Cluster) -> Nodes:
    """The environment itself: commands in nodes, partitions."""
    env = node_cluster.staging
    assert isinstance(env, Nodes)
    return env
