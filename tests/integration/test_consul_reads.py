"""`ConsulClient.kv_trees`, the one-transaction read of several prefixes, against a real Consul."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from consul_operator.adapters.consul_client import ConsulClient


@pytest.fixture
def root(consul: ConsulClient) -> Iterator[str]:
    """A KV folder of this test's own, deleted afterwards."""
    prefix = f"test-trees-{uuid.uuid4().hex[:8]}/"
    yield prefix
    for entry in consul.kv_list(prefix).value:
        consul.kv_delete(entry.key)


def test_kv_trees_reads_what_kv_list_reads(consul: ConsulClient, root: str) -> None:
    """Each prefix's keys and values (text and bytes) come back as `kv_list` lists them."""
    consul.kv_put(f"{root}a/one", "1")
    consul.kv_put(f"{root}a/two", b"\x00\xffbinary")
    consul.kv_put(f"{root}b/three", "drei: \u00fc")
    trees = consul.kv_trees([f"{root}a/", f"{root}b/"], consistent=True)
    for prefix in (f"{root}a/", f"{root}b/"):
        listed = consul.kv_list(prefix, consistent=True).value
        assert [(e.key, e.value, e.modify_index) for e in trees[prefix]] == [
            (e.key, e.value, e.modify_index) for e in listed
        ]
    assert [e.value for e in trees[f"{root}a/"]] == [b"1", b"\x00\xffbinary"]


def test_kv_trees_keeps_nested_prefixes_apart_and_answers_empty_ones(consul: ConsulClient, root: str) -> None:
    """A prefix inside another lists its keys in both, once each; an empty prefix is an empty list."""
    consul.kv_put(f"{root}x", "outer")
    consul.kv_put(f"{root}in/y", "inner")
    trees = consul.kv_trees([root, f"{root}in/", f"{root}none/"])
    assert [e.key for e in trees[root]] == [f"{root}in/y", f"{root}x"]
    assert [e.key for e in trees[f"{root}in/"]] == [f"{root}in/y"]
    assert trees[f"{root}none/"] == []
