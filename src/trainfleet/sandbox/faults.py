"""Breaking a sandbox on purpose, and mending it: what a broken cluster looks like.

Every fault is applied inside the sandbox's own namespaces (iptables and tc in a
node's network namespace, mounts in its mount namespace) and recorded in the
sandbox's state directory, so that `clear` (or `sandbox down`) undoes exactly it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from trainfleet.errors import SandboxError, UsageError
from trainfleet.sandbox import fake_gpus
from trainfleet.sandbox.docker import node_dir
from trainfleet.sandbox.host import (
    check_prerequisites,
    netns,
    run,
    running,
    wait_for_port,
)
from trainfleet.sandbox.nodes import SANDBOX_WORKDIR, start_node
from trainfleet.sandbox.state import (
    SandboxNode,
    SandboxState,
    load_state,
    replace_nodes,
    save,
)

FILL_SIZE = "16m"


class FaultKind(str, Enum):
    BLOCK_PORT = "block-port"
    CAP = "cap"
    LATENCY = "latency"
    CUT = "cut"
    FILL_DISK = "fill-disk"
    KILL = "kill"
    CONTROLLER_LINK = "controller-link"
    """The controller's SSH link to a node gone (a laptop's Wi-Fi, a VPN), both ways; the
    training network between the nodes stays up."""
    SLOW_CPU = "slow-cpu"
    """Every process of the node held to a share of one CPU (a cgroup's CPU quota): a straggler."""
    GPU = "gpu"
    """A fake GPU's state changed (an Xid in the kernel log, ECC errors, a narrow link...)."""


@dataclass(frozen=True)
class Fault:
    node: str
    kind: FaultKind
    detail: str
    path: str = ""  # fill-disk: the directory the full tmpfs covers

    def to_json(self) -> dict[str, str]:
        return {"node": self.node, "kind": self.kind.value, "detail": self.detail, "path": self.path}


def _faults_file(state: SandboxState) -> Path:
    return Path(state.directory) / "faults.json"


def active(state: SandboxState) -> list[Fault]:
    try:
        entries = json.loads(_faults_file(state).read_text())
    except (OSError, ValueError):
        return []
    return [Fault(e["node"], FaultKind(e["kind"]), e["detail"], e.get("path", "")) for e in entries]


def _record(state: SandboxState, faults: list[Fault]) -> None:
    _faults_file(state).write_text(json.dumps([f.to_json() for f in faults], indent=2))


CONTROLLER = "controller"
"""The machine the sandbox runs on, as a fault's target: its link to the nodes can be capped."""


def _controller_links(state: SandboxState) -> list[tuple[str | None, str]]:
    """Its uplink (the veth end in the root namespace) and its downlink (the bridge-side end)."""
    return [(None, state.host_interface), (state.bridge_namespace, "up0")]


def _in(namespace: str | None, *argv: str) -> list[str]:
    return list(argv) if namespace is None else netns(namespace, *argv)


def _node(state: SandboxState, name: str) -> SandboxNode:
    for node in state.nodes:
        if node.name == name:
            return node
    raise UsageError(f"sandbox {state.name!r} has no node {name!r} (nodes: {', '.join(n.name for n in state.nodes)})")


def _links(state: SandboxState, node: SandboxNode) -> list[tuple[str, str]]:
    """(namespace, device) pairs that carry the node's traffic in each direction:
    the node's own NICs (its egress) and their bridge-side peers (its ingress)."""
    index = state.nodes.index(node)
    links = [(node.namespace, "eth0"), (state.bridge_namespace, f"p{index}")]
    if node.private_interface:
        links += [(node.namespace, node.private_interface), (state.bridge_namespace, f"q{index}")]
    return links


_RATE = re.compile(r"^(\d+(?:\.\d+)?)(kbit|mbit|gbit)$")
_DELAY = re.compile(r"^\d+(?:\.\d+)?(us|ms|s)$")


def _rate_bits(rate: str) -> float:
    match = _RATE.match(rate)
    if not match:
        raise UsageError(f"rate {rate!r} is not understood", fix="write it like 100mbit or 1gbit")
    return float(match.group(1)) * {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[match.group(2)]


def _rule(port: int, mode: str) -> list[str]:
    target = ["DROP"] if mode == "drop" else ["REJECT"]
    return ["INPUT", "-p", "tcp", "--dport", str(port), "-j", *target]


def _link_rules(port: int, mode: str) -> list[list[str]]:
    """SSH in and out of a node. drop: silence, noticed by keepalives (Wi-Fi gone);
    reset: every SSH connection closes at once and new ones are refused (a VPN reconnecting)."""
    target = ["DROP"] if mode == "drop" else ["REJECT", "--reject-with", "tcp-reset"]
    return [["INPUT", "-p", "tcp", "--dport", str(port), "-j", *target],
            ["OUTPUT", "-p", "tcp", "--sport", str(port), "-j", *target]]


def inject(name: str, node_name: str, kind: FaultKind, *, port: int | None = None, mode: str = "drop",
           rate: str | None = None, delay: str | None = None, path: str = SANDBOX_WORKDIR,
           docker_data_root: bool = False, gpu: dict[str, object] | None = None, share: str = "") -> Fault:
    check_prerequisites()
    state = load_state(name)
    faults = active(state)
    if node_name == CONTROLLER:
        return _cap_controller(state, faults, kind, rate)
    node = _node(state, node_name)
    if docker_data_root:
        if not state.docker:
            raise UsageError(f"sandbox {name} runs no Docker", fix="make it with `trainfleet sandbox up --docker`")

        path = str(node_dir(state.directory, node.name) / "data")
    if kind is FaultKind.FILL_DISK and not path.startswith("/"):
        raise UsageError(f"fill-disk --path {path}: not an absolute path", fix="name a directory such as /tmp/data")
    if any(f.node == node.name and f.kind == kind for f in faults) and kind not in (FaultKind.BLOCK_PORT,
                                                                                   FaultKind.GPU):
        raise SandboxError(f"{node.name} already has a {kind.value} fault",
                           fix=f"`trainfleet sandbox fault clear {node.name} --name {name}` first")
    if kind is FaultKind.BLOCK_PORT:
        if port is None or mode not in ("drop", "reject"):
            raise UsageError("block-port needs a port and --mode drop|reject")
        run(netns(node.namespace, "iptables", "-w", "-I", *_rule(port, mode)))
        fault = Fault(node.name, kind, f"{mode}:{port}")
    elif kind is FaultKind.CONTROLLER_LINK:
        if mode not in ("drop", "reset"):
            raise UsageError(f"controller-link --mode {mode}: use drop or reset")
        for rule in _link_rules(state.ssh_port, mode):
            run(netns(node.namespace, "iptables", "-w", "-I", *rule))
        fault = Fault(node.name, kind, mode)
    elif kind is FaultKind.CAP:
        bits = _rate_bits(rate or "")
        # tbf needs a bucket of at least one timer tick's worth of bytes at this rate.
        burst = max(64 * 1024, int(bits / 8 / 100))
        for namespace, device in _links(state, node):
            run(netns(namespace, "tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", rate or "",
                      "burst", str(burst), "latency", "100ms"))
        fault = Fault(node.name, kind, rate or "")
    elif kind is FaultKind.LATENCY:
        if not delay or not _DELAY.match(delay):
            raise UsageError(f"delay {delay!r} is not understood", fix="write it like 50ms")
        for namespace, device in _links(state, node)[::2]:
            done = run(netns(namespace, "tc", "qdisc", "replace", "dev", device, "root", "netem", "delay", delay),
                       check=False)
            if done.returncode != 0:
                raise SandboxError(f"cannot add latency on {node.name}: {done.stderr.strip()} "
                                   "(this kernel has no netem qdisc, CONFIG_NET_SCH_NETEM)")
        fault = Fault(node.name, kind, delay)
    elif kind is FaultKind.CUT:
        for namespace, device in _links(state, node)[::2]:
            run(netns(namespace, "ip", "link", "set", device, "down"))
        fault = Fault(node.name, kind, "links down")
    elif kind is FaultKind.FILL_DISK:
        enter = ["nsenter", "-t", str(node.sshd_pid), "-m", "--"]
        run([*enter, "mkdir", "-p", path])
        run([*enter, "mount", "-t", "tmpfs", "-o", f"size={FILL_SIZE}", "trainfleet-fault", path])
        run([*enter, "dd", "if=/dev/zero", f"of={path}/.fill", "bs=1M", "count=64"], check=False)
        fault = Fault(node.name, kind, f"{path} is a full {FILL_SIZE} tmpfs", path)
    elif kind is FaultKind.SLOW_CPU:
        fault = Fault(node.name, kind, _slow_cpu(state, node, share))
    elif kind is FaultKind.GPU:
        folder = fake_gpus.host_folder(state.directory, node.name)
        if not fake_gpus.count(folder):
            raise UsageError(f"sandbox {name}: {node.name} has no fake GPUs",
                             fix="make the sandbox with `trainfleet sandbox up --fake-gpus N`")
        try:
            fault = Fault(node.name, kind, fake_gpus.inject(folder, **(gpu or {})))  # type: ignore[arg-type]
        except ValueError as exc:
            raise UsageError(f"fault gpu {node.name}: {exc}") from None
    elif kind is FaultKind.KILL:
        if node.sshd_pid and running(node.sshd_pid):
            os.kill(node.sshd_pid, signal.SIGKILL)
        fault = Fault(node.name, kind, "every process of the node killed")
    else:  # pragma: no cover - the enum is exhaustive
        raise UsageError(f"unknown fault {kind}")
    _record(state, faults + [fault])
    return fault


CPU_V1 = Path("/sys/fs/cgroup/cpu")
CPU_V2 = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def _cgroup(state: SandboxState, node: SandboxNode) -> tuple[Path, Path]:
    """(the node's CPU cgroup, the root one its processes go back to): v1's cpu
    controller where it is mounted, else the unified hierarchy."""
    root = CPU_V1 if (CPU_V1 / "cpu.cfs_quota_us").exists() else CPU_V2
    return root / f"trainfleet-{state.name}-{node.name}", root


def _node_pids(node: SandboxNode) -> list[int]:
    """Every process in the node's PID namespace (sshd, and all it started)."""
    try:
        mine = os.readlink(f"/proc/{node.sshd_pid}/ns/pid")
    except OSError:
        raise SandboxError(f"{node.name} is not running", fix="`trainfleet sandbox fault clear` restarts it") from None
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == mine:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _slow_cpu(state: SandboxState, node: SandboxNode, share: str) -> str:
    found = re.fullmatch(r"(\d{1,3})%", share.strip())
    if not found or not 1 <= int(found.group(1)) <= 100:
        raise UsageError(f"slow-cpu {share!r}: give a share of one CPU such as 30%", fix="e.g. `sandbox fault "
                                                                                       "slow-cpu node2 30%`")
    quota = PERIOD_US * int(found.group(1)) // 100
    group, root = _cgroup(state, node)
    if not root.exists():
        raise SandboxError("no CPU cgroup controller is mounted here", fix="mount cgroup v1's cpu or cgroup v2")
    group.mkdir(exist_ok=True)
    if root == CPU_V1:
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    else:
        (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
    for pid in _node_pids(node):  # what they start later stays in the group
        try:
            (group / "cgroup.procs").write_text(str(pid))
        except OSError:
            pass  # (a process that ended meanwhile)
    return f"{share.strip()} of one CPU for every process of the node"


def _full_cpu(state: SandboxState, node: SandboxNode) -> None:
    group, root = _cgroup(state, node)
    if not group.exists():
        return
    for line in (group / "cgroup.procs").read_text().split():
        try:
            (root / "cgroup.procs").write_text(line)
        except OSError:
            pass
    try:
        group.rmdir()
    except OSError:
        pass


def _cap_controller(state: SandboxState, faults: list[Fault], kind: FaultKind, rate: str | None) -> Fault:
    if kind is not FaultKind.CAP:
        raise UsageError(f"the controller can only be capped, not given a {kind.value} fault",
                         fix="name a node for the other faults")
    if any(f.node == CONTROLLER for f in faults):
        raise SandboxError("the controller's link is already capped",
                           fix=f"`trainfleet sandbox fault clear {CONTROLLER} --name {state.name}` first")
    bits = _rate_bits(rate or "")
    burst = max(64 * 1024, int(bits / 8 / 100))
    for namespace, device in _controller_links(state):
        run(_in(namespace, "tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", rate or "",
                "burst", str(burst), "latency", "100ms"))
    fault = Fault(CONTROLLER, kind, rate or "")
    _record(state, faults + [fault])
    return fault


def clear(name: str, node_name: str | None = None) -> list[Fault]:
    """Undo the recorded faults of one node (or of all); returns what was undone."""
    tools = check_prerequisites()
    state = load_state(name)
    faults = active(state)
    chosen = [f for f in faults if node_name is None or f.node == node_name]
    if node_name is not None and node_name != CONTROLLER:
        _node(state, node_name)
    for fault in chosen:
        if fault.node == CONTROLLER:
            for namespace, device in _controller_links(state):
                run(_in(namespace, "tc", "qdisc", "del", "dev", device, "root"), check=False)
            continue
        node = _node(state, fault.node)
        if fault.kind is FaultKind.BLOCK_PORT:
            mode, port = fault.detail.split(":")
            run(netns(node.namespace, "iptables", "-w", "-D", *_rule(int(port), mode)), check=False)
        elif fault.kind is FaultKind.CONTROLLER_LINK:
            for rule in _link_rules(state.ssh_port, fault.detail):
                run(netns(node.namespace, "iptables", "-w", "-D", *rule), check=False)
        elif fault.kind in (FaultKind.CAP, FaultKind.LATENCY):
            for namespace, device in _links(state, node):
                run(netns(namespace, "tc", "qdisc", "del", "dev", device, "root"), check=False)
        elif fault.kind is FaultKind.CUT:
            for namespace, device in _links(state, node)[::2]:
                run(netns(namespace, "ip", "link", "set", device, "up"))
        elif fault.kind is FaultKind.FILL_DISK:
            if node.sshd_pid and running(node.sshd_pid):
                run(["nsenter", "-t", str(node.sshd_pid), "-m", "--", "umount", fault.path or SANDBOX_WORKDIR],
                    check=False)
        elif fault.kind is FaultKind.KILL:
            state = _restart(state, node, tools)
        elif fault.kind is FaultKind.SLOW_CPU:
            _full_cpu(state, node)
        elif fault.kind is FaultKind.GPU:
            fake_gpus.reset(fake_gpus.host_folder(state.directory, node.name), state.nodes.index(node))
    _record(state, [f for f in faults if f not in chosen])
    return chosen


def _restart(state: SandboxState, node: SandboxNode, tools: dict[str, str]) -> SandboxState:
    node_dir = Path(state.directory) / "nodes" / node.name
    deadline = time.monotonic() + 5
    while node.sshd_pid and running(node.sshd_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = start_node(node, node_dir, tools)
    if not wait_for_port(node.address, state.ssh_port, timeout=15):
        raise SandboxError(f"sshd of {node.name} did not come back")
    nodes = [SandboxNode(**{**n.__dict__, "sshd_pid": pid}) if n.name == node.name else n for n in state.nodes]
    state = replace_nodes(state, nodes)
    save(state)
    return state
