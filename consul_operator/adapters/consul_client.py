"""Our Consul client: py-consul with a timeout on every call and our own errors.

py-consul is used for the HTTP plumbing; this module adds what the operator
relies on and the library leaves to its callers:

* every request has a timeout (a blocking query: its wait, plus Consul's
  wait/16 jitter, plus a margin), so that a dead server never hangs a loop;
* the token given on the command line wins over ``CONSUL_HTTP_TOKEN`` (py-consul
  lets the environment override an explicit token);
* failures come out as `ConsulUnavailable`, `ConsulPermissionDenied` or
  `ConsulError`, raised from the original exception;
* `BlockingQuery` follows Consul's rules for blocking-query indexes;
* TLS as the ``consul`` CLI does it (`ConsulTLS`): ``CONSUL_CACERT``,
  ``CONSUL_CLIENT_CERT``, ``CONSUL_CLIENT_KEY``, ``CONSUL_HTTP_SSL``,
  ``CONSUL_HTTP_SSL_VERIFY`` and ``CONSUL_TLS_SERVER_NAME``, the server's
  certificate verified unless verification is turned off explicitly; a
  certificate error is a `ConsulTLSError` naming the host and the files.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import consul
import requests
from consul.callback import CB
from requests.adapters import HTTPAdapter

from consul_operator.adapters import health, metrics
from consul_operator.core.errors import (
    ConsulError,
    ConsulPermissionDenied,
    ConsulTLSError,
    ConsulUnavailable,
    NotLeader,
    consul_trouble,
)
from consul_operator.core.model import EXTRA_PORT_CHECK_SUFFIX, ServiceInstance
from consul_operator.core.txn import (
    CONSUL_MAX_TXN_OPS,
    CONSUL_MAX_VALUE_BYTES,
    Sent,
    Writes,
    fits_one_transaction,
    pack_writes,
    send_groups,
    txn_body,
    txn_operation,
)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

DEFAULT_ADDR = "127.0.0.1:8500"
DEFAULT_TIMEOUT = 5.0  # seconds, for every non-blocking request
DEFAULT_WAIT = 30.0  # seconds a blocking query may be held by Consul
READABLE_FOR = 60.0  # seconds a KV prefix found readable by the ACL token is not probed again (`kv_trees`)
# A host name (letters, digits, dots, hyphens, underscores) or an IP address (IPv6 without brackets here).
_HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+")


SERF_FAILED = 4
"""A member's status in /v1/agent/members when gossip declared it failed (1 alive, 3 left)."""


@dataclass(frozen=True, slots=True)
class ConsulAddress:
    """Where a Consul agent's HTTP API listens."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ConsulAddress:
        """Parse ``host:port``, ``http://host:port`` or ``https://host:port``; ValueError says why not."""
        shape = f"must look like host:port or http(s)://host:port, got {text!r}"
        if not text or not text.isprintable() or any(c.isspace() for c in text):
            raise ValueError(f"Consul address {shape}")
        try:
            url = urllib.parse.urlsplit(text if "//" in text else f"//{text}")
            port = url.port or 8500
        except ValueError as exc:
            raise ValueError(f"Consul address {shape} ({exc})") from exc
        scheme = url.scheme or "http"
        if scheme not in ("http", "https"):
            raise ValueError(f"Consul address {shape} (scheme {scheme!r})")
        host = url.hostname or ""
        if not _HOST.fullmatch(host) or url.username or url.password or url.path.strip("/"):
            raise ValueError(f"Consul address {shape}")
        if url.query or url.fragment:
            raise ValueError(f"Consul address {shape}")
        return cls(scheme, host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
"""The spellings Go's ``strconv.ParseBool`` accepts, exactly (case matters: ``tRUE`` is an error)."""


def parse_bool(name: str, text: str | None) -> bool | None:
    """A boolean environment variable as the ``consul`` CLI reads it; None when unset or empty.

    Consul's api package (``api.DefaultConfig``) ignores an empty value and
    parses the rest with Go's ``strconv.ParseBool``. On a value ParseBool
    refuses the CLI only logs a warning and goes on with ``false``, which for
    ``CONSUL_HTTP_SSL_VERIFY`` turns verification *off*; we refuse it instead
    (ValueError naming the variable), so that a typo never weakens TLS.
    """
    if text is None or text == "":
        return None
    if text in GO_TRUE:
        return True
    if text in GO_FALSE:
        return False
    spellings = "/".join(GO_TRUE + GO_FALSE)
    raise ValueError(f"{name} must be one of {spellings} (as the consul CLI reads it), got {text!r}")


@dataclass(frozen=True, slots=True)
class ConsulTLS:
    """How to talk TLS to Consul's HTTPS API: the ``consul`` CLI's settings.

    ``ssl`` None means "as the address says" (``https://`` or not); True means
    HTTPS whatever the address's scheme (an ``http://`` address included, as
    the consul CLI: it never reverts to HTTP once TLS is asked for); False
    leaves an ``https://`` address HTTPS. ``verify`` is on unless turned off
    explicitly (``CONSUL_HTTP_SSL_VERIFY=false``, ``0``, ``f`` ...).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    ssl: bool | None = None
    verify: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ConsulTLS:
        """The settings of the ``consul`` CLI's environment variables; ValueError names a bad one."""
        verify = parse_bool("CONSUL_HTTP_SSL_VERIFY", environ.get("CONSUL_HTTP_SSL_VERIFY"))
        return cls(
            ca_file=environ.get("CONSUL_CACERT") or None,
            cert_file=environ.get("CONSUL_CLIENT_CERT") or None,
            key_file=environ.get("CONSUL_CLIENT_KEY") or None,
            server_name=environ.get("CONSUL_TLS_SERVER_NAME") or None,
            ssl=parse_bool("CONSUL_HTTP_SSL", environ.get("CONSUL_HTTP_SSL")),
            verify=True if verify is None else verify,
        )

    def problem(self) -> str | None:
        """What is wrong with these settings before any connection: a missing file, a half pair."""
        if (self.cert_file is None) != (self.key_file is None):
            return "a client certificate needs both a certificate and a key file (CONSUL_CLIENT_CERT/KEY)"
        for what, path in (
            ("CA", self.ca_file),
            ("client certificate", self.cert_file),
            ("client key", self.key_file),
        ):
            if path is not None and not os.path.isfile(path):
                return f"{what} file {path}: no such file"
            if path is not None and not os.access(path, os.R_OK):
                return f"{what} file {path}: not readable"
        return None

    def describe(self) -> str:
        """The files in use, for an error message."""
        parts = [f"CA file {self.ca_file}" if self.ca_file else "the system's CA bundle"]
        if self.cert_file:
            parts.append(f"client certificate {self.cert_file}")
        if self.server_name:
            parts.append(f"server name {self.server_name}")
        return ", ".join(parts)


class _ServerNameAdapter(HTTPAdapter):
    """Verify the server's certificate against another name than the address's (CONSUL_TLS_SERVER_NAME)."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._server_name
        kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


# The TLS files in use per Consul address ("https://host:port"), for error messages.
_TLS_FILES: dict[str, str] = {}


def _tls_reason(exc: Exception) -> str:
    """The short cause of a TLS failure ("certificate verify failed: self-signed certificate")."""
    text = str(exc)
    if re.search(r"alert (bad certificate|certificate required|unknown ca)", text):
        return "Consul refused our client certificate (none given, or not signed by its CA)"
    name = re.search(r"hostname '([^']+)' doesn't match", text)
    if name:
        return f"Consul's certificate is not for {name.group(1)!r}"
    for pattern in (
        r"certificate verify failed: [^'\")(]+",
        r"(?:tlsv1[0-9]? |sslv3 )?alert [a-z ]+",
        r"\[[A-Z0-9_]+\] [^'\")(]+",
        r"wrong version number",
    ):
        found = re.search(pattern, text)
        if found:
            return found.group(0).strip()
    return text[:200]


def check_token(token: str) -> str:
    """A Consul ACL token as given; ValueError unless it is printable ASCII without spaces.

    It travels in an HTTP header, where a newline or a control character would
    end or forge the header.
    """
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError("a Consul token must be printable ASCII without spaces or control characters")
    return token


@dataclass(frozen=True, slots=True)
class KVEntry:
    """One key of Consul's KV store."""

    key: str
    value: bytes
    modify_index: int
    session: str | None = None


@dataclass(frozen=True, slots=True)
class Indexed(Generic[T_co]):
    """A read result with the Consul index it was read at."""

    index: int
    value: T_co


def _reason(exc: Exception) -> str:
    """The short cause of a connection failure ("[Errno 111] Connection refused", "timed out")."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if found:
        return found.group(0)
    return "timed out" if isinstance(exc, requests.Timeout) else text


@contextmanager
def _wrapped(what: str) -> Iterator[None]:
    """Turn requests' and py-consul's exceptions into ours, count the request, report reachability.

    Every request is counted in ``operator_consul_requests_total``, every one that
    fails or that Consul refuses also in ``operator_consul_errors_total``.
    """
    metrics.consul_requests.inc()
    try:
        yield
    except requests.exceptions.SSLError as exc:
        metrics.consul_errors.inc()
        url = exc.request.url.split("/v1/")[0] if exc.request is not None and exc.request.url else "Consul"
        health.report("consul", False, f"{url}: TLS: {_tls_reason(exc)}")
        files = _TLS_FILES.get(url, "the system's CA bundle")
        raise ConsulTLSError(f"{url}: TLS error during {what}: {_tls_reason(exc)} ({files})") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        metrics.consul_errors.inc()
        url = exc.request.url.split("/v1/")[0] if exc.request is not None and exc.request.url else "Consul"
        health.report("consul", False, f"{url}: {_reason(exc)}")
        raise ConsulUnavailable(f"{url} unreachable during {what}: {_reason(exc)}") from exc
    except consul.ACLPermissionDenied as exc:
        metrics.consul_errors.inc()
        health.report("consul", True)  # it answered
        raise ConsulPermissionDenied(f"permission denied for {what}: {exc}", status=403) from exc
    except consul.ConsulException as exc:
        metrics.consul_errors.inc()
        health.report("consul", True)
        raise ConsulError(f"Consul refused {what}: {exc}", status=_status_of(exc)) from exc
    except requests.RequestException as exc:
        metrics.consul_errors.inc()
        raise ConsulError(f"Consul request failed during {what}: {exc}") from exc
    health.report("consul", True)


def _status_of(exc: Exception) -> int | None:
    """The HTTP status of a py-consul exception: it keeps none, but starts its message with it."""
    if isinstance(exc, consul.NotFound):
        return 404
    if isinstance(exc, consul.ACLDisabled):
        return 401
    found = re.match(r"(\d{3}) ", str(exc))
    return int(found.group(1)) if found else None


def _txn_errors(body: str) -> list[tuple[int | None, str]]:
    """The ``Errors`` of a refused transaction: (operation index, what went wrong)."""
    try:
        errors = json.loads(body).get("Errors") or []
        return [(e.get("OpIndex"), str(e.get("What", ""))) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        return []


def _go_duration(seconds: float) -> str:
    """Consul's duration syntax for a number of seconds."""
    return f"{max(1, round(seconds * 1000))}ms"


def _worst(statuses: Sequence[str]) -> str:
    """Aggregate check statuses the way Consul's UI does: the worst one wins."""
    for status in ("critical", "warning", "maintenance"):
        if status in statuses:
            return "critical" if status == "maintenance" else status
    return "passing"


class ConsulClient:
    """The subset of Consul's HTTP API the operator uses, with timeouts."""

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tls: ConsulTLS | None = None,
    ) -> None:
        text = address or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDR
        self.tls = tls if tls is not None else ConsulTLS.from_env(os.environ)
        address_parsed = ConsulAddress.parse(text)
        if self.tls.ssl and address_parsed.scheme == "http":
            # CONSUL_HTTP_SSL=true: https, for an http:// address too (the consul CLI's api.NewClient
            # "never reverts to http if TLS was explicitly requested").
            address_parsed = ConsulAddress("https", address_parsed.host, address_parsed.port)
        self.address = address_parsed
        self._client = self._new_client()
        # py-consul reads CONSUL_HTTP_TOKEN and lets it override an explicit
        # token; an explicit token must win, as in Consul's own CLI.
        self._client.token = token or os.environ.get("CONSUL_HTTP_TOKEN") or None
        # Applies to every request; py-consul adds wait + wait/16 for blocking ones.
        self._client.http.connections_timeout = timeout
        self.timeout = timeout
        self._by_timeout: dict[float, consul.Consul] = {}
        self._readable: dict[str, float] = {}  # KV prefix -> monotonic time until which it is known readable

    # --- KV -------------------------------------------------------------------

    def kv_get(
        self,
        key: str,
        *,
        index: int = 0,
        wait: float = DEFAULT_WAIT,
        consistent: bool = False,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Indexed[KVEntry | None]:
        """Read one key (blocking when ``index`` > 0); ``timeout`` overrides the client's for this call.

        ``stale``: any server answers from its own copy, without asking the Raft leader.
        """
        client = self._client if timeout is None else self._client_with_timeout(timeout)
        with _wrapped(f"reading KV {key!r}"):
            idx, raw = client.kv.get(
                key,
                index=index or None,
                wait=_go_duration(wait),
                consistency="consistent" if consistent else "stale" if stale else None,
            )
        return Indexed(int(idx or 0), _entry(raw) if raw else None)

    def kv_list(
        self, prefix: str, *, index: int = 0, wait: float = DEFAULT_WAIT, consistent: bool = False
    ) -> Indexed[list[KVEntry]]:
        """Read every key under ``prefix`` (blocking when ``index`` > 0).

        ``consistent`` reads are refused by a leader that has not yet applied
        every committed write (right after the cluster restarted), where a
        default read may answer with an empty store: decisions that stop
        anything are only ever taken on consistent reads.
        """
        consistency = "consistent" if consistent else None
        with _wrapped(f"listing KV {prefix!r}"):
            idx, raw = self._client.kv.get(
                prefix, index=index or None, wait=_go_duration(wait), recurse=True, consistency=consistency
            )
            if not raw:
                # Consul leaves out of a listing what the ACL token may not read, and
                # answers "nothing" rather than 403: reading the prefix itself tells
                # "empty" (404) from "not allowed" (403, ConsulPermissionDenied).
                self._client.kv.get(prefix)
        return Indexed(int(idx or 0), [_entry(item) for item in raw or []])

    def kv_trees(self, prefixes: Sequence[str], *, consistent: bool = False) -> dict[str, list[KVEntry]]:
        """Every key under each of ``prefixes``, as `kv_list` gives them, read in one transaction.

        One request instead of one per prefix, and one point in time for all of
        them (a read-only transaction is answered by the leader without Raft;
        ``consistent`` as for `kv_list`). Consul filters what the token may not
        read out of the answer without refusing, so an empty tree is probed as
        `kv_list` does, telling "empty" from "not allowed"; a prefix found
        readable is not probed again for `READABLE_FOR` seconds (a policy that
        takes read away is seen that much later; a revoked token at once).
        """
        ops = [{"KV": {"Verb": "get-tree", "Key": prefix}} for prefix in prefixes]
        text = self._txn(
            f"reading {', '.join(repr(p) for p in prefixes)}",
            json.dumps(ops),
            params=[("consistent", "")] if consistent else [],
        )
        trees = _trees_of(json.loads(text).get("Results") or [], prefixes)
        now = time.monotonic()
        for prefix, tree in trees.items():
            if not tree and self._readable.get(prefix, 0.0) <= now:
                with _wrapped(f"listing KV {prefix!r}"):
                    self._client.kv.get(prefix)  # 403 (ConsulPermissionDenied) if not allowed
                self._readable[prefix] = now + READABLE_FOR
        return {prefix: sorted(tree.values(), key=lambda e: e.key) for prefix, tree in trees.items()}

    def kv_keys(
        self,
        prefix: str,
        *,
        index: int = 0,
        wait: float = DEFAULT_WAIT,
        consistent: bool = False,
        separator: str | None = None,
    ) -> Indexed[list[str]]:
        """The keys under ``prefix``, without their values, and the prefix's index (blocking when
        ``index`` > 0): what changes whenever any key under it is written or deleted. With
        ``separator``, each level's common prefixes once (``operator/events/`` with "/": one
        ``operator/events/<name>/`` per service).

        An empty listing is probed as in `kv_list`: "empty" (404) or "not allowed" (`ConsulPermissionDenied`).
        """
        consistency = "consistent" if consistent else None
        with _wrapped(f"listing KV {prefix!r}"):  # the same words as kv_list (logs, tests match them)
            idx, raw = self._client.kv.get(
                prefix,
                index=index or None,
                wait=_go_duration(wait),
                keys=True,
                separator=separator,
                consistency=consistency,
            )
            if not raw:
                self._client.kv.get(prefix)
        return Indexed(int(idx or 0), [str(key) for key in raw or []])

    def kv_stale(self, known: Mapping[str, int], *, consistent: bool = False) -> set[str]:
        """The keys of ``known`` (key -> modify index) whose modify index is no longer that one.

        Read-only transactions of ``check-index`` operations, `CONSUL_MAX_TXN_OPS` at a
        time: Consul answers 409 naming every operation whose index differs, and
        sends no value, so that an unchanged tree of large values costs a few
        hundred bytes to confirm (`kv_state.TreeMirror`).
        """
        stale: set[str] = set()
        items = sorted(known.items())
        params = [("consistent", "")] if consistent else []
        for start in range(0, len(items), CONSUL_MAX_TXN_OPS):
            batch = items[start : start + CONSUL_MAX_TXN_OPS]
            ops = [{"KV": {"Verb": "check-index", "Key": key, "Index": index}} for key, index in batch]

            code, text = self._read_txn(f"checking the indexes of {len(batch)} KV keys", ops, params)
            if code == 200:
                continue
            errors = _txn_errors(text)
            if any("permission denied" in what.lower() for _, what in errors):
                raise ConsulPermissionDenied(
                    f"permission denied checking KV indexes: {errors[0][1]}", status=code
                )
            for op, _ in errors:
                if op is not None and 0 <= op < len(batch):
                    stale.add(batch[op][0])
                else:  # an error we cannot place: take the whole batch as changed
                    stale.update(key for key, _ in batch)
        return stale

    def kv_get_many(self, keys: Sequence[str], *, consistent: bool = False) -> list[KVEntry]:
        """The entries of ``keys`` that exist, `CONSUL_MAX_TXN_OPS` a read-only transaction.

        A key deleted meanwhile fails its ``get`` (409, naming it): it is left out and the rest read again.
        """
        entries: list[KVEntry] = []
        params = [("consistent", "")] if consistent else []
        pending = list(keys)
        while pending:
            batch, pending = pending[:CONSUL_MAX_TXN_OPS], pending[CONSUL_MAX_TXN_OPS:]
            ops = [{"KV": {"Verb": "get", "Key": key}} for key in batch]

            code, text = self._read_txn(f"reading {len(batch)} KV keys", ops, params)
            if code == 409:
                errors = _txn_errors(text)
                gone = {batch[op] for op, _ in errors if op is not None and 0 <= op < len(batch)}
                said = "; ".join(what for _, what in errors[:3]) or text.strip()[:300]
                if any("permission denied" in what.lower() for _, what in errors):
                    raise ConsulPermissionDenied(f"permission denied reading KV keys: {said}", status=code)
                if not gone:
                    raise ConsulError(f"Consul refused reading KV keys: {said}", status=code)
                pending = [key for key in batch if key not in gone] + pending
                continue
            for result in json.loads(text).get("Results") or []:
                raw = result.get("KV") or {}
                entries.append(_entry({**raw, "Value": base64.b64decode(raw.get("Value") or "")}))
        return entries

    def _headers(self) -> Any:
        """py-consul's headers with our token (txn.put() of py-consul sends none)."""
        return self._client.prepare_headers()

    def _read_txn(
        self, described: str, ops: Sequence[Mapping[str, Any]], params: Sequence[tuple[str, str]]
    ) -> tuple[int, str]:
        """A read-only transaction: (200 or 409, the answer's text); any other status raises."""

        def answer(response: Any) -> tuple[int, str]:
            if response.code not in (200, 409):
                CB._status(response)
            return int(response.code), str(response.body)

        with _wrapped(described):
            code, text = self._client.http.put(
                answer,
                "/v1/txn",
                params=list(params),
                data=json.dumps(ops),
                headers=self._client.prepare_headers(),
            )
        return int(code), str(text)

    def kv_put(self, key: str, value: bytes | str, *, cas: int | None = None) -> bool:
        """Write one key; with ``cas`` only if its modify index still matches."""
        with _wrapped(f"writing KV {key!r}"):
            return bool(self._client.kv.put(key, value, cas=cas))

    def kv_cas_txn(self, writes: Sequence[tuple[str, bytes, int]]) -> list[str]:
        """Write every ``(key, value, modify_index)`` in one transaction, each only if its index matches.

        Index 0 means "only if the key does not exist" (Consul's ``cas`` verb).
        All or nothing: returns the keys whose index no longer matched (then
        nothing was written), or ``[]`` when all were written. Beyond Consul's
        limits (`txn.fits_one_transaction`) it is a `ValueError`: pack with
        `txn.pack_writes` before calling.
        """
        ops = [txn_operation(key, value, index=index) for key, value, index in writes]
        if not fits_one_transaction(ops):
            raise ValueError(f"a transaction of {len(ops)} operations is beyond Consul's limits")
        body = json.dumps(ops)

        def answer(response: Any) -> tuple[int, str]:
            if response.code not in (200, 409):
                CB._status(response)
            return int(response.code), str(response.body)

        keys = [key for key, _, _ in writes]
        with _wrapped(f"writing KV {keys[0]!r}" if len(keys) == 1 else f"a transaction writing {keys}"):
            code, text = self._client.http.put(
                answer, "/v1/txn", data=body, headers=self._client.prepare_headers()
            )
        if code == 200:
            return []
        metrics.consul_errors.inc()  # 409: refused (a check-and-set lost, permission denied)
        try:
            errors = list(json.loads(text).get("Errors") or [])
        except (ValueError, AttributeError) as exc:
            raise ConsulError(f"Consul refused the transaction writing {keys}: {text}") from exc
        stale = []
        for error in errors:
            key = keys[int(error.get("OpIndex", 0))]
            what = str(error.get("What", ""))
            if "permission denied" in what.lower():
                raise ConsulPermissionDenied(f"permission denied for writing KV {key!r}: {what}")
            stale.append(key)
        if not stale:
            raise ConsulError(f"Consul refused the transaction writing {keys}: {text}")
        return stale

    def kv_delete(self, key: str, *, recurse: bool = False) -> None:
        """Delete one key, or a whole prefix."""
        with _wrapped(f"deleting KV {key!r}"):
            self._client.kv.delete(key, recurse=recurse or None)

    def kv_acquire(self, key: str, value: bytes | str, session: str) -> bool:
        """Try to take the lock ``key`` with ``session``; True when held."""
        with _wrapped(f"acquiring {key!r}"):
            return bool(self._client.kv.put(key, value, acquire=session))

    def kv_release(self, key: str, session: str) -> bool:
        """Give the lock ``key`` up."""
        with _wrapped(f"releasing {key!r}"):
            return bool(self._client.kv.put(key, "", release=session))

    def kv_txn(self, writes: Mapping[str, bytes | None]) -> None:
        """Write (or, for None, delete) keys in one transaction, unfenced: for keys with one writer.

        Pack with `txn.pack_writes` first; a refusal raises `ConsulError`
        (`ConsulPermissionDenied` for an ACL refusal).
        """
        ops = [txn_operation(key, value) for key, value in writes.items()]
        self._txn(f"a transaction of {_describe_keys(writes)}", json.dumps(ops))

    def write_records(
        self, groups: Mapping[str, Writes], *, max_value: int | Callable[[str], int] = CONSUL_MAX_VALUE_BYTES
    ) -> Sent[ConsulError]:
        """Write the groups of records (unfenced: keys with one writer), each transaction on its own.

        Packed by `txn.pack_writes` (a value over ``max_value``, the writer's
        bound of its records, `records.record_bound`, is left out unsent as too large); one refused
        write (413, an ACL denial) fails only its group (`txn.send_groups`),
        returned with its `ConsulError` for the caller to log and count. Consul
        away or failing (5xx) raises: no group could be written.
        """

        def send(writes: Writes) -> ConsulError | None:
            try:
                self.kv_txn(writes)
            except ConsulError as exc:
                if consul_trouble(exc):
                    raise
                return exc
            return None

        packing = pack_writes(groups, max_value=max_value)
        too_large = ConsulError(
            "too large (413): over the record's byte bound or Consul's limits, not sent", status=413
        )
        return send_groups(packing, send, too_large)

    def kv_get_keys(self, keys: Sequence[str], *, consistent: bool = False) -> dict[str, KVEntry]:
        """The entries of exactly ``keys`` that exist, read in read-only transactions (64 keys each).

        A ``get`` of a missing key fails a whole transaction; a ``get-tree`` of
        the key does not, and its answer is filtered to the key itself.
        """
        found: dict[str, KVEntry] = {}
        wanted = sorted(set(keys))
        for start in range(0, len(wanted), CONSUL_MAX_TXN_OPS):
            chunk = wanted[start : start + CONSUL_MAX_TXN_OPS]
            ops = [{"KV": {"Verb": "get-tree", "Key": key}} for key in chunk]
            text = self._txn(
                f"reading {_describe_keys(dict.fromkeys(chunk))}",
                json.dumps(ops),
                params=[("consistent", "")] if consistent else [],
            )
            exact = set(chunk)
            for result in json.loads(text).get("Results") or []:
                raw = result.get("KV") or {}
                if raw.get("Key") in exact:
                    found[raw["Key"]] = _entry({**raw, "Value": base64.b64decode(raw.get("Value") or "")})
        return found

    def fenced_write(self, lock_key: str, session: str, writes: Mapping[str, bytes | None]) -> None:
        """Write (or, for None, delete) keys only while ``session`` holds ``lock_key``.

        One transaction: a ``check-session`` on the lock (operation 0), then the
        writes. Decided on Consul's status code and its per-operation errors:

        * 409 with operation 0 failing: the lock is not ours, `NotLeader` (an
          ex-leader whose session was invalidated changes nothing);
        * 409 with "Permission denied": `ConsulPermissionDenied`;
        * anything else (413: too large, too many operations): `ConsulError`
          with ``status`` set.
        """
        self._txn(
            f"a fenced write of {_describe_keys(writes)}",
            txn_body(lock_key, session, writes),
            fence=f"{lock_key!r} is not held by session {session}",
        )

    def _txn(
        self, described: str, body: str, fence: str | None = None, *, params: Sequence[tuple[str, str]] = ()
    ) -> str:
        """PUT /v1/txn with ``body``; the answer's text. A refusal raises, decided on the status
        code and per-operation errors.

        ``fence``: operation 0 is a check-session, whose failure means `NotLeader` (saying ``fence``).
        """
        with _wrapped(described):
            # Not txn.put(): py-consul sends no ACL token with it. The callback keeps
            # the response as it is, so that the status code decides, not its text.
            response = self._client.http.put(
                lambda r: r, "/v1/txn", params=list(params), data=body, headers=self._client.prepare_headers()
            )
        code = int(response.code)
        if code < 400:
            return str(response.body)
        metrics.consul_errors.inc()
        text = str(response.body)
        errors = _txn_errors(text) if code == 409 else []
        said = "; ".join(what for _, what in errors) or text.strip()[:300]
        if fence is not None and any(index == 0 for index, _ in errors):
            raise NotLeader(f"{fence}: {said}")
        if code == 403 or any("permission denied" in what.lower() for _, what in errors):
            raise ConsulPermissionDenied(f"permission denied for {described}: {said}", status=code)
        raise ConsulError(f"Consul refused {described} (HTTP {code}): {said}", status=code)

    # --- sessions -------------------------------------------------------------

    def session_create(
        self,
        name: str,
        *,
        checks: Sequence[str],
        lock_delay: float,
        behavior: str = "release",
        ttl: float | None = None,
    ) -> str:
        """Create a session on the local node tied to ``checks`` (and, with ``ttl``, to its renewal
        within it: Consul's minimum is 10 s, and it ends the session up to twice that late); its id."""
        body = {
            "Name": name,
            "Checks": list(checks),
            "LockDelay": _go_duration(lock_delay) if lock_delay > 0 else "0s",
            "Behavior": behavior,
        }
        if ttl is not None:
            body["TTL"] = _go_duration(ttl)
        with _wrapped("creating a session"):
            result = self._client.http.put(
                CB.json(),
                "/v1/session/create",
                data=json.dumps(body),
                headers=self._client.prepare_headers(),
            )
        return str(result["ID"])

    def session_renew(self, session: str) -> bool:
        """Renew a session's TTL; False when Consul no longer knows it (it ended)."""
        path = f"/v1/session/renew/{urllib.parse.quote(session, safe='')}"
        with _wrapped("renewing a session"):
            response = self._client.http.put(lambda r: r, path, headers=self._client.prepare_headers())
        code = int(response.code)
        if code == 404:
            return False
        if code >= 400:
            metrics.consul_errors.inc()
            raise ConsulError(
                f"Consul refused renewing a session (HTTP {code}): {str(response.body)[:300]}", status=code
            )
        return True

    def session_destroy(self, session: str) -> None:
        """Invalidate a session, releasing its locks at once."""
        with _wrapped("destroying a session"):
            self._client.session.destroy(session)

    def node_sessions(self, node: str) -> list[dict[str, Any]]:
        """Every session on ``node`` (their ``ID``, ``Name``, ``Checks``...)."""
        with _wrapped(f"listing the sessions of node {node!r}"):
            _, sessions = self._client.session.node(node, consistency="consistent")
        return [dict(s) for s in sessions or []]

    def session_info(self, session: str) -> dict[str, Any] | None:
        """The session's record, or None once it is invalidated."""
        with _wrapped("reading a session"):
            _, info = self._client.session.info(session, consistency="consistent")
        return dict(info) if info else None

    # --- the local agent --------------------------------------------------------

    def agent_node_name(self) -> str:
        """The node name of the agent we talk to."""
        with _wrapped("reading the agent's identity"):
            # Not agent.self(): py-consul sends no ACL token with it.
            info = self._client.http.get(CB.json(), "/v1/agent/self", headers=self._client.prepare_headers())
        return str(info["Config"]["NodeName"])

    def failed_members(self) -> list[tuple[str, str]]:
        """The LAN members our agent sees as failed (serf status 4): (name, gossip address host:port)."""
        with _wrapped("listing Consul's members"):
            members = self._client.http.get(
                CB.json(), "/v1/agent/members", headers=self._client.prepare_headers()
            )
        return [
            (str(m.get("Name", "")), f"{m.get('Addr', '')}:{m.get('Port', 8301)}")
            for m in members or []
            if m.get("Status") == SERF_FAILED
        ]

    def join(self, address: str) -> None:
        """Ask our agent to join the member at ``address`` (host:port of its LAN gossip)."""
        with _wrapped(f"joining {address}"):
            self._client.http.put(
                CB.boolean(),
                f"/v1/agent/join/{urllib.parse.quote(address, safe=':')}",
                headers=self._client.prepare_headers(),
            )

    def register_service(self, definition: Mapping[str, Any], *, timeout: float | None = None) -> None:
        """Register a service (Consul's JSON service definition) on the local agent.

        ``timeout`` overrides the client's for this call (see `check_pass`).
        """
        client = self._client if timeout is None else self._client_with_timeout(timeout)
        with _wrapped(f"registering service {definition.get('ID')!r}"):
            client.http.put(
                CB.boolean(),
                "/v1/agent/service/register",
                data=json.dumps(definition),
                headers=client.prepare_headers(),
            )

    def deregister_service(self, service_id: str) -> None:
        """Remove a service from the local agent (and so from the catalog)."""
        with _wrapped(f"deregistering service {service_id!r}"):
            self._client.agent.service.deregister(service_id)

    def check_pass(self, check_id: str, note: str = "", *, timeout: float | None = None) -> None:
        """Mark a TTL check passing; ``timeout`` overrides the client's for this call.

        A heartbeat must give up well within its check's TTL: a slow answer that
        arrives after the TTL has already let the check go critical, unseen.
        """
        client = self._client if timeout is None else self._client_with_timeout(timeout)
        with _wrapped(f"passing check {check_id!r}"):
            client.agent.check.ttl_pass(check_id, notes=note or None)

    def _client_with_timeout(self, timeout: float) -> consul.Consul:
        """A py-consul client like ours but with another timeout (kept: one per distinct timeout)."""
        client = self._by_timeout.get(timeout)
        if client is None:
            client = self._new_client()
            client.token = self._client.token
            client.http.connections_timeout = timeout
            self._by_timeout[timeout] = client
        return client

    def _new_client(self) -> consul.Consul:
        """A py-consul client for our address, with our TLS settings."""
        tls = self.tls
        verify: bool | str = (tls.ca_file or True) if tls.verify else False
        cert = (tls.cert_file, tls.key_file) if tls.cert_file and tls.key_file else None
        client = consul.Consul(
            host=self.address.host,
            port=self.address.port,
            scheme=self.address.scheme,
            verify=verify,
            cert=cert,
        )
        _TLS_FILES[str(self.address)] = tls.describe()
        # requests looks up proxy settings in the environment on every request
        # (about 1.3 ms of CPU each, most of a small read's cost): once is enough.
        session = client.http.session
        session.proxies = dict(requests.utils.get_environ_proxies(str(self.address)))
        session.trust_env = False
        if tls.server_name and self.address.scheme == "https":
            client.http.session.mount(
                f"https://{self.address.host}:{self.address.port}", _ServerNameAdapter(tls.server_name)
            )
        return client

    def agent_services(self) -> dict[str, dict[str, Any]]:
        """Services registered on the local agent, by id."""
        with _wrapped("listing the agent's services"):
            return dict(self._client.agent.services())

    def agent_checks(self) -> dict[str, dict[str, Any]]:
        """Checks registered on the local agent, by id."""
        with _wrapped("listing the agent's checks"):
            return dict(self._client.agent.checks())

    # --- catalog and health -----------------------------------------------------

    def health_service(
        self,
        service: str,
        *,
        passing: bool = False,
        index: int = 0,
        wait: float = DEFAULT_WAIT,
        consistent: bool = False,
    ) -> Indexed[list[ServiceInstance]]:
        """Instances of ``service`` with their aggregated check status.

        Only the checks' statuses leave this method, never their ``Output``:
        Consul 1.8's HTTP checks follow redirects and keep the first 4 KB of
        whatever answers last, which a tenant's ``/health`` can point at a
        loopback or metadata URL (issue 28); nothing we print or serve shows it.
        """
        params: list[tuple[str, object]] = []
        if index:
            params += [("index", index), ("wait", _go_duration(wait))]
        if passing:
            params.append(("passing", "1"))
        if consistent:
            params.append(("consistent", "1"))
        path = f"/v1/health/service/{urllib.parse.quote(service, safe='')}"
        with _wrapped(f"reading the health of {service!r}"):
            idx, nodes = self._client.http.get(
                CB.json(index=True), path, params=params, headers=self._client.prepare_headers()
            )
        instances = [
            ServiceInstance(
                node=item["Node"]["Node"],
                node_address=item["Node"]["Address"],
                service_id=item["Service"]["ID"],
                service=item["Service"]["Service"],
                address=item["Service"]["Address"] or item["Node"]["Address"],
                port=int(item["Service"]["Port"]),
                meta=dict(item["Service"].get("Meta") or {}),
                status=_worst([check["Status"] for check in item["Checks"]]),
            )
            for item in nodes or []
        ]
        return Indexed(int(idx or 0), instances)

    def health_node(self, node: str, *, index: int = 0, wait: float = DEFAULT_WAIT) -> Indexed[list[str]]:
        """The check statuses of one node (blocking when ``index`` > 0): a wake-up source."""
        with _wrapped(f"reading the checks of node {node!r}"):
            idx, checks = self._client.health.node(node, index=index or None, wait=_go_duration(wait))
        return Indexed(int(idx or 0), [f"{c['CheckID']}={c['Status']}" for c in checks or []])

    def passing_instances(self) -> Indexed[dict[str, int]]:
        """Instances passing every check (theirs and their node's), per service, in one request,
        with the index of the checks read (`check_counts.PassingCounts` reads again when it moves)."""
        with _wrapped("reading the cluster's checks"):
            idx, checks = self._client.http.get(
                CB.json(index=True),
                "/v1/health/state/any",
                params=[("consistent", "1")],
                headers=self._client.prepare_headers(),
            )
        node_ok: dict[str, bool] = {}
        instance_ok: dict[tuple[str, str], bool] = {}
        service_of: dict[tuple[str, str], str] = {}
        for check in checks or []:
            ok = check["Status"] == "passing"
            if str(check.get("CheckID", "")).endswith(EXTRA_PORT_CHECK_SUFFIX):
                continue  # a replica's extra port (`ports:`), not a replica
            if check.get("ServiceID"):
                key = (check["Node"], check["ServiceID"])
                instance_ok[key] = instance_ok.get(key, True) and ok
                service_of[key] = check["ServiceName"]
            else:
                node_ok[check["Node"]] = node_ok.get(check["Node"], True) and ok
        counts: dict[str, int] = {}
        for key, ok in instance_ok.items():
            if ok and node_ok.get(key[0], True):
                counts[service_of[key]] = counts.get(service_of[key], 0) + 1
        return Indexed(int(idx or 0), counts)

    def checks_index(
        self, *, index: int = 0, wait: float = DEFAULT_WAIT, consistent: bool = False
    ) -> Indexed[int]:
        """The index of the cluster's checks (blocking when ``index`` > 0), with none of the checks.

        The filter matches no check (no check has status "none"), so Consul answers ``[]`` with
        the index of every check: a health watch wakes on any change, and the leader learns
        whether its passing counts moved, for a few bytes. Reading every check for it was about
        5 MB and 0.15 s at 10,000 replicas (docs/benchmarks.md, *The checks read once per change*).
        """
        params: list[tuple[str, str]] = [("filter", CHECKS_NONE)]
        if index:
            params += [("index", str(index)), ("wait", _go_duration(wait))]
        if consistent:
            params.append(("consistent", "1"))
        with _wrapped("reading the index of the cluster's checks"):
            idx, checks = self._client.http.get(
                CB.json(index=True),
                "/v1/health/state/any",
                params=params,
                headers=self._client.prepare_headers(),
            )
        return Indexed(int(idx or 0), len(checks or []))

    def catalog_services(self, *, index: int = 0, wait: float = DEFAULT_WAIT) -> Indexed[int]:
        """How many services the catalog knows (blocking when ``index`` > 0): wakes on (de)registrations."""
        with _wrapped("listing the catalog's services"):
            idx, services = self._client.catalog.services(index=index or None, wait=_go_duration(wait))
        return Indexed(int(idx or 0), len(services or {}))

    def leader(self) -> str:
        """The Raft leader's address, or "" when the cluster has none."""
        with _wrapped("reading the Raft leader"):
            return str(self._client.status.leader() or "")


def _describe_keys(writes: Mapping[str, object], limit: int = 5) -> str:
    """The first few keys of a write, and how many more: error texts stay short."""
    keys = sorted(writes)
    text = ", ".join(keys[:limit])
    return f"[{text}, and {len(keys) - limit} more]" if len(keys) > limit else f"[{text}]"


def _trees_of(results: Sequence[Mapping[str, Any]], prefixes: Sequence[str]) -> dict[str, dict[str, KVEntry]]:
    """A read-only transaction's ``Results`` (its get-tree operations, in order), by prefix and key.

    A key is kept under every prefix it starts with: nested prefixes list it once each. At 1,000
    services the leader's pass decodes 12,000 entries here: each value goes to `binascii` at once
    (`base64.b64decode` first copies the text to bytes: a third of the time), and where no prefix
    holds another, a key is matched first against the prefix of the key before it (the results
    come in operation order), not against every prefix.
    """
    trees: dict[str, dict[str, KVEntry]] = {prefix: {} for prefix in prefixes}
    nested = any(a != b and a.startswith(b) for a in prefixes for b in prefixes)
    last = ""
    for result in results:
        raw = result.get("KV") or {}
        key = str(raw["Key"])
        entry = KVEntry(
            key, binascii.a2b_base64(raw.get("Value") or ""), int(raw["ModifyIndex"]), raw.get("Session")
        )
        if not nested and last and key.startswith(last):
            trees[last][key] = entry
            continue
        for prefix, tree in trees.items():
            if key.startswith(prefix):
                tree[key] = entry
                last = prefix
                if not nested:
                    break
    return trees


def _entry(raw: Mapping[str, Any]) -> KVEntry:
    value = raw.get("Value")
    return KVEntry(
        key=str(raw["Key"]),
        value=value if isinstance(value, bytes) else (value or "").encode(),
        modify_index=int(raw["ModifyIndex"]),
        session=raw.get("Session"),
    )


CHECKS_NONE = 'Status == "none"'
"""A filter that no check matches (`ConsulClient.checks_index`): the answer is only its index."""


def nothing_there(value: object) -> bool:
    """Whether a read found nothing: no key (None) or an empty listing."""
    return value is None or (isinstance(value, Sized) and len(value) == 0)


class BlockingQuery(Generic[T]):
    """Consul's blocking-query loop for one read, following its index rules.

    ``fetch(index, wait)`` does the read. `next()` blocks until the result
    changes (or the wait runs out) and reports whether it changed. The rules,
    from Consul's documentation on blocking queries:

    * the first read uses index 0 and returns at once;
    * an index that goes backwards (a snapshot restore, a new leader) resets
      to 0, so that the next read returns at once with fresh data;
    * an index of 0 or less is treated as 1, since index 0 would make every
      following read return at once: a busy loop;
    * reads are spaced at least ``min_interval`` apart, so that a key that
      changes constantly cannot make us hammer Consul;
    * nothing before and nothing now is no change, whatever the index says
      (`nothing_there`). A read of keys that do not exist (an empty prefix,
      a missing key) answers with the index of the whole KV store, and returns
      as soon as anything is written near them: Consul watches the nearest
      existing node of its tree, so for ``operator/rollback/`` while no
      request exists, every write under ``operator/``. Each such answer
      counted as a change: every status record an agent wrote woke the
      leader's empty rollback, maintenance, secrets and config watches and
      every agent's rendered-templates watch, each a pass of its loop (a
      burst of 100 starts, its clean-up and a raw run beside it: 450 leader
      passes, 130 refresh passes on each agent; docs/benchmarks.md, *The
      empty watches*). Consul's documentation says the same of any blocking
      query: the index may move while the result does not.
    """

    def __init__(
        self,
        fetch: Callable[[int, float], Indexed[T]],
        *,
        wait: float = DEFAULT_WAIT,
        min_interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._fetch = fetch
        self._wait = wait
        self._min_interval = min_interval
        self._clock = clock
        self._sleep = sleep
        self.index = 0
        self._last_call: float | None = None
        self._first = True
        self._had_nothing = False  # the last result held nothing (`nothing_there`)

    def next(self) -> tuple[bool, T]:
        """Wait for the next result; returns (changed, value)."""
        if self._last_call is not None:
            pause = self._min_interval - (self._clock() - self._last_call)
            if pause > 0:
                self._sleep(pause)
        self._last_call = self._clock()
        result = self._fetch(self.index, self._wait)
        nothing = nothing_there(result.value)
        changed = self._first or (result.index != self.index and not (nothing and self._had_nothing))
        self._first = False
        self._had_nothing = nothing
        if result.index <= 0:
            self.index = 1
        elif result.index < self.index:
            self.index = 0
        else:
            self.index = result.index
        return changed, result.value
