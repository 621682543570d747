"""`trainfleet clean`: what trainfleet left on the nodes and on this machine, removed in
the order that keeps each step reachable (mounts, firewall rules, caches and records,
trust), and what it keeps (the user's code and outputs, the fleet file, local logs) said."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainfleet.agent.protocol import CleanReply, CleanRequest, FirewallReply, FirewallRequest
from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet, Node
from trainfleet.plans.firewall import fleet_tag
from trainfleet.results import FleetError, fold_nodes
from trainfleet.transport.session import FleetSession


@dataclass
class CleanOutcome:
    nodes: dict[str, CleanReply] = field(default_factory=dict)
    firewall: dict[str, FirewallReply] = field(default_factory=dict)
    storage: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)
    """This machine's: the fleet's state (key pair, pinned host keys, ssh_config, kept agents, cordons)."""
    error: FleetError | None = None


def trust_tag(fleet: Fleet) -> str:
    """The tag `ssh setup` marked this fleet's trust with (its key's), or "" if it never ran here."""
    public = Path(fleet.ssh.fleet_key + ".pub") if fleet.ssh.fleet_key else None
    if public is None or not public.is_file():
        return ""
    return hashlib.sha256(public.read_text().split()[1].encode()).hexdigest()[:12]


def local_paths(fleet: Fleet) -> list[str]:
    """What this machine keeps for the fleet: its state directory (never the fleet file,
    never trainfleet-runs/: the user's)."""
    from trainfleet.fleet.load import _cache_file

    state = Path(fleet.ssh.state_dir) if fleet.ssh.state_dir else None
    found = [str(state)] if state is not None and state.exists() else []
    try:  # the fleet file's parsed copy, kept to start commands faster
        cache = _cache_file(Path(fleet.source), Path(fleet.source).read_text())
    except OSError:
        cache = None
    return found + ([str(cache)] if cache is not None and cache.exists() else [])


async def clean(fleet: Fleet, nodes: Sequence[Node], *, workdirs: bool, dry_run: bool) -> CleanOutcome:
    from trainfleet.ops.jobs import views
    from trainfleet.ops.mount import apply as storage

    outcome = CleanOutcome()
    tag = trust_tag(fleet)
    async with await FleetSession.open(fleet, nodes) as session:
        session.unreachable.require("cannot clean", fleet)
        live = [v.job_id for v in await views(session, "") if v.state.live]
        if live:
            raise UsageError(f"cannot clean: job {', '.join(live)} is running on the fleet",
                             fix=f"`trainfleet stop {live[0]}` first (or wait for it to end)")
        if not dry_run:
            if fleet.storage:
                outcome.storage = [line for line in (await storage(session, "umount")).lines()]
            replies = await session.call_all(FirewallRequest(action="revoke", tag=fleet_tag(fleet)), timeout=120)
            outcome.firewall = replies.answers
        # Trust goes last on each node (in the same request, after the files): nothing after it needs it.
        replies = await session.call_all(CleanRequest(workdir=fleet.workdir, tag=tag, workdirs=workdirs,
                                                      dry_run=dry_run), timeout=300)
        outcome.nodes = replies.answers
        if replies.failures:
            outcome.error = FleetError("clean failed", replies, fleet)
    # This machine's part once every node is done (the session kept its resident agents' notes there).
    outcome.local = local_paths(fleet) if len(nodes) == len(fleet.nodes) else []
    if not dry_run and outcome.error is None:
        for path in outcome.local:
            if Path(path).is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                Path(path).unlink(missing_ok=True)
    return outcome


def lines(fleet: Fleet, outcome: CleanOutcome, dry_run: bool) -> list[str]:
    """What went (or would go) and what stays, per node, folded where nodes agree."""
    verb = "would remove" if dry_run else "removed"
    text = [f"storage: {line}" for line in outcome.storage]
    said: dict[str, list[str]] = {}  # line -> nodes, in the order first said: 128 nodes, one line each
    for node in fleet.nodes:
        reply = outcome.nodes.get(node.name)
        if reply is None:
            continue
        walls = outcome.firewall.get(node.name)
        mine = []
        if walls is not None and (walls.removed or walls.closed):
            mine.append(f"firewall ({walls.backend}): {len(walls.removed)} rule(s) removed"
                        + (f", closing chain removed ({', '.join(walls.closed)})" if walls.closed else ""))
        mine += [f"{verb} {path}" for path in reply.removed] + [f"kept {path}" for path in reply.kept]
        if not mine:
            mine.append("nothing of trainfleet's is left")
        for line in mine:
            said.setdefault(line, []).append(node.name)
    text += [f"{fold_nodes(nodes)}: {line}" for line, nodes in said.items()]
    if dry_run:
        text.append("every node: trainfleet's firewall rules, where `firewall apply` added them"
                    + ("; the fleet's mounts (`trainfleet umount`)" if fleet.storage else ""))
    for path in outcome.local:
        what = ("the fleet's key pair, pinned host keys, ssh_config, notes" if path == fleet.ssh.state_dir
                else "the fleet file's parsed copy")
        text.append(f"this machine: {verb} {path} ({what})")
    if not outcome.local and len(outcome.nodes) < len(fleet.nodes):
        text.append(f"this machine: kept the fleet's key and notes (only {fold_nodes(sorted(outcome.nodes))} "
                    f"cleaned; `trainfleet clean` without -n removes them)")
    text.append("kept: the fleet file, trainfleet-runs/ (local logs and pulls), and this installation of trainfleet")
    return text
