"""Our Consul wrapper's pure parts: addresses, tokens, the blocking-query index rules and the
decoding of a read-only transaction's trees."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.adapters.consul_client import (
    BlockingQuery,
    ConsulAddress,
    ConsulClient,
    Indexed,
    KVEntry,
    _tls_reason,
    _trees_of,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.11:8500", ConsulAddress("http", "127.0.0.11", 8500), id="host-port"),
        pytest.param("127.0.0.11", ConsulAddress("http", "127.0.0.11", 8500), id="default-port"),
        pytest.param("https://consul.local:8501", ConsulAddress("https", "consul.local", 8501), id="https"),
    ],
)
def test_address_parsing(text: str, expected: ConsulAddress) -> None:
    """--consul and CONSUL_HTTP_ADDR accept host:port with or without a scheme."""
    assert ConsulAddress.parse(text) == expected


@pytest.mark.parametrize("text", ["ftp://x:1", "http://:8500", "x:notaport"], ids=str)
def test_bad_address_is_refused(text: str) -> None:
    """A malformed Consul address is a clear error, not a later connection failure."""
    with pytest.raises(ValueError, match="Consul address"):
        ConsulAddress.parse(text)


def test_explicit_token_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token given on the command line beats CONSUL_HTTP_TOKEN (py-consul does the opposite)."""
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    assert ConsulClient("127.0.0.1:8500", token="explicit")._client.token == "explicit"
    assert ConsulClient("127.0.0.1:8500")._client.token == "from-env"


def test_address_comes_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --consul, CONSUL_HTTP_ADDR names the agent."""
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.12:8500")
    assert ConsulClient().address == ConsulAddress("http", "127.0.0.12", 8500)


class FakeFetch:
    """Returns scripted indexes and records the index each call was made with."""

    def __init__(self, indexes: list[int]) -> None:
        self.indexes = indexes
        self.asked: list[int] = []

    def __call__(self, index: int, wait: float) -> Indexed[str]:
        self.asked.append(index)
        return Indexed(self.indexes[len(self.asked) - 1], f"value@{len(self.asked)}")


def run_query(indexes: list[int]) -> tuple[FakeFetch, list[bool]]:
    fetch = FakeFetch(indexes)
    query = BlockingQuery(fetch, min_interval=0, sleep=lambda _: None)
    changes = [query.next()[0] for _ in indexes]
    return fetch, changes


@pytest.mark.parametrize(
    ("indexes", "asked", "changes"),
    [
        pytest.param([5, 5, 7], [0, 5, 5], [True, False, True], id="same-index-is-no-change"),
        pytest.param([9, 4, 6], [0, 9, 0], [True, True, True], id="backwards-index-resets-to-0"),
        pytest.param([0, 0, 3], [0, 1, 1], [True, True, True], id="zero-index-becomes-1"),
    ],
)
def test_blocking_query_index_rules(indexes: list[int], asked: list[int], changes: list[bool]) -> None:
    """The index sent follows Consul's rules: reset when it goes backwards, never 0 after the first read."""
    fetch, seen = run_query(indexes)
    assert fetch.asked == asked
    assert seen == changes


@pytest.mark.parametrize(
    ("results", "changes"),
    [
        pytest.param(
            [(5, []), (9, []), (12, ["k"]), (15, []), (20, [])],
            [True, False, True, True, False],
            id="an-empty-prefix-stays-empty",
        ),
        pytest.param(
            [(3, None), (8, None), (9, b"x"), (11, None)], [True, False, True, True], id="a-missing-key"
        ),
        pytest.param([(4, ["k"]), (6, ["k"])], [True, True], id="same-keys-new-index-is-a-change"),
    ],
)
def test_blocking_query_sees_no_change_while_nothing_is_there(
    results: list[tuple[int, object]], changes: list[bool]
) -> None:
    """Nothing before and nothing now is no change, though the index moved (Consul answers a read of
    nothing with the whole store's index); anything else that moved the index is one (a value
    rewritten under the same keys)."""
    answers = iter(results)
    query = BlockingQuery(lambda i, w: Indexed(*next(answers)), min_interval=0, sleep=lambda _: None)
    assert [query.next()[0] for _ in results] == changes


def test_blocking_query_spaces_out_calls() -> None:
    """Two reads are never closer than min_interval: a hot key cannot make us hammer Consul."""
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    query = BlockingQuery(FakeFetch([1, 2, 3]), min_interval=0.5, clock=lambda: now[0], sleep=sleep)
    query.next()
    query.next()
    now[0] += 0.2
    query.next()
    assert slept == [pytest.approx(0.5), pytest.approx(0.3)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "HTTPSConnectionPool(host='127.0.0.71', port=8501): Max retries exceeded (Caused by SSLError("
            "SSLError(1, '[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate (_ssl.c:2580)')))",
            "Consul refused our client certificate (none given, or not signed by its CA)",
            id="no-client-certificate",
        ),
        pytest.param(
            "(Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
            "verify failed: unable to get local issuer certificate (_ssl.c:1000)')))",
            "certificate verify failed: unable to get local issuer certificate",
            id="wrong-ca",
        ),
        pytest.param(
            "CertificateError(\"hostname 'client.dc1.consul' doesn't match either of 'server.dc1.consul'\")",
            "Consul's certificate is not for 'client.dc1.consul'",
            id="wrong-server-name",
        ),
    ],
)
def test_tls_failures_are_told_in_one_short_reason(text: str, expected: str) -> None:
    """A TLS failure's message is cut down to the cause a user can act on."""
    assert _tls_reason(Exception(text)) == expected


def _plain_trees(results: list[dict[str, object]], prefixes: list[str]) -> dict[str, dict[str, KVEntry]]:
    """The read-only transaction's results by prefix as `kv_trees` sorted them before (every prefix
    tried for every key, `base64.b64decode`)."""
    trees: dict[str, dict[str, KVEntry]] = {prefix: {} for prefix in prefixes}
    for result in results:
        raw: dict[str, Any] = result.get("KV") or {}  # type: ignore[assignment]
        entry = KVEntry(
            str(raw["Key"]),
            base64.b64decode(raw.get("Value") or ""),
            int(raw["ModifyIndex"]),
            raw.get("Session"),
        )
        for prefix, tree in trees.items():
            if entry.key.startswith(prefix):
                tree[entry.key] = entry
    return trees


SEGMENTS = st.sampled_from(["a", "ab", "b", "status", "placement"])


@given(
    keys=st.lists(st.lists(SEGMENTS, min_size=1, max_size=3).map("/".join), max_size=20),
    prefixes=st.lists(
        st.lists(SEGMENTS, min_size=0, max_size=2).map(lambda p: "".join(f"{s}/" for s in p)),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    values=st.lists(st.binary(max_size=8) | st.none(), min_size=20, max_size=20),
)
def test_property_transaction_results_sort_into_trees_as_before(
    keys: list[str], prefixes: list[str], values: list[bytes | None]
) -> None:
    """For any keys in any order and any prefixes, nested or not, the trees `kv_trees` builds (each
    value decoded at once, a key tried first against the prefix of the key before it) are those of
    the plain rule: every prefix tried for every key."""
    results: list[dict[str, object]] = [
        {
            "KV": {
                "Key": key,
                "Value": None if value is None else base64.b64encode(value).decode(),
                "ModifyIndex": i + 1,
                **({"Session": "s"} if i % 3 == 0 else {}),
            }
        }
        for i, (key, value) in enumerate(zip(keys, values, strict=False))
    ]
    assert _trees_of(results, prefixes) == _plain_trees(results, prefixes)
