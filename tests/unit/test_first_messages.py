"""The messages a newcomer meets first: the template, a fleet file's common slips, a key
file that is not there, and a node that cannot be reached, each with its cause and a fix."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import threading
from pathlib import Path

from helpers import tf

from trainfleet.fleet.load import load_fleet
from trainfleet.transport.ssh import NodeUnreachable, connect, host_pinned


def one_error(done, *wanted: str) -> str:  # type: ignore[no-untyped-def]
    assert done.returncode != 0 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    for text in wanted:
        assert text in done.stderr, done.stderr
    return done.stderr


def test_the_untouched_template_fails_check_and_says_what_comes_next(tmp_path: Path) -> None:
    made = tf("init", "-o", str(tmp_path / "fleet.yaml"))
    assert "trainfleet ssh setup" in made.stdout and "exec -- hostname" not in made.stdout
    fleet = tmp_path / "fleet.yaml"
    one_error(tf("check", "-f", str(fleet)), "node[0-1] still have example addresses from the template",
              "fix: put your machines' addresses")
    # The template names no key file that a rented machine would not have.
    assert "\n  identity_file:" not in fleet.read_text()
    mine = fleet.read_text().replace("203.0.113.1", "10.9.9.1")
    fleet.write_text(mine.replace("known_hosts: ~/.ssh/known_hosts", f"known_hosts: {tmp_path / 'known_hosts'}"))
    checked = tf("check", "-f", str(fleet))
    assert checked.returncode == 0, checked.stderr
    assert "next: `trainfleet ssh setup` shows and pins the host key of node[0-1]" in checked.stdout
    # Once a key is pinned (Ubuntu hashes known_hosts names), the hint leaves that node out.
    salt = b"0123456789abcdefghij"
    name = base64.b64encode(hmac.new(salt, b"10.9.9.10", hashlib.sha1).digest()).decode()
    (tmp_path / "known_hosts").write_text(f"|1|{base64.b64encode(salt).decode()}|{name} ssh-ed25519 AAAAC3Nz\n")
    pinned = tf("check", "-f", str(fleet))
    assert "host key of node1 " in pinned.stdout and "node0" not in pinned.stdout.splitlines()[-1]


def test_common_slips_in_a_fleet_file_name_the_fix(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("nodes: [1.2.3.4]\n")
    one_error(tf("check", "-f", str(fleet)), "nodes[0]: each node is a mapping, not '1.2.3.4'",
              "fix: write it as `- host: 1.2.3.4`")
    fleet.write_text("nodes:\n  - host: 1.2.3.4\n    slot: 8\n")
    one_error(tf("check", "-f", str(fleet)), "nodes[0].slot: unknown key", "fix: did you mean `slots`?")
    fleet.write_text("ssh: {usr: me}\nnodes:\n  - host: 1.2.3.4\n")
    one_error(tf("check", "-f", str(fleet)), "ssh.usr: unknown key", "did you mean `user`?")
    fleet.write_text("nodes:\n  - host: 1.2.3.4\n    colour: red\n")
    one_error(tf("check", "-f", str(fleet)), "nodes[0].colour: unknown key", "the keys allowed here are ", "slots")


def test_a_missing_key_file_points_at_the_providers_key_not_ssh_keygen(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"ssh: {{identity_file: {tmp_path / 'none.pem'}}}\nnodes:\n  - host: 1.2.3.4\n")
    said = one_error(tf("check", "-f", str(fleet)), "none.pem does not exist", "the private key your provider gave you",
                     "leave it out to use ssh-agent")
    assert "run `ssh-keygen" not in said


def _unreachable(tmp_path: Path, port: int) -> str:
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(f"ssh: {{known_hosts: {tmp_path / 'kh'}, connect_timeout: 5}}\n"
                          f"nodes:\n  - {{host: 127.0.0.1, port: {port}, name: a}}\n")
    (tmp_path / "kh").write_text("")
    fleet = load_fleet(fleet_file)
    try:
        asyncio.run(connect(fleet.nodes[0], fleet.ssh))
    except NodeUnreachable as exc:
        return exc.reason
    raise AssertionError("connected")


def test_an_unreachable_node_is_named_with_cause_and_fix(tmp_path: Path) -> None:
    # Something that is not sshd takes the connection and closes it (asyncssh: "Connection lost").
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def close_each() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=close_each, daemon=True).start()
    try:
        lost = _unreachable(tmp_path, port)
    finally:
        server.shutdown(socket.SHUT_RDWR)  # (wakes the accepting thread: a close alone leaves it listening)
        server.close()
    # Closed before or after the client's first bytes: the kernel says "lost" or "reset".
    assert f"127.0.0.1:{port} accepted the connection, then closed it during SSH's handshake" in lost or \
        f"127.0.0.1:{port} reset the connection before SSH began" in lost, lost
    assert "; fix: " in lost and f"ssh -v -p {port} " in lost
    refused = _unreachable(tmp_path, port)  # nothing listens there now
    assert f"connection refused at 127.0.0.1:{port}; fix: start sshd there" in refused


def test_hashed_known_hosts_entries_count_as_pinned(tmp_path: Path) -> None:
    from trainfleet.fleet.model import Node

    salt = b"s" * 20
    digest = base64.b64encode(hmac.new(salt, b"[10.0.0.1]:2222", hashlib.sha1).digest()).decode()
    path = tmp_path / "known_hosts"
    path.write_text(f"|1|{base64.b64encode(salt).decode()}|{digest} ssh-ed25519 AAAA\n")
    assert host_pinned([str(path)], Node(name="a", host="10.0.0.1", port=2222, user="u", slots=1, identity_file=None, address="10.0.0.1", interface=None, jump=None))
    assert not host_pinned([str(path)], Node(name="a", host="10.0.0.1", port=22, user="u", slots=1, identity_file=None, address="10.0.0.1", interface=None, jump=None))


def test_the_fleet_key_is_accepted_from_the_fleets_own_addresses(tmp_path: Path) -> None:
    """`from=` takes addresses: every node's and jump host's IP, the loopback and what an
    earlier setup saw nodes come from; a host name is left to be seen (its reverse DNS
    would decide otherwise)."""
    from trainfleet.fleet.schema import fleet_from_data
    from trainfleet.ops.trust import SOURCES_FILE, fleet_sources

    fleet = fleet_from_data({"nodes": [
        {"name": "a", "host": "203.0.113.10", "address": "10.0.0.10"},
        {"name": "b", "host": "gpu-b.example.com", "address": "fd00::11", "jump": "ops@198.51.100.7:2200"}]},
        "fleet.yaml", state_dir=str(tmp_path), check_keys=False)
    assert fleet_sources(fleet) == ["10.0.0.10", "127.0.0.1", "198.51.100.7", "203.0.113.10", "::1", "fd00::11"]
    (tmp_path / SOURCES_FILE).write_text("192.0.2.44\n")  # a NAT's address, seen by the last setup
    assert fleet_sources(fleet, ["192.0.2.45", "not-an-address"])[:3] == ["10.0.0.10", "127.0.0.1", "192.0.2.44"]
    assert "192.0.2.45" in fleet_sources(fleet, ["192.0.2.45"])
