"""The job's own listener (node 0's mesh coordinator) on a network that strangers reach: a
flood of idle connections, junk and forged hellos while a job runs changes nothing."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

from helpers import tf
from trainfleet.sandbox import cluster as sb


def mesh_listener(node: sb.SandboxNode) -> tuple[int, int]:
    """(port, pid) of the job's node supervisor listening on this node."""
    listing = subprocess.run(["nsenter", "-t", str(node.sshd_pid), "-n", "-p", "-m", "ss", "-ltnpH"],
                             capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        found = re.search(r"\s(\S+):(\d+)\s.*pid=(\d+)", line)
        if not found:
            continue
        cmdline = subprocess.run(["nsenter", "-t", str(node.sshd_pid), "-p", "-m", "cat",
                                  f"/proc/{found.group(3)}/cmdline"], capture_output=True).stdout
        if b"job_supervisor" in cmdline:
            assert found.group(1) == node.address, f"the mesh listens on {found.group(1)}, not the training address"
            return int(found.group(2)), int(found.group(3))
    raise AssertionError(f"no node supervisor listens on {node.name}:\n{listing}")


def rss_kib(node: sb.SandboxNode, pid: int) -> int:
    status = subprocess.run(["nsenter", "-t", str(node.sshd_pid), "-p", "-m", "cat", f"/proc/{pid}/status"],
                            capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def test_a_flood_on_the_mesh_port_changes_nothing_for_the_job(fleet2: Path, cluster3: sb.SandboxState,
                                                             workdir: Path) -> None:
    started = tf("run", "-f", str(fleet2), "--sync-dir", str(workdir), "--detach", "ranks.py", "--tick",
                 "--seconds", "30", timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    job_id = started.stdout.strip().splitlines()[-1]
    head = cluster3.nodes[0]
    port, pid = mesh_listener(head)
    before = rss_kib(head, pid)
    target = (head.address, port)
    opened: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 15  # bounded in count and in time
        for _ in range(300):  # silent connections, held open
            opened.append(socket.create_connection(target, timeout=5))
        for index in range(60):
            if time.monotonic() > deadline:
                break
            sock = socket.create_connection(target, timeout=5)
            try:
                if index % 3 == 0:
                    sock.sendall(b"\x00" * (1 << 20))  # a megabyte of junk, no newline
                elif index % 3 == 1:
                    sock.sendall(b"[\"not\", \"an\", \"object\"]\n" * 10)
                else:  # the old clear-text hello, with a guessed token
                    sock.sendall((json.dumps({"hello": "node1", "token": "guessed"}) + "\n").encode())
            except OSError:
                pass  # cut off: what it should be
            sock.close()
        during = tf("status", "-f", str(fleet2), job_id, check=True).stdout
        assert "running" in during, during
        grown = rss_kib(head, pid) - before
        assert grown < 32 * 1024, f"node 0's supervisor grew by {grown} KiB under the flood"
    finally:
        for sock in opened:
            sock.close()
    followed = tf("logs", "-f", str(fleet2), job_id, "--follow", timeout=180)
    why = tf("status", "-f", str(fleet2), job_id).stdout
    assert "ended: succeeded" in followed.stderr, why + followed.stdout[-3000:] + followed.stderr
    assert "was lost" not in followed.stdout + followed.stderr
