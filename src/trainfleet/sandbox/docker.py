"""A real Docker on every sandbox node: what `container: {engine: docker}` is tested against.

`--network host` is the network namespace of the daemon, so each node gets a dockerd of
its own, started inside the node (`nsenter` into its sshd's namespaces: `ip netns exec`
would hide the cgroup mounts). The flags leave the machine's network alone (no bridge,
no iptables, no forwarding), and everything a daemon keeps lives in the sandbox's
directory. Each node's sshd sets DOCKER_HOST for the sessions it starts, so `docker` on a
node, as trainfleet runs it, talks to that node's daemon.

There is no image registry here: each daemon is given a small Debian image (minbase,
python3 and what builds its C++ extensions, as a training image has: DeepSpeed compiles
its ops on first use), built once per machine with debootstrap from the Debian mirror
apt uses and cached. A job mounts the fleet's Python environment into it read-only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from trainfleet.errors import SandboxError
from trainfleet.sandbox.host import find_tools

if TYPE_CHECKING:
    from trainfleet.sandbox.state import SandboxState

TOOLS = ("dockerd", "docker", "debootstrap")
IMAGE = "trainfleet-sandbox/python3:bookworm"
"""The image every node's daemon has (Debian 12 minbase with python3, g++ and ninja)."""
PACKAGES = ("python3", "python3-dev", "g++", "ninja-build")
READY_TIMEOUT = 30.0
DAEMON_FLAGS = ("--storage-driver=overlay2", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
                "--bridge=none")


def check_tools() -> dict[str, str]:
    return find_tools(TOOLS, "sandbox --docker", "docker.io debootstrap")


def node_dir(directory: str | Path, node: str) -> Path:
    return Path(directory) / "docker" / node


def socket_path(directory: str | Path, node: str) -> str:
    return str(node_dir(directory, node) / "docker.sock")


def docker_host(directory: str | Path, node: str) -> str:
    return f"unix://{socket_path(directory, node)}"


def mirror() -> str:
    """The Debian mirror this machine's apt uses (the image comes from the same place)."""
    for path, pattern in (("/etc/apt/sources.list.d/debian.sources", r"^URIs:\s*(\S+)"),
                          ("/etc/apt/sources.list", r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+\s+main")):
        try:
            found = re.search(pattern, Path(path).read_text(), re.MULTILINE)
        except OSError:
            continue
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "trainfleet" / "sandbox"


def image_tarball() -> Path:
    """The image's root file system as a tar file, built once (about 30 s) and cached."""
    cache = cache_dir()
    tarball = cache / f"debian-bookworm-{'-'.join(PACKAGES)}.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
    try:
        done = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm",
                               str(root), mirror()], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SandboxError(f"debootstrap failed (exit {done.returncode}): {done.stdout[-300:]}{done.stderr[-300:]}",
                               fix="check that apt can reach its mirror")
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / leftover, ignore_errors=True)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tarball


def start(state: SandboxState) -> None:
    """A daemon in every node of a built sandbox, each given the image."""
    tools = check_tools()
    tarball = image_tarball()
    for node in state.nodes:
        home = node_dir(state.directory, node.name)
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(home / "dockerd.log", "ab") as log:
            subprocess.Popen(["nsenter", "-t", str(node.sshd_pid), "-n", "-m", "-u", "-p", tools["dockerd"],
                              f"--data-root={home / 'data'}", f"--exec-root={home / 'exec'}",
                              f"--pidfile={home / 'dockerd.pid'}", f"-H={docker_host(state.directory, node.name)}",
                              *DAEMON_FLAGS], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True)
    for node in state.nodes:
        host = docker_host(state.directory, node.name)
        wait_ready(host, node_dir(state.directory, node.name) / "dockerd.log")
        done = subprocess.run([tools["docker"], "-H", host, "import", str(tarball), IMAGE], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SandboxError(f"docker import on {node.name} failed: {done.stderr.strip()[-300:]}")


def wait_ready(host: str, log: Path, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["docker", "-H", host, "version"], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
    raise SandboxError(f"dockerd at {host} did not answer in {timeout:.0f} s: {tail.strip()}")


STALE_BUILD = 15 * 60
"""Seconds after which a torch extension build's lock is taken for a killed build's."""


def clear_stale_build_locks(extensions: str) -> list[str]:
    """A build of DeepSpeed's ops killed midway (a job stopped while it compiled) leaves
    its `lock` file, and every later build of that op waits on it forever: jobs hang at
    `deepspeed.initialize`. A build takes about a minute here; a lock older than
    STALE_BUILD is a dead build's."""
    removed = []
    now = time.time()
    for root, _, files in os.walk(extensions):
        if "lock" in files:
            path = os.path.join(root, "lock")
            try:
                if now - os.stat(path).st_mtime > STALE_BUILD:
                    os.unlink(path)
                    removed.append(path)
            except OSError:
                continue
    return removed


def container_options() -> dict[str, object]:
    """`container:` for a sandbox fleet: the image, and this Python environment mounted
    read-only at its own path (its base interpreter's too, unless that is the image's /usr);
    torch's extension cache is shared by the containers (not with this machine's builds,
    which differ), so DeepSpeed builds its ops once, not in every container."""
    prefixes = dict.fromkeys(os.path.realpath(p) for p in (sys.prefix, sys.base_prefix))
    mounts = [w for p in prefixes if not p.startswith("/usr") for w in ("-v", f"{p}:{p}:ro")]
    extensions = str(cache_dir() / "torch_extensions")
    os.makedirs(extensions, exist_ok=True)
    clear_stale_build_locks(extensions)
    mounts += ["-v", f"{extensions}:/root/.cache/torch_extensions"]
    return {"engine": "docker", "image": IMAGE, "python": sys.executable, "options": mounts}


def stop(directory: str | Path) -> list[str]:
    """What the daemons leave once their node's processes are gone: mounts under the
    sandbox's docker directory (none, normally: they lived in the node's mount namespace)."""
    root = str(Path(directory) / "docker") + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return []
    left = [m for m in mounts if m.startswith(root)]
    for mount in reversed(left):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    return [f"mount {m}" for m in left]
