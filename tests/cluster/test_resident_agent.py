"""The resident agent: a command's agent leaves a copy of itself on each node, and the next
command reaches it through sshd (no login shell, no Python started); it serves each command
in a fork of its own, answers only its user, steps aside when the login environment
changes, and leaves when idle."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from trainfleet.agent.protocol import FactsRequest, LockRequest
from trainfleet.fleet.load import load_fleet
from trainfleet.sandbox import cluster as sb
from trainfleet.transport.session import FleetSession

pytestmark = pytest.mark.slow


def fleet_with(cluster3: sb.SandboxState, tmp_path: Path, **ssh: object) -> Path:
    data = yaml.safe_load(Path(cluster3.fleet_file).read_text())
    data.setdefault("ssh", {}).update(ssh)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def attached(fleet_file: Path) -> dict[str, bool]:
    """Per node: whether this command's agent was the resident one (after one request)."""
    fleet = load_fleet(fleet_file)
    async with await FleetSession.open(fleet) as session:
        answered = await session.call_all(FactsRequest(sections=["software"], python=fleet.python,
                                                        workdir=fleet.workdir), timeout=60)
        assert answered.ok, answered.failed
        return {name: agent.attached for name, agent in session.agents.items()}


def residents(state: sb.SandboxState) -> list[list[int]]:
    """Per node: the pids of trainfleet's resident agents in its namespace."""
    found = []
    for node in state.nodes:
        pids = []
        for pid in sb.namespace_pids(node.namespace):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "tf-agent":
                    pids.append(pid)
            except OSError:
                pass
        found.append(pids)
    return found


def test_the_next_command_reaches_the_resident_agent_and_a_changed_login_environment_starts_afresh(
        cluster3: sb.SandboxState, tmp_path: Path) -> None:
    fleet_file = fleet_with(cluster3, tmp_path)
    for cached in Path(os.path.expanduser("~/.cache/trainfleet/agent")).glob("*.json"):
        cached.unlink()  # the first node to start asks for the agent's sources before it says it is ready
    first = asyncio.run(attached(fleet_file))
    assert not any(first.values()), first  # this fleet file's state knows of no resident yet
    # One per node: each started now (an earlier test's, whose secret this fleet's state does
    # not hold, sees it lost its name and leaves within its next look, every 2 s).
    assert all(len(pids) == 1 for pids in one_per_node(cluster3)), residents(cluster3)
    assert asyncio.run(attached(fleet_file)) == {n.name: True for n in cluster3.nodes}
    kept = Path(os.path.expanduser("~/.cache/trainfleet/agents"))
    assert kept.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in kept.glob("*.sock")} == {0o600}

    # A start-up file appears (or changes): the environment a login shell would give is no
    # longer the resident's. It refuses, leaves, and this command comes through a shell.
    zshenv = Path(os.path.expanduser("~/.zshenv"))
    assert not zshenv.exists(), "the test adds and removes ~/.zshenv"
    zshenv.write_text("# trainfleet test\n")
    try:
        assert asyncio.run(attached(fleet_file)) == {n.name: False for n in cluster3.nodes}
        assert asyncio.run(attached(fleet_file)) == {n.name: True for n in cluster3.nodes}
    finally:
        zshenv.unlink()
    assert not any(asyncio.run(attached(fleet_file)).values())
    assert all(len(pids) == 1 for pids in one_per_node(cluster3)), residents(cluster3)


def one_per_node(cluster3: sb.SandboxState) -> list[list[int]]:
    """The residents once the stale ones have left (they do at their next look)."""
    deadline = time.monotonic() + 10
    while any(len(p) != 1 for p in residents(cluster3)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return residents(cluster3)


def test_a_command_served_by_the_resident_holds_nothing_after_it_ends(cluster3: sb.SandboxState,
                                                                     tmp_path: Path) -> None:
    """Each command is served by a fork that ends with it: a lock its agent held is free
    for the next command (the resident itself holds nothing)."""
    fleet = load_fleet(fleet_with(cluster3, tmp_path))
    workdir = str(tmp_path / "work")

    async def take(job_id: str) -> tuple[bool, bool, str]:
        async with await FleetSession.open(fleet, fleet.nodes[:1]) as session:
            agent = session.agents[fleet.nodes[0].name]
            reply = await agent.call(LockRequest(job_id=job_id, workdir=workdir), timeout=30)
            return agent.attached, reply.ok, reply.holder

    asyncio.run(take("warm"))  # a resident for the next ones
    assert asyncio.run(take("j1"))[:2] == (True, True)
    assert asyncio.run(take("j2"))[:2] == (True, True)  # j1's agent ended with its command


def test_only_its_user_reaches_it_and_it_leaves_when_idle(cluster3: sb.SandboxState, tmp_path: Path) -> None:
    fleet_file = fleet_with(cluster3, tmp_path, keep_agent=3)
    asyncio.run(attached(fleet_file))
    assert asyncio.run(attached(fleet_file)) == {n.name: True for n in cluster3.nodes}
    kept_file = Path(load_fleet(fleet_file).ssh.state_dir) / "agents.json"
    assert kept_file.stat().st_mode & 0o777 == 0o600  # it holds the residents' secrets
    socket_path, secret = next(iter(json.loads(kept_file.read_text()).values()))
    assert len(bytes.fromhex(secret)) == 32
    node = cluster3.nodes[0]
    stranger = subprocess.run(
        ["ip", "netns", "exec", node.namespace, "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "python3", "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({socket_path!r})"],
        capture_output=True, text=True)
    assert stranger.returncode != 0 and "PermissionError" in stranger.stderr, stranger.stderr
    before = sum(len(p) for p in residents(cluster3))
    deadline = time.monotonic() + 15  # 3 s idle, looked at every 2 s
    while os.path.exists(socket_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not os.path.exists(socket_path)
    time.sleep(1)
    assert sum(len(p) for p in residents(cluster3)) < before


def test_a_socket_planted_at_a_residents_path_is_sent_no_request(cluster3: sb.SandboxState, tmp_path: Path) -> None:
    """Whatever listens at the path must prove the secret the login shell's agent reported
    before any request goes to it: a planted listener gets a challenge and nothing more,
    and the command goes on through a login shell."""
    import socket
    import threading

    fleet_file = fleet_with(cluster3, tmp_path, keep_agent=30)
    asyncio.run(attached(fleet_file))
    fleet = load_fleet(fleet_file)
    kept = json.loads((Path(fleet.ssh.state_dir) / "agents.json").read_text())
    from trainfleet.transport.agent_client import resident_key

    node = fleet.nodes[0]
    path, _ = kept[resident_key(fleet.python, node.user, node.host, node.port, fleet.ssh.keep_agent)]
    os.unlink(path)  # (its resident sees it lost its name and leaves)
    planted = socket.socket(socket.AF_UNIX)
    planted.bind(path)
    planted.listen(8)
    heard: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = planted.accept()
            except OSError:
                return
            conn.settimeout(5)
            conn.sendall(b'{"proof": "' + b"0" * 64 + b'"}\n{"ready": true}\n')
            try:
                while chunk := conn.recv(65536):
                    heard.append(chunk)
            except OSError:
                pass
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        reached = asyncio.run(attached(fleet_file))
    finally:
        planted.close()
    assert reached[node.name] is False and reached[fleet.nodes[1].name] is True, reached
    said = b"".join(heard).decode()
    assert said.count("\n") == 1 and json.loads(said).keys() == {"challenge"}, said


def test_an_unsafe_cache_folder_keeps_no_resident_and_says_why(cluster3: sb.SandboxState, tmp_path: Path) -> None:
    from helpers import tf

    fleet_file = fleet_with(cluster3, tmp_path, keep_agent=30)
    folder = Path.home() / ".cache" / "trainfleet" / "agents"
    folder.mkdir(parents=True, exist_ok=True)
    mode = folder.stat().st_mode & 0o777
    try:
        folder.chmod(0o777)
        done = tf("status", "-f", str(fleet_file))
        assert done.returncode == 0, done.stderr
        assert (f"[trainfleet] node0: no resident agent kept (each command starts a login shell): {folder} is "
                f"writable by others (mode 777); fix: make it a folder of yours alone") in done.stderr, done.stderr
        assert done.stderr.count("no resident agent kept") == len(cluster3.nodes)
        assert asyncio.run(attached(fleet_file)) == {n.name: False for n in cluster3.nodes}
    finally:
        folder.chmod(mode)


def test_exec_runs_from_the_resident_agent_as_it_would_in_a_login_shell(cluster3: sb.SandboxState,
                                                                        tmp_path: Path) -> None:
    """The same sh and watchdog, environment and directory; only the parent differs (the
    resident's fork, not sshd). A timeout still ends the whole command tree."""
    from helpers import tf

    kept, plain = fleet_with(cluster3, tmp_path), tmp_path / "plain.yaml"
    plain.write_text(kept.read_text().replace("ssh:", "ssh:\n  keep_agent: 0", 1))
    script = "cat /proc/$PPID/comm; pwd; echo PATH=$PATH; echo to-stderr >&2; exit 3"
    asyncio.run(attached(kept))  # a resident on each node
    via = {route: tf("exec", "-f", str(path), "-n", "node0", "--", script)
           for route, path in (("resident", kept), ("ssh", plain))}
    for done in via.values():
        assert done.returncode == 3 and "node0: to-stderr" in done.stderr, done.stderr
    parent = {route: done.stdout.splitlines()[0] for route, done in via.items()}
    assert parent["resident"] == "node0: tf-agent" and parent["ssh"].startswith("node0: sshd"), parent
    assert via["resident"].stdout.splitlines()[1:] == via["ssh"].stdout.splitlines()[1:]  # directory, PATH
    timed = tf("exec", "-f", str(kept), "-n", "node0", "--timeout", "2", "--", "sleep 4321; echo never")
    assert timed.returncode != 0 and "timed out after 2s" in timed.stderr and "never" not in timed.stdout
    time.sleep(1)
    left = tf("exec", "-f", str(plain), "-n", "node0", "--", "pgrep -c -x sleep || true")
    assert left.stdout.strip() == "node0: 0", left.stdout
