"""What can be checked of the real-host deployment without VMs: Vagrantfile, units, configs, scripts.

The Vagrantfile is parsed by Debian's Ruby and evaluated against a stub of
Vagrant's configuration API; the systemd units are checked by
`systemd-analyze verify` where that tool exists and always by our own parse
(sections, directives, restart policies, and command lines that the
`operator` CLI accepts); the Consul configs by `consul validate`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from consul_operator.cli.main import build_parser
from tests.support.staging import ROOT, tool

DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
HOST_CONFIGS = sorted((DEPLOY / "consul" / "hosts").glob("*.hcl"))
TOPOLOGY = {
    "host-1": ("192.168.50.101", "app"),
    "host-2": ("192.168.50.102", "app"),
    "host-3": ("192.168.50.103", "lb"),
    "host-4": ("192.168.50.104", "lb"),
}

# Evaluates the Vagrantfile against a recording stub of Vagrant's API and prints
# what it configured as JSON. Nothing of Vagrant is needed, nothing is started.
VAGRANT_STUB = r"""
require "json"
class Recorder
  attr_reader :calls, :children
  def initialize; @calls = []; @children = {}; end
  def method_missing(name, *args, **kwargs, &block)
    key = name.to_s
    if key.end_with?("=")
      @calls << [key.chomp("="), args.first]
      return args.first
    end
    child = (@children[key] ||= Recorder.new)
    @calls << [key, args, kwargs.transform_keys(&:to_s)] unless args.empty? && kwargs.empty?
    if block
      sub = Recorder.new
      @calls << ["#{key}:block", args, sub]
      block.call(sub)
    end
    child
  end
  def respond_to_missing?(*) = true
  def to_h
    { "calls" => @calls.map { |c| c.map { |x| x.is_a?(Recorder) ? x.to_h : x } },
      "children" => @children.transform_values(&:to_h) }
  end
end
module Vagrant
  def self.configure(version)
    raise "config version #{version}" unless version == "2"
    root = Recorder.new
    yield root
    puts JSON.generate(root.to_h)
  end
end
load ARGV[0]
"""


def vagrant_config(env: dict[str, str] | None = None) -> dict[str, Any]:
    """What the Vagrantfile configures, recorded by the stub (``env``: more of `vagrant up`'s environment)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("CONSUL_TLS", "CONSUL_GOSSIP", "CONSUL_ACL")}
    with_stub = subprocess.run(
        [tool("ruby"), "-e", VAGRANT_STUB, str(ROOT / "Vagrantfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**clean, **(env or {})},
    )
    return dict(json.loads(with_stub.stdout))


def test_vagrantfile_parses_with_ruby() -> None:
    """`ruby -c Vagrantfile` says Syntax OK."""
    result = subprocess.run(
        [tool("ruby"), "-c", str(ROOT / "Vagrantfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Syntax OK"


def test_vagrantfile_defines_the_four_hosts() -> None:
    """Debian 12 boxes host-1..4 on 192.168.50.101-104, each provisioned by provision.sh with its role;
    the LB hosts with the floating address and each other as VRRP peers."""
    vm = vagrant_config()["children"]["vm"]
    assert ["box", "debian/bookworm64"] in vm["calls"]
    machines = {call[1][0]: call[2] for call in vm["calls"] if call[0] == "define:block"}
    assert sorted(machines) == sorted(TOPOLOGY)
    for name, (ip, role) in TOPOLOGY.items():
        node_vm = machines[name]["children"]["vm"]
        assert ["hostname", name] in node_vm["calls"]
        network = [c for c in node_vm["calls"] if c[0] == "network"]
        assert network == [["network", ["private_network"], {"ip": ip}]]
        provisions = [c for c in node_vm["calls"] if c[0] == "provision"]
        assert len(provisions) == 1
        _, args, options = provisions[0]
        assert args == ["shell"]
        assert options["inline"] == f"bash /vagrant/scripts/provision.sh {role}"
        assert options["env"]["NODE_NAME"] == name
        assert options["env"]["NODE_ADDR"] == ip
        floating = {k: v for k, v in options["env"].items() if k.startswith("LB_")}
        expected = {"LB_FLOATING_ADDRESS": "192.168.50.100/24", "LB_PEERS": "192.168.50.103 192.168.50.104"}
        assert floating == (expected if role == "lb" else {})


def provision_env(env: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The environment each VM's provision.sh gets."""
    vm = vagrant_config(env)["children"]["vm"]
    machines = [call[2] for call in vm["calls"] if call[0] == "define:block"]
    return [c[2]["env"] for m in machines for c in m["children"]["vm"]["calls"] if c[0] == "provision"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {}, {"CONSUL_TLS": "1", "CONSUL_GOSSIP": "1", "CONSUL_ACL": "1"}, id="secured-by-default"
        ),
        pytest.param(
            {"CONSUL_TLS": "0"},
            {"CONSUL_TLS": "0", "CONSUL_GOSSIP": "1", "CONSUL_ACL": "1"},
            id="tls-off-explicitly",
        ),
        pytest.param(
            {"CONSUL_ACL": "0", "CONSUL_GOSSIP": "0"},
            {"CONSUL_TLS": "1", "CONSUL_GOSSIP": "0", "CONSUL_ACL": "0"},
            id="acl-and-gossip-off",
        ),
    ],
)
def test_vagrant_up_is_secured_unless_turned_off(env: dict[str, str], expected: dict[str, str]) -> None:
    """Every VM is provisioned with TLS, gossip encryption and ACLs on; only an explicit 0 turns one off."""
    for provisioned in provision_env(env):
        assert {k: provisioned[k] for k in expected} == expected


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: section -> [(directive, value)], continuation lines joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{number}: bad section header {line!r}"
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: not a directive: {line!r}"
        assert re.fullmatch(r"[A-Z][A-Za-z]+", key.strip()), f"{path.name}:{number}: bad directive {key!r}"
        current.append((key.strip(), value.strip()))
    assert not pending, f"{path.name}: ends in a continuation"
    return sections


# The directives these units may use, per section (systemd.unit(5), systemd.service(5),
# systemd.exec(5), systemd.kill(5)): a typo is an error here, as in systemd-analyze verify.
KNOWN = {
    "Unit": {"Description", "Documentation", "Wants", "After", "Requires", "ConditionFileNotEmpty"},
    "Service": {
        "Type", "User", "Group", "SupplementaryGroups", "Environment", "EnvironmentFile", "ExecStart",
        "ExecStartPost", "ExecReload", "KillMode", "KillSignal", "Restart", "RestartSec", "TimeoutStopSec",
        "LimitNOFILE",
        "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths",
        "RuntimeDirectory", "RuntimeDirectoryMode", "RuntimeDirectoryPreserve", "AmbientCapabilities",
        "CapabilityBoundingSet",
    },
    "Install": {"WantedBy"},
}  # fmt: skip


def unit_command(path: Path) -> list[str]:
    """The unit's ExecStart as argv, with its Environment= defaults and the env file's values filled in."""
    service = dict(parse_unit(path)["Service"])
    env: dict[str, str] = {}
    for key, value in parse_unit(path)["Service"]:
        if key == "Environment":
            name, _, val = value.partition("=")
            env[name] = val.replace("%l", "host-1")
    env_file = DEPLOY / "env" / path.stem
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line and not line.startswith("#"):
                name, _, val = line.partition("=")
                env[name] = val
    argv: list[str] = []
    for word in shlex.split(service["ExecStart"]):
        whole = re.fullmatch(r"\$\{?([A-Z_]+)\}?", word)
        if whole and word.startswith("${"):
            argv.append(env[whole.group(1)])  # ${VAR}: one word
        elif whole:
            argv.extend(env[whole.group(1)].split())  # $VAR: split at white space
        else:
            argv.append(word)
    return argv


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_file_is_well_formed(unit: Path) -> None:
    """Each unit has [Unit], [Service] and [Install], known directives only, and a restart policy."""
    sections = parse_unit(unit)
    assert sorted(sections) == ["Install", "Service", "Unit"]
    for section, directives in sections.items():
        unknown = {key for key, _ in directives} - KNOWN[section]
        assert not unknown, f"{unit.name}: unknown directives in [{section}]: {unknown}"
    service = dict(sections["Service"])
    assert service["Restart"] in ("always", "on-failure")
    assert service["Type"] == "exec"
    assert Path(shlex.split(service["ExecStart"])[0]).is_absolute()
    assert dict(sections["Install"])["WantedBy"] == "multi-user.target"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts every unit, printing nothing, where the tool exists.

    It checks that the programs exist, so it runs against a root of its own:
    systemd's unit tree, stand-ins for /usr/local/bin/{consul,operator} and
    kill. Where systemd-analyze is missing, the well-formedness test above
    (our own parse) is what checks the units.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        assert all(parse_unit(u) for u in UNITS)  # our parse, which always runs
        return
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for program in ("usr/local/bin/consul", "usr/local/bin/operator", "bin/kill"):
        path = root / program
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    units_dir = root / "etc/systemd/system"
    units_dir.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, units_dir / unit.name)
    result = subprocess.run(
        [analyze, "verify", f"--root={root}", *(u.name for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Unknown directives or bad values are only warnings (exit 0): any output is a failure.
    assert result.stdout + result.stderr == ""

    broken = units_dir / "operator-agent.service"
    broken.write_text(broken.read_text().replace("Restart=always", "Restart=sometimes"))
    result = subprocess.run(
        [analyze, "verify", f"--root={root}", broken.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "restart specifier" in result.stderr, "verify no longer notices a bad value"


@pytest.mark.parametrize("unit", [u for u in UNITS if u.stem.startswith("operator-")], ids=lambda u: u.name)
def test_unit_runs_a_command_the_cli_accepts(unit: Path) -> None:
    """The operator units' ExecStart, with their settings filled in, parses with our CLI."""
    argv = unit_command(unit)
    assert argv[0] == "/usr/local/bin/operator"
    args = build_parser().parse_args(argv[1:])
    assert args.command == unit.stem.removeprefix("operator-")
    if args.command == "agent":
        assert args.host == "host-1"
        assert args.log_json
    else:
        assert args.system_nginx_conf == "/etc/nginx/conf.d/consul-operator.conf"
        assert args.nginx_reload_cmd == "/usr/bin/systemctl reload nginx.service"
        assert args.default_service == "simple"


def consul_validate(*files: Path) -> subprocess.CompletedProcess[str]:
    """`consul validate FILES...`."""
    return subprocess.run(
        [tool("consul"), "validate", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("host", HOST_CONFIGS, ids=[h.stem for h in HOST_CONFIGS])
@pytest.mark.parametrize("acl", [False, True], ids=["no-acl", "acl"])
def test_consul_config_validates(host: Path, acl: bool) -> None:
    """Each host's Consul config (common + host, with or without acl.hcl) passes `consul validate`."""
    files = [DEPLOY / "consul" / "consul.hcl", host] + ([DEPLOY / "consul" / "acl.hcl"] if acl else [])
    result = consul_validate(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration is valid!" in result.stdout


def test_secured_consul_config_validates(tmp_path: Path) -> None:
    """The secured Consul config (acl.hcl, tls.hcl, consul-secrets.sh's certificates and key) is valid."""
    secrets = tmp_path / "secrets"
    made = subprocess.run(
        ["bash", str(ROOT / "scripts" / "consul-secrets.sh"), str(secrets), "host-1=192.168.50.101"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "CONSUL": tool("consul")},
    )
    assert made.returncode == 0, made.stderr
    modes = {p.name: p.stat().st_mode & 0o777 for p in secrets.iterdir()}
    assert all(
        mode == 0o600 for name, mode in modes.items() if name.endswith("-key.pem") or name == "gossip.key"
    )
    tls = (DEPLOY / "consul" / "tls.hcl").read_text()
    for installed, made_file in (
        ("/etc/consul.d/tls/ca.pem", "consul-agent-ca.pem"),
        ("/etc/consul.d/tls/server.pem", "host-1-server.pem"),
        ("/etc/consul.d/tls/server-key.pem", "host-1-server-key.pem"),
    ):
        assert installed in tls
        tls = tls.replace(installed, str(secrets / made_file))
    (tmp_path / "tls.hcl").write_text(tls)
    (tmp_path / "encrypt.hcl").write_text(f'encrypt = "{(secrets / "gossip.key").read_text().strip()}"\n')
    result = consul_validate(
        DEPLOY / "consul" / "consul.hcl",
        HOST_CONFIGS[0],
        DEPLOY / "consul" / "acl.hcl",
        tmp_path / "tls.hcl",
        tmp_path / "encrypt.hcl",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration is valid!" in result.stdout


def test_consul_validate_refuses_a_broken_config(tmp_path: Path) -> None:
    """`consul validate` really checks: a misspelt ACL setting in a copy of acl.hcl is refused."""
    broken = tmp_path / "acl.hcl"
    broken.write_text((DEPLOY / "consul" / "acl.hcl").read_text().replace("default_policy", "default_polcy"))
    result = consul_validate(DEPLOY / "consul" / "consul.hcl", HOST_CONFIGS[0], broken)
    assert result.returncode != 0
    assert "default_polcy" in result.stdout + result.stderr


def test_host_configs_match_the_topology() -> None:
    """deploy/consul/hosts/ has host-1..4 bound to 192.168.50.101..104, each joining the three servers;
    host-4 (the second LB) is a client agent."""
    assert [h.stem for h in HOST_CONFIGS] == sorted(TOPOLOGY)
    for host in HOST_CONFIGS:
        text = host.read_text()
        ip = TOPOLOGY[host.stem][0]
        assert f'node_name = "{host.stem}"' in text
        assert f'bind_addr = "{ip}"' in text
        assert 'retry_join = ["192.168.50.101", "192.168.50.102", "192.168.50.103"]' in text
        assert ("server = false" in text) == (host.stem == "host-4")
    common = (DEPLOY / "consul" / "consul.hcl").read_text()
    assert "bootstrap_expect = 3" in common
    assert "retry_join =" not in common  # the addresses are the hosts' (the node environment has others)


def rules_of(policy: str) -> str:
    """A policy file without its comments."""
    return "\n".join(
        line for line in (DEPLOY / "acl" / policy).read_text().splitlines() if not line.startswith("#")
    )


def test_lb_policy_reads_and_writes_only_its_events() -> None:
    """The LB's policy reads, and writes nothing but operator/events/ (its own events) and its own
    registration (service operator-lb); the agent's writes only operator/ of the KV store."""
    lb = rules_of("operator-lb.hcl")
    assert re.findall(r'(\w+_prefix) "([^"]*)" \{\n  policy = "write"', lb) == [
        ("key_prefix", "operator/events/")
    ]
    assert re.findall(r'(\w+) "([^"]*)" \{\n  policy = "write"', lb) == [
        ("key_prefix", "operator/events/"),
        ("service", "operator-lb"),
    ]
    assert set(re.findall(r'policy = "(\w+)"', lb)) == {"read", "write"}
    agent = rules_of("operator-agent.hcl")
    assert re.findall(r'key_prefix "([^"]*)" \{\n  policy = "write"', agent) == ["operator/"]
    assert 'key_prefix "services/" {\n  policy = "read"' in agent


@pytest.mark.parametrize(
    "script",
    [
        "provision.sh",
        "provision-test.sh",
        "acl-bootstrap.sh",
        "consul-secrets.sh",
        "deps.sh",
        "staging.sh",
        "nodes.sh",
    ],
)
def test_shell_scripts_parse(script: str) -> None:
    """`bash -n` accepts the install and staging scripts."""
    result = subprocess.run(
        ["bash", "-n", str(ROOT / "scripts" / script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_provision_refuses_an_unknown_role() -> None:
    """provision.sh says how it is used, and does nothing, for a role other than app or lb."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "provision.sh"), "web"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_deps_installs_consul_under_a_prefix(tmp_path: Path) -> None:
    """deps.sh with PREFIX and DEPS_STEPS=consul puts consul in PREFIX/bin, and a second run finds it."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PREFIX": str(tmp_path), "DEPS_STEPS": "consul"}
    first = subprocess.run(
        ["bash", str(ROOT / "scripts" / "deps.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    consul = tmp_path / "bin" / "consul"
    version = subprocess.run([str(consul), "version"], capture_output=True, text=True, timeout=30, check=True)
    assert version.stdout.startswith("Consul v1.")
    second = subprocess.run(
        ["bash", str(ROOT / "scripts" / "deps.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert f"consul present: {consul}" in second.stdout
    assert "Debian packages" not in first.stdout + second.stdout  # only the step asked for
