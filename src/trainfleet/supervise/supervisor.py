"""Running a LaunchPlan over a FleetSession: start every node, stream, stop, check.

Each node's agent starts the node's command under a node supervisor and streams its
output back over the session's connection. When a node fails, the others get a few
seconds to fail on their own (their failures are consequences to report, not causes),
then the rest are stopped. On Ctrl-C every node is stopped. Either way each node's
supervisor ends every process carrying the job's id and reports what, if anything,
is still running; nothing is assumed.

The client is a view: when its link to a node closes, the job goes on there (the node's
supervisor keeps it), and the client says so once, reconnects with backoff and catches
up from the node's log without losing or repeating a line. Whether a node is lost is
for the job's own supervisors to say (over the mesh, on the training network), never
for the controller's link. A link that stays away past `reconnect_timeout` ends the
client, not the job.
"""

from __future__ import annotations

import asyncio
import secrets as secrets_module
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainfleet.agent.protocol import (EnvFile, ErrorRecord, FollowRequest, JobState, JobStatus, LaunchRequest,
                                       LostEvent, Mesh, NodeReplan, OutputEvent, PrepareRequest, Proc, Request,
                                       StopRequest, SweepRequest, decode)
from trainfleet.job.plan import LaunchPlan, NodeLaunch
from trainfleet.supervise.rankexits import rank_exits
from trainfleet.results import fold_nodes
from trainfleet.supervise.output import OutputRouter, Printer
from trainfleet.supervise.rootcause import RootCause, find_root_cause
from trainfleet.transport.agent_client import AgentError, AgentFailed
from trainfleet.transport.session import FleetSession


@dataclass(frozen=True)
class RunOutcome:
    job_id: str
    exit_code: int
    cancelled: bool
    root_cause: RootCause | None
    states: Mapping[str, JobState]
    left_running: Mapping[str, list[Proc]] = field(default_factory=dict)
    unreachable: Mapping[str, str] = field(default_factory=dict)
    """Nodes whose final state could not be learned, and why."""
    seconds: float = 0.0
    lost: Mapping[str, str] = field(default_factory=dict)
    """Nodes lost while the job ran (it ended, or went on without them), and why."""
    link_lost: Mapping[str, float] = field(default_factory=dict)
    """Nodes this client could not get back to within `reconnect_timeout`, and since when
    (epoch seconds): the client left, and the job goes on."""


LINK_LOST_EXIT = 75
"""The client's exit when it left a job it could no longer see (EX_TEMPFAIL): not the job's."""
RECONNECT_FIRST = 1.0
RECONNECT_LONGEST = 15.0


class LinkLost(Exception):
    """No way back to a node within the bound."""

    def __init__(self, node: str, since: float) -> None:
        super().__init__(node)
        self.node, self.since = node, since


async def reopen(fleet: Any, node: str, bound: float, since: float) -> FleetSession:
    """A fresh session to `node` of `fleet` (a Fleet: this layer sits beside fleet/, not
    above it), tried with backoff for `bound` seconds (LinkLost then)."""
    deadline = time.monotonic() + bound
    delay = RECONNECT_FIRST
    while True:
        try:
            side = await FleetSession.open(fleet, [fleet.node(node)])
        except Exception:  # noqa: BLE001 - any way of not getting there is tried again
            side = None
        if side is not None and not side.failures:
            return side
        if side is not None:
            await side.close()
        if time.monotonic() + delay > deadline:
            raise LinkLost(node, since)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_LONGEST)


def clock(moment: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(moment))


def env_file(launch: NodeLaunch) -> EnvFile | None:
    spec = launch.env_file
    return EnvFile(variable=spec.variable, name=spec.name, merge=list(spec.merge), values=dict(spec.values)) \
        if spec else None


@dataclass
class Supervisor:
    session: FleetSession
    plan: LaunchPlan
    log_dir: Path
    printer: Printer
    workdir: str
    secrets: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    site_files: Mapping[str, str] = field(default_factory=dict)
    """trainfleet's sitecustomize (and the rank wrapper it imports), for plans that ask for it."""
    grace: float = 10.0
    settle: float = 3.0
    verbose: bool = False
    on_status: Callable[[str], None] = lambda text: None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    mesh_port: int = 0
    coordinator: str = ""
    """Node 0's training address: the job's node supervisors meet there."""
    mesh_addresses: tuple[str, ...] = ()
    """Every address of the job's nodes (the mesh reads nothing from any other)."""
    successor: str = ""
    successor_address: str = ""
    successor_port: int = 0
    """Where the node supervisors meet should node 0 be lost (the plan's successor)."""
    hang_timeout: float = 0.0
    loss_timeout: float = 15.0
    holds_lock: bool = False
    detach: bool = False
    lost: dict[str, str] = field(default_factory=dict)
    """Nodes the job lost while it ran, and why."""
    tether: float = 0.0
    reconnect_timeout: float = 600.0
    seen: dict[str, int] = field(default_factory=dict)
    """Lines of each node's log received so far (where a reconnected stream resumes)."""
    side: dict[str, FleetSession] = field(default_factory=dict)
    """A fresh session to each node whose first link closed, once it is back."""
    link_lost: dict[str, float] = field(default_factory=dict)
    joined: set[str] = field(default_factory=set)
    """Spares this client expects to have taken a lost node's place."""

    def requests(self) -> dict[str, LaunchRequest]:
        """Each node's launch, as its agent gets it."""
        token = secrets_module.token_hex(16)
        names = [launch.node for launch in self.plan.nodes]
        found = {}
        for launch in self.plan.nodes:
            mesh = Mesh(coordinator=self.coordinator, port=self.mesh_port, token=token, nodes=names, node=launch.node,
                        min_nodes=self.plan.min_nodes, hang_timeout=self.hang_timeout,
                        loss_timeout=self.loss_timeout, spares=list(self.plan.spares),
                        successor=self.successor if self.successor_port else "",
                        successor_address=self.successor_address, successor_port=self.successor_port,
                        addresses=list(self.mesh_addresses), restarts=self.plan.restarts,
                        replans={r.key: [n.node for n in r.nodes] for r in self.plan.replans}) if self.mesh_port else None
            found[launch.node] = LaunchRequest(
                job_id=self.plan.job_id, argv=list(launch.argv), cwd=launch.cwd, workdir=self.workdir,
                env=dict(launch.env), secrets=dict(self.secrets), files=self._files(launch.site), grace=self.grace,
                filled=list(launch.filled), path=list(launch.path), python_path=list(launch.python_path),
                after=[list(c) for c in launch.after],
                env_file=env_file(launch), mesh=mesh, detach=self.detach, tether=self.tether,
                failover=list(launch.failover) if self.successor_port else [], secrets_file=launch.secrets_file,
                replans={r.key: NodeReplan(argv=list(n.argv), env=dict(n.env)) for r in self.plan.replans
                         for n in r.nodes if n.node == launch.node},
                holds_lock=self.holds_lock,
                nproc=launch.nproc if self.plan.wraps_ranks else 0, launcher=self.plan.launcher,
                wrapped=self.plan.wraps_ranks, rank_nodes=list(self.plan.rank_nodes))
        return found

    async def start_detached(self) -> dict[str, JobState]:
        """Every node's part started (each node answers once its ranks run); nothing streams."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "plan.txt").write_text(self.plan.render())
        await self._prepare()
        requests = self.requests()
        replies = await self.session.call_all(lambda node: requests.get(node.name), timeout=None)
        if replies.failures:
            await self._stop(list(replies.answers), "stopped: another node could not start")
            replies.require("cannot start the job", self.session.fleet)
        return replies.answers

    async def run(self) -> RunOutcome:
        started = time.monotonic()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "plan.txt").write_text(self.plan.render())
        router = OutputRouter(self.log_dir, [n.name for n in self.session.nodes], self.printer,
                              ranks_marked=self.plan.wraps_ranks, verbose=self.verbose,
                              redact=self.secrets.values(), rank_nodes=self.plan.rank_nodes)
        states: dict[str, JobState] = {}
        errors: dict[str, str] = {}
        tasks: dict[asyncio.Task[JobState], str] = {}
        await self._prepare()
        for node, request in self.requests().items():
            self.seen[node] = 0
            handler = self._on_event(router, node, tasks)
            task = asyncio.ensure_future(self.session.call(node, request, on_event=handler))
            tasks[task] = node
        ticker = asyncio.ensure_future(self._tick(router))
        left: dict[str, list[Proc]] = {}
        records: dict[str, list[ErrorRecord]] = {}
        try:
            cancelled = await self._wait(tasks, states, errors, router)
            if cancelled:
                router.silence()
            running = [node for task, node in tasks.items() if not task.done()]
            if self.link_lost:  # this client leaves; the job goes on, so nothing is stopped
                for task in tasks:
                    task.cancel()
            elif running:
                why = "cancelled" if cancelled else "another node failed"
                self.on_status(f"stopping the job on {fold_nodes(running)} ({why})")
                await self._stop(running, "cancelled" if cancelled else "stopped: another node failed")
            if not self.link_lost:
                await self._collect(tasks, states, errors)
                left, records = await self._check(states, errors)
        finally:
            ticker.cancel()
            router.close()
            for side in self.side.values():
                await side.close()
        exits = [e for node, state in states.items() if state.state in (JobStatus.FAILED, JobStatus.STOPPED)
                 for e in rank_exits(self.plan.exit_report, node, list(router.node_lines.get(node, ())))]
        root = None if cancelled or self.link_lost else find_root_cause(
            states, exits, {key: list(lines) for key, lines in router.rank_lines.items()},
            {node: router.node_tail(node) for node in states}, records, self.lost)
        if cancelled:
            code = 130
        elif self.link_lost:
            code = LINK_LOST_EXIT
        elif root is not None:
            code = root.first.exit_code if 0 < root.first.exit_code < 256 else 1
        elif set(errors) - set(self.lost):  # a node lost and left behind (--min-nodes) is no failure of the job
            code = 1
        else:
            code = 0
        return RunOutcome(job_id=self.plan.job_id, exit_code=code, cancelled=cancelled, root_cause=root,
                          states=states, left_running=left,
                          unreachable={n: e for n, e in errors.items() if n not in self.lost},
                          seconds=time.monotonic() - started, lost=dict(self.lost), link_lost=dict(self.link_lost))

    def _files(self, site: bool) -> dict[str, str]:
        files = dict(self.files)
        if site:
            files.update({f"site/{name}": text for name, text in self.site_files.items()})
        return files

    async def _prepare(self) -> None:
        """Ready the nodes the job's own runner will start processes on."""
        if not self.plan.prepare:
            return
        replies = await self.session.call_all(lambda node: next(
            (PrepareRequest(job_id=self.plan.job_id, workdir=self.workdir, files=self._files(True),
                            env=dict(p.env), secrets=dict(self.secrets), write=dict(p.write))
             for p in self.plan.prepare if p.node == node.name), None), timeout=60)
        replies.require("cannot prepare the nodes for the job", self.session.fleet)

    def _on_event(self, router: OutputRouter, node: str,
                  tasks: dict[asyncio.Task[JobState], str]) -> Callable[[dict[str, Any]], None]:
        def handle(event: dict[str, Any]) -> None:
            if "lost" in event:
                self._lost(decode(LostEvent, event), tasks)
                return
            lines = decode(OutputEvent, event).lines
            self.seen[node] = self.seen.get(node, 0) + len(lines)
            for _, text in lines:
                router.take(node, text)

        return handle

    def _lost(self, event: LostEvent, tasks: dict[asyncio.Task[JobState], str]) -> None:
        """Node 0's supervisor lost a node: its connection here may take a minute to
        notice, so its part is given up on now."""
        for name in event.lost:
            if name in self.lost:
                continue
            self.lost[name] = event.reason if name in event.reason else f"{name} was lost"
            self.on_status(f"{name} was lost; " + self._after_loss(name))
            for task, node in tasks.items():
                if node == name and not task.done():
                    task.cancel()

    def _after_loss(self, name: str) -> str:
        """What the nodes do next (node 0's coordinator decides it the same way)."""
        if name in self.plan.spares and name not in self.joined:
            return "it was a spare waiting for a place: the job goes on as it was"
        if self.plan.replans:
            return self._replanned(name)
        left = len(self.plan.nodes) - len(self.lost)
        if not self.plan.min_nodes or left < self.plan.min_nodes:
            return "the job ends on every node"
        moves = ""
        if name == self.plan.nodes[0].node:
            if not (self.successor and self.successor_port):
                return "it hosted the rendezvous: the job ends on every node"
            moves = f"the rendezvous moves to {self.successor}; "
        spares = [n for n in self.plan.spares if n not in self.lost and n not in self.joined]
        if spares:
            self.joined.add(spares[0])
            return (f"{moves}its ranks restart, and a spare ({fold_nodes(spares)}) takes its place in torchrun's "
                    f"next rendezvous (the script resumes from its checkpoint)")
        return f"{moves}the job goes on without it (--min-nodes {self.plan.min_nodes})"

    def _replanned(self, name: str) -> str:
        """A launcher that cannot go on without a node: the plan made ahead for the nodes
        lost so far, which the nodes' supervisors start (while restarts are left)."""
        replan = {r.key: r for r in self.plan.replans}.get(",".join(sorted(self.lost)))
        if replan is None:
            return "the job ends on every node (no smaller plan for the nodes lost)"
        names = [n.node for n in replan.nodes]
        spares = [n for n in names if n in self.plan.spares and n not in self.joined]
        self.joined.update(spares)
        moves = f"the job's supervisors meet again on {self.successor}; " if name == self.plan.nodes[0].node else ""
        filled = f", a spare ({fold_nodes(spares)}) in its place" if spares else ""
        return (f"{moves}the job starts again without it on {fold_nodes(names)}{filled}, {replan.world_size} "
                f"process(es), while restarts are left (the script resumes from its checkpoint)")

    async def _tick(self, router: OutputRouter) -> None:
        while True:
            await asyncio.sleep(0.5)
            router.tick()

    async def _wait(self, tasks: dict[asyncio.Task[JobState], str], states: dict[str, JobState],
                    errors: dict[str, str], router: OutputRouter) -> bool:
        """Until every node ends, one fails (plus `settle`), or the user cancels. True when cancelled."""
        pending = set(tasks)
        cancel = asyncio.ensure_future(self.cancel.wait())
        deadline: float | None = None
        try:
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, _ = await asyncio.wait(pending | {cancel}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if cancel in done:
                    return True
                if not done:
                    return False
                pending -= done
                for task in done:
                    node = tasks[task]
                    if self._link_closed(task) and node not in self.lost:
                        again = asyncio.ensure_future(self._reattach(node, router, tasks))
                        tasks[again] = node
                        pending.add(again)
                        continue
                    if isinstance(task.exception() if not task.cancelled() else None, LinkLost):
                        self.link_lost[node] = task.exception().since  # type: ignore[union-attr]
                        return False
                    failed = self._record(task, node, states, errors)
                    if failed and deadline is None:
                        router.job_failing()
                        deadline = time.monotonic() + self.settle
            return False
        finally:
            cancel.cancel()

    def _link_closed(self, task: asyncio.Task[JobState]) -> bool:
        """The call ended because this client's link to the node closed (not because the
        node's agent answered with an error): the node's part of the job goes on."""
        if task.cancelled():
            return False
        exc = task.exception()
        return isinstance(exc, AgentFailed) and exc.link_closed

    async def _reattach(self, node: str, router: OutputRouter, tasks: dict[asyncio.Task[JobState], str]) -> JobState:
        """Back to the node over a fresh connection, then its stream from the first line not
        yet received, until the node's part ends; the link may close again (each time is
        said, and has its own bound). Raises LinkLost past the bound."""

        while True:
            since = time.time()
            self.on_status(f"lost contact with {node} (SSH) at {clock(since)}; the job goes on; reconnecting")
            old = self.side.pop(node, None)
            if old is not None:
                await old.close()
            side = self.side[node] = await reopen(self.session.fleet, node, self.reconnect_timeout, since)
            self.on_status(f"back in contact with {node} at {clock(time.time())}; catching up from its log")
            request = FollowRequest(job_id=self.plan.job_id, workdir=self.workdir, follow=True, skip=self.seen[node])
            try:
                return await side.call(node, request, on_event=self._on_event(router, node, tasks), timeout=None)
            except AgentFailed as exc:
                if not exc.link_closed:
                    raise

    async def _call(self, node: str, request: Request[Any], **kwargs: Any) -> Any:
        """A request over the node's live link: the fresh one where the first closed."""
        session = self.side.get(node, self.session)
        return await session.call(node, request, **kwargs)

    def _record(self, task: asyncio.Task[JobState], node: str, states: dict[str, JobState],
                errors: dict[str, str]) -> bool:
        """Keep what a finished launch call says; True when it is a failure that should
        end the others (a lost node is the node supervisors' to deal with)."""
        try:
            state = task.result()
        except asyncio.CancelledError:
            errors[node] = self.lost.get(node, "lost")
            return False
        except AgentError as exc:  # the node's agent refused or failed its part (a full disk, say): named, and
            errors[node] = str(exc)  # the others end now, not after the mesh's join timeout
            return True
        except AgentFailed as exc:
            errors[node] = self.lost.get(node, str(exc))
            return not self.mesh_port
        states[node] = state
        return state.state != JobStatus.SUCCEEDED

    async def _stop(self, nodes: list[str], reason: str) -> None:
        async def one(node: str) -> None:
            try:
                await self._call(node, StopRequest(job_id=self.plan.job_id, workdir=self.workdir, grace=self.grace,
                                                   reason=reason), timeout=self.grace + 30)
            except (AgentFailed, AgentError):
                pass  # the launch call of that node reports what happened

        await asyncio.gather(*(one(n) for n in nodes))

    async def _collect(self, tasks: dict[asyncio.Task[JobState], str], states: dict[str, JobState],
                       errors: dict[str, str]) -> None:
        running = [t for t in tasks if not t.done()]
        if running:
            await asyncio.wait(running, timeout=self.grace + 30)
        for task, node in tasks.items():
            if node in states or node in errors:
                continue
            if task.done():
                self._record(task, node, states, errors)
            else:
                task.cancel()
                errors[node] = "no final state from the node"

    async def _check(self, states: dict[str, JobState], errors: dict[str, str]
                     ) -> tuple[dict[str, list[Proc]], dict[str, list[ErrorRecord]]]:
        """What still runs: each node supervisor's own check, and a sweep where there is
        none (a lost launch, or a node where only the job's own runner started processes);
        and the failure records those sweeps found."""
        left = {node: state.left for node, state in states.items() if state.left}
        launched = {launch.node for launch in self.plan.nodes}
        unchecked = [n.name for n in self.session.nodes if (n.name in errors or n.name not in launched)
                     and n.name not in self.session.failures and n.name not in self.lost]
        records: dict[str, list[ErrorRecord]] = {}

        async def sweep(node: str) -> None:
            try:
                reply = await self._call(node, SweepRequest(job_id=self.plan.job_id, workdir=self.workdir), timeout=30)
            except (AgentFailed, AgentError) as exc:
                # No pids to report: what runs there is unknown, and said so (never invented).
                errors.setdefault(node, f"no final state ({exc}); `trainfleet status {self.plan.job_id}` shows it")
                return
            if reply.left:
                left[node] = reply.left
            if reply.errors:
                records[node] = reply.errors

        await asyncio.gather(*(sweep(n) for n in unchecked))
        return left, records
