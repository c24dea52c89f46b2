"""The manifest, schema v1: parsing, validation and the normalised form.

A person writes a manifest as YAML into `services/<name>`; the operator never
writes there. Everything here is pure (text in; a frozen `Manifest`, or a
`ManifestError` listing every problem at once, out), so that a bad manifest is
refused before anything that runs is touched.

PyYAML's `safe_load` is not used as it is: it keeps the last of two duplicate
keys, reads `yes`/`on` as booleans, `010` as octal and `1:30` as 90, and
expands aliases (the "billion laughs"). The loader here types plain scalars
by YAML 1.2's core schema and refuses the rest with a message naming the line.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Final, Protocol

import yaml
from yaml.reader import ReaderError

from consul_operator.core.durations import DurationError, format_duration, parse_duration
from consul_operator.core.errors import OperatorError

MAX_MANIFEST_BYTES: Final = 512 * 1024
"""Consul's KV value limit: a larger manifest could not be stored anyway."""
MAX_REVISION_BYTES: Final = 320 * 1024
"""The cap on a manifest's normalised JSON (`revision_json`), which the leader keeps in
``operator/revisions/<name>/<spec>``. It goes base64-encoded (a third larger: 427 KiB)
into one fenced transaction with the service's placement and rollout records, and
Consul refuses a transaction body over 512 KiB (`txn.TXN_MAX_BYTES`); the rest (over
80 KiB) is room for those records at their largest (100 replicas on 100 hosts)."""
MAX_REPLICAS: Final = 100
"""The operator's cap on replicas (and on max_per_host)."""

MAX_PROBLEMS: Final = 50
"""At most this many problems are listed; the rest are counted (status must stay readable)."""

MAX_COMMAND_ARGS: Final = 64
MAX_ARG_CHARS: Final = 4096
MAX_ENV_ENTRIES: Final = 128
MAX_ENV_NAME_CHARS: Final = 256
MAX_ENV_VALUE_BYTES: Final = 32 * 1024
MAX_HOSTS: Final = 64
MAX_HTTP_PATH_CHARS: Final = 1024
MAX_IMAGE_CHARS: Final = 255
MAX_NESTING: Final = 32  # a manifest needs 3 levels; deep nesting only costs recursion

HEALTH_MIN_SECONDS: Final = 0.1
HEALTH_MAX_SECONDS: Final = 3600.0
MAX_DRAIN_SECONDS: Final = 600.0
MAX_STOP_GRACE_SECONDS: Final = 600.0
MAX_MIN_HEALTHY_SECONDS: Final = 3600.0
MIN_DEADLINE_SECONDS: Final = 1.0
MAX_DEADLINE_SECONDS: Final = 86400.0

KI: Final = 1024
MI: Final = 1024 * KI
GI: Final = 1024 * MI
MIN_MEMORY: Final = 8 * MI
"""The smallest memory limit (Docker refuses less than 6 MB)."""
MAX_MEMORY: Final = 1024 * GI
MIN_MILLICPUS: Final = 10
"""0.01 CPUs: Docker's smallest CPU quota."""
MAX_MILLICPUS: Final = 256_000
DEFAULT_MEMORY: Final = 256 * MI
"""A replica's memory (limit and what the scheduler counts) when the manifest names none."""
DEFAULT_MILLICPUS: Final = 250
"""A replica's CPUs in thousandths (0.25) when the manifest names none."""
DEFAULT_PIDS_LIMIT: Final = 1024
"""Processes and threads a container may have when the manifest names no ``pids_limit``."""
MIN_PIDS_LIMIT: Final = 16
MAX_PIDS_LIMIT: Final = 65536
MAX_PLACEMENT_LABELS: Final = 16
MAX_LABEL_VALUE_CHARS: Final = 256
LABEL_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,48}")
"""A host label's key (``operator agent --label``): Consul's rule for meta keys, less our prefix."""

LINUX_CAPABILITIES: Final = frozenset(
    {
        "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE",
        "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL",
        "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE",
        "NET_BROADCAST", "NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_ADMIN",
        "SYS_BOOT", "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "SYSLOG", "WAKE_ALARM",
    }
)  # fmt: skip
"""Linux's capabilities (capabilities(7)), named as Docker names them: without ``CAP_``."""
DEFAULT_CAPABILITIES: Final = ("CHOWN", "SETGID", "SETUID")
"""What a replica keeps of Docker's default capabilities; every other one is dropped (README,
"Container defaults"). An image that starts as root and switches to a user of its own (nginx's
workers, a gosu or su-exec entry point) needs these three; with ``no-new-privileges`` nothing can
regain the rest. Binding a port below 1024 needs no NET_BIND_SERVICE: Docker (20.10 and later)
sets ``net.ipv4.ip_unprivileged_port_start=0`` in every container."""
MAX_TMPFS: Final = 16
MAX_TMPFS_PATH_CHARS: Final = 256
TMPFS_SIZE: Final = 64 * 1024 * 1024
"""Each ``tmpfs:`` mount's size; what a replica writes there counts against its memory limit."""
_USER_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?")
_SECRET_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_TMPFS_RE: Final = re.compile(r"(?:/[A-Za-z0-9_.-]+)+")

_TOP_FIELDS: Final = (
    "name",
    "image",
    "replicas",
    "port",
    "command",
    "env",
    "placement",
    "health",
    "drain",
    "stop_grace",
    "update",
    "resources",
    "pids_limit",
    "user",
    "read_only",
    "tmpfs",
    "cap_add",
    "ports",
    "lb_port",
    "volumes",
    "image_pull_secret",
)
_RESOURCE_FIELDS: Final = ("memory", "cpus")
_UPDATE_FIELDS: Final = ("max_surge", "max_unavailable", "min_healthy", "deadline", "auto_rollback")
_PLACEMENT_FIELDS: Final = ("hosts", "max_per_host", "labels", "rebalance", "lost_grace")
_VOLUME_FIELDS: Final = ("name", "path", "host_path", "read_only")
_HEALTH_FIELDS: Final = ("http", "interval", "timeout")
# What a container *is*; see Manifest.spec_hash.
_SPEC_FIELDS: Final = (
    "name",
    "image",
    "command",
    "env",
    "port",
    "health",
    "resources",
    "pids_limit",
    "user",
    "read_only",
    "tmpfs",
    "cap_add",
    "ports",
    "lb_port",
    "volumes",
)
# Privilege fields: in the normalised form (and so in the spec hash and the kept revisions)
# only when set, so that a manifest without them keeps the hash and the revision it had
# before they existed, and an agent of the previous release still reads its revisions.
_PRIVILEGE_DEFAULTS: Final[dict[str, object]] = {
    "user": None,
    "read_only": False,
    "tmpfs": [],
    "cap_add": [],
    "ports": {},
    "lb_port": None,
    "volumes": [],
}
MAX_VOLUMES: Final = 16
VOLUME_LOST_GRACE: Final = 300.0
"""How long a replica with a named volume waits for its lost host before it moves (and starts with a
fresh volume elsewhere), unless ``placement.lost_grace`` says otherwise."""
MAX_LOST_GRACE_SECONDS: Final = 7 * 86400.0
_VOLUME_NAME_RE: Final = re.compile(r"[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?")
FORBIDDEN_HOST_PATHS: Final = ("/proc", "/sys", "/dev")
"""Host paths no manifest mounts, whatever an agent allows (nor ``/`` itself, nor a Docker socket)."""
DOCKER_SOCKETS: Final = ("/var/run/docker.sock", "/run/docker.sock")
"""Where Docker's socket lives: neither it nor a directory above it (/var, /run) is ever mounted."""
MAX_PORTS: Final = 16
LB_PORT_NAME: Final = "http"
"""The port the load balancer serves when ``lb_port`` names none."""
_PORT_NAME_RE: Final = re.compile(r"[a-z](?:[a-z0-9-]{0,13}[a-z0-9])?")
"""A port's name: a tag in Consul and part of a registration's ID (15 characters, as Kubernetes')."""

# RFC 1123 label. Names end up in container labels, Consul service names and
# the NGINX config: whitelisted, never escaped. The one rule of the code base:
# always used whole (`is_dns_label`, or `fullmatch`), never with `match` and
# `$`, which accepts a trailing newline.
_DNS_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DNS_LABEL_RULE: Final = (
    "must be a DNS label (1-63 characters: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit)"
)
# Service names the operator itself registers in Consul's catalog, or Consul's
# own: a manifest under one of them would mix its replicas into what the
# operator reads as agents (keeping a dead host looking live) or into Consul's.
RESERVED_SERVICE_NAMES: Final = frozenset({"operator-agent", "operator-lb", "consul"})


def is_dns_label(text: object) -> bool:
    """Whether ``text`` is a string that is, as a whole, a DNS label (no newline, no control character)."""
    return isinstance(text, str) and _DNS_LABEL_RE.fullmatch(text) is not None


_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _image_reference_re() -> re.Pattern[str]:
    """Docker's image reference grammar (github.com/distribution/reference, regexp.go)."""
    alnum = r"[a-z0-9]+"
    separator = r"(?:[._]|__|-+)"
    path_component = rf"{alnum}(?:{separator}{alnum})*"
    domain_component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    host = rf"(?:{domain_component}(?:\.{domain_component})*|\[[a-fA-F0-9:]+\])"
    domain = rf"{host}(?::[0-9]+)?"
    name = rf"(?:{domain}/)?{path_component}(?:/{path_component})*"
    tag = r"\w[\w.-]{0,127}"
    digest = r"sha256:[a-f0-9]{64}"
    # ASCII: \w must not accept non-ASCII letters in tags.
    return re.compile(rf"{name}(?::{tag})?(?:@{digest})?", re.ASCII)


_IMAGE_RE: Final = _image_reference_re()
_IMAGE_RULE: Final = (
    "must be an image reference like 'nginx:1.25', "
    "'registry.example.com:5000/team/app:v1' or 'busybox@sha256:<64 hex digits>'"
)

_DEFAULT_INTERVAL: Final = 2.0
_DEFAULT_TIMEOUT: Final = 1.0
DEFAULT_DRAIN: Final = 2.0
"""Seconds between deregistering a replica and stopping it, unless the manifest says otherwise."""
DEFAULT_STOP_GRACE: Final = 10.0
"""Seconds from SIGTERM to SIGKILL, unless the manifest says otherwise."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a manifest: where (a field path, "" for the whole) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ManifestError(OperatorError):
    """A manifest that cannot be used; `problems` lists everything wrong with it."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[type[ManifestError], tuple[tuple[Problem, ...]]]:
        # Exceptions pickle by their args (the joined text); rebuild from problems instead.
        return (ManifestError, (self.problems,))


def _refusal(problems: list[Problem]) -> ManifestError:
    """The error for `problems`, listing the first MAX_PROBLEMS and counting the rest."""
    if len(problems) <= MAX_PROBLEMS:
        return ManifestError(problems)
    more = Problem("", f"... and {len(problems) - MAX_PROBLEMS} more problems")
    return ManifestError([*problems[:MAX_PROBLEMS], more])


@dataclass(frozen=True, slots=True)
class Placement:
    """Where replicas may run: only `hosts` (None: every live host) whose agent labels include
    every one of `labels` (sorted (key, value) pairs), at most `max_per_host` each; `rebalance`:
    whether the leader spreads the replicas again when a host returns (`spread.py`)."""

    hosts: tuple[str, ...] | None = None
    max_per_host: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    rebalance: bool = True
    lost_grace: float | None = None  # None: the leader's --lost-grace


@dataclass(frozen=True, slots=True)
class Volume:
    """A mount at ``path`` in the container: a named Docker volume per replica slot (``name``), or a
    directory of the host (``host_path``, only under a directory its agent allows)."""

    path: str
    name: str | None = None
    host_path: str | None = None
    read_only: bool = False

    def to_dict(self) -> dict[str, object]:
        """The normalised form: ``path`` and ``name``, or ``path``, ``host_path`` and ``read_only``."""
        if self.name is not None:
            return {"name": self.name, "path": self.path, "read_only": self.read_only}
        return {"host_path": self.host_path, "path": self.path, "read_only": self.read_only}


@dataclass(frozen=True, slots=True)
class Resources:
    """Memory (bytes) and CPUs (thousandths): what a replica may use, or what a host can hold.

    A replica's are Docker's memory limit and CPU quota, and what the scheduler
    counts against a host's capacity. Integers, so that sums are exact.
    """

    memory: int = DEFAULT_MEMORY
    millicpus: int = DEFAULT_MILLICPUS

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.memory + other.memory, self.millicpus + other.millicpus)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.memory - other.memory, self.millicpus - other.millicpus)

    def times(self, count: int) -> Resources:
        """``count`` replicas' worth."""
        return Resources(self.memory * count, self.millicpus * count)

    def covers(self, need: Resources) -> bool:
        """Whether ``need`` fits in this much (every resource)."""
        return need.memory <= self.memory and need.millicpus <= self.millicpus

    def text(self) -> str:
        """``memory=256Mi cpus=0.5``."""
        return f"memory={format_memory(self.memory)} cpus={format_cpus(self.millicpus)}"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """How Consul checks a replica: HTTP GET `http` if set, else TCP on the port; seconds."""

    http: str | None = None
    interval: float = _DEFAULT_INTERVAL
    timeout: float = _DEFAULT_TIMEOUT


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    """How a spec change rolls out (seconds): the leader paces it, see reconcile.plan_rollout.

    At most ``max_surge`` replicas above ``replicas`` run, at most
    ``max_unavailable`` below it fail to pass; a new replica counts once it has
    passed for ``min_healthy``; after ``deadline`` the rollout fails and, with
    ``auto_rollback``, returns to the previous spec.
    """

    max_surge: int = 1
    max_unavailable: int = 0
    min_healthy: float = 5.0
    deadline: float = 300.0
    auto_rollback: bool = True


@dataclass(frozen=True, slots=True)
class Manifest:
    """A valid, normalised manifest: the desired state of one service (durations in seconds)."""

    name: str
    image: str
    replicas: int
    port: int | None = None
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()  # sorted by name, so equal envs compare equal
    placement: Placement = Placement()
    health: HealthCheck = HealthCheck()
    drain: float = DEFAULT_DRAIN
    stop_grace: float = DEFAULT_STOP_GRACE
    update: UpdatePolicy = UpdatePolicy()
    resources: Resources = field(default_factory=Resources)
    pids_limit: int = DEFAULT_PIDS_LIMIT
    user: str | None = None  # None: the image's user
    read_only: bool = False
    tmpfs: tuple[str, ...] = ()  # sorted absolute paths
    cap_add: tuple[str, ...] = ()  # sorted, beyond DEFAULT_CAPABILITIES; each host allows them or not
    # ``ports:``: (name, container port) sorted by name; empty with the ``port:`` shorthand. Then
    # ``port`` is the primary one's: ``lb_port``'s, else ``http``'s, else the first by name.
    ports: tuple[tuple[str, int], ...] = ()
    lb_port: str | None = None
    volumes: tuple[Volume, ...] = ()  # sorted by path
    # The secret whose KV value (``secrets/<service>/<name>``: username and password) pulls the image; not in
    # the spec hash (new credentials replace no container), in the normalised form when set.
    image_pull_secret: str | None = None
    # The spec hash, worked out once (`spec_hash`): a leader pass asked for it 27,000 times at
    # 1,000 services, a JSON dump and a SHA-256 each (issue 31). Not a field of the manifest.
    _spec: str = field(default="", init=False, repr=False, compare=False, hash=False)

    @property
    def named_volumes(self) -> tuple[Volume, ...]:
        """The volumes that are Docker volumes of their own per replica slot (which make it sticky)."""
        return tuple(v for v in self.volumes if v.name is not None)

    @property
    def host_paths(self) -> tuple[str, ...]:
        """The host directories the manifest mounts."""
        return tuple(v.host_path for v in self.volumes if v.host_path is not None)

    @property
    def primary_port_name(self) -> str | None:
        """The name of the port registered as the replica itself (``port``); None with the shorthand."""
        if not self.ports:
            return None
        names = [n for n, _ in self.ports]
        if self.lb_port is not None:
            return self.lb_port
        return LB_PORT_NAME if LB_PORT_NAME in names else names[0]

    @property
    def load_balanced(self) -> bool:
        """Whether the load balancer serves this service: ``port:``, a port named ``http``, or ``lb_port``."""
        if not self.ports:
            return self.port is not None
        return self.lb_port is not None or any(n == LB_PORT_NAME for n, _ in self.ports)

    @property
    def extra_ports(self) -> tuple[tuple[str, int], ...]:
        """The named ports other than the primary one, each registered on its own."""
        primary = self.primary_port_name
        return tuple((n, p) for n, p in self.ports if n != primary)

    @property
    def container_ports(self) -> tuple[int, ...]:
        """Every container port to publish, the primary first."""
        extra = tuple(p for _, p in self.extra_ports)
        return ((self.port,) if self.port is not None else ()) + extra

    @property
    def env_dict(self) -> dict[str, str]:
        """The environment as a fresh dict."""
        return dict(self.env)

    def spec_hash(self) -> str:
        """A short hash of what a container of this service *is*, to tell stale containers.

        Covers name, image, command, env, port, health, resources,
        pids_limit, and user, read_only, tmpfs and cap_add when set (a
        manifest without them hashes as before they existed): a container whose
        labelled hash differs runs an old spec and is replaced. Deliberately
        leaves out replicas, placement, drain, stop_grace, update and image_pull_secret: changing them
        scales, moves or stops containers differently, but must never replace
        a running one. Computed over the normalised form, so key order and
        defaults written out or omitted give the same hash.
        """
        if self._spec:
            return self._spec
        normalised = self.to_dict()
        spec = {field: normalised[field] for field in _SPEC_FIELDS if field in normalised}
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
        object.__setattr__(self, "_spec", digest)  # frozen: set once, the same value every time
        return digest

    def to_dict(self) -> dict[str, object]:
        """The normalised form: every field, defaults included, durations spelled canonically.

        `manifest_from_dict` accepts it back and gives an equal Manifest. The privilege
        fields (user, read_only, tmpfs, cap_add) are left out when they are their defaults.
        """
        privileges: dict[str, object] = {
            "user": self.user,
            "read_only": self.read_only,
            "tmpfs": list(self.tmpfs),
            "cap_add": list(self.cap_add),
            "ports": dict(self.ports),
            "lb_port": self.lb_port,
            "volumes": [v.to_dict() for v in self.volumes],
        }
        set_privileges = {k: v for k, v in privileges.items() if v != _PRIVILEGE_DEFAULTS[k]}
        return {
            "name": self.name,
            "image": self.image,
            "replicas": self.replicas,
            "port": None if self.ports else self.port,
            "command": None if self.command is None else list(self.command),
            "env": dict(self.env),
            "placement": {
                "hosts": None if self.placement.hosts is None else list(self.placement.hosts),
                "max_per_host": self.placement.max_per_host,
                "labels": dict(self.placement.labels),
                "rebalance": self.placement.rebalance,
                **(
                    {"lost_grace": format_duration(self.placement.lost_grace)}
                    if self.placement.lost_grace is not None
                    else {}
                ),
            },
            "health": {
                "http": self.health.http,
                "interval": format_duration(self.health.interval),
                "timeout": format_duration(self.health.timeout),
            },
            "drain": format_duration(self.drain),
            "stop_grace": format_duration(self.stop_grace),
            "update": {
                "max_surge": self.update.max_surge,
                "max_unavailable": self.update.max_unavailable,
                "min_healthy": format_duration(self.update.min_healthy),
                "deadline": format_duration(self.update.deadline),
                "auto_rollback": self.update.auto_rollback,
            },
            "resources": {
                "memory": format_memory(self.resources.memory),
                "cpus": _cpus_number(self.resources.millicpus),
            },
            "pids_limit": self.pids_limit,
            **set_privileges,
            **({"image_pull_secret": self.image_pull_secret} if self.image_pull_secret else {}),
        }


def parse_manifest(text: str | bytes, *, key_name: str | None = None) -> Manifest:
    """Parse and validate a manifest's YAML text; raise ManifestError naming every problem.

    `key_name` is the KV key the manifest was read from (or its last segment):
    the manifest's name must equal that segment.
    """
    return manifest_from_dict(_load_yaml(text), key_name=key_name)


def manifest_from_dict(data: object, *, key_name: str | None = None) -> Manifest:
    """Validate already-loaded data (from YAML or JSON) into a Manifest; raise ManifestError.

    Optional fields that are absent or null take their defaults.
    """
    if data is None:
        raise ManifestError([Problem("", "manifest is empty")])
    if not isinstance(data, Mapping):
        message = f"the top level must be a mapping of fields, got {_describe(data)}"
        raise ManifestError([Problem("", message)])
    problems: list[Problem] = []
    fields = _known_fields(data, "", _TOP_FIELDS, problems)
    name = _check_name(fields, key_name, problems)
    image = _check_image(fields, problems)
    replicas = _check_replicas(fields, problems)
    port = _check_port(fields.get("port"), problems)
    ports, lb_port = _check_ports(fields.get("ports"), fields.get("lb_port"), problems)
    if ports and fields.get("port") is not None:
        problems.append(Problem("port", "give either port or ports, not both (port: N is ports: {http: N})"))
    if ports:
        primary = Manifest(name="x", image="x", replicas=0, ports=ports, lb_port=lb_port)
        port = dict(ports)[primary.primary_port_name or ""]
    command = _check_command(fields.get("command"), problems)
    env = _check_env(fields.get("env"), problems)
    placement = _check_placement(fields.get("placement"), problems)
    has_port = fields.get("port") is not None or fields.get("ports") is not None
    health = _check_health(fields.get("health"), has_port, problems)
    drain = _duration_field(fields, "drain", "drain", DEFAULT_DRAIN, 0.0, MAX_DRAIN_SECONDS, problems)
    stop_grace = _duration_field(
        fields,
        "stop_grace",
        "stop_grace",
        DEFAULT_STOP_GRACE,
        0.0,
        MAX_STOP_GRACE_SECONDS,
        problems,
    )
    update = _check_update(fields.get("update"), problems)
    resources = _check_resources(fields.get("resources"), problems)
    pids_limit = DEFAULT_PIDS_LIMIT
    if fields.get("pids_limit") is not None:
        pids_limit = (
            _integer(fields["pids_limit"], "pids_limit", MIN_PIDS_LIMIT, MAX_PIDS_LIMIT, problems)
            or DEFAULT_PIDS_LIMIT
        )
    user = _check_user(fields.get("user"), problems)
    image_pull_secret = _check_secret_name(fields.get("image_pull_secret"), "image_pull_secret", problems)
    read_only = fields.get("read_only")
    if read_only is None:
        read_only = False
    elif not isinstance(read_only, bool):
        problems.append(Problem("read_only", f"must be true or false, got {_describe(read_only)}"))
        read_only = False
    tmpfs = _check_tmpfs(fields.get("tmpfs"), problems)
    cap_add = _check_cap_add(fields.get("cap_add"), problems)
    volumes = _check_volumes(fields.get("volumes"), tmpfs, problems)
    if any(v.name is not None for v in volumes):
        placement, update = _sticky(placement, update, fields, problems)
    # A check that returns None for a required value has always recorded a problem;
    # the None tests are for the type checker.
    if problems or None in (name, image, replicas, drain, stop_grace):
        raise _refusal(problems)
    assert name is not None and image is not None and replicas is not None
    assert drain is not None and stop_grace is not None
    manifest = Manifest(
        name=name,
        image=image,
        replicas=replicas,
        port=port,
        command=command,
        env=env,
        placement=placement,
        health=health,
        drain=drain,
        stop_grace=stop_grace,
        update=update,
        resources=resources,
        pids_limit=pids_limit,
        user=user,
        read_only=read_only,
        tmpfs=tmpfs,
        cap_add=cap_add,
        ports=ports,
        lb_port=lb_port,
        volumes=volumes,
        image_pull_secret=image_pull_secret,
    )
    size = len(revision_json(manifest))
    if size > MAX_REVISION_BYTES:
        message = (
            f"manifest is {size} bytes in its normalised JSON form, more than the limit of "
            f"{MAX_REVISION_BYTES} bytes (the leader must write it, base64-encoded, in one Consul "
            "transaction of at most 512 KiB); make env values or command arguments smaller"
        )
        raise ManifestError([Problem("", message)])
    return manifest


def _check_ports(
    value: object, lb_port: object, problems: list[Problem]
) -> tuple[tuple[tuple[str, int], ...], str | None]:
    """``ports: {http: 5000, metrics: 9100}`` and ``lb_port: NAME``: named, distinct container ports."""
    if lb_port is not None and value is None:
        problems.append(Problem("lb_port", "needs ports (it names one of them)"))
        return (), None
    if value is None:
        return (), None
    if not isinstance(value, Mapping) or not value:
        problems.append(
            Problem("ports", f"must be a non-empty mapping of name: port, got {_describe(value)}")
        )
        return (), None
    if len(value) > MAX_PORTS:
        problems.append(Problem("ports", f"must have at most {MAX_PORTS} entries, got {len(value)}"))
        return (), None
    pairs: list[tuple[str, int]] = []
    seen: dict[int, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _PORT_NAME_RE.fullmatch(key):
            shown = _short(key) if isinstance(key, str) else _describe(key)
            rule = "1-15 lowercase letters, digits and '-', starting with a letter"
            problems.append(Problem("ports", f"a port name must be {rule}, got {shown}"))
            continue
        where = _join("ports", key)
        port = _check_port(item, problems, where)
        if port is None:
            continue
        if port in seen:
            problems.append(Problem(where, f"port {port} is also {seen[port]!r}"))
            continue
        seen[port] = key
        pairs.append((key, port))
    chosen: str | None = None
    if lb_port is not None:
        if not isinstance(lb_port, str) or lb_port not in value:
            names = ", ".join(sorted(str(k) for k in value))
            shown = _short(lb_port) if isinstance(lb_port, str) else _describe(lb_port)
            problems.append(Problem("lb_port", f"must name one of the ports ({names}), got {shown}"))
        else:
            chosen = lb_port
    return tuple(sorted(pairs)), chosen


def _sticky(
    placement: Placement, update: UpdatePolicy, fields: Mapping[str, object], problems: list[Problem]
) -> tuple[Placement, UpdatePolicy]:
    """A service with named volumes: its replicas are replaced in place (a new one starts only once
    the old one is gone: the volume is not shared), so ``update.max_surge`` is 0 and
    ``max_unavailable`` at least 1 by default; and a lost host keeps them ``VOLUME_LOST_GRACE``."""
    given = fields.get("update")
    given_update = given if isinstance(given, Mapping) else {}
    if given_update.get("max_surge") not in (None, 0):
        message = (
            "must be 0 for a service with named volumes (a replica is replaced in place, after the old one)"
        )
        problems.append(Problem("update.max_surge", message))
    unavailable = update.max_unavailable
    if given_update.get("max_unavailable") is None:
        unavailable = max(1, unavailable)
    update = UpdatePolicy(0, unavailable, update.min_healthy, update.deadline, update.auto_rollback)
    if unavailable == 0 and not _bad(problems):
        problems.append(
            Problem("update.max_unavailable", "must be at least 1 for a service with named volumes")
        )
    if placement.lost_grace is None:
        placement = Placement(
            placement.hosts, placement.max_per_host, placement.labels, placement.rebalance, VOLUME_LOST_GRACE
        )
    return placement, update


def _check_volumes(value: object, tmpfs: tuple[str, ...], problems: list[Problem]) -> tuple[Volume, ...]:
    """``volumes:``: a list of {name, path} (a named volume per replica slot) or {host_path, path,
    read_only}; mount paths distinct (from each other and from ``tmpfs``); sorted by path."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        problems.append(
            Problem(
                "volumes", f"must be a list of {{name, path}} or {{host_path, path}}, got {_describe(value)}"
            )
        )
        return ()
    if len(value) > MAX_VOLUMES:
        problems.append(Problem("volumes", f"must have at most {MAX_VOLUMES} entries, got {len(value)}"))
        return ()
    volumes: list[Volume] = []
    paths = set(tmpfs)
    names: set[str] = set()
    for index, item in enumerate(value):
        where = f"volumes[{index}]"
        if not isinstance(item, Mapping):
            problems.append(
                Problem(where, f"must be a mapping like {{name: data, path: /data}}, got {_describe(item)}")
            )
            continue
        fields = _known_fields(item, where, _VOLUME_FIELDS, problems)
        path = _absolute_path(fields.get("path"), f"{where}.path", problems)
        read_only = fields.get("read_only", False)
        if not isinstance(read_only, bool):
            problems.append(
                Problem(f"{where}.read_only", f"must be true or false, got {_describe(read_only)}")
            )
            read_only = False
        name_value, host_value = fields.get("name"), fields.get("host_path")
        if (name_value is None) == (host_value is None):
            problems.append(Problem(where, "needs exactly one of name (a Docker volume) and host_path"))
            continue
        if name_value is not None:
            name = _string(name_value, f"{where}.name", problems)
            if name is not None and not _VOLUME_NAME_RE.fullmatch(name):
                rule = "1-32 lowercase letters, digits and '-', starting with a letter"
                problems.append(Problem(f"{where}.name", f"must be {rule}, got {_short(name)}"))
                name = None
            elif name in names:
                problems.append(Problem(f"{where}.name", f"{name!r} is listed twice"))
                name = None
            if name is None or path is None:
                continue
            names.add(name)
            volume = Volume(path=path, name=name, read_only=read_only)
        else:
            host_path = _absolute_path(host_value, f"{where}.host_path", problems)
            if host_path is None or path is None:
                continue
            if host_path_refused(host_path):
                places = ", ".join(FORBIDDEN_HOST_PATHS)
                message = (
                    f"must not be /, under {places}, or a Docker socket or above one, got {_short(host_path)}"
                )
                problems.append(Problem(f"{where}.host_path", message))
                continue
            volume = Volume(path=path, host_path=host_path, read_only=read_only)
        if path in paths:
            problems.append(Problem(f"{where}.path", f"{path!r} is mounted twice (volumes or tmpfs)"))
            continue
        paths.add(path)
        volumes.append(volume)
    return tuple(sorted(volumes, key=lambda v: v.path))


def _absolute_path(value: object, where: str, problems: list[Problem]) -> str | None:
    """An absolute path of letters, digits, '_', '.' and '-', without '.' or '..' parts, not /."""
    if value is None:
        problems.append(Problem(where, "required field is missing"))
        return None
    path = _string(value, where, problems)
    if path is None:
        return None
    if (
        len(path) > MAX_TMPFS_PATH_CHARS
        or not _TMPFS_RE.fullmatch(path)
        or any(p in (".", "..") for p in path.split("/"))
    ):
        rule = f"an absolute path of letters, digits, '_', '.' and '-' (at most {MAX_TMPFS_PATH_CHARS})"
        problems.append(Problem(where, f"must be {rule}, not / itself, got {_short(path)}"))
        return None
    if path.split("/")[1] in ("proc", "sys") and not where.endswith("host_path"):
        problems.append(Problem(where, f"must not be under /proc or /sys, got {_short(path)}"))
        return None
    return path


def host_path_refused(path: str) -> bool:
    """Whether a manifest may never mount host ``path``: ``/``, under `FORBIDDEN_HOST_PATHS`, a Docker
    socket or a directory above one (the engine is root on the host), whatever an agent allows."""
    return (
        path == "/"
        or any(path == f or path.startswith(f + "/") for f in FORBIDDEN_HOST_PATHS)
        or "docker.sock" in path
        or any(socket.startswith(path.rstrip("/") + "/") for socket in DOCKER_SOCKETS)
    )


def host_paths_refused(manifest: Manifest, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The host paths ``manifest`` mounts that a host allowing ``allowed`` (``--allow-host-path``)
    refuses: each must be one of those directories or under one."""
    return tuple(p for p in manifest.host_paths if not host_path_allowed(p, allowed))


def host_path_allowed(path: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of the ``allowed`` directories or under one (and never a refused one)."""
    under = any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)
    return under and not host_path_refused(path)


def parse_allowed_host_path(text: str) -> str:
    """``--allow-host-path /srv`` -> the directory; ValueError for / itself, a relative or odd path."""
    problems: list[Problem] = []
    path = _absolute_path(text.rstrip("/") or "/", "--allow-host-path", problems)
    if path is None:
        raise ValueError(str(problems[0]))
    if host_path_refused(path):
        raise ValueError(
            f"--allow-host-path: {path} may never be mounted (/, /proc, /sys, /dev, a Docker socket)"
        )
    return path


def _check_secret_name(value: object, where: str, problems: list[Problem]) -> str | None:
    """A secret's name (``image_pull_secret``): the last segment of its KV key ``secrets/<service>/<name>``,
    1-64 letters, digits, '_', '.' and '-', not starting with '.' or '-'."""
    if value is None:
        return None
    if not isinstance(value, str) or not _SECRET_NAME_RE.fullmatch(value):
        shown = _short(value) if isinstance(value, str) else _describe(value)
        rule = "must be a secret's name: 1-64 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        problems.append(Problem(where, f"{rule}, got {shown}"))
        return None
    return value


def _check_user(value: object, problems: list[Problem]) -> str | None:
    """``user:``: a user (and group) by name or number, as ``docker run --user`` takes it."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return str(value)
    rule = "must be a user name or uid, optionally with :group or :gid (like 1000, 1000:1000 or app)"
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        shown = _short(value) if isinstance(value, str) else _describe(value)
        problems.append(Problem("user", f"{rule}, got {shown}"))
        return None
    return value


def _check_tmpfs(value: object, problems: list[Problem]) -> tuple[str, ...]:
    """``tmpfs:``: distinct absolute paths, each a tmpfs of `TMPFS_SIZE` in the container; sorted."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        problems.append(Problem("tmpfs", f"must be a list of absolute paths, got {_describe(value)}"))
        return ()
    if len(value) > MAX_TMPFS:
        problems.append(Problem("tmpfs", f"must have at most {MAX_TMPFS} entries, got {len(value)}"))
        return ()
    paths: set[str] = set()
    for index, item in enumerate(value):
        where = f"tmpfs[{index}]"
        path = _string(item, where, problems)
        if path is None:
            continue
        parts = path.split("/")
        if (
            len(path) > MAX_TMPFS_PATH_CHARS
            or not _TMPFS_RE.fullmatch(path)
            or any(p in (".", "..") for p in parts)
        ):
            rule = f"an absolute path of letters, digits, '_', '.' and '-' (at most {MAX_TMPFS_PATH_CHARS})"
            problems.append(Problem(where, f"must be {rule}, not / itself, got {_short(path)}"))
        elif parts[1] in ("proc", "sys"):
            problems.append(Problem(where, f"must not be under /proc or /sys, got {_short(path)}"))
        elif path in paths:
            problems.append(Problem(where, f"{path!r} is listed twice"))
        paths.add(path)
    return tuple(sorted(paths))


def _check_cap_add(value: object, problems: list[Problem]) -> tuple[str, ...]:
    """``cap_add:``: Linux capabilities beyond `DEFAULT_CAPABILITIES`, by name; sorted.

    Only names are checked here; whether a host grants them is its agent's
    ``--allow-cap`` (`capabilities_refused`).
    """
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        problems.append(Problem("cap_add", f"must be a list of capability names, got {_describe(value)}"))
        return ()
    names: set[str] = set()
    for index, item in enumerate(value):
        where = f"cap_add[{index}]"
        name = _string(item, where, problems)
        if name is None:
            continue
        if name.upper() == "ALL":
            problems.append(Problem(where, "ALL is not allowed: name each capability the service needs"))
        elif name.startswith("CAP_") and name.removeprefix("CAP_") in LINUX_CAPABILITIES:
            problems.append(Problem(where, f"write {name.removeprefix('CAP_')}, without CAP_"))
        elif name not in LINUX_CAPABILITIES:
            close = difflib.get_close_matches(name.upper(), sorted(LINUX_CAPABILITIES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(Problem(where, f"not a Linux capability: {_short(name)}{hint}"))
        elif name in names:
            problems.append(Problem(where, f"{name!r} is listed twice"))
        names.add(name)
    return tuple(sorted(names & LINUX_CAPABILITIES))


def capabilities_refused(manifest: Manifest, allowed: frozenset[str]) -> tuple[str, ...]:
    """The capabilities ``manifest`` adds that a host allowing ``allowed`` (``--allow-cap``) refuses.

    `DEFAULT_CAPABILITIES` are every replica's, and so always allowed.
    """
    return tuple(c for c in manifest.cap_add if c not in allowed and c not in DEFAULT_CAPABILITIES)


def parse_capabilities(text: str) -> frozenset[str]:
    """``NET_ADMIN,SYS_TIME`` (``operator agent --allow-cap``) -> the names; ValueError naming a bad one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in LINUX_CAPABILITIES:
            raise ValueError(f"not a Linux capability (capabilities(7), without CAP_): {name!r}")
    return frozenset(names)


def revision_json(manifest: Manifest) -> bytes:
    """The revision record of ``manifest``: its normalised form as JSON (what the leader stores)."""
    return json.dumps(manifest.to_dict(), sort_keys=True).encode()


def _check_update(value: object, problems: list[Problem]) -> UpdatePolicy:
    """The ``update:`` section; its defaults when absent or null (problems recorded, defaults kept)."""
    if value is None:
        return UpdatePolicy()
    if not isinstance(value, Mapping):
        problems.append(Problem("update", f"must be a mapping, got {_describe(value)}"))
        return UpdatePolicy()
    default = UpdatePolicy()
    fields = _known_fields(value, "update", _UPDATE_FIELDS, problems)
    surge = default.max_surge
    if fields.get("max_surge") is not None:
        surge = _integer(fields["max_surge"], "update.max_surge", 0, MAX_REPLICAS, problems) or 0
    unavailable = default.max_unavailable
    if fields.get("max_unavailable") is not None:
        unavailable = (
            _integer(fields["max_unavailable"], "update.max_unavailable", 0, MAX_REPLICAS, problems) or 0
        )
    if surge == 0 and unavailable == 0 and not _bad(problems):
        problems.append(
            Problem("update", "max_surge and max_unavailable must not both be 0 (the rollout could not move)")
        )
    min_healthy = _duration_field(
        fields,
        "min_healthy",
        "update.min_healthy",
        default.min_healthy,
        0.0,
        MAX_MIN_HEALTHY_SECONDS,
        problems,
    )
    deadline = _duration_field(
        fields,
        "deadline",
        "update.deadline",
        default.deadline,
        MIN_DEADLINE_SECONDS,
        MAX_DEADLINE_SECONDS,
        problems,
    )
    rollback = fields.get("auto_rollback")
    if rollback is None:
        rollback = default.auto_rollback
    elif not isinstance(rollback, bool):
        problems.append(Problem("update.auto_rollback", f"must be true or false, got {_describe(rollback)}"))
        rollback = default.auto_rollback
    return UpdatePolicy(
        max_surge=surge,
        max_unavailable=unavailable,
        min_healthy=default.min_healthy if min_healthy is None else min_healthy,
        deadline=default.deadline if deadline is None else deadline,
        auto_rollback=rollback,
    )


def _bad(problems: list[Problem]) -> bool:
    """Whether max_surge or max_unavailable already has a problem recorded."""
    return any(p.path in ("update.max_surge", "update.max_unavailable") for p in problems)


def _describe(value: object) -> str:
    """Name a value's YAML type (and short value) the way a manifest's author thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


# --- YAML ------------------------------------------------------------------

_TAG_PREFIX: Final = "tag:yaml.org,2002:"


def _core_schema_resolvers() -> dict[str | None, list[tuple[str, re.Pattern[str]]]]:
    """Implicit typing of plain scalars by YAML 1.2's core schema, not PyYAML's YAML 1.1.

    So `yes`, `on`, `010`, `1:30` and `2024-01-01` stay strings; only true/false,
    plain decimal integers, decimal floats and null/~/empty are typed.
    """
    rules: tuple[tuple[str, str, Iterable[str]], ...] = (
        ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
        ("int", r"[-+]?(?:0|[1-9][0-9]*)", "-+0123456789"),
        (
            "float",
            r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
            "-+.0123456789",
        ),
        ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    )
    resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {}
    for name, pattern, first_chars in rules:
        regexp = re.compile(rf"(?:{pattern})\Z")
        for first in first_chars:
            resolvers.setdefault(first, []).append((_TAG_PREFIX + name, regexp))
    return resolvers


_ALLOWED_TAGS: Final = {
    yaml.ScalarNode: frozenset(_TAG_PREFIX + t for t in ("str", "int", "float", "bool", "null")),
    yaml.SequenceNode: frozenset({_TAG_PREFIX + "seq"}),
    yaml.MappingNode: frozenset({_TAG_PREFIX + "map"}),
}


class _Position(Protocol):
    """A place in the YAML text (PyYAML's pure-Python and libyaml marks both fit)."""

    line: int
    column: int


class _Refused(Exception):
    """YAML this loader will not accept, found while composing."""

    def __init__(self, message: str, mark: _Position | None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader typing by the core schema, refusing anchors, aliases, odd tags, deep nesting."""

    yaml_implicit_resolvers = _core_schema_resolvers()

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node, refusing it before anything is built from it."""
        self.check_event(yaml.NodeEvent)  # makes the parser read the next event
        event = self.current_event
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            # No aliases at all, rather than a limit on their expansion: the
            # simplest rule that makes "billion laughs" impossible.
            raise _Refused("YAML anchors and aliases are not allowed", event.start_mark)
        if self._depth >= MAX_NESTING:
            raise _Refused(f"YAML nested deeper than {MAX_NESTING} levels", event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None and node.tag not in _ALLOWED_TAGS.get(type(node), frozenset()):
            raise _Refused(f"YAML tag {_tag_text(node.tag)} is not allowed", node.start_mark)
        return node


def _load_yaml(text: str | bytes) -> object:
    """Load the one YAML document of a manifest as plain data; raise ManifestError.

    Checks the size cap first (no parsing of oversized input), then decodes
    UTF-8, then loads strictly: duplicate keys, anchors, aliases and tags
    beyond the core schema are problems; so are zero or several documents.
    """
    size = len(text) if isinstance(text, bytes) else _utf8_size(text)
    if size > MAX_MANIFEST_BYTES:
        message = f"manifest is {size} bytes, more than the limit of {MAX_MANIFEST_BYTES} bytes"
        raise ManifestError([Problem("", message)])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"manifest is not valid UTF-8 (byte {exc.start}: {exc.reason})"
            raise ManifestError([Problem("", message)]) from None
    problems: list[Problem] = []
    data = _load_single_document(text, problems)
    if problems:
        raise _refusal(problems)
    if data is None:
        raise ManifestError([Problem("", "manifest is empty")])
    return data


def _utf8_size(text: str) -> int:
    """The encoded size of `text`, without encoding a text that is obviously too big."""
    if len(text) > MAX_MANIFEST_BYTES:
        return len(text)  # at least one byte per character: already over the cap
    # surrogatepass: a lone surrogate is the YAML reader's problem to report, not ours.
    return len(text.encode("utf-8", "surrogatepass"))


def _load_single_document(text: str, problems: list[Problem]) -> object:
    """Compose and convert exactly one document, recording every problem found."""
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)
        if not loader.check_node():
            return None
        node = loader.get_node()
        if loader.check_node():
            second = loader.current_event
            where = _at(second.start_mark if second is not None else None, parens=False)
            problems.append(
                Problem("", f"the manifest must hold exactly one YAML document; another starts{where}")
            )
            return None
        return None if node is None else _to_data(loader, node, problems)
    except _Refused as exc:
        problems.append(Problem("", f"{exc.message}{_at(exc.mark)}"))
    except yaml.MarkedYAMLError as exc:
        problems.append(_syntax_problem(exc))
    except ReaderError as exc:
        problems.append(_reader_problem(exc, text))
    except yaml.YAMLError as exc:  # any other failure of the library, without a position
        problems.append(Problem("", f"YAML error: {exc}"))
    finally:
        if loader is not None:
            loader.dispose()
    return None


def _to_data(loader: _StrictLoader, node: yaml.Node, problems: list[Problem]) -> object:
    """Turn a composed node into plain dicts, lists and scalars."""
    if isinstance(node, yaml.MappingNode):
        return _mapping_to_data(loader, node, problems)
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(loader, item, problems) for item in node.value]
    return _scalar_to_data(loader, node, problems)


def _mapping_to_data(
    loader: _StrictLoader, node: yaml.MappingNode, problems: list[Problem]
) -> dict[object, object]:
    """Build a dict, recording every duplicate key instead of keeping the last silently."""
    data: dict[object, object] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            where = _at(key_node.start_mark)
            problems.append(Problem("", f"a key must be a plain value, not a list or mapping{where}"))
            continue
        key = _scalar_to_data(loader, key_node, problems)
        if key in data:
            problems.append(Problem("", f"duplicate key {key!r}{_at(key_node.start_mark)}"))
        data[key] = _to_data(loader, value_node, problems)
    return data


def _scalar_to_data(loader: _StrictLoader, node: yaml.Node, problems: list[Problem]) -> object:
    """Construct one scalar with the core-schema constructors."""
    try:
        return loader.construct_object(node)
    except (ValueError, LookupError):  # an explicit tag that does not fit, e.g. `!!int abc`
        text = _short(str(node.value))
        problems.append(Problem("", f"cannot read {text} as {_tag_text(node.tag)}{_at(node.start_mark)}"))
        return None


def _syntax_problem(exc: yaml.MarkedYAMLError) -> Problem:
    """One problem for a YAML syntax error, with 1-based line and column."""
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = exc.problem or exc.context or "unreadable YAML"
    if exc.problem and exc.context:
        # e.g. "could not find expected ':' (while scanning a simple key at line 2, column 1)"
        what = f"{exc.problem} ({exc.context}{_at(exc.context_mark, parens=False)})"
    return Problem("", f"YAML syntax error{where}: {what}")


def _reader_problem(exc: ReaderError, text: str) -> Problem:
    """One problem for a character YAML does not allow anywhere (e.g. NUL)."""
    position = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    # PyYAML reports the character's code point for text input, the byte for bytes.
    code = exc.character
    shown = f"U+{code:04X}" if isinstance(code, int) else repr(code)
    message = f"YAML syntax error at line {line}, column {column}: character {shown} is not allowed"
    return Problem("", message)


def _at(mark: _Position | None, *, parens: bool = True) -> str:
    """' (line L, column C)', 1-based, or '' when the position is unknown."""
    if mark is None:
        return ""
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    return f" ({where})" if parens else f" at {where}"


def _tag_text(tag: str) -> str:
    """A tag as it was written: '!!python/object' rather than its expanded form."""
    if tag.startswith(_TAG_PREFIX):
        return "!!" + tag.removeprefix(_TAG_PREFIX)
    return tag


# --- validation --------------------------------------------------------------


def _short(text: str, limit: int = 80) -> str:
    """A quoted string for a message, cut so that huge values do not flood it."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _join(path: str, key: str) -> str:
    """The path of `key` under `path`, e.g. 'env.FOO'; odd keys are quoted: env['a b']."""
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_short(key)}]" if path else _short(key)


def _known_fields(
    mapping: Mapping[object, object], path: str, known: tuple[str, ...], problems: list[Problem]
) -> dict[str, object]:
    """The fields of `mapping` that are known; every unknown one is a problem with a suggestion."""
    fields: dict[str, object] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            problems.append(Problem(path, f"field names must be strings, got {_describe(key)}"))
        elif key in known:
            fields[key] = value
        else:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
            problems.append(Problem(_join(path, key), f"unknown field ({hint})"))
    return fields


def _missing(path: str, problems: list[Problem]) -> None:
    """Record that a required field is absent."""
    problems.append(Problem(path, "required field is missing"))


def _string(value: object, path: str, problems: list[Problem]) -> str | None:
    """`value` if it is a string, else None and a problem."""
    if isinstance(value, str):
        return value
    problems.append(Problem(path, f"must be a string, got {_describe(value)}"))
    return None


def _integer(value: object, path: str, low: int, high: int, problems: list[Problem]) -> int | None:
    """`value` if it is an integer in low..high, else None and a problem."""
    # bool is a subclass of int in Python, and `true` must not pass for 1.
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(Problem(path, f"must be an integer, got {_describe(value)}"))
        return None
    if value < low:
        problems.append(Problem(path, f"must be an integer >= {low}, got {value}"))
        return None
    if value > high:
        problems.append(Problem(path, f"must be an integer <= {high}, got {value}"))
        return None
    return value


def _duration_field(
    fields: Mapping[str, object],
    key: str,
    path: str,
    default: float,
    low: float,
    high: float,
    problems: list[Problem],
) -> float | None:
    """The duration at `key` in seconds: its default when absent or null, None when invalid."""
    value = fields.get(key)
    if value is None:
        return default
    try:
        seconds = parse_duration(value, field=path)
    except DurationError as exc:
        problems.append(Problem(path, str(exc)))
        return None
    if not low <= seconds <= high:
        bounds = f"between {format_duration(low)} and {format_duration(high)}"
        problems.append(Problem(path, f"must be {bounds}, got {format_duration(seconds)}"))
        return None
    return seconds


def _check_name(fields: Mapping[str, object], key_name: str | None, problems: list[Problem]) -> str | None:
    """The service name: a DNS label equal to the last segment of its KV key."""
    if "name" not in fields:
        _missing("name", problems)
        return None
    name = _string(fields["name"], "name", problems)
    if name is None:
        return None
    if not is_dns_label(name):
        problems.append(Problem("name", f"{_DNS_LABEL_RULE}, got {_short(name)}"))
        return None
    if name in RESERVED_SERVICE_NAMES:
        problems.append(Problem("name", f"{name!r} is reserved (the operator or Consul registers it)"))
        return None
    if key_name is not None:
        expected = key_name.rsplit("/", 1)[-1]
        if name != expected:
            message = f"must equal its key's last segment {expected!r}, got {name!r}"
            problems.append(Problem("name", message))
            return None
    return name


def _check_image(fields: Mapping[str, object], problems: list[Problem]) -> str | None:
    """The image: a Docker image reference."""
    if "image" not in fields:
        _missing("image", problems)
        return None
    image = _string(fields["image"], "image", problems)
    if image is None:
        return None
    # Length first: it also bounds the work of the regular expression.
    if len(image) > MAX_IMAGE_CHARS:
        message = f"must be at most {MAX_IMAGE_CHARS} characters, got {len(image)}"
        problems.append(Problem("image", message))
        return None
    if not _IMAGE_RE.fullmatch(image):
        lowercase_would_do = image != image.lower() and _IMAGE_RE.fullmatch(image.lower())
        hint = " (repository names must be lowercase)" if lowercase_would_do else ""
        problems.append(Problem("image", f"{_IMAGE_RULE}, got {_short(image)}{hint}"))
        return None
    return image


def _check_replicas(fields: Mapping[str, object], problems: list[Problem]) -> int | None:
    """The replica count, 0..MAX_REPLICAS."""
    if "replicas" not in fields:
        _missing("replicas", problems)
        return None
    return _integer(fields["replicas"], "replicas", 0, MAX_REPLICAS, problems)


def _check_port(value: object, problems: list[Problem], path: str = "port") -> int | None:
    """A container port, 1..65535, or None when absent (or invalid: then with a problem)."""
    if value is None:
        return None
    return _integer(value, path, 1, 65535, problems)


def _check_command(value: object, problems: list[Problem]) -> tuple[str, ...] | None:
    """The command: 1..MAX_COMMAND_ARGS strings, or None for the image's own."""
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        problems.append(Problem("command", f"must be a list of strings, got {_describe(value)}"))
        return None
    if not value:
        message = "must not be empty (leave it out to run the image's own command)"
        problems.append(Problem("command", message))
        return None
    if len(value) > MAX_COMMAND_ARGS:
        message = f"must have at most {MAX_COMMAND_ARGS} entries, got {len(value)}"
        problems.append(Problem("command", message))
        return None
    args: list[str] = []
    for index, item in enumerate(value):
        arg = _string(item, f"command[{index}]", problems)
        if arg is not None and _text_ok(arg, f"command[{index}]", MAX_ARG_CHARS, problems):
            args.append(arg)
    return tuple(args)


def _text_ok(text: str, path: str, max_chars: int, problems: list[Problem]) -> bool:
    """Whether `text` is short enough and free of NUL (which no process argument can hold)."""
    if len(text) > max_chars:
        problems.append(Problem(path, f"must be at most {max_chars} characters, got {len(text)}"))
        return False
    if "\0" in text:
        problems.append(Problem(path, "must not contain NUL characters"))
        return False
    return True


def _check_env(value: object, problems: list[Problem]) -> tuple[tuple[str, str], ...]:
    """The environment as (name, value) pairs sorted by name."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        message = f"must be a mapping of NAME: value, got {_describe(value)}"
        problems.append(Problem("env", message))
        return ()
    if len(value) > MAX_ENV_ENTRIES:
        message = f"must have at most {MAX_ENV_ENTRIES} entries, got {len(value)}"
        problems.append(Problem("env", message))
        return ()
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        if not isinstance(key, str):
            problems.append(Problem("env", f"variable names must be strings, got {_describe(key)}"))
            continue
        name_ok = _env_name_ok(key, problems)
        env_value = _env_value(item, _join("env", key), key, problems)
        if name_ok and env_value is not None:
            pairs.append((key, env_value))
    return tuple(sorted(pairs))


def _env_name_ok(name: str, problems: list[Problem]) -> bool:
    """Whether `name` is a portable environment variable name."""
    if len(name) > MAX_ENV_NAME_CHARS:
        message = f"variable name {_short(name, 40)} is longer than {MAX_ENV_NAME_CHARS} characters"
        problems.append(Problem("env", message))
        return False
    if not _ENV_NAME_RE.fullmatch(name):
        rule = "letters, digits and '_', not starting with a digit"
        problems.append(Problem(_join("env", name), f"variable name must use only {rule}"))
        return False
    return True


def _env_value(value: object, path: str, name: str, problems: list[Problem]) -> str | None:
    """An environment value: a string, with a hint to quote what YAML typed otherwise."""
    if isinstance(value, str):
        if len(value.encode("utf-8", "surrogatepass")) > MAX_ENV_VALUE_BYTES:
            limit = MAX_ENV_VALUE_BYTES // 1024
            problems.append(Problem(path, f"must be at most {limit} KiB"))
            return None
        if "\0" in value:
            problems.append(Problem(path, "must not contain NUL characters"))
            return None
        return value
    got = _describe(value)
    if value is None:
        hint = ' (write "" for an empty value)'
    elif isinstance(value, bool):
        hint = f' (quote it: {name}: "{"true" if value else "false"}")'
    elif isinstance(value, int | float):
        hint = f' (quote it: {name}: "{value}")'
    else:
        hint = ""
    problems.append(Problem(path, f"must be a string, got {got}{hint}"))
    return None


def _check_placement(value: object, problems: list[Problem]) -> Placement:
    """Placement constraints; the default (anywhere) when absent."""
    if value is None:
        return Placement()
    if not isinstance(value, Mapping):
        problems.append(Problem("placement", f"must be a mapping, got {_describe(value)}"))
        return Placement()
    fields = _known_fields(value, "placement", _PLACEMENT_FIELDS, problems)
    hosts = _check_hosts(fields.get("hosts"), problems)
    max_per_host_value = fields.get("max_per_host")
    max_per_host = None
    if max_per_host_value is not None:
        max_per_host = _integer(max_per_host_value, "placement.max_per_host", 1, MAX_REPLICAS, problems)
    labels = _check_labels(fields.get("labels"), problems)
    rebalance = fields.get("rebalance", True)
    if not isinstance(rebalance, bool):
        problems.append(Problem("placement.rebalance", f"must be true or false, got {_describe(rebalance)}"))
        rebalance = True
    lost_grace = None
    if fields.get("lost_grace") is not None:
        lost_grace = _duration_field(
            fields, "lost_grace", "placement.lost_grace", 0.0, 1.0, MAX_LOST_GRACE_SECONDS, problems
        )
    return Placement(
        hosts=hosts, max_per_host=max_per_host, labels=labels, rebalance=rebalance, lost_grace=lost_grace
    )


def _check_labels(value: object, problems: list[Problem]) -> tuple[tuple[str, str], ...]:
    """``placement.labels``: agent labels a host must all have (``operator agent --label k=v``)."""
    path = "placement.labels"
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        problems.append(Problem(path, f"must be a mapping of label: value, got {_describe(value)}"))
        return ()
    if len(value) > MAX_PLACEMENT_LABELS:
        problems.append(Problem(path, f"must have at most {MAX_PLACEMENT_LABELS} entries, got {len(value)}"))
        return ()
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.fullmatch(key):
            shown = _short(key) if isinstance(key, str) else _describe(key)
            rule = "1-48 letters, digits, '-' or '_'"
            problems.append(Problem(path, f"a label key must be {rule}, got {shown}"))
            continue
        where = _join(path, key)
        if not isinstance(item, str):
            hint = f' (quote it: {key}: "{item}")' if isinstance(item, int | float) else ""
            problems.append(Problem(where, f"must be a string, got {_describe(item)}{hint}"))
        elif _text_ok(item, where, MAX_LABEL_VALUE_CHARS, problems):
            pairs.append((key, item))
    return tuple(sorted(pairs))


# --- resources ---------------------------------------------------------------

_MEMORY_UNITS: Final = {"Ki": KI, "Mi": MI, "Gi": GI}
_MEMORY_RE: Final = re.compile(r"([1-9][0-9]{0,12})(Ki|Mi|Gi)")
_DECIMAL_UNITS_RE: Final = re.compile(r"([0-9]+)\s*([kKmMgG])[bB]?")
MEMORY_RULE: Final = "must be a whole number with a binary unit, Ki, Mi or Gi (like 256Mi or 2Gi)"


def parse_memory(value: object) -> int:
    """``256Mi`` -> bytes; ValueError naming the rule (and a likely fix) otherwise."""
    if isinstance(value, bool) or not isinstance(value, str):
        hint = " (plain byte counts are not accepted)" if isinstance(value, int | float) else ""
        raise ValueError(f"{MEMORY_RULE}, got {_describe(value)}{hint}")
    found = _MEMORY_RE.fullmatch(value)
    if found is not None:
        return int(found[1]) * _MEMORY_UNITS[found[2]]
    decimal = _DECIMAL_UNITS_RE.fullmatch(value)
    if decimal is not None:
        hint = f" (did you mean {decimal[1]}{decimal[2].upper()}i?)"
    elif re.fullmatch(r"[0-9]*\.[0-9]+(Ki|Mi|Gi)", value):
        hint = " (use a whole number of a smaller unit: 1536Mi, not 1.5Gi)"
    else:
        hint = ""
    raise ValueError(f"{MEMORY_RULE}, got {_short(value)}{hint}")


def format_memory(size: int) -> str:
    """Bytes in the largest binary unit that divides them exactly (``1536Mi``, ``2Gi``); else bytes."""
    for unit, factor in (("Gi", GI), ("Mi", MI), ("Ki", KI)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


CPUS_RULE: Final = "must be a number of CPUs with at most two decimals (like 0.5 or 2)"


def parse_cpus(value: object) -> int:
    """``0.5`` (a number, or its text) -> thousandths of a CPU; ValueError naming the rule otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{CPUS_RULE}, got {_describe(value)}")
    shown = _short(value) if isinstance(value, str) else _describe(value)
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        millicores = isinstance(value, str) and re.fullmatch(r"[0-9]+m", value)
        hint = " (millicores are not accepted: write 0.5, not 500m)" if millicores else ""
        raise ValueError(f"{CPUS_RULE}, got {shown}{hint}") from None
    exponent = number.normalize().as_tuple().exponent
    if not number.is_finite() or not isinstance(exponent, int) or exponent < -2:
        raise ValueError(f"{CPUS_RULE}, got {shown}")
    return int(number * 1000)


def format_cpus(millicpus: int) -> str:
    """Thousandths of a CPU as a decimal: ``0.5``, ``2``, ``0.25``."""
    whole, part = divmod(millicpus, 1000)
    return str(whole) if part == 0 else f"{whole}.{part:03d}".rstrip("0")


RESERVE_MEMORY_FRACTION: Final = 0.10
RESERVE_MEMORY_MIN: Final = 256 * MI
RESERVE_CPUS_FRACTION: Final = 0.10


def host_capacity(total_memory: int, cpus: int) -> Resources:
    """A host's default capacity: its memory and CPUs less a reserve for the system and the agent.

    The reserve is 10% of the memory (at least 256Mi) and 10% of the CPUs;
    memory is rounded down to a whole Mi, CPUs to hundredths.
    """
    reserve = max(RESERVE_MEMORY_MIN, int(total_memory * RESERVE_MEMORY_FRACTION))
    memory = max(0, total_memory - reserve) // MI * MI
    millicpus = int(cpus * 1000 * (1 - RESERVE_CPUS_FRACTION)) // 10 * 10
    return Resources(memory, millicpus)


def parse_capacity(text: str) -> tuple[int | None, int | None]:
    """``memory=8Gi,cpus=4`` (either may be left out) -> (bytes, thousandths); ValueError otherwise."""
    memory: int | None = None
    millicpus: int | None = None
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if key == "memory" and sep and memory is None:
            memory = parse_memory(value.strip())
            if memory > MAX_MEMORY * 64:
                raise ValueError(f"memory must be at most {format_memory(MAX_MEMORY * 64)}")
        elif key == "cpus" and sep and millicpus is None:
            millicpus = parse_cpus(value.strip())
            if millicpus <= 0:
                raise ValueError(f"cpus must be more than 0, got {value.strip()}")
        else:
            raise ValueError(f"a capacity looks like memory=8Gi,cpus=4 (each once), got {text!r}")
    return memory, millicpus


def _cpus_number(millicpus: int) -> int | float:
    """The normalised form's ``cpus``: an integer when whole."""
    return millicpus // 1000 if millicpus % 1000 == 0 else millicpus / 1000


def _check_resources(value: object, problems: list[Problem]) -> Resources:
    """``resources: {memory, cpus}``: each capped; the default for what is absent or null."""
    if value is None:
        return Resources()
    if not isinstance(value, Mapping):
        problems.append(Problem("resources", f"must be a mapping, got {_describe(value)}"))
        return Resources()
    fields = _known_fields(value, "resources", _RESOURCE_FIELDS, problems)
    memory = DEFAULT_MEMORY
    if fields.get("memory") is not None:
        try:
            memory = parse_memory(fields["memory"])
        except ValueError as exc:
            problems.append(Problem("resources.memory", str(exc)))
        else:
            if not MIN_MEMORY <= memory <= MAX_MEMORY:
                bounds = f"between {format_memory(MIN_MEMORY)} and {format_memory(MAX_MEMORY)}"
                problems.append(Problem("resources.memory", f"must be {bounds}, got {format_memory(memory)}"))
    millicpus = DEFAULT_MILLICPUS
    if fields.get("cpus") is not None:
        cpus = fields["cpus"]
        if isinstance(cpus, str):
            problems.append(Problem("resources.cpus", f"{CPUS_RULE}, got {_short(cpus)} (write it unquoted)"))
        else:
            try:
                millicpus = parse_cpus(cpus)
            except ValueError as exc:
                problems.append(Problem("resources.cpus", str(exc)))
            else:
                if not MIN_MILLICPUS <= millicpus <= MAX_MILLICPUS:
                    bounds = f"between {format_cpus(MIN_MILLICPUS)} and {format_cpus(MAX_MILLICPUS)}"
                    problems.append(
                        Problem("resources.cpus", f"must be {bounds}, got {format_cpus(millicpus)}")
                    )
    return Resources(memory, millicpus)


def _check_hosts(value: object, problems: list[Problem]) -> tuple[str, ...] | None:
    """The allowed hosts: distinct DNS labels, sorted (it is a set; order means nothing)."""
    path = "placement.hosts"
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        problems.append(Problem(path, f"must be a list of host names, got {_describe(value)}"))
        return None
    if not value:
        problems.append(Problem(path, "must not be empty (leave it out to allow every host)"))
        return None
    if len(value) > MAX_HOSTS:
        problems.append(Problem(path, f"must have at most {MAX_HOSTS} entries, got {len(value)}"))
        return None
    hosts: set[str] = set()
    for index, item in enumerate(value):
        host = _string(item, f"{path}[{index}]", problems)
        if host is None:
            continue
        if not is_dns_label(host):
            problems.append(Problem(f"{path}[{index}]", f"{_DNS_LABEL_RULE}, got {_short(host)}"))
        elif host in hosts:
            problems.append(Problem(f"{path}[{index}]", f"{host!r} is listed twice"))
        hosts.add(host)
    return tuple(sorted(hosts))


def _check_health(value: object, has_port: bool, problems: list[Problem]) -> HealthCheck:
    """The health check settings; the default (TCP on the port) when absent."""
    if value is None:
        return HealthCheck()
    if not isinstance(value, Mapping):
        problems.append(Problem("health", f"must be a mapping, got {_describe(value)}"))
        return HealthCheck()
    fields = _known_fields(value, "health", _HEALTH_FIELDS, problems)
    http = _check_http(fields.get("http"), has_port, problems)
    limits = (HEALTH_MIN_SECONDS, HEALTH_MAX_SECONDS)
    interval = _duration_field(fields, "interval", "health.interval", _DEFAULT_INTERVAL, *limits, problems)
    timeout = _duration_field(fields, "timeout", "health.timeout", _DEFAULT_TIMEOUT, *limits, problems)
    if interval is None or timeout is None:
        return HealthCheck()
    if timeout >= interval:
        # A check that may outlast its interval would overlap the next one.
        default = "" if fields.get("timeout") is not None else " (the default)"
        message = (
            f"must be shorter than health.interval ({format_duration(interval)}), "
            f"got {format_duration(timeout)}{default}"
        )
        problems.append(Problem("health.timeout", message))
    return HealthCheck(http=http, interval=interval, timeout=timeout)


def _check_http(value: object, has_port: bool, problems: list[Problem]) -> str | None:
    """The HTTP check path: printable ASCII without spaces, starting with '/'."""
    path = "health.http"
    if value is None:
        return None
    http = _string(value, path, problems)
    if http is None:
        return None
    if not has_port:
        problems.append(Problem(path, "needs 'port' or 'ports' (the container port to send the check to)"))
    # Whitelist: the path goes into a Consul check URL, never escaped.
    if not http.startswith("/"):
        problems.append(Problem(path, f"must be a path starting with '/', got {_short(http)}"))
    elif len(http) > MAX_HTTP_PATH_CHARS:
        message = f"must be at most {MAX_HTTP_PATH_CHARS} characters, got {len(http)}"
        problems.append(Problem(path, message))
    elif not all("!" <= char <= "~" for char in http):
        message = f"must be printable ASCII without spaces (percent-encode the rest), got {_short(http)}"
        problems.append(Problem(path, message))
    else:
        return http
    return None
