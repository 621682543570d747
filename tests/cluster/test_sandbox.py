"""The sandbox is a real cluster: separate hostnames, homes, /tmp and process tables,
and `down` leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from conftest import require_sandbox
from helpers import alive, tf, unique_name
from trainfleet.sandbox import cluster as sb



def exec_json(fleet: Path, command: str) -> dict[str, dict[str, object]]:
    completed = tf("exec", "-f", str(fleet), "--json", "--", command)
    return {entry["node"]: entry for entry in json.loads(completed.stdout)["nodes"]}


def test_status_json_lists_every_node(cluster3: sb.SandboxState) -> None:
    completed = tf("sandbox", "status", "--name", cluster3.name, "--json", check=True)
    report = json.loads(completed.stdout)
    assert [n["name"] for n in report["nodes"]] == ["node0", "node1", "node2"]
    for node in report["nodes"]:
        assert node["namespace"] == f"tf-{cluster3.name}-{node['name']}" and node["namespace_exists"]
        assert node["sshd_running"] and alive(node["sshd_pid"])
        assert node["address"].startswith(cluster3.subnet.rsplit(".", 1)[0])


def test_nodes_are_separate_machines(fleet3: Path, cluster3: sb.SandboxState) -> None:
    hostnames = exec_json(fleet3, "hostname")
    assert {n: r["stdout"].strip() for n, r in hostnames.items()} == {
        f"node{i}": f"{cluster3.name}-node{i}" for i in range(3)}
    # No node can resolve another's hostname, as on rented clouds.
    resolved = exec_json(fleet3, f"getent hosts {cluster3.name}-node1")
    assert resolved["node0"]["exit_status"] != 0
    # Each node has its own ~/.ssh and /tmp.
    tf("exec", "-f", str(fleet3), "-n", "node0", "--", "touch ~/.ssh/marker /tmp/marker", check=True)
    seen = exec_json(fleet3, "ls ~/.ssh/marker /tmp/marker 2>/dev/null | wc -l")
    assert {n: r["stdout"].strip() for n, r in seen.items()} == {"node0": "2", "node1": "0", "node2": "0"}
    # And its own process table: the controller's processes are not in it.
    processes = exec_json(fleet3, "ps -e -o pid=")
    pids = {int(p) for p in processes["node1"]["stdout"].split()}
    assert os.getpid() not in pids and 1 in pids and len(pids) < 20


def namespaces_of(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"tf-{name}-")]


def test_private_network_second_sandbox_and_clean_down(tmp_path: Path, cluster3: sb.SandboxState) -> None:
    name = unique_name("p")
    out = tmp_path / "private.yaml"
    completed = tf("sandbox", "up", "--nodes", "2", "--name", name, "--out", str(out), "--private-network")
    try:
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.strip() == str(out)
        state = sb.load_state(name)
        # A second sandbox beside the session's one, on subnets that collide with nothing.
        assert state.subnet != cluster3.subnet and state.private_subnet
        from trainfleet.fleet import load_fleet

        fleet = load_fleet(out)
        assert [n.interface for n in fleet.nodes] == ["ens5", "enp6s0"]
        assert all(n.address != n.host for n in fleet.nodes)
        # Nodes reach each other on the private network; the controller cannot.
        peer = fleet.nodes[1].address
        # (sshd listens on the public address only, so a refusal proves the packet arrived.)
        probe = (f"{sys.executable} -c \"import socket\ntry: socket.create_connection(('{peer}', 22), 3)\n"
                 f"except ConnectionRefusedError: print('arrived')\"")
        reach = tf("exec", "-f", str(out), "-n", "node0", "--", probe)
        assert reach.returncode == 0 and "arrived" in reach.stdout, reach.stderr
        # The controller has no path into the training network (asked of the routing
        # table, not by sending packets: those would leave by this machine's default route).
        route = subprocess.run(["ip", "-o", "route", "get", peer], capture_output=True, text=True).stdout
        assert f"tfc-{name}" not in route
        assert subprocess.run(["ip", "-o", "route", "get", fleet.nodes[1].host], capture_output=True,
                              text=True).stdout.split()[2] == f"tfc-{name}"
        sshd_pids = [n.sshd_pid for n in state.nodes]
    finally:
        down = tf("sandbox", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert namespaces_of(name) == []
    assert subprocess.run(["ip", "link", "show", f"tfc-{name}"], capture_output=True).returncode != 0
    assert not (sb.sandbox_root() / name).exists() and not out.exists()
    assert not any(alive(pid) for pid in sshd_pids)
    again = tf("sandbox", "down", "--name", name)
    assert again.returncode == 1 and f"no sandbox named '{name}'" in again.stderr


def test_down_cleans_up_after_a_crash_mid_up(tmp_path: Path) -> None:
    """A sandbox whose state file is gone (crash) is still found by its namespaces and removed."""
    require_sandbox()
    name = unique_name("c")
    state = sb.up(1, name=name, out=tmp_path / "f.yaml")
    (Path(state.directory) / "state.json").unlink()
    removed = sb.down(name)
    assert any("namespace" in item for item in removed)
    assert namespaces_of(name) == [] and not Path(state.directory).exists()
    assert not alive(state.nodes[0].sshd_pid)


def test_sandbox_refuses_without_root(tmp_path: Path) -> None:
    require_sandbox()
    # A user namespace with no mapping: the same files, but not root.
    completed = subprocess.run(["unshare", "--user", sys.executable, "-m", "trainfleet", "sandbox", "up",
                                "--nodes", "1", "--name", "nr"], capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0
    assert "needs root" in completed.stderr and "Traceback" not in completed.stderr


def test_duplicate_name_is_refused(cluster3: sb.SandboxState) -> None:
    completed = tf("sandbox", "up", "--nodes", "1", "--name", cluster3.name)
    assert completed.returncode == 1 and "already exists" in completed.stderr
    untouched = sb.load_state(cluster3.name)
    assert [(n.name, n.namespace, n.address) for n in untouched.nodes] == \
        [(n.name, n.namespace, n.address) for n in cluster3.nodes]
