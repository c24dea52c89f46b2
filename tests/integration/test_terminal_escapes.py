"""Escape sequences stored in Consul (a manifest's env and labels, an event's message) never reach a
terminal raw: `operator describe`, `events`, `status`, `plan`, `apply` and `validate` show them escaped."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from consul_operator.core.events import CRASHED, ServiceEvent, record_json
from tests.support.bounds import CONVERGE_S
from tests.support.cluster import Cluster, manifest_yaml, operator
from tests.support.staging import wait_until

OSC52 = "\x1b]52;c;cm0gLXJmIH4K\x07"  # an OSC 52 clipboard write ("rm -rf ~"), ended by BEL
CSI = "\x1b[2J\x1b[31m"  # clear the screen, paint red
RAW = ("\x1b", "\x07", "\x9b")


def _shown_raw(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The raw terminal controls in a command's output (stdout and stderr)."""
    return [c for c in RAW if c in result.stdout + result.stderr]


def test_stored_escapes_are_shown_escaped_by_every_command(
    cluster: Cluster, service_name: str, other_service: str, tmp_path: Path
) -> None:
    """describe, events, status, plan, apply and validate print no raw ESC/BEL/CSI from KV or files."""
    env = {"CLIP": OSC52, "PAINT": CSI + "\x9b2J", "OK": "plain"}
    cluster.put_raw(service_name, manifest_yaml(service_name, 1, env=env))  # YAML escapes: "\e]52..."
    # The same env as raw bytes in KV (anyone with write on services/ can): an invalid manifest,
    # left alone by the agents, but `describe` shows the text as stored.
    raw_name = "v" + uuid.uuid4().hex[:8]
    raw = f'name: {raw_name}\nimage: hello:local\nreplicas: 1\nenv:\n  CLIP: "{OSC52}"\n  PAINT: "{CSI}"\n'
    cluster.put_raw(raw_name, raw)
    # A label no host has (so the other service is unplaceable): the reason quotes it.
    labelled = manifest_yaml(other_service, 1, placement={"labels": {"zone": f"a{CSI}{OSC52}"}})
    cluster.put_raw(other_service, labelled)
    event_key = cluster.layout.events_key(service_name, "host-9")
    forged = ServiceEvent(time.time(), f"host-9{CSI}", service_name, CRASHED, f"exited {OSC52}\x07 {CSI}")
    cluster.consul.kv_put(event_key, record_json([forged]))
    try:
        cluster.wait_converged(service_name, 1)
        wait_until(
            lambda: "lacks label" in operator(cluster, "status", other_service).stdout,
            timeout=CONVERGE_S,
            what=f"{other_service} unplaceable",
        )
        changed = tmp_path / f"{other_service}.yaml"
        changed.write_text(manifest_yaml(other_service, 2, placement={"labels": {"zone": f"b{CSI}"}}))
        runs = {
            "describe": operator(cluster, "describe", service_name),
            "describe-unplaced": operator(cluster, "describe", other_service),
            "describe-raw": operator(cluster, "describe", raw_name),
            "events": operator(cluster, "events", service_name),
            "events-all": operator(cluster, "events"),
            "status": operator(cluster, "status"),
            "plan": operator(cluster, "plan", str(changed)),
            "validate": operator(cluster, "validate", str(changed)),
            "apply": operator(cluster, "apply", str(changed)),
        }
        for what, result in runs.items():
            assert not _shown_raw(result), (what, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr, (what, result.stderr)
        describe = runs["describe"].stdout
        assert 'CLIP: "\\e]52;c;cm0gLXJmIH4K\\a"' in describe  # as stored
        assert 'CLIP: "\\x1b]52;c;cm0gLXJmIH4K\\x07"' in runs["describe-raw"].stdout
        assert "exited \\x1b]52;c;cm0gLXJmIH4K\\x07\\x07" in describe
        assert "exited \\x1b]52;c;cm0gLXJmIH4K\\x07\\x07" in runs["events"].stdout
        assert "host-9\\x1b[2J" in runs["events-all"].stdout
        assert "lacks label zone=a\\x1b[2J\\x1b[31m\\x1b]52" in runs["describe-unplaced"].stdout
        assert "lacks label zone=a\\x1b[2J" in runs["status"].stdout
        assert "zone=b\\x1b[2J" in runs["plan"].stdout
    finally:
        cluster.consul.kv_delete(event_key)
        cluster.delete(raw_name)
