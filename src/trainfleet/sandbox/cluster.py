"""A real multi-node cluster on one Linux machine.

Each node is a network namespace with its own address, plus (inside its sshd's process
tree) its own UTS, mount and PID namespaces: its own hostname that no other node can
resolve, its own `~/.ssh` and `/tmp`, and a `ps` that shows only its own processes.
The nodes hang off a bridge that lives in a namespace of its own; the controller
reaches them through one veth. Everything is recorded in a state directory so that
`down` can remove it all, also after a crash.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from trainfleet.errors import SandboxError, UsageError
from trainfleet.fleet.schema import dump_fleet_yaml
from trainfleet.fleet.state import forget_cordons
from trainfleet.sandbox import docker as docker_daemons
from trainfleet.sandbox import slurm as slurm_daemons
from trainfleet.sandbox import fake_gpus as fake
from trainfleet.sandbox.host import (
    check_prerequisites,
    existing_namespaces,
    job_processes,
    kill_namespace,
    namespace_pids,
    netns,
    run,
    running,
    wait_for_port,
    write_private,
)
from trainfleet.sandbox.network import (
    PRIVATE_INTERFACE_NAMES,
    PRIVATE_POOL,
    PUBLIC_POOL,
    networks_in_use,
    pick_subnet,
)
from trainfleet.sandbox.nodes import (
    controller_python_under_tmp,
    fleet_data,
    sshd_config,
    start_node,
)
from trainfleet.sandbox.state import (
    STATE_FILE,
    SandboxNode,
    SandboxState,
    all_states,
    check_name,
    directory_of,
    key_comment,
    list_states,
    load_state,
    made_by_up,
    replace_nodes,
    root_lock,
    sandbox_root,
    save,
)


def up(nodes: int, name: str = "tf", out: Path | None = None, slots: int = 2,
       private_network: bool = False, ssh_port: int = 22, password_auth: bool = False,
       slurm: bool = False, docker: bool = False, fake_gpus: int = 0) -> SandboxState:
    """Create the cluster and return its state; on any failure, remove what was made."""
    tools = check_prerequisites()
    if slurm:
        slurm_daemons.check_tools()
    if docker:
        docker_daemons.check_tools()
    check_name(name)
    if not 1 <= nodes <= 200:
        raise UsageError(f"--nodes must be between 1 and 200 (got {nodes})")
    if not 0 <= fake_gpus <= 16:
        raise UsageError(f"--fake-gpus must be between 0 and 16 (got {fake_gpus})")
    root = sandbox_root()
    directory = root / name
    with root_lock(root):
        if directory.exists() or any(ns.startswith(f"tf-{name}-") for ns in existing_namespaces()):
            raise SandboxError(f"a sandbox named {name!r} already exists",
                               fix=f"`trainfleet sandbox down --name {name}` first, or pick another --name")
        taken = networks_in_use()
        for state in all_states(root):
            taken.append(ipaddress.ip_network(state.subnet))
            if state.private_subnet:
                taken.append(ipaddress.ip_network(state.private_subnet))
        subnet = pick_subnet(PUBLIC_POOL, taken)
        private_subnet = pick_subnet(PRIVATE_POOL, taken) if private_network else None
        directory.mkdir(mode=0o700)
        # Claim the subnets before releasing the lock: a concurrent `up` must see them.
        provisional = dataclasses.replace(_state(name, directory, subnet, private_subnet, out, [], ssh_port),
                                          docker=docker)
        save(provisional)
    try:
        state = _build(provisional, nodes, slots, tools, ssh_port, password_auth, fake_gpus)
        if docker:
            docker_daemons.start(state)
        if slurm:
            address = str(list(ipaddress.ip_network(state.subnet).hosts())[1])
            state = dataclasses.replace(state, slurm_conf=slurm_daemons.start(state, address))
            save(state)
        return state
    except BaseException:
        down(name, missing_ok=True)
        raise


def _state(name: str, directory: Path, subnet: ipaddress.IPv4Network,
           private_subnet: ipaddress.IPv4Network | None, out: Path | None,
           nodes: list[SandboxNode], ssh_port: int = 22) -> SandboxState:
    hosts = list(subnet.hosts())
    return SandboxState(
        name=name,
        directory=str(directory),
        bridge_namespace=f"tf-{name}-br",
        host_interface=f"tfc-{name}",
        controller_address=str(hosts[0]),
        subnet=str(subnet),
        private_subnet=str(private_subnet) if private_subnet else None,
        fleet_file=str((out or directory / "fleet.yaml").absolute()),
        nodes=tuple(nodes),
        ssh_port=ssh_port,
    )


def _build(state: SandboxState, count: int, slots: int, tools: dict[str, str], ssh_port: int,
           password_auth: bool, fake_gpus: int = 0) -> SandboxState:
    directory = Path(state.directory)
    subnet = ipaddress.ip_network(state.subnet)
    private = ipaddress.ip_network(state.private_subnet) if state.private_subnet else None
    prefix = subnet.prefixlen
    home = os.path.expanduser("~")
    key = directory / "id_ed25519"
    run([tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", key_comment(state.name),
          "-f", str(key)])
    public_key = (directory / "id_ed25519.pub").read_text()

    bridge_ns = state.bridge_namespace
    run(["ip", "netns", "add", bridge_ns])
    run(netns(bridge_ns, "ip", "link", "set", "lo", "up"))
    bridges = ["br0"] + (["br1"] if private else [])
    for bridge in bridges:
        run(netns(bridge_ns, "ip", "link", "add", bridge, "type", "bridge"))
        run(netns(bridge_ns, "ip", "link", "set", bridge, "up"))
    run(["ip", "link", "add", state.host_interface, "type", "veth", "peer", "name", "up0", "netns", bridge_ns])
    run(["ip", "addr", "add", f"{state.controller_address}/{prefix}", "dev", state.host_interface])
    run(["ip", "link", "set", state.host_interface, "up"])
    run(netns(bridge_ns, "ip", "link", "set", "up0", "master", "br0", "up"))

    nodes: list[SandboxNode] = []
    known_hosts: list[str] = []
    for index in range(count):
        name = f"node{index}"
        namespace = f"tf-{state.name}-{name}"
        address = str(subnet.network_address + 10 + index)
        private_address = str(private.network_address + 10 + index) if private else None
        private_interface = PRIVATE_INTERFACE_NAMES[index % len(PRIVATE_INTERFACE_NAMES)] if private else None
        node = SandboxNode(name=name, namespace=namespace, hostname=f"{state.name}-{name}", address=address,
                           private_address=private_address, private_interface=private_interface,
                           sshd_pid=None, home=home)
        run(["ip", "netns", "add", namespace])
        run(netns(namespace, "ip", "link", "set", "lo", "up"))
        run(["ip", "link", "add", "eth0", "netns", namespace, "type", "veth",
              "peer", "name", f"p{index}", "netns", bridge_ns])
        run(netns(namespace, "ip", "addr", "add", f"{address}/{prefix}", "dev", "eth0"))
        run(netns(namespace, "ip", "link", "set", "eth0", "up"))
        run(netns(bridge_ns, "ip", "link", "set", f"p{index}", "master", "br0", "up"))
        if private and private_interface and private_address:
            run(["ip", "link", "add", private_interface, "netns", namespace, "type", "veth",
                  "peer", "name", f"q{index}", "netns", bridge_ns])
            run(netns(namespace, "ip", "addr", "add", f"{private_address}/{private.prefixlen}",
                        "dev", private_interface))
            run(netns(namespace, "ip", "link", "set", private_interface, "up"))
            run(netns(bridge_ns, "ip", "link", "set", f"q{index}", "master", "br1", "up"))

        node_dir = directory / "nodes" / name
        (node_dir / "ssh").mkdir(parents=True, mode=0o700)
        (node_dir / "tmp").mkdir(mode=0o700)
        os.chmod(node_dir / "tmp", 0o1777)
        write_private(node_dir / "ssh" / "authorized_keys", public_key)
        run([tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", f"{node.hostname}",
              "-f", str(node_dir / "ssh_host_ed25519_key")])
        (node_dir / "etc").mkdir()
        (node_dir / "etc-work").mkdir()
        docker_host = docker_daemons.docker_host(directory, name) if state.docker else ""
        if fake_gpus:
            fake.install(fake.host_folder(directory, name), fake_gpus, len(nodes))
        (node_dir / "sshd_config").write_text(sshd_config(node_dir, address, ssh_port, password_auth, docker_host,
                                                          fake.PATH if fake_gpus else ""))
        host_key = (node_dir / "ssh_host_ed25519_key.pub").read_text().split()
        name_in_file = address if ssh_port == 22 else f"[{address}]:{ssh_port}"
        known_hosts.append(f"{name_in_file} {host_key[0]} {host_key[1]}")
        nodes.append(SandboxNode(**{**asdict(node), "sshd_pid": start_node(node, node_dir, tools)}))
        save(replace_nodes(state, nodes))

    for node in nodes:
        if not wait_for_port(node.address, ssh_port, timeout=15):
            log_tail = (directory / "nodes" / node.name / "sshd.log").read_text(errors="replace")[-400:]
            raise SandboxError(f"sshd of sandbox node {node.name} did not start: {log_tail.strip()}")

    write_private(directory / "known_hosts", "\n".join(known_hosts) + "\n", 0o644)
    state = replace_nodes(state, nodes)
    fleet_file = Path(state.fleet_file)
    fleet_file.parent.mkdir(parents=True, exist_ok=True)
    fleet_file.write_text(f"# trainfleet sandbox {state.name!r}: written by `trainfleet sandbox up`\n"
                          + dump_fleet_yaml(fleet_data(state, slots, str(key), ssh_port)))
    # New machines under an old fleet file's name: nothing a job lost before is lost now.
    forget_cordons(fleet_file)
    save(state)
    return state


def down(name: str, missing_ok: bool = False) -> list[str]:
    """Remove every namespace, link, process and file of the sandbox; returns what was removed."""
    directory = directory_of(name)
    if os.geteuid() != 0:
        raise SandboxError("removing a sandbox needs root", fix="run it with sudo")
    if directory.exists() and not made_by_up(directory, name):
        # Before anything is read from it (pid files) or removed: anything under the root
        # that `up` did not make is the user's.
        raise SandboxError(f"sandbox {name!r}: {directory} holds no {STATE_FILE} or key of sandbox {name}, so it "
                           "was not made by `trainfleet sandbox up`; left as it is",
                           fix=f"look at {directory} and remove it by hand if it is yours to remove")
    state: SandboxState | None = None
    try:
        state = load_state(name)
    except SandboxError:
        state = None
    namespaces = [ns for ns in existing_namespaces() if ns.startswith(f"tf-{name}-")]
    if state is None and not namespaces and not directory.exists():
        if missing_ok:
            return []
        raise SandboxError(f"no sandbox named {name!r}", fix="`trainfleet sandbox status` lists them")
    removed: list[str] = []
    for namespace in namespaces:
        if namespace.endswith("-br"):
            continue
        kill_namespace(namespace)
    for namespace in namespaces:
        run(["ip", "netns", "del", namespace], check=False)
        removed.append(f"namespace {namespace}")
    for root in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")):  # a slow-cpu fault's group, now empty
        for group in root.glob(f"trainfleet-{name}-*"):
            try:
                group.rmdir()
                removed.append(f"cgroup {group}")
            except OSError:
                pass
    host_interface = f"tfc-{name}"
    if run(["ip", "link", "show", host_interface], check=False).returncode == 0:
        run(["ip", "link", "del", host_interface], check=False)
        removed.append(f"link {host_interface}")
    if state is not None:
        fleet_file = Path(state.fleet_file)
        if fleet_file.is_file() and not fleet_file.is_relative_to(directory) and \
                fleet_file.read_text().startswith(f"# trainfleet sandbox {name!r}"):
            fleet_file.unlink()
            removed.append(f"file {fleet_file}")
    removed += slurm_daemons.stop(directory)
    removed += docker_daemons.stop(directory)
    if directory.exists():
        shutil.rmtree(directory)
        removed.append(f"directory {directory}")
    return removed


def node_status(node: SandboxNode) -> dict[str, object]:
    alive = running(node.sshd_pid)
    return {
        "name": node.name,
        "namespace": node.namespace,
        "hostname": node.hostname,
        "address": node.address,
        "private_address": node.private_address,
        "interface": node.training_interface,
        "sshd_pid": node.sshd_pid,
        "sshd_running": alive,
    }


def status(name: str | None = None) -> list[dict[str, object]]:
    states = [load_state(name)] if name else list_states()
    namespaces = set(existing_namespaces())
    report = []
    for state in states:
        nodes = [node_status(n) for n in state.nodes]
        for entry, node in zip(nodes, state.nodes):
            entry["namespace_exists"] = node.namespace in namespaces
        report.append({
            "name": state.name,
            "subnet": state.subnet,
            "private_subnet": state.private_subnet,
            "controller_address": state.controller_address,
            "fleet_file": state.fleet_file,
            "nodes": nodes,
        })
    return report


def find_for_fleet(hosts: Sequence[tuple[str, str, int]]) -> tuple[SandboxState, dict[str, SandboxNode]]:
    """The sandbox that holds a fleet's nodes, given (fleet name, host, port) of each:
    fleet names map to the sandbox nodes with those addresses."""
    for state in list_states():
        by_address = {(n.address, state.ssh_port): n for n in state.nodes}
        mapping = {name: by_address[(host, port)] for name, host, port in hosts if (host, port) in by_address}
        if mapping:
            return state, mapping
    raise SandboxError("no sandbox holds this fleet's nodes",
                       fix="name the sandbox with --name, or use a fleet file written by `trainfleet sandbox up`")


# The sandbox's front door: the CLI and the tests reach these as `cluster.X`.
__all__ = ["SandboxNode", "SandboxState", "check_name", "check_prerequisites", "controller_python_under_tmp", "down",
           "find_for_fleet", "job_processes", "list_states", "load_state", "namespace_pids", "running", "sandbox_root",
           "status", "up"]
