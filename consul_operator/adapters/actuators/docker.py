"""Containers: list ours, start replicas, stop and remove them, watch Docker's events.

Only containers labelled with this operator's cluster *and* host are ever
listed, changed or removed; anything else on the engine is invisible here.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from typing import Any

import docker
import structlog

from consul_operator.adapters import metrics
from consul_operator.adapters.docker_client import docker_errors
from consul_operator.adapters.registry_auth import PullAuth
from consul_operator.adapters.runtime_files import RuntimeFiles, file_from_tar, owner_of
from consul_operator.adapters.timers import Timers
from consul_operator.core.backoff import retry_delay
from consul_operator.core.desired_state import (
    DEFAULT_CAPABILITIES,
    MAX_DRAIN_SECONDS,
    MAX_STOP_GRACE_SECONDS,
    SECRETS_PATH,
    TMPFS_SIZE,
    Manifest,
    host_path_allowed,
)
from consul_operator.core.errors import DockerError, DockerUnavailable, ImageNotFound, ImagePullFailed
from consul_operator.core.model import (
    LABEL_CLUSTER,
    LABEL_DRAIN,
    LABEL_HOST,
    LABEL_PORT,
    LABEL_SERVICE,
    LABEL_SLOT,
    LABEL_SPEC,
    LABEL_STOP_GRACE,
    LABEL_VOLUME,
    ContainerInfo,
    seconds_label,
)
from consul_operator.core.registry import RegistryCredentials, pull_error, pull_reason

log = structlog.get_logger()

# The container events that can need an action: something ended, was removed or paused
# from outside. Our own creates and starts report back through the executor instead,
# and waking a pass for each of their events slowed a 30-replica start by a third.
WAKING_EVENTS = ("die", "kill", "oom", "stop", "destroy", "pause", "unpause")
# Events after which a container's state may lag behind the event, and when to look again.
# On a loaded engine (load 50, right after a restart) `docker ps` showed killed containers
# running for over a second after their events; the last Consul check turning critical came
# before that too, so nothing woke a pass until a back-off's timer 30 s later. The later
# looks cost a pass each per burst.
ENDING_EVENTS = ("kill", "die", "oom", "stop")
LOOK_AGAIN_AFTER = (0.05, 0.2, 1.0, 3.0, 10.0)
# Re-looks of a burst of events closer together than this are one re-look.
LOOK_AGAIN_COALESCE = 0.02

PULL_TIMEOUT = 120.0
"""Seconds a start waits for an image pull (docker-py's own pull has no timeout at all)."""

# Every container's safe defaults (README, "Container defaults").
LOG_DRIVER = "json-file"
LOG_MAX_SIZE = "10m"
LOG_MAX_FILE = "3"
"""A replica's log is capped at LOG_MAX_FILE files of LOG_MAX_SIZE: a chatty one cannot fill the disk."""
SECURITY_OPT = ("no-new-privileges",)
"""No process in a replica gains privileges (setuid binaries, file capabilities)."""
RESTART_POLICY = "no"
"""Docker never restarts a replica: the operator does, with back-off, and sees every crash."""


TMPFS_OPTIONS = f"rw,nosuid,nodev,size={TMPFS_SIZE // (1024 * 1024)}m,mode=1777"
"""Each ``tmpfs:`` path's mount: no setuid programs or devices, `TMPFS_SIZE`, writable by every user
(over a directory of the image, Docker keeps that directory's owner and mode)."""


def host_config(manifest: Manifest) -> dict[str, Any]:
    """The limits and defaults every replica is created with (docker-py's create arguments).

    Memory is a hard limit without swap on top (the swap limit equals it), the
    CPUs a CFS quota, the pids limit the manifest's; no-new-privileges, no
    restart by Docker, and a log capped in size. Every capability is dropped
    but `DEFAULT_CAPABILITIES` and the manifest's ``cap_add`` (which the host
    plan has checked against the agent's ``--allow-cap``); the root file
    system is read-only with ``read_only``, with a tmpfs at each ``tmpfs`` path.
    """
    resources = manifest.resources
    return {
        "cap_drop": ["ALL"],
        "cap_add": sorted(set(DEFAULT_CAPABILITIES) | set(manifest.cap_add)),
        "read_only": manifest.read_only,
        "tmpfs": {path: TMPFS_OPTIONS for path in manifest.tmpfs},
        "mem_limit": resources.memory,
        "memswap_limit": resources.memory,
        "nano_cpus": resources.millicpus * 1_000_000,
        "pids_limit": manifest.pids_limit,
        "security_opt": list(SECURITY_OPT),
        "restart_policy": {"Name": RESTART_POLICY},
        "log_config": {"type": LOG_DRIVER, "config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}},
    }


def _env_text(name: str, value: bytes) -> str:
    """A secret's value as an environment variable: UTF-8 text without NUL, or a refusal naming the secret."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DockerError(f"secret {name} is not UTF-8 text: it cannot be an environment variable") from exc
    if "\0" in text:
        raise DockerError(f"secret {name} holds a NUL character: it cannot be an environment variable")
    return text


def volume_name(cluster: str, host: str, service: str, slot: int, volume: str) -> str:
    """The Docker volume of ``volume`` for replica ``slot`` of ``service`` on ``host`` (one engine may
    serve several hosts of a test environment, and several clusters)."""
    return f"{cluster}-{host}-{service}-{slot}-{volume}"


def _slot(labels: dict[str, str]) -> int | None:
    text = labels.get(LABEL_SLOT, "")
    return int(text) if text.isdigit() else None


def _drain(labels: dict[str, str]) -> float | None:
    """The drain a replica was started with (`LABEL_DRAIN`)."""
    return seconds_label(labels.get(LABEL_DRAIN), MAX_DRAIN_SECONDS)


def _stop_grace(labels: dict[str, str]) -> float | None:
    """The stop grace a replica was started with (`LABEL_STOP_GRACE`)."""
    return seconds_label(labels.get(LABEL_STOP_GRACE), MAX_STOP_GRACE_SECONDS)


def _timestamp(text: str | None) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, 'Z'), or its zero time, as Unix seconds."""
    if not text or text.startswith("0001-"):
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    micro = (frac + "000000")[:6] if frac else "0"
    return datetime.fromisoformat(f"{head}.{micro}+00:00").timestamp()


def container_name(service: str, host: str) -> str:
    """A fresh, unique name; it is also the replica's Consul service id."""
    return f"{service}-{host}-{secrets.token_hex(3)}"


def _primary(
    published: dict[int, int], labels: dict[str, str]
) -> tuple[tuple[tuple[int, int], ...], int | None]:
    """Every published (container, host) port, sorted, and the host port of the replica itself:
    the one its `LABEL_PORT` names, else (a container of one port) the only one."""
    primary = labels.get(LABEL_PORT, "")
    by_label = published.get(int(primary)) if primary.isdigit() else None
    port = by_label if primary.isdigit() else next(iter(sorted(published.values())), None)
    return tuple(sorted(published.items())), port


class DockerActuator:
    """Our containers on one host."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        cluster: str,
        host: str,
        advertise: str,
        pull_timeout: float = PULL_TIMEOUT,
        allowed_host_paths: tuple[str, ...] = (),
        runtime_dir: str | None = None,
        pull_auth: PullAuth | None = None,
    ) -> None:
        self.client = client
        self.files = RuntimeFiles(runtime_dir, cluster, host)  # secrets' files (`runtime_files`)
        self.pull_auth = pull_auth  # whose credentials pull an image that is not here (None: the engine's)
        self.allowed_host_paths = allowed_host_paths
        self.cluster = cluster
        self.host = host
        self.advertise = advertise
        self.pull_timeout = pull_timeout
        self._images: set[str] = set()  # images known to be present on the engine
        self._pulls: dict[str, Future[None]] = {}  # pulls under way, by image
        self._pulls_lock = threading.Lock()

    @property
    def label_filters(self) -> list[str]:
        """Docker filter for exactly our containers on this host."""
        return [f"{LABEL_CLUSTER}={self.cluster}", f"{LABEL_HOST}={self.host}"]

    def list_containers(self, starting: Collection[str] = ()) -> list[ContainerInfo]:
        """Our containers on this host, in every state; stopped ones with their exit details.

        ``starting``: names of containers we are starting right now. Not yet
        started, they have no exit details, and inspecting each while the
        engine is busy creating the others took most of a pass in a burst.
        """
        with docker_errors("listing containers"):
            summaries = self.client.api.containers(all=True, filters={"label": self.label_filters})
        infos = []
        for summary in summaries:
            names = summary.get("Names") or []
            if summary.get("State") == "running" or (names and names[0].lstrip("/") in starting):
                infos.append(self._from_summary(summary))
                continue
            # Exit code and times are only in the full inspect; few containers need it.
            try:
                with docker_errors("inspecting a container"):
                    infos.append(self._from_inspect(self.client.api.inspect_container(summary["Id"])))
            except DockerUnavailable:
                # A timeout is no removal: leaving the container out would plan from a
                # listing without it. The pass fails and is retried (`loop.run_loop`).
                raise
            except DockerError:
                continue  # removed between list and inspect
        return infos

    def _from_summary(self, summary: dict[str, Any]) -> ContainerInfo:
        labels = summary.get("Labels") or {}
        published = {
            int(p["PrivatePort"]): int(p["PublicPort"])
            for p in summary.get("Ports") or []
            if p.get("PublicPort") and p.get("PrivatePort") and p.get("IP") == self.advertise
        }
        host_ports, port = _primary(published, labels)
        return ContainerInfo(
            id=summary["Id"],
            name=summary["Names"][0].lstrip("/") if summary.get("Names") else summary["Id"][:12],
            service=labels.get(LABEL_SERVICE, ""),
            spec_hash=labels.get(LABEL_SPEC, ""),
            state=summary.get("State", "unknown"),
            host_port=port,
            created_at=float(summary.get("Created", 0)),
            # The listing has no start time; we start every container right after
            # creating it and never let Docker restart it, so creation is close enough.
            started_at=float(summary.get("Created", 0)),
            host_ports=host_ports,
            slot=_slot(labels),
            drain=_drain(labels),
            stop_grace=_stop_grace(labels),
        )

    def _from_inspect(self, data: dict[str, Any]) -> ContainerInfo:
        labels = data["Config"].get("Labels") or {}
        state = data.get("State") or {}
        published: dict[int, int] = {}
        for private, binding in ((data.get("NetworkSettings") or {}).get("Ports") or {}).items():
            for item in binding or []:
                if item.get("HostIp") == self.advertise and item.get("HostPort"):
                    published[int(str(private).partition("/")[0])] = int(item["HostPort"])
        host_ports, port = _primary(published, labels)
        return ContainerInfo(
            id=data["Id"],
            name=data["Name"].lstrip("/"),
            service=labels.get(LABEL_SERVICE, ""),
            spec_hash=labels.get(LABEL_SPEC, ""),
            state=state.get("Status", "unknown"),
            host_port=port,
            created_at=_timestamp(data.get("Created")) or 0.0,
            started_at=_timestamp(state.get("StartedAt")),
            finished_at=_timestamp(state.get("FinishedAt")),
            exit_code=state.get("ExitCode"),
            error=state.get("Error") or "",
            oom_killed=bool(state.get("OOMKilled")),
            host_ports=host_ports,
            slot=_slot(labels),
            drain=_drain(labels),
            stop_grace=_stop_grace(labels),
        )

    def ensure_volumes(self, manifest: Manifest, slot: int | None) -> tuple[str, ...]:
        """Create the named volumes of replica ``slot`` that do not exist yet, labelled with the
        cluster, host, service, slot and volume; the names of those created (fresh, empty)."""
        if slot is None or not manifest.named_volumes:
            return ()
        fresh = []
        for volume in manifest.named_volumes:
            assert volume.name is not None
            name = volume_name(self.cluster, self.host, manifest.name, slot, volume.name)
            with docker_errors(f"looking up volume {name}"):
                found = self.client.api.volumes(filters={"name": name}).get("Volumes") or []
            if any(v.get("Name") == name for v in found):
                continue
            labels = {
                LABEL_CLUSTER: self.cluster,
                LABEL_HOST: self.host,
                LABEL_SERVICE: manifest.name,
                LABEL_SLOT: str(slot),
                LABEL_VOLUME: volume.name,
            }
            with docker_errors(f"creating volume {name}"):
                self.client.api.create_volume(name, labels=labels)
            fresh.append(name)
        return tuple(fresh)

    def our_volumes(self) -> dict[str, list[str]]:
        """This host's volumes (ours: labelled with our cluster and host), by service."""
        with docker_errors("listing volumes"):
            found = self.client.api.volumes(filters={"label": self.label_filters}).get("Volumes") or []
        by_service: dict[str, list[str]] = {}
        for volume in found:
            service = (volume.get("Labels") or {}).get(LABEL_SERVICE, "")
            by_service.setdefault(service, []).append(str(volume["Name"]))
        return {service: sorted(names) for service, names in by_service.items() if service}

    def remove_volume(self, name: str) -> None:
        """Remove one of our volumes (Docker refuses while a container uses it)."""
        with docker_errors(f"removing volume {name}"):
            self.client.api.remove_volume(name)

    def start(
        self,
        manifest: Manifest,
        *,
        name: str | None = None,
        slot: int | None = None,
        secrets: Mapping[str, bytes] | None = None,
    ) -> ContainerInfo:
        """Create and start one replica (in ``slot``, which names its volumes: `ensure_volumes` made
        them; ``secrets``: the values of its secrets, by name, written as files before the start); a
        container that fails to start is removed again."""
        name = name or container_name(manifest.name, self.host)
        labels = {
            LABEL_CLUSTER: self.cluster,
            LABEL_HOST: self.host,
            LABEL_SERVICE: manifest.name,
            LABEL_SPEC: manifest.spec_hash(),
            LABEL_DRAIN: repr(manifest.drain),
            LABEL_STOP_GRACE: repr(manifest.stop_grace),
        }
        if slot is not None:
            labels[LABEL_SLOT] = str(slot)
        if manifest.ports and manifest.port is not None:
            labels[LABEL_PORT] = str(manifest.port)
        self._ensure_image(manifest)
        values = dict(secrets or {})
        missing = [s.name for s in manifest.secrets if s.name not in values]
        if missing:
            raise DockerError(f"{name}: no value for secret {', '.join(missing)}")
        try:
            with self.files.lock:  # not swept (`remove`) before the container exists
                where = self.files.secrets_dir(name) if manifest.secrets else None
                rendered = self.files.write_files(name, self.rendered(manifest)) if manifest.templates else {}
                with docker_errors(f"creating {name}"):
                    cid = self._create(
                        manifest, name, labels, slot, secrets_dir=where, secrets=values, rendered=rendered
                    )
        except ImageNotFound:
            self._images.discard(manifest.image)  # removed since we looked: look again next time
            self.files.forget(name)
            raise
        except (DockerError, OSError) as exc:
            self.files.forget(name)
            if isinstance(exc, OSError):
                raise DockerError(f"{name}: its secrets' directory: {exc.strerror}") from exc
            raise
        try:
            if where is not None:
                self._write_secrets(manifest, cid, where, values)
            with docker_errors(f"starting {name}"):
                self.client.api.start(cid)
            return self._from_inspect(self.client.api.inspect_container(cid))
        except DockerError:
            self.remove(cid)  # no half-started leftovers (a port clash, say)
            raise

    def rendered(self, manifest: Manifest) -> dict[str, str]:
        """The text of each of ``manifest``'s templates, by path: what the leader rendered into it (and,
        for signal templates, into its rendered record)."""
        texts = dict(manifest.resolved.files) | {path: text for path, text, _ in manifest.resolved.live}
        missing = [t.path for t in manifest.templates if t.path not in texts]
        if missing:
            raise DockerError(f"{manifest.name}: no rendered text for template {', '.join(missing)}")
        return texts

    def _write_secrets(self, manifest: Manifest, cid: str, where: str, values: Mapping[str, bytes]) -> None:
        """The secret files of a created container, owned by the user it will run as."""
        user = manifest.user
        if user is None:
            with docker_errors(f"inspecting image {manifest.image}"):
                user = str(
                    (self.client.api.inspect_image(manifest.image).get("Config") or {}).get("User") or ""
                )

        def read(path: str) -> bytes | None:
            try:
                with docker_errors(f"reading {path} of the image"):
                    stream, _ = self.client.api.get_archive(cid, path)
                    return file_from_tar(b"".join(stream))
            except DockerError:
                return None

        owner = owner_of(user, read)
        try:
            self.files.write_secrets(where, {s.name: values[s.name] for s in manifest.secrets}, owner)
        except OSError as exc:
            raise DockerError(f"writing the secret files of {manifest.name}: {exc.strerror}") from exc

    def _binds(self, manifest: Manifest, slot: int | None) -> dict[str, dict[str, str]]:
        """Docker's binds: each named volume of ``slot`` and each host path at its path in the container.

        A host path is checked again here, resolved (a symbolic link under an allowed directory must
        not lead out of it): `host_desires` only compared the text with ``--allow-host-path``.
        """
        binds: dict[str, dict[str, str]] = {}
        for volume in manifest.volumes:
            mode = "ro" if volume.read_only else "rw"
            if volume.name is not None:
                if slot is None:
                    raise DockerError(
                        f"a replica of {manifest.name} has no slot for its volume {volume.name}"
                    )
                source = volume_name(self.cluster, self.host, manifest.name, slot, volume.name)
            else:
                assert volume.host_path is not None
                source = os.path.realpath(volume.host_path)
                if not host_path_allowed(source, self.allowed_host_paths):
                    raise DockerError(
                        f"host path {volume.host_path} resolves to {source}, outside --allow-host-path"
                    )
            binds[source] = {"bind": volume.path, "mode": mode}
        return binds

    def _create(
        self,
        manifest: Manifest,
        name: str,
        labels: dict[str, str],
        slot: int | None = None,
        *,
        secrets_dir: str | None = None,
        secrets: Mapping[str, bytes] | None = None,
        rendered: Mapping[str, str] | None = None,
    ) -> str:
        """Create the container; its id. The low-level call: no inspect before the start (one per replica
        less in a burst; the one after the start reads the published port). ``secrets_dir`` is mounted
        read-only at `SECRETS_PATH`; a secret with ``env`` is also that variable (the manifest asked:
        ``docker inspect`` shows it)."""
        api = self.client.api
        bindings = {port: (self.advertise, None) for port in manifest.container_ports}
        binds = self._binds(manifest, slot)
        if secrets_dir is not None:
            binds[secrets_dir] = {"bind": SECRETS_PATH, "mode": "ro"}
        for path, host_file in (rendered or {}).items():
            binds[host_file] = {"bind": path, "mode": "ro"}
        environment = manifest.env_dict
        for secret in manifest.secrets:
            if secret.env is not None:
                environment[secret.env] = _env_text(secret.name, (secrets or {}).get(secret.name, b""))
        created = api.create_container(
            manifest.image,
            name=name,
            command=list(manifest.command) if manifest.command else None,
            environment=environment,
            user=manifest.user,
            labels=labels,
            ports=list(bindings),
            detach=True,
            volumes=[
                *(v.path for v in manifest.volumes),
                *([SECRETS_PATH] if secrets_dir else []),
                *(rendered or {}),
            ]
            or None,
            host_config=api.create_host_config(
                port_bindings=bindings, binds=binds or None, **host_config(manifest)
            ),
        )
        return str(created["Id"])

    def _ensure_image(self, manifest: Manifest) -> None:
        """Use a local image; pull it only when it is not here, with the manifest's credentials
        (`PullAuth`). Remembers images seen present."""
        image = manifest.image
        if image in self._images:
            return
        try:
            with docker_errors(f"looking up image {image}"):
                self.client.images.get(image)
            self._images.add(image)
            return
        except ImageNotFound:
            pass
        credentials = None
        if self.pull_auth is not None:
            try:
                credentials = self.pull_auth.credentials(manifest)
            except ImagePullFailed:
                metrics.image_pulls.labels("secret").inc()
                raise
        self._pull(image, credentials)

    def _pull(self, image: str, credentials: RegistryCredentials | None = None) -> None:
        """Pull ``image``, waiting at most ``pull_timeout`` seconds.

        docker-py pulls with no timeout, so the pull runs in a thread of its
        own, shared by every start that needs the same image: a start that
        waited too long fails (and backs its service off), the pull goes on,
        and a later start waits for the same pull again. Every failure is an `ImagePullFailed`
        with its reason (`registry.pull_reason`), which backs the image off (`host_pass`).
        """
        with self._pulls_lock:
            pull = self._pulls.get(image)
            if pull is None:
                pull = Future()
                self._pulls[image] = pull
                threading.Thread(
                    target=self._pull_now, args=(image, credentials, pull), name="image-pull", daemon=True
                ).start()
        try:
            pull.result(timeout=self.pull_timeout)
        except FutureTimeout as exc:
            metrics.image_pulls.labels("timeout").inc()
            detail = (
                f"took longer than {self.pull_timeout:g}s; the pull goes on in the background"
                " and the next start waits for it again"
            )
            raise ImagePullFailed(
                pull_error(image, "timeout", detail), image=image, reason="timeout"
            ) from exc
        self._images.add(image)

    def _pull_now(self, image: str, credentials: RegistryCredentials | None, pull: Future[None]) -> None:
        """The pull itself, on a thread of its own; its end goes to ``pull``. The engine's message of a
        failure is scrubbed of the credentials before it goes anywhere."""
        auth = None if credentials is None else credentials.auth_config()
        try:
            with docker_errors(f"pulling image {image}"):
                try:
                    self.client.images.pull(image, auth_config=auth)
                except docker.errors.APIError as exc:
                    detail = str(exc.explanation or exc)
                    if credentials is not None:
                        detail = credentials.redact(detail)
                    reason = pull_reason(detail)
                    message = pull_error(image, reason, detail)
                    raise ImagePullFailed(message, image=image, reason=reason) from exc
        except DockerUnavailable as exc:
            pull.set_exception(exc)  # the engine away: no fault of the image
        except ImagePullFailed as exc:
            metrics.image_pulls.labels(exc.reason).inc()
            pull.set_exception(exc)
        except Exception as exc:
            detail = str(exc) if credentials is None else credentials.redact(str(exc))
            metrics.image_pulls.labels("error").inc()
            pull.set_exception(
                ImagePullFailed(pull_error(image, "error", detail), image=image, reason="error")
            )
        else:
            metrics.image_pulls.labels("ok").inc()
            pull.set_result(None)
        finally:
            with self._pulls_lock:
                self._pulls.pop(image, None)

    def stop(self, container_id: str, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        with docker_errors(f"stopping {container_id[:12]}"):
            self.client.api.stop(container_id, timeout=max(0, round(grace)))

    def remove(self, container_id: str) -> None:
        """Remove a container (forcefully: it may still be running after a failed stop), and the
        secrets' directories of containers no longer here."""
        try:
            with docker_errors(f"removing {container_id[:12]}"):
                self.client.api.remove_container(container_id, force=True)
        except DockerError as exc:
            if "No such container" not in str(exc) and "not found" not in str(exc):
                raise
        self.sweep_files()

    def refresh(self, container: ContainerInfo, files: Mapping[str, str], signals: tuple[str, ...]) -> None:
        """Write new texts into a running replica's template files in place, then send it ``signals``."""
        for path, text in files.items():
            host = self.files.file_of(container.name, path)
            if host is None:
                raise DockerError(f"{container.name} has no file for {path}")
            try:
                self.files.rewrite(host, text)
            except OSError as exc:
                raise DockerError(f"rewriting {path} of {container.name}: {exc.strerror}") from exc
        for signal in signals:
            with docker_errors(f"sending {signal} to {container.name}"):
                self.client.api.kill(container.id, signal=signal)

    def sweep_files(self) -> None:
        """Remove the secrets' directories of containers gone (a listing only when there are some)."""
        if not self.files.leftovers():
            return
        with self.files.lock:
            with docker_errors("listing containers"):
                listed = self.client.api.containers(all=True, filters={"label": self.label_filters})
            self.files.sweep({n.lstrip("/") for c in listed for n in c.get("Names") or []})

    def watch_events(self, on_event: Callable[[], None], stop: threading.Event) -> None:
        """Call ``on_event`` for every event of our containers; reconnect after engine restarts.

        The re-looks after an ending event are entries in one timer heap (one
        thread for the whole watch, never one per event), and those of a burst
        of events coalesce.
        """
        timers = Timers("docker-events-relook")
        try:
            self._watch_events(on_event, stop, timers)
        finally:
            timers.close()

    def _watch_events(self, on_event: Callable[[], None], stop: threading.Event, timers: Timers) -> None:
        failures = 0
        while not stop.is_set():
            try:
                with docker_errors("watching events"):
                    stream = self.client.events(
                        decode=True,
                        filters={
                            "type": "container",
                            "label": self.label_filters,
                            "event": list(WAKING_EVENTS),
                        },
                    )
                    on_event()  # we may have missed events while disconnected
                    failures = 0
                    for event in stream:
                        on_event()
                        if isinstance(event, dict) and event.get("Action") in ENDING_EVENTS:
                            # Docker sends "die" before `docker ps` shows the container
                            # as exited; a pass at once can still see it running. Look again.
                            for after in LOOK_AGAIN_AFTER:
                                timers.call_later(after, on_event, key=after, coalesce=LOOK_AGAIN_COALESCE)
                        if stop.is_set():
                            break
            except DockerError as exc:
                log.warning("docker events stream lost", host=self.host, error=str(exc))
            except Exception as exc:  # the stream ends with requests/urllib3 errors on engine exit
                log.warning("docker events stream ended", host=self.host, error=str(exc))
            on_event()
            failures += 1
            stop.wait(retry_delay(failures))
