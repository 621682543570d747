"""`trainfleet ssh setup | check | revoke`: every node trusts every node, with pinned host keys.

One fleet key pair is made on the controller and installed on every node (O(N)
connections, not N×N manual steps), so each node reaches each other node, itself
included. Host keys are collected once, shown as fingerprints, pinned in a fleet
known_hosts used by trainfleet and by the nodes; a changed key is refused. Everything
added on a node is marked with the fleet's tag so that `revoke` removes exactly it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from trainfleet.agent.protocol import Reach, SSHMatrixRequest, TrustRequest, UntrustReply, UntrustRequest
from trainfleet.errors import TrainfleetError, UsageError
from trainfleet.agent.files import write_atomically
from trainfleet.fleet.model import Fleet
from trainfleet.transport.session import FleetSession, PasswordPrompt
from trainfleet.transport.hostkeys import ScanFailed, forget_host_key, new_key_pair, pinned_keys, scan_host_keys
from trainfleet.transport.ssh import known_hosts_files

Confirm = Callable[[str], bool]


@dataclass(frozen=True)
class FleetKey:
    private_path: Path
    public_line: str
    tag: str


@dataclass(frozen=True)
class HostKey:
    node: str
    key_type: str
    key_data: str
    fingerprint: str
    status: str
    """'pinned' (already trusted), 'new', or 'changed' (refused)."""
    pinned: tuple[str, ...] = ()
    """What the known_hosts files held for it (the old fingerprints, when changed)."""


@dataclass
class SetupReport:
    key: FleetKey
    host_keys: list[HostKey]
    changed: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    local_files: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    """The addresses the fleet key is accepted from (empty: from any)."""
    unrestricted: str = ""
    """Why the fleet key is accepted from any address, where it had to be."""


def _state_dir(fleet: Fleet) -> Path:
    if not fleet.ssh.state_dir:
        raise UsageError("this fleet has no file to keep its SSH material for",
                         fix="write the fleet to a file and pass -f FILE")
    return Path(fleet.ssh.state_dir)


def _key_pair(directory: Path, name: str, comment: str) -> tuple[Path, str]:
    """An ed25519 key pair in `directory`, made once (0700 directory, 0600 key): its path
    and public line."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    private = directory / name
    if not private.exists():
        private_key, public_key = new_key_pair(comment)
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_key)
        (directory / f"{name}.pub").write_bytes(public_key)
    public = (directory / f"{name}.pub").read_text().split()
    return private, f"{public[0]} {public[1]}"


def ensure_fleet_key(fleet: Fleet) -> FleetKey:
    """The fleet's key pair, which every node holds to reach the others."""
    private, public = _key_pair(_state_dir(fleet), "id_ed25519", "trainfleet fleet key")
    tag = hashlib.sha256(public.split()[1].encode()).hexdigest()[:12]
    return FleetKey(private_path=private, public_line=public, tag=tag)


def ensure_controller_key(fleet: Fleet) -> str:
    """This controller's own key pair (its public line): never copied to a node."""
    return _key_pair(_state_dir(fleet), Path(fleet.ssh.controller_key).name, "trainfleet controller key")[1]


SOURCES_FILE = "sources"
"""In the state directory: addresses the nodes were seen to connect from (beyond the fleet
file's), kept so that the next setup writes the same restriction."""


def fleet_sources(fleet: Fleet, seen: Collection[str] = ()) -> list[str]:
    """What the fleet key is accepted from: every address of the fleet file (nodes, jump
    hosts) that is an IP address, the loopback, what an earlier setup saw, and `seen`."""
    import ipaddress

    found = {"127.0.0.1", "::1", *seen}
    for node in fleet.nodes:
        found.update(a for a in (node.host, node.address, node.jump.host if node.jump else "") if a)
    kept = _state_dir(fleet) / SOURCES_FILE
    if kept.exists():
        found.update(kept.read_text().split())
    addresses = []
    for text in found:
        try:
            addresses.append(ipaddress.ip_address(text.strip("[]")))
        except ValueError:
            continue  # (a host name: `from=` would need the node's reverse DNS; its address is seen instead)
    return [str(a) for a in sorted(addresses, key=lambda a: (a.version, a))]


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


async def collect_host_keys(fleet: Fleet) -> list[HostKey]:
    found = []
    for node, key in (await scan_host_keys(fleet)).items():
        if isinstance(key, ScanFailed):
            address = fleet.node(node)
            raise TrainfleetError(f"{node} ({address.host}:{address.port}): cannot read its host key: {key}")
        found.append(HostKey(node, key.key_type, key.key_data, key.fingerprint, key.status, key.pinned))
    return found


def render_known_hosts(fleet: Fleet, keys: list[HostKey]) -> str:
    by_node = {k.node: k for k in keys}
    lines = []
    for node in fleet.nodes:
        key = by_node[node.name]
        lines.append(f"{known_hosts_name(node.host, node.port)} {key.key_type} {key.key_data}")
    return "\n".join(lines) + "\n"


def render_ssh_config(fleet: Fleet, identity: str, known_hosts: str) -> str:
    """Host aliases for the node names; what pdsh, DeepSpeed's launcher and rsync need."""
    blocks = []
    for node in fleet.nodes:
        lines = [
            f"Host {node.name}",
            f"    HostName {node.host}",
            f"    Port {node.port}",
            f"    User {node.user}",
            f"    IdentityFile {identity}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {known_hosts}",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
        ]
        if node.jump is not None:
            lines.append(f"    ProxyJump {node.jump.user or node.user}@{node.jump.host}:{node.jump.port}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks) + "\n"


def render_hosts(fleet: Fleet, addresses: dict[str, str], hostnames: dict[str, str]) -> str:
    lines = []
    for node in fleet.nodes:
        names = [node.name] + ([hostnames[node.name]] if hostnames.get(node.name, node.name) != node.name else [])
        lines.append(f"{addresses.get(node.name, node.address)} {' '.join(names)}")
    return "\n".join(lines) + "\n"


async def setup(fleet: Fleet, *, confirm: Confirm, ask_password: PasswordPrompt | None = None,
                hosts_file: bool = False, repin: Collection[str] = (),
                confirm_change: Confirm = lambda text: False) -> SetupReport:
    """`repin`: nodes whose changed host key may replace the pinned one, once
    `confirm_change` accepts the old and new fingerprints it is shown."""
    key = ensure_fleet_key(fleet)
    host_keys = await collect_host_keys(fleet)
    unknown = [name for name in repin if name not in {n.name for n in fleet.nodes}]
    if unknown:
        raise UsageError(f"--repin {unknown[0]}: no such node", fix="name nodes of the fleet")
    changed = [k for k in host_keys if k.status == "changed"]
    accepted = [k for k in changed if k.node in repin]
    repinned: set[str] = set()
    if accepted and confirm_change("\n".join(f"  {k.node}: pinned {', '.join(k.pinned)}\n"
                                             f"  {' ' * len(k.node)}  now    {k.key_type} {k.fingerprint}"
                                             for k in accepted)):
        files = known_hosts_files(fleet.ssh)
        for found in accepted:
            node = fleet.node(found.node)
            forget_host_key(files, node.host, node.port)
        repinned = {k.node for k in accepted}
        changed = [k for k in changed if k.node not in repinned]
    if changed:
        names = ", ".join(f"{k.node} (now {k.fingerprint})" for k in changed)
        files = " and ".join(known_hosts_files(fleet.ssh)) or fleet.ssh.known_hosts
        raise TrainfleetError(f"host key changed for {names}, pinned in {files}: refusing to trust it (the "
                              f"machine was replaced, or someone is in the middle)",
                              fix=f"if the change is expected, `trainfleet ssh setup --repin "
                                  f"{','.join(k.node for k in changed)}` shows the old and new fingerprints and "
                                  f"pins the new one once you confirm it")
    new = [k for k in host_keys if k.status == "new"]
    host_keys = [dataclasses.replace(k, status="new") if k.node in repinned else k for k in host_keys]
    if new and not confirm("\n".join(f"  {k.node}: {k.key_type} {k.fingerprint}" for k in new)):
        raise UsageError("host keys not confirmed; nothing was changed",
                         fix="compare the fingerprints with the provider's console, then confirm (or pass --yes)")
    known_hosts_text = render_known_hosts(fleet, host_keys)
    pinned = pinned_keys(known_hosts_text)
    report = SetupReport(key=key, host_keys=host_keys)
    async with await FleetSession.open(fleet, known_hosts=pinned, ask_password=ask_password) as session:
        if session.failures:
            raise TrainfleetError("cannot reach every node: " + "; ".join(
                f"{n}: {r.error}" for n, r in session.failures.items()))
        hostnames: dict[str, str] = {}
        if hosts_file:
            named = await session.run("hostname", timeout=30)
            hostnames = {r.node: r.stdout.strip() for r in named.results if r.ok}
        node_identity = f"~/.ssh/trainfleet_{key.tag}"
        node_known = f"~/.ssh/trainfleet_{key.tag}_known_hosts"
        request = TrustRequest(tag=key.tag, private_key=key.private_path.read_text(),
                               public_key=f"{key.public_line} trainfleet:{key.tag}", known_hosts=known_hosts_text,
                               ssh_config=render_ssh_config(fleet, node_identity, node_known),
                               hosts=render_hosts(fleet, {}, hostnames) if hosts_file else "",
                               controller_key=ensure_controller_key(fleet), sources=fleet_sources(fleet))
        replies = await session.call_all(request, timeout=60)
        if not replies.failures:
            report.sources, report.unrestricted = await _restrict(session, request)
    for name, failed in replies.failures.items():
        report.errors[name] = failed.error or f"exit {failed.exit_status}"
    for name, answer in replies.answers.items():
        report.changed[name] = answer.changed
        if answer.errors:
            report.errors[name] = "; ".join(answer.errors)
    report.local_files = _write_local(fleet, key, known_hosts_text)
    return report


async def _probe(session: FleetSession) -> dict[str, Reach]:
    """Every node logs in to node 0 by its alias (node 0 to node 1): whether it could, and
    the address node 0 saw it come from. N connections, not N×N: a node's address as
    others see it is the same whichever node it reaches."""
    names = [n.name for n in session.fleet.nodes]
    target = {name: names[0] if name != names[0] or len(names) == 1 else names[1] for name in names}
    replies = await session.call_all(lambda node: SSHMatrixRequest(aliases=[target[node.name]]), timeout=60)
    found = {name: answer.reach[target[name]] for name, answer in replies.answers.items()}
    found.update((name, Reach(ok=False, error=failed.error or "no answer")) for name, failed in
                 replies.failures.items())
    return found


async def _restrict(session: FleetSession, request: TrustRequest) -> tuple[list[str], str]:
    """The fleet key accepted from the fleet's addresses only, checked from every node: where
    a node comes from an address no file names (a NAT's), the nodes are asked once without
    the restriction to learn it. Returns the addresses, or (where no restriction lets every
    node in) why the key stays accepted from anywhere."""
    fleet = session.fleet
    reached = await _probe(session)
    if all(r.ok for r in reached.values()):
        return request.sources, ""
    open_request = dataclasses.replace(request, sources=[])
    (await session.call_all(open_request, timeout=60)).require("ssh setup failed", fleet)
    seen = await _probe(session)
    if not all(r.ok for r in seen.values()):
        return [], ""  # the nodes cannot reach each other at all: `ssh check` says why
    sources = fleet_sources(fleet, [r.source for r in seen.values() if r.source])
    (await session.call_all(dataclasses.replace(request, sources=sources), timeout=60)).require("ssh setup failed", fleet)
    again = await _probe(session)
    if all(r.ok for r in again.values()):
        (_state_dir(fleet) / SOURCES_FILE).write_text("".join(f"{r.source}\n" for r in seen.values() if r.source))
        return sources, ""
    (await session.call_all(open_request, timeout=60)).require("ssh setup failed", fleet)
    refused = sorted(name for name, r in again.items() if not r.ok)
    return [], (f"{', '.join(refused)} could not log in to another node even from the address it was seen to "
                f"come from, so the fleet key is accepted from any address")


def _write_local(fleet: Fleet, key: FleetKey, known_hosts_text: str) -> list[str]:
    """The pinned host keys (read by trainfleet from now on) and an ssh_config for your own tools."""
    written = []
    files = {
        Path(fleet.ssh.fleet_known_hosts): known_hosts_text,
        Path(fleet.ssh.ssh_config): render_ssh_config(fleet, fleet.ssh.controller_key, fleet.ssh.fleet_known_hosts),
    }
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            write_atomically(path, text)
            written.append(str(path))
    return written


async def check(fleet: Fleet) -> dict[str, dict[str, Reach]]:
    """The N×N matrix: from every node, `ssh ALIAS true` to every node (itself included)."""
    aliases = [n.name for n in fleet.nodes]
    async with await FleetSession.open(fleet) as session:
        replies = await session.call_all(SSHMatrixRequest(aliases=aliases), timeout=60)
    matrix = {name: answer.reach for name, answer in replies.answers.items()}
    for name, failed in replies.failures.items():
        matrix[name] = {a: Reach(ok=False, error=failed.error or "no answer") for a in aliases}
    return {n.name: matrix[n.name] for n in fleet.nodes}


async def revoke(fleet: Fleet) -> dict[str, UntrustReply]:
    key = ensure_fleet_key(fleet)
    async with await FleetSession.open(fleet) as session:
        replies = await session.call_all(UntrustRequest(tag=key.tag), timeout=60)
    replies.require("revoke failed", fleet)
    return replies.answers
