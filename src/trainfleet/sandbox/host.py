"""This machine's side of the sandbox: the tools it needs, commands in a node's network
namespace, and the processes each namespace holds."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from trainfleet.errors import SandboxError
from trainfleet.sandbox.state import SandboxNode

REQUIRED_TOOLS = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "mount": "mount",
}


TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in TOOL_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_tools(tools: Sequence[str], what: str, packages: str) -> dict[str, str]:
    """Each tool's path (PATH first, then the sbin directories root's PATH may lack), or
    one error naming what is missing, for `what`, and the packages that bring it."""
    found = {tool: _tool(tool) for tool in tools}
    missing = [tool for tool, path in found.items() if not path]
    if missing:
        raise SandboxError(f"{what} needs {', '.join(missing)}", fix=f"apt-get install {packages}")
    return {tool: str(path) for tool, path in found.items()}


def check_prerequisites() -> dict[str, str]:
    if sys.platform != "linux":
        raise SandboxError("the sandbox needs Linux network namespaces")
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root (it creates network namespaces and starts sshd)",
                           fix="run it with sudo")
    tools: dict[str, str] = {}
    missing = []
    for tool, package in REQUIRED_TOOLS.items():
        path = _tool(tool)
        if path is None:
            missing.append(f"{tool} ({package})")
        else:
            tools[tool] = path
    if missing:
        packages = " ".join(sorted({REQUIRED_TOOLS[m.split()[0]] for m in missing}))
        raise SandboxError(f"the sandbox needs {', '.join(missing)}", fix=f"apt-get install {packages}")
    return tools


def run(argv: Sequence[str], *, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(list(argv), capture_output=True, text=True, input=input_text)
    if check and completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        raise SandboxError(f"`{' '.join(argv)}` failed (exit {completed.returncode}): "
                           f"{detail[-1] if detail else 'no output'}")
    return completed


def netns(namespace: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def existing_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def wait_for_port(address: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5) as conn:
                conn.settimeout(1.0)
                if conn.recv(4).startswith(b"SSH"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def child_pid(pid: int, timeout: float = 5.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        if children:
            return int(children[0])
        time.sleep(0.02)
    return None


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def namespace_pids(namespace: str) -> list[int]:
    """Every process in a node's network namespace, seen from this machine."""
    out = run(["ip", "netns", "pids", namespace], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


SANDBOX_INFRA = {"unshare", "sshd", "slurmd", "dockerd", "containerd", "nsenter"}
"""Processes that belong to the sandbox itself rather than to any job (nsenter: the parent
that waits for a node's dockerd, which it started in the node's PID namespace)."""


KEPT = {"tf-agent"}
"""trainfleet's resident agent (agent/resident.py): kept on purpose between commands, and
gone after `ssh.keep_agent` idle seconds; not a job's."""


def job_processes(node: SandboxNode) -> list[str]:
    """`pid comm` of every process in the node's namespace that is not sandbox infrastructure."""
    found = []
    for pid in namespace_pids(node.namespace):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm not in SANDBOX_INFRA | KEPT:
            found.append(f"{pid} {comm}")
    return found


def kill_namespace(namespace: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pids = namespace_pids(namespace)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise SandboxError(f"processes {pids} in {namespace} survived SIGKILL")
        time.sleep(0.05)


def running(pid: int | None) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
