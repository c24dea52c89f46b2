"""visits: the web tier of the two-tier example (manifests/visits.yaml), counting visits in Redis.

Standard library only. Redis's address comes from /etc/app/app.conf (``redis = HOST:PORT``, rendered
by the operator's template from Consul's catalog), its password from /run/secrets/redis_password;
both are read again on every request, so a re-rendered file or a rotated secret needs no restart.
The password is sent to Redis (AUTH) and nowhere else: never printed, logged or answered.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import socketserver
import sys
from io import BufferedReader

CONF = os.environ.get("APP_CONF", "/etc/app/app.conf")
SECRET = os.environ.get("APP_SECRET", "/run/secrets/redis_password")
PORT = int(os.environ.get("APP_PORT", "8000"))
KEY = "visits"


class RedisError(Exception):
    """Redis answered with an error, or could not be reached."""


def redis_address() -> tuple[str, int]:
    """The first ``redis = HOST:PORT`` line of the configuration file."""
    try:
        with open(CONF, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise RedisError(f"no configuration at {CONF}: {exc.strerror}") from None
    for line in lines:
        name, _, value = line.partition("=")
        if name.strip() == "redis" and value.strip():
            host, _, port = value.strip().rpartition(":")
            return host, int(port)
    raise RedisError(f"{CONF} names no redis address yet")


def _command(stream: socket.socket, reader: BufferedReader, *args: str) -> bytes:
    """One RESP command and its reply (simple string, error or integer)."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    stream.sendall(request.encode())
    line = reader.readline()
    if not line:
        raise RedisError("redis closed the connection")
    if line.startswith(b"-"):
        raise RedisError("redis said: " + line[1:].decode(errors="replace").strip())
    return bytes(line[1:].strip())


def count_visit() -> tuple[int, str]:
    """INCR the counter with the secret's password; the new count and where Redis is."""
    host, port = redis_address()
    try:
        with open(SECRET, encoding="utf-8") as file:
            password = file.read().strip()
    except OSError as exc:
        raise RedisError(f"no secret at {SECRET}: {exc.strerror}") from None
    try:
        with socket.create_connection((host, port), timeout=3) as stream:
            reader = stream.makefile("rb")
            _command(stream, reader, "AUTH", password)
            return int(_command(stream, reader, "INCR", KEY)), f"{host}:{port}"
    except OSError as exc:
        raise RedisError(f"cannot reach redis at {host}:{port}: {exc}") from None


class Handler(http.server.BaseHTTPRequestHandler):
    """GET /: count a visit; GET /health: the process answers."""

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, "ok\n")
            return
        try:
            visits, where = count_visit()
        except (RedisError, ValueError) as exc:
            self._answer(503, f"redis unavailable: {exc}\n")
            return
        self._answer(200, f"visits: {visits} (redis at {where}, from {socket.gethostname()})\n")

    def _answer(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One thread per request."""

    daemon_threads = True


if __name__ == "__main__":
    # PID 1 in its container: SIGTERM has no default action there, so stop on it ourselves.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Server(("0.0.0.0", PORT), Handler).serve_forever()
