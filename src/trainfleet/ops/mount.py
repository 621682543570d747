"""`trainfleet mount | umount`, the mounts `run` makes when missing, and doctor's proof
that a file written on one node is read on every other."""

from __future__ import annotations

import secrets as secrets_module
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from trainfleet.agent.protocol import FactSection, MountStatus, MountItem, MountResult, ProbeRequest, StorageRequest
from trainfleet.errors import TrainfleetError
from trainfleet.fleet.model import Fleet, Node
from trainfleet.plans.network import choose
from trainfleet.ops.common import facts_request
from trainfleet.results import fold_nodes
from trainfleet.plans.mounts import MountStep, Visibility, label, plan_mounts
from trainfleet.transport.session import FleetSession

PROBE = ".trainfleet-probe-"


@dataclass
class StorageOutcome:
    """Per storage (its label and mount path): what happened on each node."""

    results: dict[tuple[str, str], dict[str, MountResult]] = field(default_factory=dict)
    servers: dict[tuple[str, str], str] = field(default_factory=dict)
    """The node serving each shared-dir or nfs storage (it mounts nothing)."""
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> list[tuple[str, str, MountResult]]:
        return [(what[0], node, result) for what, per in self.results.items() for node, result in per.items()
                if result.state == MountStatus.FAILED]

    def lines(self) -> list[str]:
        """One line per storage and outcome: `s3 bucket data at /data: mounted on node[0-2]`."""
        text = []
        for key, per in self.results.items():
            by_state: dict[MountStatus, list[str]] = {}
            server = self.servers.get(key)
            for node, result in per.items():
                if node != server:
                    by_state.setdefault(result.state, []).append(node)
            parts = [f"{_WORDS[state]} on {fold_nodes(by_state[state])}" for state in _WORDS
                     if state in by_state and state != MountStatus.FAILED]
            if server in per and per[server].state != MountStatus.FAILED:
                parts.append(f"served by {server}")
            if parts:
                text.append(f"{key[0]} at {key[1]}: " + "; ".join(parts))
        return text


_WORDS = {MountStatus.MOUNTED: "mounted", MountStatus.ALREADY: "already mounted", MountStatus.UNMOUNTED: "unmounted",
          MountStatus.ABSENT: "not mounted", MountStatus.FAILED: "failed"}


def _item(step: MountStep) -> MountItem:
    return MountItem(mount=step.mount, label=step.label, role=step.role, fstypes=list(step.fstypes),
                     commands=[list(c) for c in step.commands], undo=[list(c) for c in step.undo],
                     env=dict(step.env), requires=list(step.requires))


async def _steps(session: FleetSession) -> list[MountStep]:
    fleet = session.fleet
    addresses = None
    if any(s.type == "nfs" and not s.server for s in fleet.storage):  # exports name the clients' addresses
        facts = await session.call_all(facts_request(fleet, [FactSection.NET]), timeout=30)
        choices = choose(fleet, facts.answers) if len(facts.answers) > 1 else {}
        addresses = {n.name: choices[n.name].address if n.name in choices else n.address for n in fleet.nodes}
    return plan_mounts(fleet, session.live, addresses)


async def apply(session: FleetSession, action: str, secrets: Mapping[str, str] | None = None) -> StorageOutcome:
    """`action` (mount, umount, status) on every reachable node: servers first when
    mounting, clients first when unmounting."""
    steps = await _steps(session)
    outcome = StorageOutcome(unreachable={n: r.error or "unreachable" for n, r in session.failures.items()})
    for step in steps:
        outcome.results.setdefault((step.label, step.mount), {})
        if step.role == "server":
            outcome.servers[(step.label, step.mount)] = step.node
    roles = ["server", "client"] if action != "umount" else ["client", "server"]
    for role in roles:
        chosen = [s for s in steps if s.role == role]
        nodes = sorted({s.node for s in chosen})
        replies = await session.call_all(
            lambda n: StorageRequest(action=action, items=[_item(s) for s in chosen if s.node == n.name],
                                     secrets=dict(secrets or {}) if action == "mount" else {})
            if n.name in nodes else None, timeout=180)
        for node, failed in replies.failures.items():
            outcome.unreachable[node] = failed.error or "no answer"
        for node, reply in replies.answers.items():
            mine = [s for s in chosen if s.node == node]
            for step, result in zip(mine, reply.results):
                outcome.results[(step.label, step.mount)][node] = result
        if action == "mount" and role == "server" and any(
                r.state == MountStatus.FAILED for s in chosen for r in [outcome.results[(s.label, s.mount)].get(s.node)] if r):
            break  # clients of a directory that is not served would only fail after it
    return outcome


async def storage_nodes(fleet: Fleet, nodes: Sequence[Node], action: str,
                        secrets: Mapping[str, str] | None = None) -> StorageOutcome:
    """`trainfleet mount` / `umount` on these nodes, over a session of their own."""
    async with await FleetSession.open(fleet, nodes) as session:
        return await apply(session, action, secrets)


def require_mounted(fleet: Fleet, outcome: StorageOutcome) -> None:
    failures = outcome.failures
    if not failures:
        return
    what, _, result = failures[0]
    nodes = [node for label, node, other in failures if label == what and other.detail == result.detail]
    others = len(failures) - len(nodes)
    more = f" (and {others} more failure(s): `trainfleet mount` lists them)" if others else ""
    detail = result.detail
    if "kernel has no" in detail:
        module = detail.split("kernel has no ")[1].split()[0]
        fix = (f"load it on those nodes (`sudo modprobe {module}`; on Ubuntu it ships in "
               f"linux-modules-extra-$(uname -r)), or take this entry out of `storage:`")
    elif detail.endswith("is not installed on this node"):
        fix = f"install it on those nodes: `trainfleet exec -- sudo apt-get install -y {detail.split()[0]}`"
    elif "sshfs" in detail and ("resolve" in detail or "Permission denied" in detail
                                or "read: Connection reset" in detail):
        fix = "run `trainfleet ssh setup` (the nodes reach each other by name with the fleet's key)"
    else:
        fix = "check the storage entry in the fleet file and the node (`trainfleet doctor`)"
    raise TrainfleetError(f"cannot mount {what} on {fold_nodes(nodes)}: {detail}{more}", fix=fix)


async def visibility(session: FleetSession) -> list[Visibility]:
    """For each storage: its state on every node, then a file written on the first node
    that has it (the serving node, for shared-dir and nfs) and read on the others."""
    fleet = session.fleet
    if not fleet.storage:
        return []
    status = await apply(session, "status")
    found = []
    for storage in fleet.storage:
        text = label(fleet, storage)
        per = status.results.get((text, storage.mount), {})
        mounted = tuple(n.name for n in fleet.nodes if n.name in per and per[n.name].state == MountStatus.MOUNTED)
        absent = tuple(n.name for n in fleet.nodes if n.name in per and per[n.name].state != MountStatus.MOUNTED)
        if not mounted:
            found.append(Visibility(storage, text, mounted, absent, None))
            continue
        writer = mounted[0]
        token = secrets_module.token_hex(8)
        path = f"{storage.mount}/{PROBE}{token}"
        wrote = await session.call(writer, ProbeRequest(write={path: token}), timeout=60)
        if wrote.errors:
            found.append(Visibility(storage, text, mounted, absent, writer,
                                    error=f"cannot write {path} on {writer}: {wrote.errors[path]}"))
            continue
        readers = [n for n in mounted if n != writer]
        reads = await session.call_all(ProbeRequest(read=[path]), [fleet.node(n) for n in readers], timeout=60)
        unseen = {}
        for node in readers:
            if node in reads.failures:
                unseen[node] = reads.failures[node].error or "no answer"
                continue
            answer = reads.answers[node]
            if path in answer.errors:
                unseen[node] = answer.errors[path]
            elif answer.read.get(path) != token:
                unseen[node] = "the file is not there" if answer.read.get(path) is None else "other content"
        await session.call(writer, ProbeRequest(remove=[path]), timeout=60)
        found.append(Visibility(storage, text, mounted, absent, writer, unseen))
    return found


def mount_lines(outcome: StorageOutcome, only_changes: bool = False) -> Sequence[str]:
    if not only_changes:
        return outcome.lines()
    changed = StorageOutcome(results={k: {n: r for n, r in per.items()
                                          if r.state == MountStatus.MOUNTED or (n == outcome.servers.get(k) and r.state != MountStatus.FAILED)}
                                      for k, per in outcome.results.items()
                                      if any(r.state == MountStatus.MOUNTED for r in per.values())},
                             servers=dict(outcome.servers))
    return changed.lines()


Status = Callable[[str], None]


async def ensure_mounted(session: FleetSession, secrets: Mapping[str, str], status: Status) -> None:
    """What `run` does first: mount what is missing, say what was mounted, fail named."""
    if not session.fleet.storage:
        return
    outcome = await apply(session, "mount", secrets)
    require_mounted(session.fleet, outcome)
    for line in mount_lines(outcome, only_changes=True):
        status(line)
