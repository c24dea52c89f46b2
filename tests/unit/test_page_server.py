"""The daemons' HTTP server (`http_pool`, `metrics.serve`) and the page's read cache (`ReadEvery`)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from consul_operator.adapters import metrics
from consul_operator.adapters.http_pool import PooledHTTPServer
from consul_operator.adapters.status_page import PageData, ReadEvery
from consul_operator.cli.main import main
from consul_operator.core.page import REFRESH_S, fresh
from consul_operator.core.status import StatusView


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET on 127.0.0.1:``port``: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def serving(server: PooledHTTPServer) -> Iterator[int]:
    """Run ``server`` on a thread; yields its port, then stops it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def tight() -> Iterator[int]:
    """The metrics server with one worker, no queue and a 0.5 s idle timeout; its port."""
    handler = type("Handler", (metrics._Handler,), {"problems": staticmethod(list)})
    server = metrics._Server(
        ("127.0.0.1", 0), handler, workers=1, queued=0, idle_timeout=0.5, on_drop=metrics.count_drop
    )
    yield from serving(server)


def dropped(reason: str) -> float:
    """operator_http_dropped_connections_total{reason} of this process."""
    return REGISTRY.get_sample_value("operator_http_dropped_connections_total", {"reason": reason}) or 0.0


def test_idle_connections_pin_no_worker_and_are_closed(tight: int) -> None:
    """Fifty silent connections to a one-worker server: requests still answered, the silent ones closed."""
    before = dropped("idle")
    idle = [socket.create_connection(("127.0.0.1", tight), timeout=5) for _ in range(50)]
    try:
        assert get(tight, "/healthz")[0] == 200
        for conn in idle:
            assert conn.recv(1) == b""  # closed by the server after its idle timeout
    finally:
        for conn in idle:
            conn.close()
    assert dropped("idle") - before == 50


def answered(port: int) -> bool:
    """Whether a request now is answered 200 (not closed unanswered)."""
    try:
        return get(port, "/healthz")[0] == 200
    except (ConnectionError, http.client.RemoteDisconnected):
        return False


def test_a_request_beyond_the_pool_and_queue_is_closed_unanswered(tight: int) -> None:
    """With its one worker held by a slow request, another request is closed at once, not queued."""

    def refused() -> bool:
        """Whether a request now is closed unanswered, within two seconds."""
        started = time.monotonic()
        try:
            get(tight, "/healthz")
        except (ConnectionError, http.client.RemoteDisconnected):
            return time.monotonic() - started < 2
        return False  # answered: the worker was free

    slow = socket.create_connection(("127.0.0.1", tight), timeout=5)
    try:
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # half a request: the worker waits for the rest
        deadline, before = time.monotonic() + 5, dropped("busy")
        while not refused():
            assert time.monotonic() < deadline, "never refused"
        assert dropped("busy") > before
        slow.sendall(b"\r\n")
        assert slow.recv(12).startswith(b"HTTP/1.0 200")
    finally:
        slow.close()
    # The worker is free again once it has closed the slow one: a request is answered. (Not "no
    # longer refused within 2 s": on a loaded CI machine a refusal took longer, and the request
    # after it was refused again.)
    deadline = time.monotonic() + 10
    while not answered(tight):
        assert time.monotonic() < deadline, "still refused"


PAGE = "<html>the page</html>"


@pytest.mark.parametrize(
    ("address", "token", "headers", "status"),
    [
        pytest.param("127.0.0.1", None, {}, 200, id="loopback-no-token-open"),
        pytest.param("0.0.0.0", None, {}, 403, id="wildcard-no-token-closed"),
        pytest.param("0.0.0.0", "s3cret", {"Authorization": "Bearer s3cret"}, 200, id="wildcard-right-token"),
        pytest.param("127.0.0.1", "s3cret", {}, 401, id="token-set-none-sent"),
        pytest.param("127.0.0.1", "s3cret", {"Authorization": "Bearer s3cre"}, 401, id="token-prefix"),
        pytest.param("127.0.0.1", "s3cret", {"Authorization": "Basic s3cret"}, 401, id="wrong-scheme"),
    ],
)
def test_who_may_see_the_page(address: str, token: str | None, headers: dict[str, str], status: int) -> None:
    """The page needs its bearer token when one is set; without one it is served on loopback only."""
    server = metrics.serve(f"{address}:0", problems=lambda _: [], page=lambda _: PAGE, page_token=token)
    port = server.server_address[1]
    try:
        got, body = get(port, "/", headers)
        assert got == status
        assert (body == PAGE.encode()) == (status == 200)
        assert get(port, "/healthz")[0] == 200  # never behind the token: systemd and probes use it
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("text", "token"),
    [
        pytest.param(b"s3cret\n", "s3cret", id="one-line"),
        pytest.param(b"  s3cret  \r\n", "s3cret", id="white-space-around"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"two words\n", None, id="space-inside"),
        pytest.param(b"a\nb\n", None, id="two-lines"),
        pytest.param(b"t\x1b[2J\n", None, id="escape"),
        pytest.param(b"x" * 5000, None, id="too-long"),
    ],
)
def test_page_token_file(tmp_path: Path, text: bytes, token: str | None) -> None:
    """A token file is one line of printable ASCII; anything else is refused naming the file."""
    path = tmp_path / "token"
    path.write_bytes(text)
    if token is not None:
        assert metrics.read_page_token(str(path)) == token
    else:
        with pytest.raises(ValueError, match=str(path)):
            metrics.read_page_token(str(path))


def test_a_missing_page_token_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``operator lb --page-token-file`` naming no file exits 2 with one line naming it."""
    missing = tmp_path / "none"
    assert main(["lb", "--page-token-file", str(missing), "--metrics", ":0"]) == 2
    assert (
        capsys.readouterr().err
        == f"operator lb: error: --page-token-file {missing}: No such file or directory\n"
    )


@pytest.mark.parametrize(
    ("read_at", "now", "expected"),
    [
        pytest.param(None, 5.0, False, id="never-read"),
        pytest.param(5.0, 5.0, True, id="just-read"),
        pytest.param(5.0, 5.0 + REFRESH_S - 0.01, True, id="within-the-interval"),
        pytest.param(5.0, 5.0 + REFRESH_S, False, id="a-whole-interval-later"),
        pytest.param(5.0, 4.0, False, id="clock-went-back"),
    ],
)
def test_fresh(read_at: float | None, now: float, expected: bool) -> None:
    """The page's data serves requests for one refresh interval after its read."""
    assert fresh(read_at, now) is expected


DATA = PageData(StatusView(0.0, None, None, (), ()), (), {})


def test_the_page_is_read_once_per_interval_whatever_the_request_rate() -> None:
    """A hundred requests within an interval make one read; the next interval one more."""
    reads: list[int] = []

    def read() -> PageData:
        reads.append(1)
        return DATA

    cache = ReadEvery(read)
    for k in range(100):
        assert cache.get(10.0 + k * 0.01) is DATA
    assert len(reads) == 1
    cache.get(10.0 + REFRESH_S)
    assert len(reads) == 2


def test_a_failed_read_is_remembered_for_the_interval() -> None:
    """During a Consul outage each request gets the error, and Consul one read per interval."""
    reads: list[int] = []

    def read() -> PageData:
        reads.append(1)
        raise OSError("consul away")

    cache = ReadEvery(read)
    for _ in range(20):
        with pytest.raises(OSError, match="consul away"):
            cache.get(1.0)
    assert len(reads) == 1


def test_requests_during_a_slow_read_get_the_last_data() -> None:
    """While one request reads again, the others are answered at once from the previous read."""
    release, reading = threading.Event(), threading.Event()
    calls: list[int] = []

    def read() -> PageData:
        calls.append(1)
        if len(calls) == 2:
            reading.set()
            release.wait(5)
        return DATA

    cache = ReadEvery(read)
    cache.get(0.0)
    slow = threading.Thread(target=cache.get, args=(REFRESH_S,))
    slow.start()
    assert reading.wait(5)
    started = time.monotonic()
    assert cache.get(REFRESH_S + 0.1) is DATA
    assert time.monotonic() - started < 1
    release.set()
    slow.join(5)
    assert len(calls) == 2
