"""The daemons' small HTTP server (``/metrics``, ``/healthz``, the status page): bounded in every way.

``http.server.ThreadingHTTPServer`` starts a thread per connection and
waits on each for ever: 200 idle connections to ``:9810`` were 200 threads
pinned until the clients went away. This server instead

* waits for a connection's first bytes in its one accepting thread (a
  selector), never on a worker: an idle connection costs a file descriptor
  and is closed after `IDLE_TIMEOUT`; beyond `MAX_WAITING` of them, the
  oldest is closed;
* hands a connection that has sent something to a fixed pool of `WORKERS`
  threads, with at most `QUEUED` more waiting for one; a connection beyond
  that is closed at once (the client retries; a scrape is late, not lost);
* gives each request `REQUEST_TIMEOUT` seconds per socket read or write
  (the handler's ``timeout``), so a worker is never held for ever.

A client that trickles a byte every few seconds still holds a worker for as
long as it keeps doing so; facing untrusted networks, put NGINX in front
(docs/deploy.md).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

WORKERS = 4
"""Threads that answer requests."""
QUEUED = 16
"""Connections with a request that may wait for a worker; more are closed unanswered."""
MAX_WAITING = 512
"""Connections that have sent nothing yet; a new one beyond that closes the oldest."""
IDLE_TIMEOUT = 10.0
"""Seconds a connection may stay open without sending a byte."""
REQUEST_TIMEOUT = 10.0
"""Seconds a worker waits on one socket read or write of a request (the handler's ``timeout``)."""
BACKLOG = 128
"""Connections the kernel holds until the accepting thread takes them."""
POLL = 0.5
"""Seconds between two looks at the stop flag when nothing happens."""
IDLE = "idle"
"""A connection closed for sending nothing in time, or to make room for a new one."""
BUSY = "busy"
"""A connection closed unanswered because every worker was busy and the queue full."""
DROP_REASONS = (IDLE, BUSY)


class PooledHTTPServer(HTTPServer):
    """An HTTP server whose threads, queue and idle connections are all bounded (see the module)."""

    # The kernel's queue of connections not yet accepted (socketserver's 5 dropped a burst's
    # connection attempts, which clients then retried only after a second or more).
    request_queue_size = BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        workers: int = WORKERS,
        queued: int = QUEUED,
        max_waiting: int = MAX_WAITING,
        idle_timeout: float = IDLE_TIMEOUT,
        on_drop: Callable[[str], None] = lambda _: None,
    ) -> None:
        super().__init__(address, handler)
        self.max_waiting = max_waiting
        self.idle_timeout = idle_timeout
        self.on_drop = on_drop  # called with IDLE or BUSY for each connection closed unanswered
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="http")
        self._slots = threading.BoundedSemaphore(workers + queued)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()  # not serving yet: a `shutdown` now returns at once

    def serve_forever(self, poll_interval: float = POLL) -> None:
        """Accept, wait for each connection's first bytes, hand it to a worker; until `shutdown`."""
        self._stopped.clear()
        waiting: dict[Any, float] = {}  # connection -> monotonic deadline for its first byte
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            try:
                while not self._stop.is_set():
                    now = time.monotonic()
                    timeout = min([poll_interval, *(d - now for d in waiting.values())])
                    for key, _ in selector.select(max(0.0, timeout)):
                        if key.fileobj is self.socket:
                            self._accept(selector, waiting)
                        else:
                            selector.unregister(key.fileobj)
                            del waiting[key.fileobj]
                            self._dispatch(key.fileobj, key.data)
                    now = time.monotonic()
                    for conn in [c for c, deadline in waiting.items() if deadline <= now]:
                        self._drop(selector, waiting, conn)
            finally:
                for conn in list(waiting):
                    self._drop(selector, waiting, conn)
                self._stopped.set()

    def _accept(self, selector: selectors.BaseSelector, waiting: dict[Any, float]) -> None:
        try:
            conn, address = self.socket.accept()
        except OSError:
            return  # gone before we took it, or out of file descriptors: the next one may do
        if len(waiting) >= self.max_waiting:
            self._drop(selector, waiting, min(waiting, key=waiting.__getitem__))
        selector.register(conn, selectors.EVENT_READ, address)
        waiting[conn] = time.monotonic() + self.idle_timeout

    def _drop(self, selector: selectors.BaseSelector, waiting: dict[Any, float], conn: Any) -> None:
        selector.unregister(conn)
        del waiting[conn]
        self.on_drop(IDLE)
        self.shutdown_request(conn)

    def _dispatch(self, conn: Any, address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.on_drop(BUSY)
            self.shutdown_request(conn)
            return
        self._pool.submit(self._work, conn, address)

    def _work(self, conn: socket.socket, address: Any) -> None:
        try:
            self.finish_request(conn, address)
        except Exception:  # one request's failure is the server's to log, never the pool's
            self.handle_error(conn, address)
        finally:
            self.shutdown_request(conn)
            self._slots.release()

    def shutdown(self) -> None:
        """Stop `serve_forever` and wait until it has."""
        self._stop.set()
        self._stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket; workers finish the requests they have."""
        super().server_close()
        self._pool.shutdown(wait=False)
