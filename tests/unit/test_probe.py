"""The agent's own run of a replica's check (`actuators.probe`): Consul's rules, and its time budget."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from consul_operator.adapters.actuators.probe import passes_within, run_check


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = int(self.path.strip("/").split("?")[0] or "200")
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A loopback HTTP server answering GET /<status> with that status."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("path", "passes"),
    [
        pytest.param("/200", True, id="200-passes"),
        pytest.param("/204?x=1", True, id="2xx-with-query-passes"),
        pytest.param("/301", False, id="redirect-not-known-to-pass"),
        pytest.param("/429", False, id="429-is-consuls-warning"),
        pytest.param("/503", False, id="503-critical"),
    ],
)
def test_http_check_passes_on_2xx_only(server: str, path: str, passes: bool) -> None:
    """An HTTP check passes on a 2xx answer, as Consul's does; anything else is not claimed to pass."""
    assert run_check({"HTTP": f"http://{server}{path}"}, 1.0) is passes


def test_checks_that_cannot_connect_do_not_pass(server: str) -> None:
    """No listener, a TCP check on one, or a scheme we do not run: never claimed to pass."""
    port = closed_port()
    assert run_check({"HTTP": f"http://127.0.0.1:{port}/health"}, 1.0) is False
    assert run_check({"TCP": f"127.0.0.1:{port}"}, 1.0) is False
    assert run_check({"HTTP": f"https://{server}/200"}, 1.0) is False
    assert run_check({"TCP": server}, 1.0) is True


def test_probe_retries_until_the_app_passes_within_its_budget() -> None:
    """An app still coming up is probed again until it passes; past the budget it is left to Consul."""
    now = [0.0]
    answers = iter([False, False, True])

    def sleep(seconds: float) -> None:
        now[0] += seconds

    assert passes_within({}, 1.0, 0.5, clock=lambda: now[0], sleep=sleep, run=lambda *_: next(answers))
    assert now[0] == pytest.approx(0.1)
    now[0] = 0.0
    assert not passes_within({}, 1.0, 0.5, clock=lambda: now[0], sleep=sleep, run=lambda *_: False)
    assert now[0] == pytest.approx(0.5)


class _Redirecting(http.server.BaseHTTPRequestHandler):
    """GET /<status> answers that redirect to /target, which answers 200 and counts its requests."""

    hits: ClassVar[list[str]] = []
    port: ClassVar[int] = 0

    def do_GET(self) -> None:
        if self.path == "/target":
            type(self).hits.append(self.path)
            body = b"SECRET"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(int(self.path.strip("/")))
        self.send_header("Location", f"http://127.0.0.1:{self.port}/target")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed_and_never_passes(status: int) -> None:
    """A health path that redirects (to loopback, say) does not pass, and its target is never asked."""
    _Redirecting.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    _Redirecting.port = int(httpd.server_address[1])
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        check = {"HTTP": f"http://127.0.0.1:{_Redirecting.port}/{status}"}
        assert not run_check(check, 2.0)
        assert not passes_within(check, 2.0, 0.2)
        assert _Redirecting.hits == []
    finally:
        httpd.shutdown()
        httpd.server_close()
