"""A real Slurm on the sandbox: what `export slurm` is tested against, and a place to try it.

One munged (its socket is a file, and the nodes share this machine's files) and a
slurmctld in a controller namespace of its own on the sandbox's network, as a head
machine would be; a slurmd in each node's own namespaces (network, mount, UTS, PID:
`nsenter` into its sshd's, since `ip netns exec` would hide the cgroup mounts and keep
this machine's hostname). Node names resolve nowhere, as on rented clouds: Slurm
reaches every node by its NodeAddr. Everything lives in the sandbox's directory, and
`sandbox down` ends every daemon with the namespaces (munged by its pid file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from trainfleet.errors import SandboxError
from trainfleet.sandbox.host import find_tools, netns

if TYPE_CHECKING:
    from trainfleet.sandbox.state import SandboxState

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")
CONTROLLER_NAME = "ctl"
READY_TIMEOUT = 40.0


def slurm_dir(directory: str | Path) -> Path:
    return Path(directory) / "slurm"


def conf_path(directory: str | Path) -> Path:
    return slurm_dir(directory) / "slurm.conf"


def controller_namespace(name: str) -> str:
    return f"tf-{name}-ctl"


def check_tools() -> dict[str, str]:
    return find_tools(TOOLS, "sandbox --slurm", "slurm-wlm munge")


def render_conf(name: str, directory: Path, controller_address: str, nodes: list[tuple[str, str]], cpus: int) -> str:
    """slurm.conf for the sandbox: root daemons, no cgroups (the nodes share one kernel's),
    no accounting daemon; a finished job's state stays in `scontrol show job` for 10 minutes."""
    lines = [
        f"ClusterName=tf{name}",
        f"SlurmctldHost={CONTROLLER_NAME}({controller_address})",
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={directory / 'munge.socket'}",
        f"StateSaveLocation={directory / 'state'}",
        f"SlurmdSpoolDir={directory / 'spool'}/%n",
        f"SlurmctldPidFile={directory / 'slurmctld.pid'}",
        f"SlurmdPidFile={directory / 'slurmd'}-%n.pid",
        f"SlurmctldLogFile={directory / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={directory / 'log'}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MinJobAge=600",
        "KillWait=5",
    ]
    lines += [f"NodeName={node} NodeAddr={address} CPUs={cpus} State=UNKNOWN" for node, address in nodes]
    lines.append("PartitionName=sandbox Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SandboxError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")


def start(state: SandboxState, controller_address: str) -> str:
    """Start Slurm on a built sandbox; returns its slurm.conf's path."""
    tools = check_tools()
    directory = slurm_dir(state.directory)
    for sub in ("state", "spool", "log"):
        (directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    key = directory / "munge.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as handle:
        handle.write(os.urandom(1024))
    _run([tools["munged"], "--force", f"--key-file={key}", f"--socket={directory / 'munge.socket'}",
          f"--pid-file={directory / 'munged.pid'}", f"--log-file={directory / 'log' / 'munged.log'}",
          f"--seed-file={directory / 'munged.seed'}"], "munged")

    namespace = controller_namespace(state.name)
    prefix = state.subnet.split("/")[1]
    _run(["ip", "netns", "add", namespace], "ip netns add")
    _run(netns(namespace, "ip", "link", "set", "lo", "up"), "ip link")
    _run(["ip", "link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", "pctl",
          "netns", state.bridge_namespace], "ip link add")
    _run(netns(namespace, "ip", "addr", "add", f"{controller_address}/{prefix}", "dev", "eth0"), "ip addr")
    _run(netns(namespace, "ip", "link", "set", "eth0", "up"), "ip link")
    _run(netns(state.bridge_namespace, "ip", "link", "set", "pctl", "master", "br0", "up"), "ip link")

    conf = conf_path(state.directory)
    nodes = [(n.name, n.address) for n in state.nodes]
    conf.write_text(render_conf(state.name, directory, controller_address, nodes, os.cpu_count() or 1))
    # slurmctld must find its SlurmctldHost name as its own hostname: a UTS namespace says so.
    _run(netns(namespace, "unshare", "--uts", "sh", "-c",
               f"hostname {CONTROLLER_NAME} && exec {tools['slurmctld']} -f {conf}"), "slurmctld")
    for node in state.nodes:
        _run(["nsenter", "-t", str(node.sshd_pid), "-n", "-m", "-u", "-p",
              tools["slurmd"], "-f", str(conf), "-N", node.name], f"slurmd on {node.name}")
    wait_idle(conf, [n.name for n in state.nodes])
    return str(conf)


def node_states(conf: str | Path) -> dict[str, str]:
    done = subprocess.run(["scontrol", "show", "nodes", "--oneliner"], capture_output=True, text=True,
                          env={**os.environ, "SLURM_CONF": str(conf)})
    found = {}
    for line in done.stdout.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "NodeName" in fields:
            found[fields["NodeName"]] = fields.get("State", "")
    return found


def wait_idle(conf: str | Path, names: list[str], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = node_states(conf)
        if all(states.get(name, "").startswith("IDLE") for name in names):
            return
        time.sleep(0.5)
    log = slurm_dir(Path(conf).parent.parent) / "log" / "slurmctld.log"
    tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
    raise SandboxError(f"Slurm's nodes did not become idle in {timeout:.0f} s: {states or 'no controller'}; "
                       f"slurmctld log: {tail.strip()}")


def stop(directory: str | Path) -> list[str]:
    """End munged (the other daemons end with their namespaces); what was stopped."""
    pid_file = slurm_dir(directory) / "munged.pid"
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return []
    if str(slurm_dir(directory)).encode() not in cmdline:  # a pid reused by another process
        return []
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    return [f"munged {pid}"]
