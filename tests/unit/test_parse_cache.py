"""The manifest parse cache: each text parsed once, and what it holds bounded by bytes."""

from __future__ import annotations

import pytest

from consul_operator.adapters import kv_state
from consul_operator.adapters.kv_state import PARSE_CACHE_BYTES, ParseCache
from consul_operator.core.desired_state import Manifest

KIB = 1024


def manifest_text(name: str, padding: int) -> bytes:
    """A valid manifest of about ``padding`` bytes (a YAML comment pads it)."""
    return f"name: {name}\nimage: hello:local\nreplicas: 1\n# {'x' * padding}\n".encode()


@pytest.fixture
def small_cache(monkeypatch: pytest.MonkeyPatch) -> ParseCache:
    """kv_state's parse cache replaced by one with a 1 MiB budget."""
    cache = ParseCache(budget=1024 * KIB)
    monkeypatch.setattr(kv_state, "PARSE_CACHE", cache)
    return cache


def test_default_budget_is_bounded_by_bytes() -> None:
    """The shipped cache holds at most 32 MiB of manifest text, not 4096 values of up to 512 KiB."""
    assert kv_state.PARSE_CACHE.budget == PARSE_CACHE_BYTES <= 32 * 1024 * KIB


def test_many_large_manifests_stay_within_the_budget(small_cache: ParseCache) -> None:
    """Forty distinct 200 KiB manifests read in turn keep the held bytes within the budget."""
    for i in range(40):
        result = kv_state._parse(manifest_text("web", 200 * KIB + i), "web")
        assert isinstance(result, Manifest)
        assert small_cache.held_bytes <= small_cache.budget
    assert 0 < len(small_cache) <= 5


def test_unchanged_text_is_parsed_once(small_cache: ParseCache) -> None:
    """The same text under the same name gives the same parsed object (no second parse)."""
    text = manifest_text("web", 10)
    assert kv_state._parse(text, "web") is kv_state._parse(text, "web")
    assert kv_state._parse(text, "other") is not kv_state._parse(text, "web")


def test_least_recently_used_goes_first(small_cache: ParseCache) -> None:
    """When the budget is full, the text used longest ago is dropped; a recently used one stays."""
    texts = [manifest_text(f"s{i}", 300 * KIB) for i in range(3)]
    first = [kv_state._parse(t, f"s{i}") for i, t in enumerate(texts)]
    assert kv_state._parse(texts[0], "s0") is first[0]  # s0 is now the most recent
    kv_state._parse(manifest_text("s3", 300 * KIB), "s3")  # over budget: s1 goes
    assert kv_state._parse(texts[0], "s0") is first[0]
    assert kv_state._parse(texts[1], "s1") is not first[1]


def test_text_over_the_budget_is_parsed_not_kept() -> None:
    """A manifest larger than the whole budget is parsed but not held."""
    cache = ParseCache(budget=100 * KIB)
    result = cache.parse(manifest_text("web", 200 * KIB), "web")
    assert isinstance(result, Manifest)
    assert (len(cache), cache.held_bytes) == (0, 0)
