"""`trainfleet run`: check, plan and supervise a job on every node, over one connection each.

Preflight asks every node at once what planning needs (its training interface and
address; on node 0 a free rendezvous port and, without sync, whether the entrypoint
is there) and then proves the rendezvous port and a ring of ephemeral ports reachable
between the nodes, so that a firewall that drops them fails the launch in seconds,
named, instead of hanging the rendezvous.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from trainfleet.agent.protocol import (FactSection, ConnectRequest, FactsReply, FactsRequest, ListenRequest, LockRequest,
                                       ReleaseRequest, SSHMatrixRequest, Target)
from trainfleet.plans.containers import check_image, containerize
from trainfleet.errors import TrainfleetError, UsageError
from trainfleet.fleet.model import Fleet, Node
from trainfleet.job.spec import JobSpec
from trainfleet.job.placement import DEFAULT_RDZV_PORT, LaunchFacts, spare_names
from trainfleet.job.plan import LaunchPlan
from trainfleet.launchers import get_launcher, plan_job
from trainfleet.plans.network import NetworkChoice, choose
from trainfleet.ops.common import facts_request
from trainfleet.ops.setup import setup_digest
from trainfleet.ops.mount import ensure_mounted
from trainfleet.ops.sync import Project, check_code, manifest, sync
from trainfleet.results import PYTHON_FIX, fold_nodes
from trainfleet.supervise.supervisor import RunOutcome, Supervisor
from trainfleet.transport.session import FleetSession

Status = Callable[[str], None]
REACH_TIMEOUT = 2.0


@dataclass(frozen=True)
class RunOptions:
    project: Project
    """Whose directory on the nodes the job runs in."""
    sync: bool = True
    """Copy the project first; False when the code is already on the nodes (checked)."""
    detach: bool = False
    """Return once every rank has started; the job goes on without this process."""
    concurrent: bool = False
    """Run beside a job of this fleet that is still running (normally refused)."""
    port: int | None = None
    """Rendezvous port on node 0; None: 29500 when free, else any free one."""
    log_dir: Path | None = None
    grace: float = 10.0
    settle: float = 3.0
    verbose: bool = False
    tether: float = 0.0
    """End the job once its controller (and any later viewer) has been gone this long; 0: never."""
    reconnect_timeout: float | None = None
    """How long this client tries to get back to a node it lost contact with (None: the fleet's)."""


def check_entrypoint_locally(job: JobSpec, source: Path) -> None:
    if not get_launcher(job.launcher).script_entry or job.module:
        return
    if not (source / job.entrypoint).is_file():
        raise UsageError(f"{job.entrypoint}: no such file in {source} (the directory `run` syncs)",
                         fix="check the name, or pass --sync-dir DIR / --no-sync")


def plan_offline(fleet: Fleet, job: JobSpec, project: Project, port: int | None) -> LaunchPlan:
    """The plan `--dry-run` prints: nobody is asked, so interfaces not in the fleet file
    show as detected, and a container's paths keep their ~/ (each node's home)."""
    plan = plan_job(fleet, job, LaunchFacts(rdzv_port=port or DEFAULT_RDZV_PORT), project.remote(fleet))
    if fleet.container is not None:
        plan = containerize(plan, fleet, {}, {})
    return plan


async def preflight(session: FleetSession, job: JobSpec, project: Project, wanted_port: int | None,
                    synced: str | None, status: Status = lambda text: None
                    ) -> tuple[LaunchFacts, dict[str, NetworkChoice]]:
    """`synced`: the manifest digest of the sync just made (None with --no-sync)."""
    fleet = session.fleet
    head = fleet.head
    port = wanted_port or DEFAULT_RDZV_PORT
    launcher = get_launcher(job.launcher)
    check_entry = synced is None and not job.module and launcher.script_entry
    # An absolute path with --no-sync is a script already on every node (a shared file
    # system): it is looked for there, on every node, and the project's copy is not asked for.
    outside = check_entry and job.entrypoint.startswith(("/", "~/"))
    entry = job.entrypoint if outside else f"{project.name}/{job.entrypoint}"
    common = [FactSection.NET, FactSection.PROJECT] + ([FactSection.GPU] if launcher.needs_gpu_facts or fleet.container else [])
    if fleet.container is None:  # (in a container, the image's Python runs the job)
        common.append(FactSection.PYTHON)

    spares = set(spare_names(fleet, job))
    successor = next((n.name for n in fleet.nodes[1:] if n.name not in spares), "")

    def request(node: Node) -> FactsRequest:
        files = [entry] if (check_entry and node.name == head.name) or outside else []
        if node.name == head.name:
            request = facts_request(fleet, [*common, FactSection.PORTS, FactSection.FILES], ports=[port], files=files,
                                    project=project.name)
            request.free = 2  # a rendezvous port if the wanted one is taken, and the node supervisors' meeting port
            return request
        if node.name == successor:
            # Where the rendezvous and the mesh move should node 0 be lost (an elastic job).
            request = facts_request(fleet, [*common, FactSection.PORTS, FactSection.FILES], ports=[port], files=files,
                                    project=project.name)
            request.free = 2
            return request
        return facts_request(fleet, [*common, FactSection.FILES] if files else common, files=files, project=project.name)

    replies = await session.call_all(request, timeout=30)
    replies.require("cannot start the job", fleet)
    answers = replies.answers
    lacking_python = [n for n, a in answers.items() if a.python_missing]
    if lacking_python:
        raise TrainfleetError(f"cannot start the job: `{fleet.python}` (the fleet's `python:`) was not found on "
                              f"{fold_nodes(lacking_python)} by a non-interactive SSH shell", fix=PYTHON_FIX)
    if outside:
        lacking = [n for n, a in answers.items() if not a.files.get(entry)]
        if lacking:
            raise UsageError(f"{job.entrypoint}: no such file on {fold_nodes(lacking)}",
                             fix="put it there (a shared file system, `trainfleet push`), or give a path in the "
                                 "project and leave out --no-sync")
    else:
        local = None if synced else manifest(project.source, fleet.sync_exclude).digest
        check_code({n: a.project for n, a in answers.items()}, project, synced, local)
    if check_entry and not outside and not answers[head.name].files.get(entry):
        raise UsageError(f"{job.entrypoint}: no such file in {project.remote(fleet)} on {head.name}",
                         fix="sync the code first (leave out --no-sync), or check the name")
    if fleet.setup.commands:
        digest = setup_digest(fleet, project.source)
        stale = [n for n, a in answers.items() if a.project is None or a.project.setup != digest]
        if stale:
            status(f"setup has not run (or has changed) on {fold_nodes(stale)}: `trainfleet setup` runs it")
    choices = choose(fleet, answers)
    problems = [f"{c.node}: {c.problem}" for c in choices.values() if c.problem]
    if problems:
        raise TrainfleetError("cannot pick a training network: " + "; ".join(problems),
                              fix="correct `address:`/`interface:` in the fleet file (`trainfleet doctor` shows "
                                  "each node's interfaces)")
    port = _rendezvous_port(answers[head.name], head, port, wanted_port is not None)
    await check_reachable(session, choices, port)
    gpus = {n: len(a.gpu.gpus) if a.gpu else 0 for n, a in answers.items()} if FactSection.GPU in common else {}
    mesh_port = next(p for p in answers[head.name].free_ports if p != port)
    facts = LaunchFacts(rdzv_port=port, interfaces={n: c.interface for n, c in choices.items() if c.interface},
                        addresses={n: c.address for n, c in choices.items()}, gpus=gpus,
                        homes={n: a.home for n, a in answers.items()}, mesh_port=mesh_port,
                        successor_ports=tuple(answers[successor].free_ports[:2]) if successor else ())
    return facts, choices


async def close_ports(session: FleetSession, port: int, status: Status) -> None:
    """`firewall: closed`: the job's ports closed to everyone but the fleet before anything
    listens (what `firewall apply` does; idempotent, and left in place for the next job)."""
    from trainfleet.ops.firewall import apply_in

    outcome = await apply_in(session, port, "cannot start the job: the fleet file asks for `firewall: closed`")
    if outcome.error is not None:
        raise outcome.error
    open_still = [f"{n}: {r.still_open}" for n, r in outcome.replies.items() if r.still_open]
    if open_still:
        raise TrainfleetError("cannot start the job: the fleet file asks for `firewall: closed`, but "
                              + "; ".join(open_still), fix="run the nodes' firewall commands as root (passwordless "
                                                           "sudo), or set `firewall: open`")
    closed = sorted(n for n, r in outcome.replies.items() if r.closed)
    if closed:
        status(f"firewall: the job's ports closed to everyone but the fleet on {fold_nodes(closed)}")


async def check_container(session: FleetSession) -> None:
    """The image on every node (pulled where it is missing), before anything starts."""
    fleet = session.fleet
    assert fleet.container is not None
    result = await session.run(check_image(fleet.container), timeout=1800)
    what = fleet.container.image or fleet.container.rootfs
    result.require(f"cannot start the job: {what} is not on every node and could not be pulled", fleet,
                   fix=f"check the name, and that `{fleet.container.engine}` runs and can reach the registry there")


async def check_node_ssh(session: FleetSession) -> None:
    """The job's own runner on node 0 reaches every node by name over SSH (pdsh, deepy.py)."""
    fleet = session.fleet
    head = fleet.head.name
    reply = await session.call(head, SSHMatrixRequest(aliases=[n.name for n in fleet.nodes]), timeout=60)
    missing = sorted(alias for alias, reach in reply.reach.items() if not reach.ok)
    if missing:
        detail = reply.reach[missing[0]].error
        raise TrainfleetError(f"{head} cannot ssh to {fold_nodes(missing)} by name ({detail}), which the job's "
                              f"runner needs", fix="run `trainfleet ssh setup` (one fleet key, node aliases, pinned "
                                                   "host keys)")


def _rendezvous_port(head_facts: FactsReply, head: Node, port: int, chosen: bool) -> int:
    holder = head_facts.ports.get(str(port))
    if holder is None:
        return port
    who = f" by pid {holder.pid} ({holder.cmdline})" if holder.pid else ""
    if holder.job_id:
        who += f", a process of trainfleet job {holder.job_id}"
    if chosen:
        raise TrainfleetError(f"port {port} is already in use on {head.name}{who}",
                              fix="pick another --port, or leave it out to use a free one")
    assert head_facts.free_port is not None
    return head_facts.free_port


_DROPPED = {"timeout": "drops connections to", "refused": "refuses connections to",
            "unreachable": "cannot be reached at", "error": "fails connections to"}


async def check_reachable(session: FleetSession, choices: Mapping[str, NetworkChoice], port: int) -> None:
    """Node 0's rendezvous port from every other node, and each node's ephemeral range
    from the node before it: what c10d, gloo and NCCL will connect to."""
    fleet = session.fleet
    nodes = list(fleet.nodes)
    if len(nodes) < 2:
        return
    head = fleet.head
    listening = await session.call_all(
        lambda n: ListenRequest(ports=[port, 0] if n.name == head.name else [0], address=choices[n.name].address,
                                max_seconds=30), timeout=30)
    listening.require("cannot start the job", fleet)
    try:
        bound = {name: {b.wanted: b for b in reply.bound} for name, reply in listening.answers.items()}
        if bound[head.name][port].error:
            raise TrainfleetError(f"rendezvous port {port} on {head.name} cannot be opened: "
                                  f"{bound[head.name][port].error}", fix="pick another --port")
        targets: dict[str, list[Target]] = {n.name: [] for n in nodes}
        for index, node in enumerate(nodes):
            if node.name != head.name:
                targets[node.name].append(Target(node=head.name, address=choices[head.name].address, port=port,
                                                 label="rendezvous"))
            peer = nodes[(index + 1) % len(nodes)]
            ephemeral = bound[peer.name][0].port
            if ephemeral:
                targets[node.name].append(Target(node=peer.name, address=choices[peer.name].address,
                                                 port=ephemeral, label="ephemeral"))
        tried = await session.call_all(lambda n: ConnectRequest(targets=targets[n.name], timeout=REACH_TIMEOUT),
                                       timeout=30)
        tried.require("cannot start the job", fleet)
    finally:
        await session.call_all(lambda n: ReleaseRequest(handle=listening.answers[n.name].handle)
                               if n.name in listening.answers else None, timeout=10)
    blocked: dict[tuple[str, str, str], list[str]] = {}
    for source, reply in tried.answers.items():
        for attempt in reply.attempts:
            if attempt.result != "ok":
                key = (attempt.target.node, attempt.target.label, attempt.result)
                blocked.setdefault(key, []).append(source)
    if not blocked:
        return
    parts = []
    for (target, label, result), sources in sorted(blocked.items()):
        what = f"the rendezvous port {port}" if label == "rendezvous" else "its ephemeral ports (gloo/NCCL)"
        parts.append(f"{target} {_DROPPED[result]} {what} from {fold_nodes(sources)}")
    raise TrainfleetError("cannot start the job: " + "; ".join(parts),
                          fix="`trainfleet firewall apply` opens exactly these ports between fleet nodes "
                              "(`trainfleet doctor` checks every port); do not disable the firewall")


async def take_fleet(session: FleetSession, job: JobSpec) -> None:
    """One job per node: the lock of every node of this run (whatever order `-n` names them
    in, so two runs over the same nodes cannot both start), or the running job named, and
    how to stop it. A live job on any of these nodes counts too."""
    fleet = session.fleet
    seen = await session.call_all(facts_request(fleet, [FactSection.JOBS]), timeout=30)  # also: every agent started
    seen.require("cannot start the job", fleet)
    locked = await session.call_all(LockRequest(job_id=job.job_id, workdir=fleet.workdir), timeout=30)
    locked.require("cannot start the job", fleet)
    refused = sorted((name, reply) for name, reply in locked.answers.items() if not reply.ok)
    holder, state = (refused[0][1].holder, refused[0][1].holder_state) if refused else ("", "")
    for node in fleet.nodes:
        for job_seen in seen.answers[node.name].jobs or []:
            if job_seen.live and job_seen.processes and not holder and job_seen.job_id != job.job_id:
                holder, state = job_seen.job_id, f"running on {node.name}"
    if holder:
        await release_fleet(session, job, [n for n, reply in locked.answers.items() if reply.ok])
        raise TrainfleetError(f"job {holder} is {state} on this fleet; a second job would share "
                              f"its nodes (and overwrite its checkpoints)",
                              fix=f"`trainfleet stop {holder}` first, or pass --concurrent to run beside it")


async def release_fleet(session: FleetSession, job: JobSpec, nodes: list[str]) -> None:
    """The job's locks on these nodes (only its own: another job's stays)."""
    await session.call_all(LockRequest(job_id=job.job_id, workdir=session.fleet.workdir, release=True),
                           [n for n in session.fleet.nodes if n.name in nodes], timeout=30)


async def run_job(fleet: Fleet, job: JobSpec, options: RunOptions, *, secrets: Mapping[str, str],
                  printer: Callable[[str], None], status: Status, cancel: asyncio.Event) -> RunOutcome | str:
    """Everything after the sync: preflight, plan, supervise; one SSH connection per node.
    With `detach`, the job's id once every rank has started."""
    async with await FleetSession.open(fleet) as session:
        session.unreachable.require("cannot start the job, not every node is reachable", fleet)
        if not options.concurrent:  # before the sync, which would change the code under a running job
            await take_fleet(session, job)
        try:
            return await _start(session, fleet, job, options, secrets, printer, status, cancel)
        except BaseException:
            if not options.concurrent:  # the job never started: its nodes are free again
                await release_fleet(session, job, [n.name for n in fleet.nodes])
            raise


async def _start(session: FleetSession, fleet: Fleet, job: JobSpec, options: RunOptions,
                 secrets: Mapping[str, str], printer: Callable[[str], None], status: Status,
                 cancel: asyncio.Event) -> RunOutcome | str:
    synced = None
    if options.sync:
        started = time.monotonic()
        _, listed = await sync(session, options.project)
        synced = listed.digest
        status(f"synced {options.project.source} ({len(listed.files)} files) to "
               f"{options.project.remote(fleet)} on {len(fleet.nodes)} node(s) in "
               f"{time.monotonic() - started:.1f}s")
    facts, _ = await preflight(session, job, options.project, options.port, synced, status)
    if fleet.firewall == "closed":
        await close_ports(session, facts.rdzv_port, status)
    await ensure_mounted(session, secrets, status)
    plan = plan_job(fleet, job, facts, options.project.remote(fleet))
    if fleet.container is not None:
        plan = containerize(plan, fleet, facts.homes, facts.gpus)
        await check_container(session)
    if plan.needs_node_ssh:
        await check_node_ssh(session)
    return await _supervise(session, fleet, job, options, plan, facts, secrets, printer, status, cancel)


async def _supervise(session: FleetSession, fleet: Fleet, job: JobSpec, options: RunOptions, plan: LaunchPlan,
                     facts: LaunchFacts, secrets: Mapping[str, str],
                     printer: Callable[[str], None], status: Status, cancel: asyncio.Event) -> RunOutcome | str:
    from trainfleet.agent.records import agent_module

    logs = options.log_dir or Path("trainfleet-runs") / job.job_id
    status(f"job {plan.job_id}: {plan.world_size} process(es) on {len(plan.nodes)} node(s), "
           f"{plan.rendezvous}, logs in {logs}")
    wrapper = agent_module("tfagent.rankwrap")  # the node writes its own copy (it has the agent)
    supervisor = Supervisor(session=session, plan=plan, log_dir=logs, printer=printer,
                            workdir=fleet.workdir, secrets=secrets, files={"rankwrap.py": wrapper},
                            site_files={"sitecustomize.py": agent_module("tfagent.sitecustomize"),
                                        "rankwrap.py": wrapper}, grace=options.grace,
                            settle=options.settle, verbose=options.verbose, on_status=status, cancel=cancel,
                            mesh_port=facts.mesh_port,
                            # node 0 of the plan: --include/--exclude may leave out the fleet's
                            coordinator=facts.address(fleet.node(plan.nodes[0].node)),
                            successor=plan.successor,
                            mesh_addresses=tuple(dict.fromkeys(
                                [*facts.addresses.values(), *(a for n in fleet.nodes for a in (n.address, n.host))])),
                            successor_address=facts.address(fleet.node(plan.successor)) if plan.successor else "",
                            successor_port=facts.successor_ports[1] if len(facts.successor_ports) > 1 else 0,
                            hang_timeout=job.hang_timeout, loss_timeout=job.loss_timeout,
                            holds_lock=not options.concurrent, detach=options.detach, tether=options.tether,
                            reconnect_timeout=fleet.ssh.reconnect_timeout if options.reconnect_timeout is None
                            else options.reconnect_timeout)
    if options.detach:
        await supervisor.start_detached()
        return plan.job_id
    return await supervisor.run()

