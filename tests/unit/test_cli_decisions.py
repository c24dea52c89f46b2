"""The CLI's pure decisions: duplicate files, transaction batches, and when a rollback is refused."""

from __future__ import annotations

import pytest

from consul_operator.cli.commands import (
    Write,
    duplicate_names,
    rollback_refusal,
    write_batches,
)
from consul_operator.core.desired_state import Manifest
from consul_operator.core.records import RolloutRecord, RolloutState
from consul_operator.core.txn import TXN_MAX_WRITES, fits_one_transaction, txn_operation

WEB = Manifest(name="web", image="hello:1", replicas=1, port=5000)
API = Manifest(name="api", image="hello:1", replicas=1, port=5000)


def rollout(state: str, frm: str = "aaa", to: str = "bbb") -> RolloutRecord:
    """A rollout record of web in ``state``."""
    return RolloutRecord("web", frm, to, RolloutState(state), 0.0)


def test_duplicate_names_lists_every_file_of_a_service() -> None:
    """Two files naming the same service are reported together; distinct services are not."""
    loaded = [("a.yaml", b"", WEB), ("b.yaml", b"", API), ("c.yaml", b"", WEB)]
    assert duplicate_names(loaded) == {"web": ["a.yaml", "c.yaml"]}
    assert duplicate_names(loaded[:2]) == {}


def writes(count: int, size: int) -> list[Write]:
    """``count`` writes of ``size`` bytes each."""
    return [Write(f"s{i}", f"services/s{i}", b"x" * size, 0) for i in range(count)]


@pytest.mark.parametrize(
    ("count", "size", "sizes"),
    [
        pytest.param(0, 10, [], id="nothing"),
        pytest.param(3, 100, [3], id="few-small-one-txn"),
        pytest.param(TXN_MAX_WRITES, 100, [TXN_MAX_WRITES], id="exactly-63-one-txn"),
        pytest.param(TXN_MAX_WRITES + 1, 100, [TXN_MAX_WRITES, 1], id="64-split-at-63-the-one-limit"),
        pytest.param(3, 200 * 1024, [1, 1, 1], id="200k-each-one-per-txn-base64-grows"),
        pytest.param(4, 110 * 1024, [3, 1], id="110k-each-three-fit"),
        pytest.param(2, 400 * 1024, [1, 1], id="too-big-for-a-txn-alone"),
    ],
)
def test_write_batches_respect_consul_limits(count: int, size: int, sizes: list[int]) -> None:
    """Batches (the one packer's, by service) hold every write once and each fits one transaction."""
    batches = write_batches(writes(count, size))
    assert [len(b) for b in batches] == sizes
    assert sorted(w.key for b in batches for w in b) == sorted(w.key for w in writes(count, size))
    for batch in batches:
        ops = [txn_operation(w.key, w.data, index=2**64 - 1) for w in batch]
        assert len(batch) == 1 or fits_one_transaction(ops)


@pytest.mark.parametrize(
    ("manifest", "record", "refusal"),
    [
        pytest.param(None, None, "no such service", id="no-manifest"),
        pytest.param("replicas: must be an integer", None, "its manifest is invalid", id="invalid"),
        pytest.param(WEB, None, "no rollout to roll back", id="never-rolled-out"),
        pytest.param(WEB, rollout("rolling_back"), "already rolling back to spec bbb", id="rolling-back"),
        pytest.param(WEB, rollout("rolled_back"), "already rolled back to spec bbb", id="rolled-back"),
        pytest.param(WEB, rollout("complete", "aaa", "aaa"), "nothing to roll back to", id="same-spec"),
        pytest.param(WEB, rollout("progressing"), None, id="progressing-honoured"),
        pytest.param(WEB, rollout("complete"), None, id="complete-honoured"),
        pytest.param(WEB, rollout("failed"), None, id="failed-honoured"),
    ],
)
def test_rollback_refusal_mirrors_the_leader(
    manifest: Manifest | str | None, record: RolloutRecord | None, refusal: str | None
) -> None:
    """A rollback is refused, saying why, exactly when the leader would drop the request."""
    found = rollback_refusal(manifest, record)
    if refusal is None:
        assert found is None
    else:
        assert found is not None and found.startswith(refusal), found
