"""`trainfleet status | logs | stop | top`: jobs as the nodes keep them.

A job's records live on its nodes (state, output, failure records), so any machine with
the fleet file sees the same, and a detached job needs no client.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from trainfleet.agent.protocol import (JobStatus, FollowRequest, JobsRequest, JobState, OutputEvent, Restart, StopRequest, SweepRequest,
                                       TopReply, TopRequest, decode)
from trainfleet.errors import TrainfleetError, UsageError
from trainfleet.fleet.model import Fleet, Node
from trainfleet.job.plan import RANK_LINE
from trainfleet.supervise.output import on_screen, rank_node
from trainfleet.supervise.rootcause import RootCause, find_root_cause
from trainfleet.supervise.supervisor import LinkLost, clock, reopen
from trainfleet.transport.agent_client import AgentError, AgentFailed
from trainfleet.transport.session import FleetSession

ORDER = (JobStatus.RUNNING, JobStatus.STARTING, JobStatus.FAILED, JobStatus.LOST, JobStatus.STOPPED, JobStatus.SUCCEEDED)
WRAPPED = {"torchrun", "deepspeed", "accelerate"}
"""Launchers whose ranks mark their lines (the node's own lines are the launcher's)."""


@dataclass
class JobView:
    job_id: str
    nodes: dict[str, JobState] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> JobStatus:
        states = {s.state for s in self.nodes.values()}
        for name in ORDER:
            if name in states:
                return name
        return JobStatus.UNKNOWN

    @property
    def started(self) -> float:
        return min(s.started for s in self.nodes.values())

    @property
    def ended(self) -> float | None:
        ends = [s.ended for s in self.nodes.values()]
        return None if any(e is None for e in ends) else max(e for e in ends if e is not None)

    @property
    def lost(self) -> list[str]:
        return sorted({n for s in self.nodes.values() for n in s.lost})

    @property
    def restarts(self) -> list[Restart]:
        """Each time the job went on after losing a node (node 0 keeps them), oldest first."""
        return sorted((r for s in self.nodes.values() for r in s.restarts), key=lambda r: r.at)

    @property
    def spares(self) -> dict[str, str]:
        """Each spare and what became of it: waiting, joined (took a place) or not needed."""
        return {n: s.spare for n, s in sorted(self.nodes.items()) if s.spare}

    @property
    def straggler(self) -> str | None:
        """The node the others wait for, where one stands out (supervise/straggler.py)."""
        from trainfleet.supervise.straggler import slowest

        return slowest(self.nodes)

    @property
    def metrics(self) -> dict[str, float]:
        """The latest value of each metric the job printed (node 0's, where it has it)."""
        latest: dict[str, float] = {}
        for name in sorted(self.nodes, reverse=True):
            latest.update(self.nodes[name].metrics)
        head = next((s.rank_nodes[0] for s in self.nodes.values() if s.rank_nodes), None)
        if head in self.nodes:
            latest.update(self.nodes[head].metrics)  # type: ignore[index]
        return latest

    def root_cause(self) -> RootCause | None:
        if self.state not in (JobStatus.FAILED, JobStatus.LOST):
            return None
        return find_root_cause(self.nodes, [], {}, {})

    @property
    def reason(self) -> str:
        """Why it ended, when it was stopped or lost (the first node's word for it)."""
        return next((s.reason for s in self.nodes.values() if s.reason), "")

    def to_json(self) -> dict[str, Any]:
        root = self.root_cause()
        return {
            "job_id": self.job_id, "state": self.state, "started": self.started, "ended": self.ended,
            "lost": self.lost, "unreachable": self.unreachable, "reason": self.reason, "metrics": self.metrics,
            "spares": self.spares, "restarts": [asdict(r) for r in self.restarts], "straggler": self.straggler,
            "root_cause": None if root is None else {"summary": root.headline(), "node": root.first.node,
                                                     "rank": root.first.rank, "exit_code": root.first.exit_code,
                                                     "signal": root.first.signal, "detail": root.first.detail},
            "nodes": {n: {"state": s.state, "exit_code": s.exit_code, "signal": s.signal, "reason": s.reason,
                          "started": s.started, "ended": s.ended, "hang": s.hang, "waits": s.waits}
                      for n, s in self.nodes.items()},
        }


def fold_views(states: Mapping[str, Sequence[JobState]], unreachable: Mapping[str, str]) -> list[JobView]:
    """Each node's job records, as one view a job (newest first)."""
    found: dict[str, JobView] = {}
    for node, listed in states.items():
        for state in listed:
            found.setdefault(state.job_id, JobView(state.job_id)).nodes[node] = state
    for view in found.values():
        view.unreachable.update(unreachable)
    return sorted(found.values(), key=lambda v: v.started, reverse=True)


async def views(session: FleetSession, job_id: str = "") -> list[JobView]:
    fleet = session.fleet
    replies = await session.call_all(JobsRequest(workdir=fleet.workdir, job_id=job_id), timeout=30)
    found = {v.job_id: v for v in fold_views({n: a.states for n, a in replies.answers.items()},
                                             {n: f.error or "no answer" for n, f in replies.failures.items()})}
    if job_id and job_id not in found:
        where = " (unreachable: " + ", ".join(replies.failures) + ")" if replies.failures else ""
        raise UsageError(f"no job {job_id} on this fleet's nodes{where}", fix="`trainfleet status` lists them")
    return list(found.values())


async def status(fleet: Fleet, job_id: str = "") -> list[JobView]:
    async with await FleetSession.open(fleet) as session:
        return await views(session, job_id)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str, now: float | None = None) -> float:
    """`10m`, `2h`, `30s`, `1d` ago, or a time as `2026-11-23T12:30` (local)."""
    import datetime as _dt

    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match:
        return now - float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    try:
        return _dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r} is not understood", fix="write it like 10m, 2h or 2026-11-23T12:30") \
            from None


def matches(text: str, rank: int | None) -> bool:
    if rank is None:
        return True
    match = RANK_LINE.match(text)
    return match is not None and int(match.group(1)) == rank


def shown(node: str, text: str, rank_nodes: Sequence[str] = ()) -> str:
    match = RANK_LINE.match(text)
    if match is None:
        return f"[{node}] {text}"
    rank = int(match.group(1))
    return f"[{rank_node(rank_nodes, rank, node)}:{rank}] {match.group(2)}"


async def logs(fleet: Fleet, job_id: str, nodes: Iterable[Node], *, rank: int | None, since: float, follow: bool,
               printer: Callable[[str], None], verbose: bool = False,
               on_job: Callable[[str], None] = lambda text: None) -> tuple[str, dict[str, JobState]]:
    """The job's output (`job_id` "": the newest job's, named through `on_job`), merged: all
    of it in time order, or (following) as it comes, until it ends; the launcher's chatter
    only with `verbose`, as `run` shows it. Returns the job's id and its final states."""
    chosen = list(nodes)
    collected: list[tuple[float, str]] = []
    async with await FleetSession.open(fleet, chosen) as session:
        found = await views(session, job_id)
        if not found:
            raise UsageError("no jobs on this fleet's nodes yet", fix="start one: `trainfleet run SCRIPT`")
        known = found[0]
        if not job_id:
            job_id = known.job_id
            on_job(f"job {job_id} (the newest; `trainfleet status` lists them all)")
        marked = any(s.wrapped for s in known.nodes.values())
        placed = next((s.rank_nodes for s in known.nodes.values() if s.rank_nodes), [])

        received: dict[str, int] = {}
        """Lines of each node's log received (where a reconnected stream resumes)."""

        def take(node: str) -> Callable[[dict[str, Any]], None]:
            def handle(event: dict[str, Any]) -> None:
                if "lines" not in event:
                    return
                lines = decode(OutputEvent, event).lines
                received[node] = received.get(node, 0) + len(lines)
                for moment, text in lines:
                    if (verbose or on_screen(text, marked)) and matches(text, rank):
                        if follow:
                            printer(shown(node, text, placed))
                        else:
                            collected.append((moment, shown(node, text, placed)))
            return handle

        states: dict[str, JobState] = {}

        async def one(node: Node) -> None:
            if node.name not in known.nodes:
                return
            link = session
            try:
                while True:
                    request = FollowRequest(job_id=job_id, workdir=fleet.workdir, since=since, follow=follow,
                                            skip=received.get(node.name, 0))
                    try:
                        states[node.name] = await link.call(node.name, request, on_event=take(node.name), timeout=None)
                        return
                    except AgentFailed as exc:
                        if not (follow and exc.link_closed):
                            raise
                    # A view only: the job goes on; back from the first line not yet shown.
                    lost = time.time()
                    on_job(f"lost contact with {node.name} (SSH) at {clock(lost)}; the job goes on; reconnecting")
                    if link is not session:
                        await link.close()
                    try:
                        link = await reopen(fleet, node.name, fleet.ssh.reconnect_timeout, lost)
                    except LinkLost:
                        printer(f"[trainfleet] {node.name}: could not get back within {fleet.ssh.reconnect_timeout:g}s "
                                f"(`ssh: {{reconnect_timeout}}`); the job goes on: `trainfleet logs {job_id} --follow` "
                                f"follows it again")
                        return
                    on_job(f"back in contact with {node.name} at {clock(time.time())}; catching up from its log")
            except (AgentFailed, AgentError) as exc:
                printer(f"[trainfleet] {node.name}: {exc}")
            finally:
                if link is not session:
                    await link.close()

        await asyncio.gather(*(one(n) for n in chosen))
    for _, line in sorted(collected, key=lambda item: item[0]):
        printer(line)
    return job_id, states


async def stop(fleet: Fleet, job_id: str, grace: float = 10.0) -> JobView:
    """End every process of the job on every node (by its id, nothing else), then check."""
    async with await FleetSession.open(fleet) as session:
        return await stop_on(session, job_id, grace, "stopped by `trainfleet stop`")


async def stop_on(session: FleetSession, job_id: str, grace: float, reason: str) -> JobView:
    """`stop` over a session already open (the dashboard's)."""
    fleet = session.fleet
    view = (await views(session, job_id))[0]
    targets = [n for n in session.nodes if n.name in view.nodes]
    replies = await session.call_all(lambda n: StopRequest(job_id=job_id, workdir=fleet.workdir, grace=grace,
                                                           reason=reason)
                                     if n.name in view.nodes else None, targets, timeout=grace + 60)
    for node, failed in replies.failures.items():
        view.unreachable[node] = failed.error or "no answer"
    view.nodes.update(replies.answers)
    checks = await session.call_all(SweepRequest(job_id=job_id, kill=True), targets, timeout=60)
    left = {n: a.left for n, a in checks.answers.items() if a.left}
    if left:
        where = "; ".join(f"{n}: pids {' '.join(str(p.pid) for p in procs)}" for n, procs in left.items())
        raise TrainfleetError(f"job {job_id}: processes still running after stop ({where})",
                              fix="end them with `trainfleet exec -n NODE -- kill -9 PID`")
    return view


TopView = tuple[dict[str, TopReply], dict[str, str]]
"""Every node's answer, and why the others gave none."""


def stragglers(answers: Mapping[str, TopReply]) -> dict[str, str]:
    """Each running job whose slow node stands out: job id -> what `status` says of it."""
    from trainfleet.supervise.straggler import slowest

    jobs: dict[str, dict[str, JobState]] = {}
    for node, answer in answers.items():
        for state in answer.states:
            if state.state == JobStatus.RUNNING:
                jobs.setdefault(state.job_id, {})[node] = state
    found = {job_id: slowest(states) for job_id, states in sorted(jobs.items())}
    return {job_id: said for job_id, said in found.items() if said}


async def top(fleet: Fleet, show: Callable[[TopView], Awaitable[bool]], interval: float) -> None:
    """Looks at every node, shows it, and again every `interval` seconds while `show` says
    go on: one session for the whole watch, one request per node per look."""
    async with await FleetSession.open(fleet) as session:
        while True:
            # (the records too: who the others wait for is read from every node's at once)
            replies = await session.call_all(TopRequest(workdir=fleet.workdir, states=True), timeout=30)
            if not await show((replies.answers, {n: f.error or "no answer" for n, f in replies.failures.items()})):
                return
            await asyncio.sleep(interval)
