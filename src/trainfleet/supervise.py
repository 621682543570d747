"""Carrying out a LaunchPlan: start every node's torchrun, stream, and tear down.

The engines do the real work (torchrun's elastic agent: rendezvous, ranks, restarts);
this module starts them together over SSH through the node agent, relays their output
with `[node:rank]` prefixes, and makes sure that when the job ends, fails or is
cancelled, nothing of it is left running on any node.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from trainfleet.errors import TrainfleetError
from trainfleet.plan import DEFAULT_RDZV_PORT, LaunchFacts, LaunchPlan, NodeLaunch, tee_dir
from trainfleet.remote import NodeUnreachable, agent_command, agent_stdin, connect, run_agent_on_nodes
from trainfleet.results import FleetResult, fold_nodes
from trainfleet.spec import Fleet

if TYPE_CHECKING:
    import asyncssh

_RANK_LINE = re.compile(r"^\[tf:rank(\d+)\] ?(.*)$")
_ROOT_CAUSE_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
# e.g. "  exitcode  : -15 (pid: 983)  (SIGTERM)"
_ROOT_CAUSE_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
TAIL = 20


@dataclass(frozen=True)
class RankFailure:
    node: str
    rank: int | None
    exit_code: int
    tail: str

    def describe(self) -> str:
        who = f"rank {self.rank} on node {self.node}" if self.rank is not None else f"node {self.node}"
        return f"{who} failed with exit code {self.exit_code}"


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    failure: RankFailure | None
    cancelled: bool
    left_running: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _NodeStream:
    """Output bookkeeping for one node: its log file, recent lines, recent lines per rank."""

    launch: NodeLaunch
    log: IO[str]
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=400))
    by_rank: dict[int, deque[str]] = field(default_factory=dict)
    exit_code: int | None = None
    finished_at: float | None = None


Printer = Callable[[str], None]


async def gather_facts(fleet: Fleet, sections: dict[str, list[str]], extra: dict[str, object] | None = None,
                       timeout: float = 30) -> tuple[FleetResult, dict[str, dict[str, object]]]:
    """One agent round trip per node; `sections` maps node name to what to collect there."""
    return await run_agent_on_nodes(
        fleet, fleet.nodes, "facts", lambda node: facts_request(fleet, sections.get(node.name, []), extra),
        timeout=timeout)


def facts_request(fleet: Fleet, sections: list[str], extra: dict[str, object] | None = None) -> dict[str, object]:
    """What the agent's `facts` mode is asked: the sections, and every address of every peer."""
    peers = sorted({n.address for n in fleet.nodes} | {n.host for n in fleet.nodes})
    return {"sections": sections, "peers": peers, "python": fleet.python, "workdir": fleet.workdir,
            **(extra or {})}


async def probe_facts(fleet: Fleet, wanted_port: int | None) -> LaunchFacts:
    """Ask the nodes what planning needs: a free rendezvous port on node 0, and each
    node's training interface and address (the same choice `doctor` reports)."""
    from trainfleet.netchoice import choose

    head = fleet.head
    port = wanted_port or DEFAULT_RDZV_PORT
    sections = {n.name: ["net"] for n in fleet.nodes}
    sections[head.name] = ["net", "ports"]
    result, answers = await gather_facts(fleet, sections, {"ports": [port]})
    if not result.ok:
        raise TrainfleetError(f"cannot start the job: {_unreachable_message(result)}")
    choices = choose(fleet, answers)
    problems = [f"{c.node}: {c.problem}" for c in choices.values() if c.problem]
    if problems:
        raise TrainfleetError("cannot pick a training network: " + "; ".join(problems),
                              fix="correct `address:`/`interface:` in the fleet file (`trainfleet doctor` shows each node's interfaces)")
    holder = answers[head.name]["ports"][str(port)]  # type: ignore[index]
    if holder is not None:
        who = f" by pid {holder['pid']} ({holder['cmdline']})" if holder.get("pid") else ""
        if wanted_port:
            raise TrainfleetError(f"port {port} is already in use on {head.name}{who}",
                                  fix="pick another --port, or leave it out to use a free one")
        port = int(answers[head.name]["free_port"])  # type: ignore[arg-type, index]
    return LaunchFacts(
        rdzv_port=port,
        interfaces={name: c.interface for name, c in choices.items() if c.interface},
        addresses={name: c.address for name, c in choices.items()},
    )


def _unreachable_message(result: FleetResult) -> str:
    return "; ".join(f"{nodes}: {reason}" for nodes, reason in result.grouped_failures())


class Supervisor:
    def __init__(self, fleet: Fleet, plan: LaunchPlan, log_dir: Path, printer: Printer,
                 grace: float = 10.0, settle: float = 3.0, secrets: Mapping[str, str] | None = None) -> None:
        self.fleet = fleet
        self.plan = plan
        self.log_dir = log_dir
        self.print = printer
        self.grace = grace
        self.settle = settle
        # Secrets reach the job's environment through the agent's stdin only; longest
        # first, so that a secret containing another is redacted whole.
        self.secrets = dict(secrets or {})
        self.redact = sorted((v for v in self.secrets.values() if v), key=len, reverse=True)
        self.cancel = asyncio.Event()
        self.streams: dict[str, _NodeStream] = {}
        self.first_failure: str | None = None

    # ---- output ------------------------------------------------------------------
    def _on_line(self, node: str, line: str) -> None:
        for value in self.redact:
            line = line.replace(value, "***")
        stream = self.streams[node]
        match = _RANK_LINE.match(line)
        if match:
            rank, text = int(match.group(1)), match.group(2)
            prefix = f"[{node}:{rank}]"
            stream.by_rank.setdefault(rank, deque(maxlen=TAIL)).append(text)
        else:
            text, prefix = line, f"[{node}]"
        shown = f"{prefix} {text}"
        stream.recent.append(line)
        stream.log.write(shown + "\n")
        self.print(shown)

    async def _pump(self, node: str, process: asyncssh.SSHClientProcess) -> None:
        async def pump(reader: asyncssh.SSHReader[str]) -> None:
            async for line in reader:
                if line:  # an empty string marks the end of the stream
                    self._on_line(node, line.rstrip("\n"))

        await asyncio.gather(pump(process.stdout), pump(process.stderr))

    # ---- lifecycle ---------------------------------------------------------------
    async def run(self) -> RunOutcome:
        started = time.monotonic()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "plan.txt").write_text(self.plan.render())
        nodes = [self.fleet.node(launch.node) for launch in self.plan.nodes]
        connections = await asyncio.gather(*(connect(n, self.fleet.ssh) for n in nodes), return_exceptions=True)
        failures = [c for c in connections if isinstance(c, BaseException)]
        if failures:
            for conn in connections:
                if not isinstance(conn, BaseException):
                    conn.close()
            reasons = "; ".join(str(f) for f in failures if isinstance(f, NodeUnreachable)) or str(failures[0])
            raise TrainfleetError(f"cannot start the job, not every node is reachable: {reasons}")
        conns: dict[str, asyncssh.SSHClientConnection] = {
            launch.node: conn for launch, conn in zip(self.plan.nodes, connections)  # type: ignore[misc]
        }
        processes: dict[str, asyncssh.SSHClientProcess] = {}
        tasks: dict[asyncio.Task[None], str] = {}
        try:
            for launch in self.plan.nodes:
                log = open(self.log_dir / f"{launch.node}.log", "w", buffering=1)
                self.streams[launch.node] = _NodeStream(launch=launch, log=log)
                process = await conns[launch.node].create_process(
                    agent_command(self.fleet.python), encoding="utf-8", errors="replace")
                process.stdin.write(agent_stdin("launch", {
                    "job_id": self.plan.job_id,
                    "argv": list(launch.argv),
                    "env": {**dict(launch.env), **self.secrets},
                    "cwd": launch.workdir,
                    "grace": self.grace,
                    "remove_after": [tee_dir(self.plan.job_id, launch.node)],
                }))
                processes[launch.node] = process
                tasks[asyncio.ensure_future(self._watch(launch.node, process))] = launch.node
            cancelled = await self._wait(tasks)
            await self._stop(processes, tasks)
            left = await self._sweep()
        finally:
            for conn in conns.values():
                conn.close()
            for stream in self.streams.values():
                stream.log.close()
        failure = self._failure()
        if cancelled:
            code = 130
        elif failure is not None:
            code = failure.exit_code if 0 < failure.exit_code < 256 else 1
        else:
            code = 0
        return RunOutcome(exit_code=code, failure=None if cancelled else failure, cancelled=cancelled,
                          left_running=left, seconds=time.monotonic() - started)

    async def _watch(self, node: str, process: asyncssh.SSHClientProcess) -> None:
        await self._pump(node, process)
        completed = await process.wait()
        stream = self.streams[node]
        stream.exit_code = completed.exit_status if completed.exit_status is not None else 255
        stream.finished_at = time.monotonic()
        if stream.exit_code != 0 and self.first_failure is None and not self.cancel.is_set():
            self.first_failure = node

    async def _wait(self, tasks: dict[asyncio.Task[None], str]) -> bool:
        """Until every node ends, one fails, or the user cancels. True when cancelled.

        After the first failure the other nodes get `settle` seconds to fail on their
        own: the node that exits first is not always the one whose rank failed first
        (its ranks may only have lost their peer), and `_failure` needs every report.
        """
        pending = set(tasks)
        cancel_wait = asyncio.ensure_future(self.cancel.wait())
        deadline: float | None = None
        try:
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, _ = await asyncio.wait(pending | {cancel_wait}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if cancel_wait in done:
                    return True
                if not done:
                    return False
                pending -= done
                if self.first_failure is not None and deadline is None:
                    deadline = time.monotonic() + self.settle
            return False
        finally:
            cancel_wait.cancel()

    async def _stop(self, processes: dict[str, asyncssh.SSHClientProcess],
                    tasks: dict[asyncio.Task[None], str]) -> None:
        running = [t for t in tasks if not t.done()]
        if not running:
            return
        self.print(f"[trainfleet] stopping the job on {fold_nodes(tasks[t] for t in running)}")
        for task in running:
            process = processes[tasks[task]]
            try:
                process.stdin.write("stop\n")
                process.stdin.write_eof()
            except Exception:  # the channel may already be closing
                pass
        done, still = await asyncio.wait(running, timeout=self.grace + 10)
        for task in still:
            processes[tasks[task]].close()
            task.cancel()

    async def _sweep(self) -> dict[str, list[dict[str, object]]]:
        """Kill and list anything of this job still alive on any node (checked, not assumed)."""
        nodes = [self.fleet.node(launch.node) for launch in self.plan.nodes]
        result, answers = await run_agent_on_nodes(
            self.fleet, nodes, "sweep", lambda node: {"job_id": self.plan.job_id, "kill": True, "grace": 3},
            timeout=30)
        left: dict[str, list[dict[str, object]]] = {}
        for node in nodes:
            answer = answers.get(node.name)
            if answer is None:
                left[node.name] = [{"pid": None, "cmdline": "could not check: "
                                    + (result.by_node()[node.name].error or "no answer")}]
            elif answer["left"]:
                left[node.name] = answer["left"]  # type: ignore[assignment]
        return left

    # ---- diagnosis ---------------------------------------------------------------
    def _failure(self) -> RankFailure | None:
        """The rank that failed first, from every failed node's torchrun report."""
        if self.first_failure is None:
            return None
        reports: list[tuple[tuple[int, str, int], str, _RankReport]] = []
        for order, (node, stream) in enumerate(self.streams.items()):
            if stream.exit_code in (None, 0) or stream.finished_at is None:
                continue
            for report in _rank_reports(list(stream.recent)):
                reports.append(((report.consequence, report.time, order), node, report))
        if not reports:
            stream = self.streams[self.first_failure]
            return RankFailure(node=self.first_failure, rank=None, exit_code=stream.exit_code or 1,
                               tail="\n".join(list(stream.recent)[-TAIL:]))
        _, node, report = min(reports, key=lambda item: (item[0], self.streams[item[1]].finished_at or 0))
        ranked = self.streams[node].by_rank.get(report.rank)
        tail = "\n".join(ranked) if ranked else "\n".join(list(self.streams[node].recent)[-TAIL:])
        return RankFailure(node=node, rank=report.rank, exit_code=report.exit_code, tail=tail)


@dataclass(frozen=True)
class _RankReport:
    rank: int
    exit_code: int
    time: str
    consequence: int
    """1 when this rank only died of another's failure (lost peer, SIGTERM from its agent)."""


_CONSEQUENCES = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted",
                 "SIGTERM", "SIGKILL", "Broken pipe")


def _rank_reports(lines: list[str]) -> list[_RankReport]:
    """Every failed rank in torchrun's failure summary ('Failures:' and 'Root Cause')."""
    reports: list[_RankReport] = []
    entry: dict[str, object] | None = None
    texts = [_RANK_LINE.sub(r"\2", line) for line in lines]
    starts = [i for i, text in enumerate(texts) if text.strip() == "Failures:" or "Root Cause" in text]
    if not starts:
        return reports

    def close() -> None:
        if entry and "rank" in entry:
            body = str(entry.get("body", ""))
            reports.append(_RankReport(rank=int(entry["rank"]), exit_code=int(entry.get("exit", 1)),  # type: ignore[call-overload]
                                       time=str(entry.get("time", "")),
                                       consequence=int(any(c in body for c in _CONSEQUENCES))))

    for text in texts[starts[0]:]:
        if re.match(r"^\s*\[\d+\]:\s*$", text) or text.startswith("====") or text.startswith("----"):
            close()
            entry = {} if text.strip().startswith("[") else None
            continue
        if entry is None:
            continue
        if match := _ROOT_CAUSE_RANK.match(text):
            entry["rank"] = int(match.group(1))
        elif match := _ROOT_CAUSE_EXIT.match(text):
            entry["exit"] = int(match.group(1))
            entry["body"] = str(entry.get("body", "")) + text
        elif match := re.match(r"^\s*time\s*:\s*(\S+)", text):
            entry["time"] = match.group(1)
        else:
            entry["body"] = str(entry.get("body", "")) + text + "\n"
    close()
    unique: dict[int, _RankReport] = {}
    for report in reports:
        unique.setdefault(report.rank, report)
    return list(unique.values())
