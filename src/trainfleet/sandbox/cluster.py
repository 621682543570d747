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
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from trainfleet.errors import SandboxError, UsageError
from trainfleet.agent.files import write_atomically
from trainfleet.fleet.schema import dump_fleet_yaml
from trainfleet.sandbox import docker as docker_daemons
from trainfleet.sandbox import slurm as slurm_daemons

SANDBOX_ROOT_ENV = "TRAINFLEET_SANDBOX_ROOT"
DEFAULT_ROOT = "/var/lib/trainfleet/sandbox"
NAME_RE = re.compile(r"[a-z][a-z0-9]{0,9}")
STATE_FILE = "state.json"
SANDBOX_WORKDIR = "/tmp/trainfleet"
# RFC 2544's benchmarking range: meant for test networks, never routed on the internet.
PUBLIC_POOL = ipaddress.ip_network("198.18.0.0/16")
PRIVATE_POOL = ipaddress.ip_network("198.19.0.0/16")
# Rented clouds name NICs differently from one machine to the next; so does the sandbox.
PRIVATE_INTERFACE_NAMES = ("ens5", "enp6s0", "eth1", "ens7")
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "mount": "mount",
}
TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


@dataclass(frozen=True)
class SandboxNode:
    name: str
    namespace: str
    hostname: str
    address: str
    private_address: str | None
    private_interface: str | None
    sshd_pid: int | None
    home: str

    @property
    def training_address(self) -> str:
        return self.private_address or self.address

    @property
    def training_interface(self) -> str:
        return self.private_interface or "eth0"


@dataclass(frozen=True)
class SandboxState:
    name: str
    directory: str
    bridge_namespace: str
    host_interface: str
    controller_address: str
    subnet: str
    private_subnet: str | None
    fleet_file: str
    nodes: tuple[SandboxNode, ...]
    ssh_port: int = 22
    slurm_conf: str = ""
    """Its Slurm's slurm.conf (set SLURM_CONF to it), when made with `--slurm`."""
    docker: bool = False
    """Every node runs a dockerd of its own (`--docker`)."""

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["nodes"] = [asdict(n) for n in self.nodes]
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SandboxState:
        nodes = tuple(SandboxNode(**n) for n in data["nodes"])  # type: ignore[arg-type, union-attr]
        fields = {k: v for k, v in data.items() if k != "nodes"}
        return cls(nodes=nodes, **fields)  # type: ignore[arg-type]


def sandbox_root() -> Path:
    return Path(os.environ.get(SANDBOX_ROOT_ENV, DEFAULT_ROOT))


def check_name(name: str) -> str:
    """The one rule for a sandbox name, for every command that takes one: it becomes a
    directory under the sandbox root (removed as root by `down`) and part of namespace and
    link names, so nothing but a short plain word is accepted (no `/`, `..` or newline)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsageError(f"sandbox name {name!r} is not usable",
                         fix="use 1 to 10 lowercase letters and digits, starting with a letter")
    return name


def _directory(name: str) -> Path:
    """The sandbox's own directory: a direct child of the sandbox root, never anything else."""
    root = sandbox_root().resolve()
    directory = (root / check_name(name)).resolve()
    if directory.parent != root:
        raise SandboxError(f"sandbox {name!r}: {directory} is not a directory directly under {root}",
                           fix=f"remove the link at {root / name} by hand, then try again")
    return directory


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


def _existing_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    used: list[ipaddress.IPv4Network] = []
    for args in (["ip", "-4", "-j", "route", "show", "table", "all"], ["ip", "-4", "-j", "addr", "show"]):
        try:
            entries = json.loads(run(args, check=False).stdout or "[]")
        except json.JSONDecodeError:
            continue
        for entry in entries:
            candidates = [entry.get("dst")]
            candidates += [f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", [])]
            for text in candidates:
                if not text or text == "default":
                    continue
                try:
                    used.append(ipaddress.ip_network(text, strict=False))
                except ValueError:
                    continue
    return used


def _pick_subnet(pool: ipaddress.IPv4Network, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for subnet in pool.subnets(new_prefix=24):
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise SandboxError(f"no free /24 left in {pool} for another sandbox",
                       fix="remove unused sandboxes with `trainfleet sandbox down --name NAME`")


@contextmanager
def _root_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _all_states(root: Path) -> list[SandboxState]:
    states = []
    for path in sorted(root.glob(f"*/{STATE_FILE}")):
        try:
            states.append(SandboxState.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return states


# Each node's /etc is an overlay on this machine's: users added or /etc/hosts edited on
# one node are seen neither by the others nor by this machine, as on separate machines.


def _sshd_config(node_dir: Path, address: str, port: int = 22, password_auth: bool = False,
                 docker_host: str = "") -> str:
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
        # The node's own dockerd, for every session (as /var/run/docker.sock would be on a machine).
        *([f"SetEnv DOCKER_HOST={docker_host}"] if docker_host else []),
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


def _node_boot_script(node: SandboxNode, node_dir: Path, sshd: str, python_prefix: str | None = None) -> str:
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


def _child_pid(pid: int, timeout: float = 5.0) -> int | None:
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


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def up(nodes: int, name: str = "tf", out: Path | None = None, slots: int = 2,
       private_network: bool = False, ssh_port: int = 22, password_auth: bool = False,
       slurm: bool = False, docker: bool = False) -> SandboxState:
    """Create the cluster and return its state; on any failure, remove what was made."""
    tools = check_prerequisites()
    if slurm:
        slurm_daemons.check_tools()
    if docker:
        docker_daemons.check_tools()
    check_name(name)
    if not 1 <= nodes <= 200:
        raise UsageError(f"--nodes must be between 1 and 200 (got {nodes})")
    root = sandbox_root()
    directory = root / name
    with _root_lock(root):
        if directory.exists() or any(ns.startswith(f"tf-{name}-") for ns in _existing_namespaces()):
            raise SandboxError(f"a sandbox named {name!r} already exists",
                               fix=f"`trainfleet sandbox down --name {name}` first, or pick another --name")
        taken = _networks_in_use()
        for state in _all_states(root):
            taken.append(ipaddress.ip_network(state.subnet))
            if state.private_subnet:
                taken.append(ipaddress.ip_network(state.private_subnet))
        subnet = _pick_subnet(PUBLIC_POOL, taken)
        private_subnet = _pick_subnet(PRIVATE_POOL, taken) if private_network else None
        directory.mkdir(mode=0o700)
        # Claim the subnets before releasing the lock: a concurrent `up` must see them.
        provisional = dataclasses.replace(_state(name, directory, subnet, private_subnet, out, [], ssh_port),
                                          docker=docker)
        save(provisional)
    try:
        state = _build(provisional, nodes, slots, tools, ssh_port, password_auth)
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


def save(state: SandboxState) -> None:
    write_atomically(Path(state.directory) / STATE_FILE, json.dumps(state.to_json(), indent=2))


def _build(state: SandboxState, count: int, slots: int, tools: dict[str, str], ssh_port: int,
           password_auth: bool) -> SandboxState:
    directory = Path(state.directory)
    subnet = ipaddress.ip_network(state.subnet)
    private = ipaddress.ip_network(state.private_subnet) if state.private_subnet else None
    prefix = subnet.prefixlen
    home = os.path.expanduser("~")
    key = directory / "id_ed25519"
    run([tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", f"trainfleet-sandbox-{state.name}",
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
        _write_private(node_dir / "ssh" / "authorized_keys", public_key)
        run([tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", f"{node.hostname}",
              "-f", str(node_dir / "ssh_host_ed25519_key")])
        (node_dir / "etc").mkdir()
        (node_dir / "etc-work").mkdir()
        docker_host = docker_daemons.docker_host(directory, name) if state.docker else ""
        (node_dir / "sshd_config").write_text(_sshd_config(node_dir, address, ssh_port, password_auth, docker_host))
        host_key = (node_dir / "ssh_host_ed25519_key.pub").read_text().split()
        name_in_file = address if ssh_port == 22 else f"[{address}]:{ssh_port}"
        known_hosts.append(f"{name_in_file} {host_key[0]} {host_key[1]}")
        nodes.append(SandboxNode(**{**asdict(node), "sshd_pid": start_node(node, node_dir, tools)}))
        save(replace_nodes(state, nodes))

    for node in nodes:
        if not wait_for_port(node.address, ssh_port, timeout=15):
            log_tail = (directory / "nodes" / node.name / "sshd.log").read_text(errors="replace")[-400:]
            raise SandboxError(f"sshd of sandbox node {node.name} did not start: {log_tail.strip()}")

    _write_private(directory / "known_hosts", "\n".join(known_hosts) + "\n", 0o644)
    state = replace_nodes(state, nodes)
    fleet_file = Path(state.fleet_file)
    fleet_file.parent.mkdir(parents=True, exist_ok=True)
    fleet_file.write_text(f"# trainfleet sandbox {state.name!r}: written by `trainfleet sandbox up`\n"
                          + dump_fleet_yaml(fleet_data(state, slots, str(key), ssh_port)))
    save(state)
    return state


def start_node(node: SandboxNode, node_dir: Path, tools: dict[str, str]) -> int | None:
    """Boot the node's sshd in fresh UTS, mount and PID namespaces; returns its host pid."""
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    script = _node_boot_script(node, node_dir, tools["sshd"], controller_python_under_tmp())
    with open(node_dir / "sshd.log", "ab") as log:
        launcher = subprocess.Popen(
            netns(node.namespace, tools["unshare"], "--uts", "--mount", "--pid", "--fork", "--mount-proc",
                   "--propagation", "private", "/bin/sh", "-c", script),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    return _child_pid(launcher.pid)


def replace_nodes(state: SandboxState, nodes: list[SandboxNode]) -> SandboxState:
    return SandboxState(**{**{k: v for k, v in asdict(state).items() if k != "nodes"}, "nodes": tuple(nodes)})


def fleet_data(state: SandboxState, slots: int, identity_file: str, ssh_port: int = 22) -> dict[str, object]:
    return {
        "workdir": SANDBOX_WORKDIR,
        "python": sys.executable,
        "ssh": {
            "user": _current_user(),
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


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def load_state(name: str) -> SandboxState:
    path = _directory(name) / STATE_FILE
    try:
        return SandboxState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SandboxError(f"no sandbox named {name!r}", fix="`trainfleet sandbox up --nodes N`") from None


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


def _kill_namespace(namespace: str, timeout: float = 10.0) -> None:
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


def down(name: str, missing_ok: bool = False) -> list[str]:
    """Remove every namespace, link, process and file of the sandbox; returns what was removed."""
    directory = _directory(name)
    if os.geteuid() != 0:
        raise SandboxError("removing a sandbox needs root", fix="run it with sudo")
    state: SandboxState | None = None
    try:
        state = load_state(name)
    except SandboxError:
        state = None
    namespaces = [ns for ns in _existing_namespaces() if ns.startswith(f"tf-{name}-")]
    if state is None and not namespaces and not directory.exists():
        if missing_ok:
            return []
        raise SandboxError(f"no sandbox named {name!r}", fix="`trainfleet sandbox status` lists them")
    removed: list[str] = []
    for namespace in namespaces:
        if namespace.endswith("-br"):
            continue
        _kill_namespace(namespace)
    for namespace in namespaces:
        run(["ip", "netns", "del", namespace], check=False)
        removed.append(f"namespace {namespace}")
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
    if directory.is_symlink() or (directory.exists() and not (directory / STATE_FILE).is_file()):
        # Only a directory that `up` made (it writes the state file right after mkdir) is
        # ever removed whole; anything else under the root is the user's.
        raise SandboxError(f"sandbox {name!r}: {directory} holds no {STATE_FILE}, so it was not made by "
                           "`trainfleet sandbox up`; left as it is",
                           fix=f"look at {directory} and remove it by hand if it is yours to remove")
    if directory.exists():
        shutil.rmtree(directory)
        removed.append(f"directory {directory}")
    return removed


def list_states() -> list[SandboxState]:
    return _all_states(sandbox_root())


def running(pid: int | None) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


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
    namespaces = set(_existing_namespaces())
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
