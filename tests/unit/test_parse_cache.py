"""Manifests in KV: an unchanged one is read and parsed once, however large and however many."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from consul_operator.adapters import kv_state
from consul_operator.adapters.consul_client import Indexed, KVEntry
from consul_operator.adapters.kv_state import ParseCache, TreeMirror, manifests_of
from consul_operator.core.desired_state import Manifest
from consul_operator.core.keys import Layout
from tests.unit.test_executor import FakeConsul

KIB = 1024


def manifest_text(name: str, padding: int) -> bytes:
    """A valid manifest of about ``padding`` bytes (a YAML comment pads it)."""
    return f"name: {name}\nimage: hello:local\nreplicas: 1\n# {'x' * padding}\n".encode()


def test_seventy_large_manifests_are_parsed_once_over_many_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """70 manifests of 510 KB (35 MB of text, past the old 32 MiB budget) parse once each, not every pass."""
    parsed: list[str] = []

    def parse(value: bytes, name: str) -> Manifest:
        parsed.append(name)
        return Manifest(name=name, image="hello:local", replicas=1)

    monkeypatch.setattr(kv_state, "_parse_uncached", parse)  # the loader's cost is not the point here
    cache = ParseCache()
    texts = {f"services/s{i}": manifest_text(f"s{i}", 510 * KIB) for i in range(70)}
    for _ in range(3):
        for key, text in texts.items():
            assert isinstance(cache.parse(key, text, key.removeprefix("services/")), Manifest)
    assert len(parsed) == cache.parses == 70


def test_unchanged_text_is_parsed_once() -> None:
    """The same text at the same key gives the same parsed object; a changed text is parsed again."""
    cache = ParseCache()
    text = manifest_text("web", 10)
    first = cache.parse("services/web", text, "web")
    assert cache.parse("services/web", text, "web") is first
    assert cache.parse("services/other", text, "other") is not first
    changed = cache.parse("services/web", manifest_text("web", 11), "web")
    assert changed is not first
    assert cache.parses == 3


def test_a_key_holds_one_result() -> None:
    """Rewriting a key replaces its entry: the cache grows with the keys, not with the writes."""
    cache = ParseCache()
    for i in range(50):
        cache.parse("services/web", manifest_text("web", i), "web")
    assert len(cache) == 1


def test_least_recently_used_key_goes_past_the_key_bound() -> None:
    """Past ``max_keys`` keys, the key used longest ago is dropped; a recently used one stays."""
    cache = ParseCache(max_keys=2)
    texts = {f"services/s{i}": manifest_text(f"s{i}", 10) for i in range(3)}
    first = {key: cache.parse(key, text, key[9:]) for key, text in list(texts.items())[:2]}
    assert cache.parse("services/s0", texts["services/s0"], "s0") is first["services/s0"]
    cache.parse("services/s2", texts["services/s2"], "s2")  # s1 goes
    assert len(cache) == 2
    assert cache.parse("services/s0", texts["services/s0"], "s0") is first["services/s0"]
    assert cache.parse("services/s1", texts["services/s1"], "s1") is not first["services/s1"]


def test_a_listing_forgets_the_keys_gone_from_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`manifests_of` over a whole listing of ``services/`` drops the deleted manifests' results."""
    cache = ParseCache()
    monkeypatch.setattr(kv_state, "PARSE_CACHE", cache)
    layout = Layout()
    entries = [KVEntry(f"services/s{i}", manifest_text(f"s{i}", 10), i + 1) for i in range(3)]
    manifests_of(entries, layout)
    assert len(cache) == 3
    manifests_of(entries[:1], layout)
    assert len(cache) == 1


class CountingKV(FakeConsul):
    """`FakeConsul` that records which keys' values were read, and the whole reads and index checks."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[str] = []
        self.wholes = 0
        self.checks = 0

    def kv_get_many(self, keys: list[str], **kw: object) -> list[KVEntry]:
        self.fetched.extend(keys)
        return super().kv_get_many(keys, **kw)

    def kv_list(self, prefix: str, **kw: object) -> Indexed[list[KVEntry]]:
        self.wholes += 1
        return super().kv_list(prefix, **kw)

    def kv_stale(self, known: Mapping[str, int], **kw: object) -> set[str]:
        self.checks += 1
        return super().kv_stale(known, **kw)


def test_a_small_tree_that_moved_is_read_whole_in_one_request() -> None:
    """A tree of a few KB (1,000 small manifests are a few hundred): once read, a change reads it
    whole in one request instead of checking every key's index, and reads the same entries."""
    consul = CountingKV()
    for i in range(70):
        consul.kv[f"services/s{i}"] = manifest_text(f"s{i}", 10)
    mirror = TreeMirror("services/")
    mirror.read(consul)
    consul.kv["services/s3"] = manifest_text("s3", 11)
    consul.kv["services/new"] = manifest_text("new", 1)
    del consul.kv["services/s4"]
    entries = {e.key: e.value for e in mirror.read(consul)}
    assert (consul.wholes, consul.checks) == (1, 0)
    assert entries == {k: v for k, v in consul.kv.items() if k.startswith("services/")}
    mirror.read(consul)
    assert consul.wholes == 1  # unmoved: nothing read


def test_a_mirror_reads_only_new_and_changed_values() -> None:
    """`TreeMirror` of a large tree (70 manifests of 5 KB) reads every value once, then none while
    nothing changes, then only the changed key."""
    consul = CountingKV()
    for i in range(70):
        consul.kv[f"services/s{i}"] = manifest_text(f"s{i}", 5 * KIB)
    mirror = TreeMirror("services/")
    assert len(mirror.read(consul)) == 70
    assert len(consul.fetched) == 70
    consul.fetched.clear()
    mirror.read(consul)
    assert consul.fetched == []
    consul.kv["services/s3"] = manifest_text("s3", 5 * KIB + 1)
    consul.kv["services/new"] = manifest_text("new", 1)
    del consul.kv["services/s4"]
    entries = {e.key: e.value for e in mirror.read(consul)}
    assert sorted(consul.fetched) == ["services/new", "services/s3"]
    assert consul.wholes == 0
    assert entries == {k: v for k, v in consul.kv.items() if k.startswith("services/")}
