"""Our own exception types: every third-party failure is wrapped in one of these.

Callers catch these, never `requests`' or docker's exceptions, so that the one
place that turns outcomes into retries and log levels (the loop runner) has a
small, closed set of cases to handle.
"""

from __future__ import annotations


class OperatorError(Exception):
    """Base of every error the operator raises on purpose."""


class ConsulError(OperatorError):
    """Consul answered, but not with what we asked for (HTTP 4xx/5xx, bad data).

    ``status`` is the HTTP status code of Consul's answer, when there was one.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConsulUnavailable(ConsulError):
    """Consul could not be reached or did not answer in time."""


class ConsulTLSError(ConsulUnavailable):
    """The TLS handshake with Consul failed: a certificate not trusted, refused or not matching."""


class ConsulPermissionDenied(ConsulError):
    """Consul refused the request because the ACL token lacks a permission."""


class DockerError(OperatorError):
    """The Docker engine refused or failed a request."""


class DockerUnavailable(DockerError):
    """The Docker engine could not be reached or did not answer in time."""


class ImageNotFound(DockerError):
    """The image is neither present locally nor pullable."""


class WorkPending(OperatorError):
    """A host has no current work key to act on yet (none, or one of an older leader's session),
    and no earlier one this run: its pass decides nothing, so what runs keeps running."""


class ImagePullFailed(ImageNotFound):
    """A pull failed (refused, unreachable, too slow, no usable credentials): its ``image`` backs off.

    ``reason`` is one of `registry.PULL_REASONS`; the message never holds a credential.
    """

    def __init__(self, message: str, *, image: str, reason: str) -> None:
        super().__init__(message)
        self.image = image
        self.reason = reason


class NotLeader(OperatorError):
    """A fenced write failed: this agent no longer holds the leader lock."""


REFUSAL_REASONS = ("too_large", "permission_denied", "refused")
"""Why Consul did not take one record's write (a metric label): `refusal_reason`."""


def refusal_reason(exc: ConsulError) -> str:
    """The bounded reason of a refused write: too_large (HTTP 413, or left out unsent as over
    its bound), permission_denied (an ACL), refused (any other answer)."""
    if exc.status == 413:
        return "too_large"
    if isinstance(exc, ConsulPermissionDenied):
        return "permission_denied"
    return "refused"


def consul_trouble(exc: ConsulError) -> bool:
    """Whether ``exc`` is Consul's trouble rather than one record's: unreachable, or a server-side
    failure (5xx, e.g. no Raft leader). It ends a pass; a refusal (4xx) fails that record alone."""
    return isinstance(exc, ConsulUnavailable) or (exc.status is not None and exc.status >= 500)


class SecretMissing(OperatorError):
    """A secret a manifest names is not in KV (or cannot be delivered); the message names it, no value."""
