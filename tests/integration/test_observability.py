"""Seeing the system: a real Prometheus scraping the daemons; status, wait, apply, plan and delete."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from consul_operator.core.status import JSON_FIELDS
from tests.support.bounds import CONVERGE_S, PROCESS_S, PROMETHEUS_S, REMOVAL_S
from tests.support.cluster import Cluster, manifest_yaml
from tests.support.cluster import operator as run_operator
from tests.support.staging import HOSTS, ROOT, pid_alive, tool, wait_until

# On the environment's own first address, so that two checkouts' runs never clash.
PROMETHEUS_PORT = 9091
DEPLOY = ROOT / "deploy" / "prometheus"
# Replicas that take a few seconds to pass their check: drift stays above 0 long
# enough for a 1 s scrape to see it.
SLOW_START = ["sh", "-c", "sleep 4; exec sh /start.sh"]


def operator(cluster: Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI against the test environment, for this environment's cluster only."""
    return run_operator(cluster, args[0], "--cluster", cluster.staging.name, *args[1:], stdin=stdin)


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with the example config, pointed at the test environment, scraping every second."""
    work = tmp_path_factory.mktemp("prometheus")
    listen = f"{cluster.staging.addresses[0]}:{PROMETHEUS_PORT}"
    config = (DEPLOY / "prometheus.yml").read_text()
    # One pass, whole addresses: replacing one by one would turn 127.0.0.11 into
    # 127.0.0.121 and then that into 127.0.0.1221 when the test addresses are 127.0.0.12x.
    ours = dict(zip(("127.0.0.11", "127.0.0.12", "127.0.0.13"), cluster.staging.addresses, strict=True))
    config = re.sub(r"127\.0\.0\.1[123](?=:)", lambda m: ours[m.group(0)], config)
    config = config.replace("scrape_interval: 5s", "scrape_interval: 1s").replace(
        "evaluation_interval: 5s", "evaluation_interval: 1s"
    )
    (work / "prometheus.yml").write_text(config)
    (work / "alerts.yml").write_text((DEPLOY / "alerts.yml").read_text())
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address={listen}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "prometheus.log", "wb"),  # noqa: SIM115 - the child owns it
    )
    try:
        wait_until(lambda: _get(f"http://{listen}/-/ready"), timeout=PROCESS_S, what="Prometheus to be ready")
        yield f"http://{listen}"
    finally:
        proc.terminate()
        proc.wait(30)
        assert not pid_alive(proc.pid)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def query(prometheus: str, promql: str) -> list[Any]:
    """An instant query's result vector."""
    body = json.loads(_get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_sees_drift_go_to_zero(cluster: Cluster, service_name: str, prometheus: str) -> None:
    """A real Prometheus scraping the daemons sees operator_drift_replicas go from above 0 to 0."""
    wait_until(
        lambda: len(query(prometheus, 'up{job="consul-operator"} == 1')) == 3,
        timeout=PROMETHEUS_S,
        what="3 healthy targets",
    )
    cluster.put(service_name, 2, command=SLOW_START)
    drift = f'max(operator_drift_replicas{{service="{service_name}"}})'
    wait_until(
        lambda: [float(r["value"][1]) for r in query(prometheus, drift)] == [2.0],
        timeout=PROMETHEUS_S,
        what="drift 2",
    )
    cluster.wait_converged(service_name, 2)
    wait_until(
        lambda: [float(r["value"][1]) for r in query(prometheus, drift)] == [0.0],
        timeout=PROMETHEUS_S,
        what="drift 0",
    )
    seen = query(prometheus, f"max_over_time({drift}[5m:1s])")
    assert float(seen[0]["value"][1]) > 0


def test_every_metrics_endpoint_passes_promtool(cluster: Cluster) -> None:
    """`promtool check metrics` accepts /metrics of both agents and the LB, and /healthz answers."""
    for address in cluster.staging.addresses:
        text = _get(f"http://{address}:9810/metrics")
        check = subprocess.run(
            [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, f"{address}: {check.stdout}{check.stderr}"
        assert _get(f"http://{address}:9810/healthz") == "ok\n"
        assert "operator_reconcile_duration_seconds_bucket" in text


def test_example_prometheus_files_pass_promtool() -> None:
    """The example prometheus.yml and alerts.yml in deploy/prometheus/ pass `promtool check`."""
    for args in (
        ["check", "config", str(DEPLOY / "prometheus.yml")],
        ["check", "rules", str(DEPLOY / "alerts.yml")],
    ):
        check = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr


def test_every_alert_fires_and_stays_silent_under_promtool() -> None:
    """`promtool test rules` passes alerts_test.yml, which has a firing and a silent case for every alert."""
    alerts = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    cases = yaml.safe_load((DEPLOY / "alerts_test.yml").read_text())
    checks = [check for test in cases["tests"] for check in test["alert_rule_test"]]
    fired = {check["alertname"] for check in checks if check["exp_alerts"]}
    silent = {check["alertname"] for check in checks if not check["exp_alerts"]}
    assert names - fired == set(), "alerts without a case where they fire"
    assert names - silent == set(), "alerts without a case where they stay silent"
    result = subprocess.run(
        [tool("promtool"), "test", "rules", str(DEPLOY / "alerts_test.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _check_fields(doc: dict[str, Any]) -> None:
    """The JSON has exactly the documented fields at every level."""
    assert set(doc) == set(JSON_FIELDS["top"])
    assert set(doc["leader"]) == set(JSON_FIELDS["leader"])
    for host in doc["hosts"]:
        assert set(host) == set(JSON_FIELDS["host"])
    for service in doc["services"]:
        assert set(service) == set(JSON_FIELDS["service"])
        for placement in service["placement"].values():
            assert set(placement) == set(JSON_FIELDS["placement"])
        if service["rollout"] is not None:
            assert set(service["rollout"]) == set(JSON_FIELDS["rollout"])


def test_status_json_for_converged_invalid_unplaceable_and_progressing(cluster: Cluster) -> None:
    """`operator status --json`: each state, with the documented fields; exit 0 only when converged."""
    names = {
        state: f"s{state[:4]}{uuid.uuid4().hex[:6]}"
        for state in ("converged", "invalid", "unplaceable", "progress")
    }
    cluster.put(names["converged"], 2)
    cluster.put(names["invalid"], 1)
    cluster.put(names["unplaceable"], 3, placement={"max_per_host": 1})
    try:
        cluster.wait_converged(names["converged"], 2)
        cluster.wait_converged(names["invalid"], 1)
        cluster.put_raw(names["invalid"], "name: [broken\n")
        cluster.put(names["progress"], 1, command=["sh", "-c", "sleep 60"])  # runs, never passes

        def states() -> dict[str, str]:
            result = operator(cluster, "status", "--json")
            doc = json.loads(result.stdout)
            _check_fields(doc)
            return {s["name"]: s["state"] for s in doc["services"]}

        wait_until(
            lambda: (
                (s := states()).get(names["converged"]) == "Converged"
                and s.get(names["invalid"], "").startswith("Invalid: YAML syntax error")
                and s.get(names["unplaceable"]) == "Unplaceable"
                and s.get(names["progress"]) == "Progressing"
            ),
            timeout=CONVERGE_S,
            what="the four states",
        )
        doc = json.loads(operator(cluster, "status", "--json", names["converged"]).stdout)
        (svc,) = doc["services"]
        assert (svc["desired"], svc["running"], svc["healthy"], svc["drift"]) == (2, 2, 2, 0)
        assert svc["placement"] == {
            "host-1": {"desired": 1, "running": 1, "healthy": 1},
            "host-2": {"desired": 1, "running": 1, "healthy": 1},
        }
        assert doc["leader"]["host"] in HOSTS
        assert {h["name"]: h["live"] for h in doc["hosts"]} == {"host-1": True, "host-2": True}

        assert operator(cluster, "status", names["converged"]).returncode == 0
        table = operator(cluster, "status", names["converged"], names["unplaceable"])
        assert table.returncode == 1
        assert "Unplaceable" in table.stdout and "\x1b" not in table.stdout
        assert "host-1 1/1" in table.stdout
    finally:
        for name in names.values():
            cluster.delete(name)
        for name in names.values():
            wait_until(
                lambda: not cluster.containers(name, all_states=True),  # noqa: B023
                timeout=REMOVAL_S,
                what="cleanup",
            )


def test_wait_exits_0_when_converged_and_1_at_timeout(cluster: Cluster, service_name: str) -> None:
    """`operator wait`: 0 once converged; for a service that cannot converge, 1 at the timeout, saying why."""
    cluster.put(service_name, 2)
    done = operator(cluster, "wait", service_name, "--timeout", f"{CONVERGE_S:g}s")
    assert done.returncode == 0, done.stderr
    assert cluster.converged(service_name, 2)

    cluster.put(service_name, 3, placement={"hosts": ["host-1"], "max_per_host": 2})
    stuck = operator(cluster, "wait", service_name, "--timeout", "3s")
    assert stuck.returncode == 1
    assert "timed out after 3s" in stuck.stderr and service_name in stuck.stderr


def test_apply_refuses_a_bad_file_and_leaves_kv_untouched(
    cluster: Cluster, service_name: str, tmp_path: Path
) -> None:
    """`operator apply` of an invalid file writes nothing; of a valid one shows the diff and writes it."""
    good = tmp_path / "good.yaml"
    good.write_text(manifest_yaml(service_name, 1))
    bad = tmp_path / "bad.yaml"
    bad.write_text(manifest_yaml(service_name, 1).replace("replicas: 1", "replicas: -1"))

    refused = operator(cluster, "apply", str(good), str(bad))
    assert refused.returncode == 1
    assert "replicas:" in refused.stderr and "nothing written" in refused.stderr
    assert cluster.consul.kv_get(f"services/{service_name}").value is None

    created = operator(cluster, "apply", str(good))
    assert created.returncode == 0 and f"{service_name}: created" in created.stdout
    entry = cluster.consul.kv_get(f"services/{service_name}").value
    assert entry is not None and entry.value == good.read_bytes()

    bigger = tmp_path / "bigger.yaml"
    bigger.write_text(manifest_yaml(service_name, 2))
    plan = operator(cluster, "plan", str(bigger))
    assert plan.returncode == 0 and "replicas: 1 -> 2" in plan.stdout
    assert cluster.consul.kv_get(f"services/{service_name}").value == entry, "plan must write nothing"

    changed = operator(cluster, "apply", str(bigger))
    assert changed.returncode == 0
    assert "-replicas: 1" in changed.stdout and "+replicas: 2" in changed.stdout
    assert operator(cluster, "apply", str(bigger)).stdout.strip() == f"{service_name}: unchanged"

    deleted = operator(cluster, "delete", service_name)
    assert deleted.returncode == 0
    assert cluster.consul.kv_get(f"services/{service_name}").value is None
    assert operator(cluster, "delete", service_name).returncode == 1
