"""A sandbox node's boot: its sshd (config, host key), its own mount, UTS and PID
namespaces and cgroup view, and the fleet file that describes the nodes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trainfleet.sandbox import docker as docker_daemons
from trainfleet.sandbox.host import child_pid, netns
from trainfleet.sandbox.state import SandboxNode, SandboxState

SANDBOX_WORKDIR = "/tmp/trainfleet"


def sshd_config(node_dir: Path, address: str, port: int = 22, password_auth: bool = False,
                 docker_host: str = "", path: str = "") -> str:
    session_env = ([f"DOCKER_HOST={docker_host}"] if docker_host else []) + ([f"PATH={path}"] if path else [])
    return "\n".join([
        f"ListenAddress {address}",
        f"Port {port}",
        f"HostKey {node_dir / 'ssh_host_ed25519_key'}",
        f"PidFile {node_dir / 'sshd.pid'}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        # Root never logs in with a password; other users may when asked for.
        f"PasswordAuthentication {'yes' if password_auth else 'no'}",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes yes",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "AcceptEnv LANG LC_*",
        "X11Forwarding no",
        "PrintMotd no",
        "UseDNS no",
        "MaxStartups 200:30:400",
        "MaxSessions 128",
        "Subsystem sftp internal-sftp",
        # The node's own dockerd, for every session (as /var/run/docker.sock would be on a machine);
        # fake GPUs' tools first on the PATH (one line: sshd takes the first SetEnv only).
        *([f"SetEnv {' '.join(session_env)}"] if session_env else []),
        "",
    ])


def controller_python_under_tmp() -> str | None:
    """The controller's Python environment, when it lives under /tmp (a venv in a
    checkout there): the nodes' /tmp is their own, so the sandbox shows them this one."""
    prefix = os.path.realpath(sys.prefix)
    return prefix if prefix == "/tmp" or prefix.startswith("/tmp/") else None


def cgroup_mounts() -> list[tuple[str, str, str]]:
    """(type, options, path) of this machine's cgroup file systems: `ip netns exec` gives a
    node a fresh /sys without them, and container engines need them, as on any machine."""
    found = []
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[1].startswith("/sys/fs/cgroup") and fields[2] in ("tmpfs", "cgroup", "cgroup2"):
            options = ",".join(o for o in fields[3].split(",") if o not in ("rw", "relatime", "nosuid", "nodev",
                                                                            "noexec", "seclabel"))
            found.append((fields[2], options, fields[1]))
    return found


def _cgroup_steps() -> list[str]:
    steps = []
    for kind, options, path in cgroup_mounts():
        flags = f" -o {options}" if options else ""
        steps.append(f"mkdir -p {path} && mount -t {kind}{flags} cgroup {path}")
    return [f"{{ {' && '.join(steps)}; }} || true"] if steps else []


def node_boot_script(node: SandboxNode, node_dir: Path, sshd: str, python_prefix: str | None = None) -> str:
    # Runs as PID 1 of the node's own PID namespace, inside its own mount and UTS
    # namespaces; everything sshd later starts inherits this view of the machine.
    steps = [
        f"hostname {node.hostname}",
        "mkdir -p /root/.ssh" if node.home == "/root" else "true",
        f"mount --bind {node_dir / 'ssh'} {node.home}/.ssh",
    ]
    if python_prefix:  # kept reachable (read-only) at its own path inside the node's private /tmp
        steps += [f"mkdir -p {node_dir / 'python'}", f"mount --bind {python_prefix} {node_dir / 'python'}"]
    steps.append(f"mount --bind {node_dir / 'tmp'} /tmp")
    if python_prefix:
        steps += [f"mkdir -p {python_prefix}", f"mount --bind {node_dir / 'python'} {python_prefix}",
                  f"mount -o remount,bind,ro {python_prefix}"]
    steps += _cgroup_steps()
    steps += [
        f"mount -t overlay trainfleet-etc -o lowerdir=/etc,upperdir={node_dir / 'etc'},"
        f"workdir={node_dir / 'etc-work'} /etc",
        f"exec {sshd} -D -e -f {node_dir / 'sshd_config'}",
    ]
    return " && ".join(steps)


def start_node(node: SandboxNode, node_dir: Path, tools: dict[str, str]) -> int | None:
    """Boot the node's sshd in fresh UTS, mount and PID namespaces; returns its host pid."""
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    script = node_boot_script(node, node_dir, tools["sshd"], controller_python_under_tmp())
    with open(node_dir / "sshd.log", "ab") as log:
        launcher = subprocess.Popen(
            netns(node.namespace, tools["unshare"], "--uts", "--mount", "--pid", "--fork", "--mount-proc",
                   "--propagation", "private", "/bin/sh", "-c", script),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    return child_pid(launcher.pid)


def fleet_data(state: SandboxState, slots: int, identity_file: str, ssh_port: int = 22) -> dict[str, object]:
    return {
        "workdir": SANDBOX_WORKDIR,
        "python": sys.executable,
        "ssh": {
            "user": current_user(),
            "port": ssh_port,
            "identity_file": identity_file,
            "known_hosts": str(Path(state.directory) / "known_hosts"),
            "connect_timeout": 5,
        },
        "nodes": [
            {
                "name": node.name,
                "host": node.address,
                "slots": slots,
                "address": node.training_address,
                "interface": node.training_interface,
            }
            for node in state.nodes
        ],
        **({"container": docker_daemons.container_options()} if state.docker else {}),
    }


def current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
