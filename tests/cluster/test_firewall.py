"""Firewall rules instead of a disabled firewall: default-deny nodes become trainable, and
nothing outside the plan opens."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Sandboxes
from helpers import JOBS, tf
from trainfleet.sandbox import cluster as sb

NFT_DEFAULT_DENY = """table inet filter {
  chain input { type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    tcp dport 22 accept
  }
}
"""
IPTABLES_DEFAULT_DENY = ("iptables -A INPUT -i lo -j ACCEPT; "
                         "iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT; "
                         "iptables -A INPUT -p tcp --dport 22 -j ACCEPT; iptables -P INPUT DROP")


@pytest.fixture
def denied(fresh: Sandboxes) -> sb.SandboxState:
    """Two nodes with default-deny inbound: node0 through iptables, node1 through native nftables."""
    state = fresh.make(2, slots=1)
    subprocess.run(["ip", "netns", "exec", state.nodes[0].namespace, "sh", "-c", IPTABLES_DEFAULT_DENY], check=True)
    subprocess.run(["ip", "netns", "exec", state.nodes[1].namespace, "nft", "-f", "-"], input=NFT_DEFAULT_DENY,
                   text=True, check=True)
    return state


def reachable(state: sb.SandboxState, source: int, target: int, port: int) -> str:
    """From a node's namespace: connect to a port that a listener on the target holds."""
    target_node = state.nodes[target]
    listener = subprocess.Popen(["ip", "netns", "exec", target_node.namespace, sys.executable, "-c",
                                 f"import socket,time; s=socket.socket(); s.bind(('0.0.0.0', {port})); s.listen();"
                                 f"print('up', flush=True); time.sleep(20)"], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "up"
        probe = subprocess.run(["ip", "netns", "exec", state.nodes[source].namespace, sys.executable, "-c",
                                f"import socket\ntry:\n socket.create_connection(('{target_node.address}', {port}), 2)"
                                f"\n print('open')\nexcept OSError as e: print(type(e).__name__)"],
                               capture_output=True, text=True, timeout=30)
        return probe.stdout.strip()
    finally:
        listener.kill()
        listener.wait()


def test_ufw_nodes_get_ufw_rules(fresh: Sandboxes) -> None:
    """ufw keeps its own rule files; trainfleet adds to them (and removes) through ufw itself."""
    if shutil.which("ufw") is None:
        missing = "ufw is not installed (`bash scripts/install.sh --tests` installs it)"
        pytest.fail(missing) if os.environ.get("CI") else pytest.skip(missing)
    state = fresh.make(2, slots=1)
    for node in state.nodes:  # inside the node's own mount namespace: its /etc, not this machine's
        subprocess.run(["nsenter", "-t", str(node.sshd_pid), "-a", "sh", "-c",
                        "ufw allow 22/tcp && ufw --force enable"], check=True, capture_output=True)
    assert tf("doctor", "-f", state.fleet_file).returncode == 1
    applied = tf("firewall", "apply", "-f", state.fleet_file)
    assert "node0: ufw: 3 rule(s) added" in applied.stdout, applied.stdout + applied.stderr
    assert tf("doctor", "-f", state.fleet_file).returncode == 0
    revoked = tf("firewall", "revoke", "-f", state.fleet_file)
    assert "node0: ufw: 3 rule(s) removed" in revoked.stdout, revoked.stdout + revoked.stderr
    status = subprocess.run(["nsenter", "-t", str(state.nodes[0].sshd_pid), "-a", "ufw", "status"],
                            capture_output=True, text=True).stdout
    assert "22/tcp" in status and "trainfleet" not in status
    assert tf("doctor", "-f", state.fleet_file).returncode == 1


def test_apply_opens_exactly_the_plan(denied: sb.SandboxState, tmp_path: Path) -> None:
    fleet = denied.fleet_file
    before = tf("doctor", "-f", fleet)
    assert before.returncode == 1 and "DROP" in before.stdout

    applied = tf("firewall", "apply", "-f", fleet)
    assert applied.returncode == 0, applied.stderr
    assert "node0: iptables: 3 rule(s) added" in applied.stdout and "node1: nft: 2 rule(s) added" in applied.stdout
    again = tf("firewall", "apply", "-f", fleet)
    assert "node0: iptables: 0 rule(s) added" in again.stdout and "node1: nft: 0 rule(s) added" in again.stdout

    after = tf("doctor", "-f", fleet)
    assert after.returncode == 0, after.stdout
    run = tf("run", "-f", fleet, "--sync-dir", str(JOBS), "--log-dir", str(tmp_path / "logs"), "ranks.py",
             timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count(" of 2 on ") == 2
    # Outside the plan stays shut: a port below the ephemeral range, from the other fleet node.
    assert reachable(denied, 1, 0, 8080) == "TimeoutError"
    assert reachable(denied, 0, 1, 8080) == "TimeoutError"
    assert reachable(denied, 1, 0, 40000) == "open"

    revoked = tf("firewall", "revoke", "-f", fleet)
    assert revoked.returncode == 0
    assert "node0: iptables: 3 rule(s) removed" in revoked.stdout and "node1: nft: 2 rule(s) removed" in revoked.stdout
    assert reachable(denied, 1, 0, 40000) == "TimeoutError"
    # The node's own rules are all still there.
    rules = subprocess.run(["ip", "netns", "exec", denied.nodes[0].namespace, "iptables", "-S", "INPUT"],
                           capture_output=True, text=True).stdout
    assert "-P INPUT DROP" in rules and "--dport 22 -j ACCEPT" in rules and "trainfleet" not in rules


def connects_from_outside(address: str, port: int) -> str:
    """From this machine: the controller, on the nodes' network but not in the fleet (a
    stranger on the internet, as far as the nodes can tell)."""
    import socket

    try:
        socket.create_connection((address, port), 2).close()
        return "open"
    except OSError as exc:
        return type(exc).__name__


def test_the_job_ports_are_closed_to_strangers_and_revoke_opens_them_again(fresh: Sandboxes, tmp_path: Path) -> None:
    """Nodes with no firewall at all (INPUT policy ACCEPT, as rented machines often come):
    during a job a stranger reaches node 0's rendezvous store; after `firewall apply` it
    cannot, the fleet still can, and the job trains on; `revoke` restores what was there."""
    import re
    import time

    import json

    def exposure(fleet: str) -> list[tuple[str, list[str], str]]:
        found = json.loads(tf("doctor", "-f", fleet, "--json").stdout)["findings"]
        return [(f["verdict"], f["nodes"], f["summary"]) for f in found if f["check"] == "exposure"]

    state = fresh.make(2, slots=1)
    fleet = state.fleet_file
    head = state.nodes[0]
    [(verdict, nodes, summary)] = exposure(fleet)
    assert (verdict, nodes) == ("warn", ["node0", "node1"]), summary
    assert summary == "job ports reachable from outside the fleet (from this machine, which is not a fleet node)"
    shown = tf("doctor", "-f", fleet, "--json").stdout
    assert re.search(r"node0: rendezvous 29500, ephemeral \d+; node1: ephemeral \d+", shown), shown
    started = tf("run", "-f", fleet, "--sync-dir", str(JOBS), "--detach", "--job-id", "tf-closed", "ranks.py",
                 "--tick", "--seconds", "60", timeout=180)
    assert started.returncode == 0, started.stderr
    try:
        assert connects_from_outside(head.address, 29500) == "open"  # torch's store, unauthenticated
        applied = tf("firewall", "apply", "-f", fleet)
        assert applied.returncode == 0, applied.stderr
        assert ("node0: none: 0 rule(s) added (no firewall is active: nothing to open); the job's ports closed to "
                "everyone else (iptables, ip6tables)") in applied.stdout, applied.stdout
        assert connects_from_outside(head.address, 29500) == "TimeoutError"
        assert connects_from_outside(head.address, 22) == "open"  # SSH stays open
        listed = tf("firewall", "plan", "-f", fleet).stdout
        assert "close tcp 29500,32768-60999 to everyone else" in listed
        time.sleep(5)
        shown = tf("status", "-f", fleet, "tf-closed").stdout
        assert "running" in shown, shown  # established connections are untouched
    finally:
        tf("stop", "-f", fleet, "tf-closed")
    # The fleet itself still reaches the job's ports; a stranger reaches none of them.
    assert reachable(state, 1, 0, 40000) == "open"
    assert re.search(r"tick \d+", tf("logs", "-f", fleet, "tf-closed").stdout)
    assert exposure(fleet) == [("ok", ["node0", "node1"], "job ports closed to this machine (not a fleet node)")]
    revoked = tf("firewall", "revoke", "-f", fleet)
    assert revoked.returncode == 0, revoked.stderr
    assert "node0: iptables: 0 rule(s) removed; the job's ports no longer closed (iptables, ip6tables)" in \
        revoked.stdout, revoked.stdout
    for node in state.nodes:
        rules = subprocess.run(["ip", "netns", "exec", node.namespace, "iptables", "-S"], capture_output=True,
                               text=True).stdout
        assert rules.splitlines() == ["-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT"], rules
    listener = subprocess.Popen(["ip", "netns", "exec", head.namespace, sys.executable, "-c",
                                 "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
                                 "socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 29500)); s.listen();"
                                 "print('up', flush=True); time.sleep(20)"], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "up"
        assert connects_from_outside(head.address, 29500) == "open"
    finally:
        listener.kill()
        listener.wait()


def test_a_fleet_file_that_asks_for_closed_ports_gets_them_before_the_job_starts(fresh: Sandboxes,
                                                                                 tmp_path: Path) -> None:
    """`firewall: closed`: `run` closes the job's ports to everyone but the fleet before the
    rendezvous listens; a stranger never reaches it, the job trains, and the rules stay
    (for the next job) until `firewall revoke`."""
    import yaml

    state = fresh.make(2, slots=1)
    data = yaml.safe_load(Path(state.fleet_file).read_text())
    data["firewall"] = "closed"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(data, sort_keys=False))
    started = tf("run", "-f", str(fleet), "--sync-dir", str(JOBS), "--detach", "--job-id", "tf-asked-closed",
                 "ranks.py", "--tick", "--seconds", "20", timeout=180)
    assert started.returncode == 0, started.stderr
    assert "firewall: the job's ports closed to everyone but the fleet on node[0-1]" in started.stderr, started.stderr
    try:
        assert connects_from_outside(state.nodes[0].address, 29500) == "TimeoutError"
        assert connects_from_outside(state.nodes[0].address, 22) == "open"
    finally:
        tf("stop", "-f", str(fleet), "tf-asked-closed")
    import re

    assert re.search(r"tick \d+", tf("logs", "-f", str(fleet), "tf-asked-closed").stdout)
    again = tf("run", "-f", str(fleet), "--sync-dir", str(JOBS), "ranks.py", timeout=180)  # idempotent
    assert again.returncode == 0, again.stderr
    tf("firewall", "revoke", "-f", str(fleet), check=True)
    rules = subprocess.run(["ip", "netns", "exec", state.nodes[0].namespace, "iptables", "-S"], capture_output=True,
                           text=True).stdout
    assert "TF-" not in rules, rules
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**data, "firewall": "shut"}, sort_keys=False))
    refused = tf("check", "-f", str(bad))
    assert refused.returncode == 2 and "firewall" in refused.stderr and refused.stderr.count("\n") == 1
