"""`trainfleet ssh setup | check | revoke` on real sshd: N×N trust, pinned host keys, passwords."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import secrets
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import Sandboxes
from helpers import tf
from trainfleet.fleet.load import state_dir_for
from trainfleet.sandbox import cluster as sb



def snapshot(state: sb.SandboxState) -> dict[str, tuple[str, float]]:
    """Every file of every node's ~/.ssh: content hash and mtime."""
    found = {}
    for node in state.nodes:
        for path in sorted((Path(state.directory) / "nodes" / node.name / "ssh").iterdir()):
            found[f"{node.name}/{path.name}"] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime)
    return found


@pytest.fixture
def fresh3(fresh: Sandboxes) -> sb.SandboxState:
    """Its own 3 nodes: these tests change ~/.ssh and host keys."""
    return fresh.make(3, slots=1)


def test_setup_gives_full_trust_is_idempotent_and_revocable(fresh3: sb.SandboxState) -> None:
    fleet = fresh3.fleet_file
    original = {n.name: (Path(fresh3.directory) / "nodes" / n.name / "ssh" / "authorized_keys").read_bytes()
                for n in fresh3.nodes}
    before = tf("ssh", "check", "-f", fleet, "--json")
    assert before.returncode == 1 and not json.loads(before.stdout)["ok"]  # nodes only trust the controller

    first = tf("ssh", "setup", "-f", fleet, "--yes")
    assert first.returncode == 0, first.stderr
    assert "SHA256:" in first.stdout
    check = tf("ssh", "check", "-f", fleet, "--json")
    assert check.returncode == 0, check.stdout
    matrix = json.loads(check.stdout)["matrix"]
    assert sorted((s, d) for s, row in matrix.items() for d, r in row.items() if r["ok"]) == \
        sorted((s, d) for s in ("node0", "node1", "node2") for d in ("node0", "node1", "node2"))
    # The aliases work for the user's own tools too, from the controller.
    ssh_config = Path(state_dir_for(Path(fleet))) / "ssh_config"
    assert f"ssh -F {ssh_config} node0" in first.stdout
    # The fleet's private key lives outside the project tree: no `git add .` can pick it up.
    assert not (Path(fleet).parent / ".trainfleet").exists()
    assert oct((ssh_config.parent / "id_ed25519").stat().st_mode & 0o777) == "0o600"
    direct = subprocess.run(["ssh", "-F", str(ssh_config), "node2", "hostname"], capture_output=True, text=True,
                            timeout=30)
    assert direct.stdout.strip() == f"{fresh3.name}-node2", direct.stderr
    # The fleet key, which every node holds, is accepted from the fleet's own addresses only:
    # root on one rented node cannot use it from anywhere else (here: from the controller,
    # which is no node of the fleet and logs in with a key of its own).
    assert "accepted from the fleet's" in first.stdout, first.stdout
    fleet_public = (ssh_config.parent / "id_ed25519.pub").read_text().split()[1]
    nodes = yaml.safe_load(Path(fleet).read_text())["nodes"]
    for node in fresh3.nodes:
        keys = (Path(fresh3.directory) / "nodes" / node.name / "ssh" / "authorized_keys").read_text().splitlines()
        [line] = [k for k in keys if fleet_public in k]
        assert line.startswith('from="') and {n["host"] for n in nodes} <= set(line.split('"')[1].split(",")), line
    stolen = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i",
                             str(ssh_config.parent / "id_ed25519"), "-o", f"UserKnownHostsFile={ssh_config.parent}"
                             f"/known_hosts", "-p", str(nodes[2].get("port", 22)), f"{nodes[2].get('user', 'root')}@"
                             f"{nodes[2]['host']}", "true"], capture_output=True, text=True, timeout=30)
    assert stolen.returncode == 255 and "Permission denied" in stolen.stderr, stolen.stderr

    files = snapshot(fresh3)
    second = tf("ssh", "setup", "-f", fleet, "--yes")
    assert second.returncode == 0 and "0 file(s) changed" in second.stdout
    assert snapshot(fresh3) == files

    revoked = tf("ssh", "revoke", "-f", fleet)
    assert revoked.returncode == 0, revoked.stderr
    for node in fresh3.nodes:
        ssh_dir = Path(fresh3.directory) / "nodes" / node.name / "ssh"
        assert (ssh_dir / "authorized_keys").read_bytes() == original[node.name]
        assert sorted(p.name for p in ssh_dir.iterdir()) == ["authorized_keys"]


def test_replaced_host_key_is_refused_then_repinned_once_confirmed(fresh3: sb.SandboxState, tmp_path: Path) -> None:
    fleet = fresh3.fleet_file
    assert tf("ssh", "setup", "-f", fleet, "--yes").returncode == 0
    # node1 is "replaced": a new host key, same address.
    node = fresh3.nodes[1]
    node_dir = Path(fresh3.directory) / "nodes" / node.name
    for suffix in ("", ".pub"):
        (node_dir / f"ssh_host_ed25519_key{suffix}").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(node_dir / "ssh_host_ed25519_key")],
                   check=True)
    tf("sandbox", "fault", "kill", "node1", "--name", fresh3.name, check=True)
    tf("sandbox", "fault", "clear", "node1", "--name", fresh3.name, check=True)
    again = tf("ssh", "setup", "-f", fleet, "--yes")
    assert again.returncode == 1
    assert "host key changed for node1" in again.stderr and "refusing" in again.stderr
    assert "pinned in " in again.stderr and "known_hosts" in again.stderr  # names the files
    assert "`trainfleet ssh setup --repin node1` shows the old and new fingerprints" in again.stderr
    refused = tf("exec", "-f", fleet, "--", "true")
    assert refused.returncode == 255 and "node1: host key of" in refused.stderr and "does not match" in refused.stderr
    assert "trainfleet ssh setup --repin node1" in refused.stderr
    # Not confirmed (no terminal, no --yes): both fingerprints shown, nothing changed.
    unconfirmed = tf("ssh", "setup", "-f", fleet, "--repin", "node1")
    new = subprocess.run(["ssh-keygen", "-lf", str(node_dir / "ssh_host_ed25519_key.pub")], capture_output=True,
                         text=True, check=True).stdout.split()[1]
    assert unconfirmed.returncode == 1 and "host keys that changed" in unconfirmed.stderr
    assert f"now    ssh-ed25519 {new}" in unconfirmed.stderr and "pinned SHA256:" in unconfirmed.stderr
    assert tf("exec", "-f", fleet, "--", "true").returncode == 255
    # Confirmed: the new key is pinned everywhere, and the fleet works again.
    repinned = tf("ssh", "setup", "-f", fleet, "--repin", "node1", "--yes")
    assert repinned.returncode == 0, repinned.stderr
    assert f"node1: host key ssh-ed25519 {new} (now pinned)" in repinned.stdout
    assert tf("exec", "-f", fleet, "--", "true").returncode == 0
    assert tf("ssh", "check", "-f", fleet).returncode == 0  # node to node too


def test_unconfirmed_new_host_keys_change_nothing(fresh3: sb.SandboxState, tmp_path: Path) -> None:
    data = yaml.safe_load(Path(fresh3.fleet_file).read_text())
    data["ssh"]["known_hosts"] = str(tmp_path / "empty_known_hosts")
    (tmp_path / "empty_known_hosts").write_text("")
    fleet = tmp_path / "unknown.yaml"
    fleet.write_text(yaml.safe_dump(data))
    files = snapshot(fresh3)
    completed = subprocess.run([sys.executable, "-m", "trainfleet", "ssh", "setup", "-f", str(fleet)],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert completed.returncode == 2
    assert "host keys seen for the first time" in completed.stderr and "SHA256:" in completed.stderr
    assert "nothing was changed" in completed.stderr
    assert snapshot(fresh3) == files


def run_with_terminal(argv: list[str], answer: str, prompt: bytes, timeout: float = 90) -> tuple[int, str, int]:
    """Run argv on a pseudo-terminal, typing `answer` at each `prompt`; returns (code, output, prompts seen)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.execvp(argv[0], argv)
    output, seen, pending = b"", 0, b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        pending += chunk
        if prompt in pending:
            seen += 1
            pending = b""
            os.write(fd, answer.encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace"), seen


def test_password_only_non_root_nodes_on_port_2222_and_a_jump_host(fresh: Sandboxes, tmp_path: Path) -> None:
    state = fresh.make(2, slots=1, ssh_port=2222, password_auth=True)
    name = state.name
    password = f"pw-{secrets.token_hex(8)}"
    make_user = (f"useradd -M -d /tmp/tfpw -s /bin/sh tfpw && mkdir -p /tmp/tfpw && chown tfpw /tmp/tfpw "
                 f"&& echo tfpw:{password} | chpasswd")
    tf("exec", "-f", state.fleet_file, "--", make_user, check=True)
    data = yaml.safe_load(Path(state.fleet_file).read_text())
    data["ssh"]["user"] = "tfpw"
    del data["ssh"]["identity_file"]  # nothing but a password gets tfpw in
    data["python"] = "/usr/bin/python3"  # the controller's Python lives under /root
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(data, sort_keys=False))
    refused = tf("exec", "-f", str(fleet), "--", "true")
    assert refused.returncode == 255 and "authentication failed as 'tfpw'" in refused.stderr

    code, output, prompts = run_with_terminal(
        [sys.executable, "-m", "trainfleet", "ssh", "setup", "-f", str(fleet), "--yes", "--ask-password"],
        password, b"password for tfpw@")
    assert code == 0, output
    assert prompts == 1  # typed once for the whole fleet
    assert password not in output
    for path in [*tmp_path.rglob("*"), *Path(state_dir_for(fleet)).rglob("*")]:
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path

    whoami = tf("exec", "-f", str(fleet), "--", "whoami")  # now with the fleet key, no password
    assert whoami.returncode == 0 and sorted(whoami.stdout.split()) == ["node0:", "node1:", "tfpw", "tfpw"]
    assert tf("ssh", "check", "-f", str(fleet)).returncode == 0

    # node1 through node0 as a jump host; the controller itself may no longer reach node1.
    subprocess.run(["ip", "netns", "exec", state.nodes[1].namespace, "iptables", "-w", "-I", "INPUT", "-s",
                    state.controller_address, "-p", "tcp", "--dport", "2222", "-j", "DROP"], check=True)
    assert tf("exec", "-f", str(fleet), "-n", "node1", "--", "true").returncode == 255
    data["nodes"][1]["jump"] = f"tfpw@{data['nodes'][0]['host']}:2222"
    fleet.write_text(yaml.safe_dump(data, sort_keys=False))  # the same fleet, edited: same fleet key
    via = tf("exec", "-f", str(fleet), "-n", "node1", "--", "hostname")
    assert via.returncode == 0 and via.stdout.strip() == f"node1: {name}-node1", via.stderr
    # A root password login is never offered, whatever the sandbox allows others.
    sshd_config = (Path(state.directory) / "nodes" / "node0" / "sshd_config").read_text()
    assert "PermitRootLogin prohibit-password" in sshd_config


def test_hosts_file_entries_on_request(fresh3: sb.SandboxState) -> None:
    fleet = fresh3.fleet_file
    assert tf("ssh", "setup", "-f", fleet, "--yes", "--hosts-file").returncode == 0
    resolved = tf("exec", "-f", fleet, "-n", "node0", "--", f"getent hosts node2 {fresh3.name}-node2")
    assert resolved.returncode == 0 and resolved.stdout.count(fresh3.nodes[2].address) == 2
    # Each node's /etc/hosts is its own: this machine's is untouched.
    assert "trainfleet" not in Path("/etc/hosts").read_text()
    assert tf("ssh", "revoke", "-f", fleet).returncode == 0
    gone = tf("exec", "-f", fleet, "-n", "node0", "--", "getent hosts node2")
    assert gone.returncode != 0
