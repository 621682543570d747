"""The dashboard's one link to the fleet: one SSH session (one agent per node) for as long
as `trainfleet ui` runs, as `top` keeps one. Each look asks every node one request (`top`'s,
which also brings the node's job records), so the dashboard costs the fleet what `top`
does; a job's output is followed once, however many pages watch it."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from trainfleet.fleet.state import save_latest
from trainfleet.agent.protocol import FollowRequest, OutputEvent, TopReply, TopRequest, decode
from trainfleet.errors import TrainfleetError
from trainfleet.fleet.model import Fleet
from trainfleet.ops.jobs import JobView, fold_views, stop_on
from trainfleet.transport.agent_client import AgentError, AgentFailed
from trainfleet.transport.session import FleetSession
from trainfleet.ui.views import JobOutput

class Followed:
    """One job's output as it arrives from its nodes; `changed` wakes every page watching."""

    def __init__(self, output: JobOutput) -> None:
        self.output = output
        self.done = False
        self.changed = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait(self, timeout: float) -> bool:
        """False when `timeout` passed with no news."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                return False
        return True


class FleetWatch:
    def __init__(self, fleet: Fleet, interval: float, pattern: re.Pattern[str] | None = None) -> None:
        self.fleet = fleet
        self.interval = interval
        self.pattern = pattern
        self.session: FleetSession | None = None
        self.top: tuple[dict[str, TopReply], dict[str, str], float] = ({}, {}, 0.0)
        self.followed: dict[str, Followed] = {}
        self.doctor_running = False
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        self.session = await FleetSession.open(self.fleet)
        await self.look()
        self._tasks.append(asyncio.ensure_future(self._looking()))

    async def close(self) -> None:
        for task in self._tasks + [f.task for f in self.followed.values() if f.task]:
            task.cancel()
        await asyncio.gather(*self._tasks, *(f.task for f in self.followed.values() if f.task),
                             return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def look(self) -> None:
        assert self.session is not None
        replies = await self.session.call_all(TopRequest(workdir=self.fleet.workdir, states=True), timeout=30)
        failures = {n: f.error or "no answer" for n, f in replies.failures.items()}
        self.top = (replies.answers, failures, time.time())

    async def _looking(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.look()
            except (AgentFailed, AgentError, TrainfleetError, OSError):
                pass  # the node shows as unreachable at the next look that fails cleanly

    async def jobs(self) -> list[JobView]:
        """The jobs as the last look found them (at most `interval` seconds old)."""
        answers, failures, _ = self.top
        return fold_views({n: a.states for n, a in answers.items()}, failures)

    async def job(self, job_id: str) -> JobView | None:
        return next((v for v in await self.jobs() if v.job_id == job_id), None)

    async def follow(self, view: JobView) -> Followed:
        """The job's output, followed from its start (once, for every page)."""
        followed = self.followed.get(view.job_id)
        if followed is None:
            marked = any(s.wrapped for s in view.nodes.values())
            placed = next((s.rank_nodes for s in view.nodes.values() if s.rank_nodes), [])
            followed = Followed(JobOutput(marked=marked, rank_nodes=placed, pattern=self.pattern))
            self.followed[view.job_id] = followed
            followed.task = asyncio.ensure_future(self._follow(view, followed))
        return followed

    async def _follow(self, view: JobView, followed: Followed) -> None:
        assert self.session is not None
        loop = asyncio.get_running_loop()

        def take(node: str) -> Any:
            def handle(event: dict[str, Any]) -> None:
                if "lines" in event:
                    for moment, text in decode(OutputEvent, event).lines:
                        followed.output.take(node, moment, text)
                    loop.create_task(followed.notify())
            return handle

        async def one(node: str) -> None:
            try:
                await self.session.call(node, FollowRequest(job_id=view.job_id, workdir=self.fleet.workdir,  # type: ignore[union-attr]
                                                            follow=True), on_event=take(node), timeout=None)
            except (AgentFailed, AgentError) as exc:
                followed.output.lines.append([time.time(), node, None, f"[trainfleet] {exc}"])

        try:
            await asyncio.gather(*(one(n) for n in view.nodes))
        finally:
            followed.done = True
            await followed.notify()

    async def stop(self, job_id: str) -> JobView:
        assert self.session is not None
        view = await stop_on(self.session, job_id, 10.0, "stopped from `trainfleet ui`")
        await self.look()  # the pages show it stopped at once
        return view

    async def doctor(self) -> None:
        """A doctor run, its report kept as `trainfleet doctor` keeps it."""
        from trainfleet.ops.doctor import examine

        if self.doctor_running:
            return
        self.doctor_running = True
        try:
            report = await examine(self.fleet)
            save_latest(self.fleet, "doctor", report.to_json())
        finally:
            self.doctor_running = False
