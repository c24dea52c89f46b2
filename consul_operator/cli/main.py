"""The ``operator`` command: subcommands and their wiring.

Exit codes follow the usual convention: 0 success, 1 the thing checked is not
as wanted (an invalid manifest, a service not converged), 2 a usage error or
an unreachable dependency.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from consul_operator.adapters.consul_client import ConsulAddress, ConsulClient, ConsulTLS, check_token
from consul_operator.adapters.docker_client import check_docker_url
from consul_operator.adapters.logs import configure as configure_logs
from consul_operator.adapters.presence import parse_label
from consul_operator.cli import commands
from consul_operator.cli.commands import Target
from consul_operator.cli.interrupts import StopBetweenOutputs
from consul_operator.core.desired_state import (
    is_dns_label,
    parse_allowed_host_path,
    parse_capabilities,
    parse_capacity,
)
from consul_operator.core.durations import DurationError, parse_duration
from consul_operator.core.keys import Layout, kv_prefix
from consul_operator.core.spread import DEFAULT_SETTLE, SpreadSettings
from consul_operator.core.terminal import clean

if TYPE_CHECKING:
    from consul_operator.daemons.agent import AgentConfig

EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_USAGE = 2


def cmd_validate(args: argparse.Namespace) -> int:
    """Check manifests locally: one OK line per good file, every problem of a bad one."""
    return commands.validate(args.files)


def _duration(text: str) -> float:
    """argparse type for durations like 3s or 500ms."""
    try:
        return parse_duration(text, field="flag")
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _label(text: str) -> tuple[str, str]:
    """argparse type for --label key=value."""
    try:
        return parse_label(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _capacity(text: str) -> tuple[int | None, int | None]:
    """argparse type for --capacity memory=8Gi,cpus=4."""
    try:
        return parse_capacity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _capabilities(text: str) -> frozenset[str]:
    """argparse type for --allow-cap NET_ADMIN,SYS_TIME."""
    try:
        return parse_capabilities(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _host_path(text: str) -> str:
    """argparse type for --allow-host-path /srv."""
    try:
        return parse_allowed_host_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _host_name(text: str) -> str:
    """argparse type for host names: DNS labels, since they end up in KV keys and container names."""
    if not is_dns_label(text):
        raise argparse.ArgumentTypeError(f"a host name must be a DNS label, got {text!r}")
    return text


def _address(text: str) -> str:
    """argparse type for an IP address."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from exc


def _kv_prefix(text: str) -> str:
    """argparse type for a KV prefix (``services/``); a bare ``/`` or odd characters are refused."""
    try:
        return kv_prefix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _metrics_address(text: str) -> str:
    """argparse type for ``--metrics``: ``[HOST]:PORT``, HOST an IP address or a host name, or empty."""
    host, sep, port = text.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port_ok = sep == ":" and port.isdigit() and 0 <= int(port) <= 65535  # 0: any free port
        if bare != host:
            ipaddress.IPv6Address(bare)
            host_ok = True
        else:
            host_ok = host == "" or _is_ip(host) or _METRICS_HOST.fullmatch(host) is not None
    except ValueError:
        port_ok = host_ok = False
    if not (port_ok and host_ok):
        raise argparse.ArgumentTypeError(
            f"must look like HOST:PORT (an IP address or host name, a port 0-65535), got {text!r}"
        )
    return text


_METRICS_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _add_common(parser: argparse.ArgumentParser, *, daemon: bool = False) -> None:
    """Flags every command that talks to Consul shares."""
    parser.add_argument("--consul", metavar="ADDR", help="Consul HTTP address (default: $CONSUL_HTTP_ADDR)")
    parser.add_argument("--token", help="Consul ACL token (default: $CONSUL_HTTP_TOKEN)")
    tls = parser.add_argument_group(
        "TLS to Consul (as the consul CLI; https:// in the address or CONSUL_HTTP_SSL)"
    )
    tls.add_argument(
        "--ca-file", metavar="FILE", help="CA certificate to verify Consul's with (default: $CONSUL_CACERT)"
    )
    tls.add_argument(
        "--client-cert",
        metavar="FILE",
        help="client certificate for verify_incoming (default: $CONSUL_CLIENT_CERT)",
    )
    tls.add_argument("--client-key", metavar="FILE", help="its private key (default: $CONSUL_CLIENT_KEY)")
    tls.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name on Consul's certificate, e.g. server.dc1.consul (default: $CONSUL_TLS_SERVER_NAME)",
    )
    parser.add_argument(
        "--services-prefix",
        default=os.environ.get("OPERATOR_SERVICES_PREFIX", "services/"),
        type=_kv_prefix,
        help="KV prefix of the manifests (default: services/)",
    )
    parser.add_argument(
        "--operator-prefix",
        default=os.environ.get("OPERATOR_PREFIX", "operator/"),
        type=_kv_prefix,
        help="KV prefix of the operator's own state (default: operator/)",
    )
    parser.add_argument(
        "--secrets-prefix",
        default=os.environ.get("OPERATOR_SECRETS_PREFIX", "secrets/"),
        type=_kv_prefix,
        help="KV prefix of the services' secrets, secrets/<service>/<name> (default: secrets/)",
    )
    parser.add_argument(
        "--config-prefix",
        default=os.environ.get("OPERATOR_CONFIG_PREFIX", "config/"),
        type=_kv_prefix,
        help="KV prefix that templates' key() reads, config/<path> (default: config/)",
    )
    if daemon:
        parser.add_argument(
            "--cluster",
            default=os.environ.get("OPERATOR_CLUSTER", "default"),
            help="name of this operator cluster: labels its containers and registrations (default)",
        )
    else:
        parser.add_argument(
            "--cluster",
            default=os.environ.get("OPERATOR_CLUSTER"),
            help="only the hosts of this operator cluster (default: every agent in this Consul)",
        )


def consul_tls(args: argparse.Namespace, environ: Mapping[str, str]) -> ConsulTLS:
    """The consul CLI's TLS environment variables, each overridden by its flag; ValueError names a bad one."""
    tls = ConsulTLS.from_env(environ)
    return dataclasses.replace(
        tls,
        ca_file=args.ca_file if args.ca_file is not None else tls.ca_file,
        cert_file=args.client_cert if args.client_cert is not None else tls.cert_file,
        key_file=args.client_key if args.client_key is not None else tls.key_file,
        server_name=args.tls_server_name if args.tls_server_name is not None else tls.server_name,
    )


def _metrics_tls(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.metrics_tls_cert is None:
        return None
    return (args.metrics_tls_cert, args.metrics_tls_key)


def _add_metrics(parser: argparse.ArgumentParser) -> None:
    """The flags of the daemons' /metrics and /healthz endpoint."""
    parser.add_argument(
        "--metrics", metavar="ADDR", type=_metrics_address, help="serve /metrics and /healthz on host:port"
    )
    parser.add_argument(
        "--metrics-tls-cert", metavar="FILE", help="serve them over HTTPS only, with this certificate (PEM)"
    )
    parser.add_argument(
        "--metrics-tls-key", metavar="FILE", help="the private key of --metrics-tls-cert (PEM)"
    )
    parser.add_argument(
        "--page-token-file",
        metavar="FILE",
        help="the status page / asks for this file's token (Authorization: Bearer); "
        "without it, / is served on a loopback --metrics address only",
    )


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the agent of one app host until SIGTERM."""
    from consul_operator.daemons.agent import run_agent

    configure_logs(args.log_level, json=args.log_json, daemon="agent", host=args.host)
    return run_agent(agent_config(args))


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """The `AgentConfig` of parsed ``operator agent`` arguments."""
    from consul_operator.daemons.agent import AgentConfig

    return AgentConfig(
        host=args.host,
        advertise=args.advertise,
        consul_addr=args.consul,
        consul_token=args.token,
        docker_host=args.docker,
        cluster=args.cluster,
        layout=Layout(args.services_prefix, args.operator_prefix, args.secrets_prefix, args.config_prefix),
        labels=dict(args.label),
        capacity=args.capacity,
        metrics_addr=args.metrics,
        ttl=args.ttl,
        lock_delay=args.lock_delay,
        lost_grace=args.lost_grace,
        resync=args.resync,
        spread=SpreadSettings(enabled=args.rebalance, settle=args.rebalance_settle),
        consul_tls=consul_tls(args, os.environ),
        metrics_tls=_metrics_tls(args),
        allowed_caps=frozenset().union(*args.allow_cap),
        allowed_host_paths=tuple(sorted(set(args.allow_host_path))),
        page_token_file=args.page_token_file,
        runtime_dir=args.runtime_dir,
        reads_work=not args.read_placements,
        registry_auth=args.registry_auth,
    )


def cmd_lb(args: argparse.Namespace) -> int:
    """Run the load balancer until SIGTERM."""
    from consul_operator.daemons.lb import LBConfig, run_lb

    configure_logs(args.log_level, json=args.log_json, daemon="lb")
    config = LBConfig(
        consul_addr=args.consul,
        consul_token=args.token,
        layout=Layout(args.services_prefix, args.operator_prefix, args.secrets_prefix, args.config_prefix),
        cluster=args.cluster,
        listen=args.listen,
        default_service=args.default_service,
        nginx_dir=Path(args.nginx_dir) if args.nginx_dir else None,
        nginx_binary=args.nginx_binary,
        system_conf=Path(args.system_nginx_conf) if args.system_nginx_conf else None,
        test_cmd=args.nginx_test_cmd,
        reload_cmd=args.nginx_reload_cmd,
        metrics_addr=args.metrics,
        coalesce=args.coalesce,
        resync=args.resync,
        consul_tls=consul_tls(args, os.environ),
        metrics_tls=_metrics_tls(args),
        page_token_file=args.page_token_file,
        hold_last_good=args.hold_last_good,
        floating_address=args.floating_address,
    )
    return run_lb(config)


def _target(args: argparse.Namespace) -> Target:
    return Target(
        ConsulClient(args.consul, args.token, tls=consul_tls(args, os.environ)),
        Layout(args.services_prefix, args.operator_prefix, args.secrets_prefix, args.config_prefix),
        args.cluster,
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Leader, hosts and services: desired, running, healthy, drift, placement, state."""
    color = sys.stdout.isatty() and not args.json
    output: commands.Output = contextlib.nullcontext
    if args.watch:
        # `--watch` runs until stopped: Ctrl-C or SIGTERM (a supervisor, `timeout`), between documents.
        stop = StopBetweenOutputs()
        stop.install()
        output = stop.output
    return commands.status(
        _target(args), args.names, as_json=args.json, watch=args.watch, color=color, output=output
    )


def cmd_describe(args: argparse.Namespace) -> int:
    """One service: spec, placement per host, replicas and recent events."""
    return commands.describe(_target(args), args.name, as_json=args.json)


def cmd_events(args: argparse.Namespace) -> int:
    """Recent events of one service or of all, oldest first; ``--follow`` keeps printing new ones."""
    output: commands.Output = contextlib.nullcontext
    if args.follow:
        stop = StopBetweenOutputs()
        stop.install()
        output = stop.output
    return commands.events(
        _target(args), args.name, since=args.since, follow=args.follow, as_json=args.json, output=output
    )


def cmd_wait(args: argparse.Namespace) -> int:
    """Block until the services are converged, or (``--drained HOST``) until nothing runs on a host."""
    if bool(args.names) == (args.drained is not None):
        print("operator wait: error: give service NAMEs or --drained HOST, not both", file=sys.stderr)
        return EXIT_USAGE
    if args.drained is not None:
        return commands.wait_drained(_target(args), args.drained, timeout=args.timeout)
    return commands.wait(_target(args), args.names, timeout=args.timeout)


def cmd_cordon(args: argparse.Namespace) -> int:
    """``operator cordon HOST``."""
    return commands.cordon(_target(args), args.host)


def cmd_uncordon(args: argparse.Namespace) -> int:
    """``operator uncordon HOST``."""
    return commands.uncordon(_target(args), args.host)


def cmd_drain(args: argparse.Namespace) -> int:
    """``operator drain HOST``."""
    return commands.drain(_target(args), args.host, deadline=args.deadline, force=args.force)


MAX_DRAIN_DEADLINE = 7 * 24 * 3600.0
"""The longest ``operator drain --deadline`` (a week)."""


def _deadline(text: str) -> float:
    """argparse type for a drain's deadline: a duration above 0, at most a week."""
    seconds = _duration(text)
    if not 0 < seconds <= MAX_DRAIN_DEADLINE:
        raise argparse.ArgumentTypeError(f"must be above 0s and at most 168h, got {text!r}")
    return seconds


def cmd_apply(args: argparse.Namespace) -> int:
    """Validate, show the diff, write."""
    return commands.apply(_target(args), args.files)


def cmd_plan(args: argparse.Namespace) -> int:
    """Show what applying would change."""
    return commands.plan(_target(args), args.files)


def cmd_rollback(args: argparse.Namespace) -> int:
    """``operator rollback NAME``."""
    return commands.rollback(_target(args), args.name, timeout=args.timeout)


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete manifests."""
    return commands.delete(_target(args), args.names, volumes=args.volumes)


def _listen(text: str) -> str:
    """argparse type for ADDR:PORT (an IP address and a port)."""
    host, sep, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        ok = sep == ":" and 1 <= int(port) <= 65535
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"must look like ADDR:PORT with an IP address, got {text!r}")
    return text


def _floating_address(text: str) -> str:
    """argparse type for an IP address without a prefix (keepalived's floating address)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an IP address without a prefix (192.168.50.100), got {text!r}"
        ) from None


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error on one line (``operator agent: error: argument --metrics: ...``).

    As for every other usage error of the command: exit 2, one line on stderr; ``--help`` shows usage.
    """

    def error(self, message: str) -> NoReturn:
        """Print one line and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {clean(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line of every subcommand."""
    parser = _Parser(
        prog="operator",
        description="Converge Docker containers on plain hosts to manifests in Consul KV.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check manifest files locally ('-' reads stdin)")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=cmd_validate)

    agent = sub.add_parser("agent", help="run the agent of one app host")
    _add_common(agent, daemon=True)
    agent.add_argument("--host", required=True, type=_host_name, help="this app host's name")
    agent.add_argument(
        "--advertise",
        default="127.0.0.1",
        type=_address,
        help="address to publish container ports on and register in Consul",
    )
    agent.add_argument("--docker", metavar="URL", help="Docker engine (default: $DOCKER_HOST or the socket)")
    agent.add_argument(
        "--label",
        action="append",
        default=[],
        type=_label,
        metavar="KEY=VALUE",
        help="a label of this host, shown by `operator status` (repeatable)",
    )
    agent.add_argument(
        "--capacity",
        type=_capacity,
        default=(None, None),
        metavar="memory=SIZE,cpus=N",
        help="what replicas may take of this host, e.g. memory=8Gi,cpus=4; what is left out is the "
        "engine's memory and CPUs less a reserve (10%%, at least 256Mi of memory)",
    )
    agent.add_argument(
        "--allow-cap",
        action="append",
        default=[],
        type=_capabilities,
        metavar="CAP,...",
        help="capabilities a manifest's cap_add may give replicas here, e.g. NET_ADMIN (default: none; "
        "every replica keeps only CHOWN, SETGID and SETUID of Docker's defaults)",
    )
    agent.add_argument(
        "--allow-host-path",
        action="append",
        default=[],
        type=_host_path,
        metavar="DIR",
        help="a directory whose subdirectories a manifest's volumes may mount (host_path); repeatable "
        "(default: none). Never /, /proc, /sys, /dev or a Docker socket or a directory above one",
    )
    agent.add_argument(
        "--runtime-dir",
        default=os.environ.get("OPERATOR_RUNTIME_DIR", "/run/consul-operator"),
        metavar="DIR",
        help="a directory on a tmpfs where the replicas' secret files are written and mounted from "
        "(default: /run/consul-operator, systemd's RuntimeDirectory)",
    )
    agent.add_argument(
        "--read-placements",
        action="store_true",
        default=os.environ.get("OPERATOR_READ_PLACEMENTS") == "1",
        help="for rolling upgrades only: read every manifest and placement as agents before work keys "
        "did, instead of this host's work key (also OPERATOR_READ_PLACEMENTS=1)",
    )
    agent.add_argument(
        "--registry-auth",
        metavar="FILE",
        help="a Docker config.json whose 'auths' pull images of private registries (read by the agent, "
        "again when it changes; never logged); a manifest's image_pull_secret wins over it",
    )
    _add_metrics(agent)
    agent.add_argument("--ttl", type=_duration, default=3.0, help="TTL of the agent's liveness check (3s)")
    agent.add_argument(
        "--lock-delay", type=_duration, default=1.0, help="Consul lock-delay of the leader session (1s)"
    )
    agent.add_argument(
        "--lost-grace",
        type=_duration,
        default=10.0,
        help="how long a lost host keeps its replicas before they move (10s)",
    )
    agent.add_argument(
        "--rebalance-settle",
        type=_duration,
        default=DEFAULT_SETTLE,
        help="how long a host that returns (or is uncordoned) must stay live before replicas move back "
        "to it (30s)",
    )
    agent.add_argument(
        "--no-rebalance",
        dest="rebalance",
        action="store_false",
        help="as the leader, never move replicas back to a host that returns (cluster-wide; "
        "placement.rebalance: false does it per service)",
    )
    agent.add_argument("--resync", type=_duration, default=60.0, help="safety-net resync period (60s)")
    agent.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    agent.add_argument("--log-json", action="store_true", default=None, help="JSON log lines even on a tty")
    agent.set_defaults(func=cmd_agent)

    lb = sub.add_parser("lb", help="run the load balancer: NGINX upstreams from Consul health")
    _add_common(lb, daemon=True)
    lb.add_argument(
        "--listen", default="127.0.0.1:80", type=_listen, help="NGINX listens here (127.0.0.1:80)"
    )
    lb.add_argument(
        "--default-service",
        type=_host_name,
        help="the service of the default server (else 404 for unknown Host)",
    )
    mode = lb.add_mutually_exclusive_group()
    mode.add_argument("--nginx-dir", default=".run/nginx", help="prefix of the NGINX we manage (.run/nginx)")
    mode.add_argument(
        "--system-nginx-conf",
        metavar="FILE",
        help="drive an existing NGINX instead: write this conf.d file and run the reload command",
    )
    lb.add_argument("--nginx-binary", default="nginx", help="the nginx program (nginx)")
    lb.add_argument("--nginx-test-cmd", default="nginx -t", help="with --system-nginx-conf: the test command")
    lb.add_argument("--nginx-reload-cmd", default="nginx -s reload", help="with --system-nginx-conf: reload")
    _add_metrics(lb)
    lb.add_argument(
        "--coalesce", type=_duration, default=0.2, help="apply bursts of changes together (200ms)"
    )
    lb.add_argument("--resync", type=_duration, default=60.0, help="safety-net resync period (60s)")
    lb.add_argument(
        "--hold-last-good",
        type=_duration,
        default=60.0,
        help="keep a service's last good upstream this long while its agents report none of its "
        "passing instances (status records deleted) (60s)",
    )
    lb.add_argument(
        "--floating-address",
        type=_floating_address,
        default=os.environ.get("OPERATOR_FLOATING_ADDRESS") or None,
        metavar="ADDRESS",
        help="the address keepalived moves between the LB hosts: exported (whether this host holds "
        "it) and shown by `operator status` (default: $OPERATOR_FLOATING_ADDRESS, else none)",
    )
    lb.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    lb.add_argument("--log-json", action="store_true", default=None, help="JSON log lines even on a tty")
    lb.set_defaults(func=cmd_lb)

    status = sub.add_parser("status", help="leader, hosts and every service's state (exit 0 when converged)")
    _add_common(status)
    status.add_argument("names", nargs="*", metavar="NAME", help="only these services")
    status.add_argument("--json", action="store_true", help="stable JSON (fields in docs/status.md)")
    status.add_argument("--watch", action="store_true", help="print again on every change")
    status.set_defaults(func=cmd_status)

    describe = sub.add_parser("describe", help="one service: spec, placement, replicas and recent events")
    _add_common(describe)
    describe.add_argument("name", metavar="NAME")
    describe.add_argument("--json", action="store_true", help="JSON (fields in docs/status.md)")
    describe.set_defaults(func=cmd_describe)

    events = sub.add_parser("events", help="recent events (placed, started, crashed...), oldest first")
    _add_common(events)
    events.add_argument("name", nargs="?", metavar="NAME", help="only this service")
    events.add_argument(
        "--since", type=_duration, default=None, help="only events newer than this (e.g. 10m)"
    )
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.set_defaults(func=cmd_events)

    wait = sub.add_parser(
        "wait",
        help="block until the services are converged, or a host is drained (exit 1 at the timeout)",
    )
    _add_common(wait)
    wait.add_argument("names", nargs="*", metavar="NAME")
    wait.add_argument(
        "--drained", metavar="HOST", type=_host_name, help="instead: until nothing of ours runs on HOST"
    )
    wait.add_argument("--timeout", type=_duration, default=60.0, help="give up after this long (60s)")
    wait.set_defaults(func=cmd_wait)

    apply = sub.add_parser("apply", help="validate manifests, show the diff against KV, write them")
    _add_common(apply)
    apply.add_argument("files", nargs="+", metavar="FILE")
    apply.set_defaults(func=cmd_apply)

    plan = sub.add_parser("plan", help="show what applying manifests would change, per host; writes nothing")
    _add_common(plan)
    plan.add_argument("files", nargs="+", metavar="FILE")
    plan.set_defaults(func=cmd_plan)

    rollback = sub.add_parser("rollback", help="return a service to its previous spec (the leader paces it)")
    _add_common(rollback)
    rollback.add_argument("name", metavar="NAME", type=_host_name)
    rollback.add_argument(
        "--timeout", type=_duration, default=30.0, help="how long the leader has to take the request up (30s)"
    )
    rollback.set_defaults(func=cmd_rollback)

    delete = sub.add_parser("delete", help="delete services: their replicas are drained and removed")
    _add_common(delete)
    delete.add_argument("names", nargs="+", metavar="NAME", type=_host_name)
    delete.add_argument(
        "--volumes",
        action="store_true",
        help="also remove the services' named volumes on every host, once their replicas are gone "
        "(default: the volumes stay, with their data)",
    )
    delete.set_defaults(func=cmd_delete)

    cordon = sub.add_parser("cordon", help="no new replicas on a host (what runs there stays)")
    _add_common(cordon)
    cordon.add_argument("host", metavar="HOST", type=_host_name)
    cordon.set_defaults(func=cmd_cordon)

    drain = sub.add_parser(
        "drain", help="cordon a host and move every replica elsewhere, each replacement passing first"
    )
    _add_common(drain)
    drain.add_argument("host", metavar="HOST", type=_host_name)
    drain.add_argument(
        "--deadline",
        type=_deadline,
        default=300.0,
        help="after this long, what is left moves at once, replacements passing or not (5m)",
    )
    drain.add_argument(
        "--force",
        action="store_true",
        help="past the deadline, also stop replicas that no other host takes (without it they stay, stuck)",
    )
    drain.set_defaults(func=cmd_drain)

    uncordon = sub.add_parser("uncordon", help="a host takes new replicas again (ends a drain)")
    _add_common(uncordon)
    uncordon.add_argument("host", metavar="HOST", type=_host_name)
    uncordon.set_defaults(func=cmd_uncordon)
    return parser


def connection_problem(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """What is wrong with the Consul address and token a command would use (flag, else environment)."""
    if not hasattr(args, "consul"):
        return None
    try:
        Layout(args.services_prefix, args.operator_prefix, args.secrets_prefix, args.config_prefix)
    except ValueError as exc:
        return str(exc)
    address = args.consul if args.consul is not None else environ.get("CONSUL_HTTP_ADDR")
    source = "--consul" if args.consul is not None else "CONSUL_HTTP_ADDR"
    if address is not None:
        try:
            ConsulAddress.parse(address)
        except ValueError as exc:
            return f"{source}: {exc}"
    token = args.token if args.token is not None else environ.get("CONSUL_HTTP_TOKEN")
    source = "--token" if args.token is not None else "CONSUL_HTTP_TOKEN"
    if token:
        try:
            check_token(token)
        except ValueError as exc:
            return f"{source}: {exc}"
    if hasattr(args, "docker"):
        docker_url = args.docker if args.docker is not None else environ.get("DOCKER_HOST")
        source = "--docker" if args.docker is not None else "DOCKER_HOST"
        if docker_url:
            try:
                check_docker_url(docker_url)
            except ValueError as exc:
                return f"{source}: {exc}"
    try:
        tls = consul_tls(args, environ)
    except ValueError as exc:
        return str(exc)
    problem = tls.problem()
    if problem is not None:
        return problem
    if hasattr(args, "metrics_tls_cert"):
        pair = (args.metrics_tls_cert, args.metrics_tls_key)
        if (pair[0] is None) != (pair[1] is None):
            return "--metrics-tls-cert and --metrics-tls-key go together"
        for flag, path in zip(("--metrics-tls-cert", "--metrics-tls-key"), pair, strict=True):
            if path is not None and not os.path.isfile(path):
                return f"{flag} {path}: no such file"
    if getattr(args, "registry_auth", None) is not None:
        from consul_operator.adapters.registry_auth import read_registry_auth  # the agent's module

        try:
            read_registry_auth(args.registry_auth)
        except ValueError as exc:
            return f"--registry-auth {exc}"
    if getattr(args, "page_token_file", None) is not None:
        from consul_operator.adapters.metrics import read_page_token  # the daemons' module

        try:
            read_page_token(args.page_token_file)
        except ValueError as exc:
            return f"--page-token-file {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``operator`` command; returns its exit code."""
    args = build_parser().parse_args(argv)
    problem = connection_problem(args, os.environ)
    if problem is not None:
        # A usage error: one line, no traceback, exit 2 (as argparse does).
        print(f"operator {args.command}: error: {clean(problem)}", file=sys.stderr)
        return EXIT_USAGE
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
