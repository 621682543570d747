"""`trainfleet doctor`: gather what the checks need, over one connection per node.

1. At once on every node: its facts (network, software, GPUs, disk, jobs), and test
   listeners (node 0: the rendezvous port and an ephemeral one; every other node an
   ephemeral one, as torchrun, gloo and NCCL will hold them).
2. Connects: every node tries node 0's ports, and a ring of pairs measures connection
   set-up time and throughput; each node also resolves its peers' hostnames.
3. Only when a pair looked slow: that pair again, alone, so that one noisy sample on a
   loaded machine is not reported as a slow link.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from trainfleet.agent.protocol import (FactSection, Attempt, Bound, ConnectRequest, FactsReply, ListenReply, ListenRequest,
                                       ReleaseRequest, Target)
from trainfleet.doctor.checks import Finding, Gathered, Measured, Verdict, bandwidth_suspect, evaluate, latency_suspect
from trainfleet.fleet.model import Fleet, Node
from trainfleet.job.placement import DEFAULT_RDZV_PORT
from trainfleet.plans.network import choose
from trainfleet.ops.common import facts_request
from trainfleet.transport.agent_client import AgentError, AgentFailed
from trainfleet.transport.session import FleetSession

THROUGHPUT_BYTES = 8 * 1024 * 1024
SECTIONS = [FactSection.NET, FactSection.SOFTWARE, FactSection.GPU, FactSection.GPU_HEALTH, FactSection.RDMA,
            FactSection.DISK, FactSection.JOBS,
            FactSection.PROJECT, FactSection.WORKDIR]


@dataclasses.dataclass(frozen=True)
class DoctorReport:
    findings: tuple[Finding, ...]
    seconds: float
    gathered: Gathered

    @property
    def ok(self) -> bool:
        return not any(f.verdict is Verdict.FAIL for f in self.findings)

    @property
    def ring(self) -> list[dict[str, object]]:
        """Each node's throughput to the next (the ring doctor measures), as `bench net`'s
        point-to-point records: a heatmap with one cell a row."""
        order = [n.name for n in self.gathered.fleet.nodes]
        ring = [m for m in self.gathered.measured
                if m.attempt.target.label == "peer-to-peer" and m.best.result == "ok" and m.best.mbit_s]
        return [{"src": m.source, "dst": m.target, "gbit_s": round((m.best.mbit_s or 0.0) / 1000, 3),
                 "bytes": m.attempt.target.bytes} for m in sorted(ring, key=lambda m: order.index(m.source))]

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "seconds": round(self.seconds, 2),
                "findings": [f.to_json() for f in self.findings],
                "network": {n: {"interface": c.interface, "address": c.address, "reason": c.reason}
                            for n, c in self.gathered.choices.items()},
                "ring": self.ring}


async def deep(fleet: Fleet, seconds: float) -> list[Finding]:
    """`doctor --deep`: every node's devices exercised at once (doctor/deep.py), the slow
    or broken ones named."""
    from trainfleet.doctor import deep as burn

    session = await FleetSession.open(fleet)
    async with session:
        # (the job's Python: a container's, with its image, is not what this reaches)
        ran = await session.run(burn.burn_command(fleet.python, seconds), timeout=seconds * 3 + 120)
    devices: list[burn.Device] = []
    findings: list[Finding] = []
    for result in ran.results:
        found = burn.parse(result.node, result.stdout) if result.exit_status == 0 else None
        if found is None:
            tail = (result.stderr or result.stdout or result.error or "").strip().splitlines()[-1:] or ["no output"]
            missing = "No module named 'torch'" in (result.stderr or "")
            findings.append(Finding("deep", Verdict.FAIL, (result.node,), f"the burn did not run ({tail[0][:200]})",
                                    "install torch for the fleet's `python:` (`setup:` in the fleet file, then "
                                    "`trainfleet setup`)" if missing else "run doctor (without --deep) for the "
                                    "node's GPU health, then try again"))
            continue
        devices += found
    findings += [Finding("deep", Verdict(verdict), nodes, summary, remedy)
                 for verdict, nodes, summary, remedy in burn.findings(devices)]
    return findings


async def examine(fleet: Fleet, rdzv_port: int = DEFAULT_RDZV_PORT, connect_timeout: float = 2.0,
                  throughput_bytes: int = THROUGHPUT_BYTES, project: str = "") -> DoctorReport:
    """`project`: the directory on the nodes of the project whose code is checked."""
    started = time.monotonic()
    from trainfleet.fleet.state import cordoned

    data = Gathered(fleet=fleet, rdzv_port=rdzv_port, project=project, cordoned=cordoned(fleet))
    session = await FleetSession.open(fleet)
    for name, failed in session.failures.items():
        data.ssh_errors[name] = failed.error or "unreachable"
    async with session:
        listeners = await _first_round(session, data)
        live = [n for n in fleet.nodes if n.name in data.facts]
        if live:
            data.choices = choose(dataclasses.replace(fleet, nodes=tuple(live)), data.facts)
        try:
            if len(live) > 1:
                await _connects(session, live, data, connect_timeout, throughput_bytes)
            await _from_here(live, data)
            if fleet.storage and live:
                from trainfleet.ops.mount import visibility

                data.storage = await visibility(session)
        finally:
            await session.call_all(lambda n: ReleaseRequest(handle=listeners[n.name].handle)
                                   if n.name in listeners else None, timeout=10)
    return DoctorReport(findings=tuple(evaluate(data)), seconds=time.monotonic() - started, gathered=data)


async def _first_round(session: FleetSession, data: Gathered) -> dict[str, ListenReply]:
    fleet = session.fleet
    head = fleet.head.name
    listeners: dict[str, ListenReply] = {}

    async def facts(node: Node) -> None:
        sections = SECTIONS + ([FactSection.PORTS] if node.name == head else [])
        sent = time.time()
        try:
            request = facts_request(fleet, sections, ports=[data.rdzv_port], project=data.project)
            answer: FactsReply = await session.call(node.name, request, timeout=30)
        except (AgentFailed, AgentError) as exc:
            data.agent_errors[node.name] = str(exc)
            if isinstance(exc, AgentFailed) and exc.exit_status == 127:
                await _login_pythons(session, node, data)
            return
        received = time.time()
        data.facts[node.name] = answer
        if answer.python_missing.endswith("non-interactive SSH shell"):
            await _login_pythons(session, node, data)
        data.skew[node.name] = (answer.time - (sent + received) / 2, (received - sent) / 2)

    async def listen(node: Node) -> None:
        ports = [data.rdzv_port, 0] if node.name == head else [0]
        try:
            reply: ListenReply = await session.call(node.name, ListenRequest(ports=ports, max_seconds=60), timeout=30)
        except (AgentFailed, AgentError):
            return
        listeners[node.name] = reply
        labels = {}
        for bound in reply.bound:
            labels["rendezvous" if bound.wanted == data.rdzv_port and bound.wanted else "ephemeral"] = bound
        data.listeners[node.name] = labels

    live = session.live
    await asyncio.gather(*(facts(n) for n in live), *(listen(n) for n in live))
    for name in list(data.listeners):
        if name not in data.facts:  # its facts failed: nothing else of it is reported
            del data.listeners[name]
    return listeners


async def _from_here(live: list[Node], data: Gathered) -> None:
    """The job's ports as a stranger sees them: this machine connects to the listeners each
    node holds, at the node's own (public) address. Said only where this machine is not a
    fleet node (the local address of its connection is none of the fleet's)."""
    fleet_addresses = {a for n in data.fleet.nodes for a in (n.host, n.address)} | {
        c.address for c in data.choices.values()}

    async def probe(node: Node, label: str, port: int) -> None:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(node.host, port), 2.0)
        except (OSError, asyncio.TimeoutError):
            return
        local = writer.get_extra_info("sockname")
        writer.close()
        if local and local[0] in fleet_addresses:
            return  # this machine is a fleet node: the fleet may reach it
        data.exposed.setdefault(node.name, []).append(f"{label} {port}")

    data.probed_from_here = True
    await asyncio.gather(*(probe(node, label, bound.port) for node in live
                           for label, bound in data.listeners.get(node.name, {}).items() if bound.port))


async def _login_pythons(session: FleetSession, node: Node, data: Gathered) -> None:
    """Where a login shell finds Python, for a node whose non-interactive shell did not."""
    result = await session.run('"${SHELL:-/bin/sh}" -lc "command -v python3 python" 2>/dev/null', [node],
                               timeout=15)
    found = result.results[0].stdout.split() if result.results else []
    data.login_pythons[node.name] = [p for p in found if p.startswith("/")]


async def _connects(session: FleetSession, live: list[Node], data: Gathered, connect_timeout: float,
                    throughput_bytes: int) -> None:
    head = session.fleet.head
    address = {n.name: data.choices[n.name].address for n in live if n.name in data.choices}
    hostnames = [data.facts[n.name].hostname for n in live]
    targets: dict[str, list[Target]] = {n.name: [] for n in live}
    for index, source in enumerate(live):
        if source.name != head.name and head.name in data.listeners:
            for label in ("rendezvous", "ephemeral"):
                bound: Bound | None = data.listeners[head.name].get(label)
                if bound is not None and bound.port:
                    targets[source.name].append(Target(node=head.name, address=address[head.name], port=bound.port,
                                                       label=label))
        peer = live[(index + 1) % len(live)]
        ring = data.listeners.get(peer.name, {}).get("ephemeral")
        if ring is not None and ring.port and peer.name != source.name:
            targets[source.name].append(Target(node=peer.name, address=address[peer.name], port=ring.port,
                                               label="peer-to-peer", bytes=throughput_bytes))
    replies = await session.call_all(
        lambda n: ConnectRequest(targets=targets[n.name], timeout=connect_timeout,
                                 resolve=[h for h in hostnames if h != data.facts[n.name].hostname]),
        nodes=live, timeout=60)
    attempts: list[tuple[str, Attempt]] = []
    for name, reply in replies.answers.items():
        attempts += [(name, attempt) for attempt in reply.attempts]
        data.resolved[name] = reply.resolved
    again = await _remeasure(session, attempts, connect_timeout)
    data.measured = [Measured(source=source, attempt=attempt, confirmed=again.get((source, index)))
                     for index, (source, attempt) in enumerate(attempts)]


async def _remeasure(session: FleetSession, attempts: list[tuple[str, Attempt]],
                     connect_timeout: float) -> dict[tuple[str, int], Attempt]:
    """Each suspect pair once more, one source node after another."""
    ok = [a for _, a in attempts if a.result == "ok"]
    latencies = [a.ms for a in ok if a.ms is not None]
    rates = [a.mbit_s for a in ok if a.mbit_s is not None]
    suspects: dict[str, list[int]] = {}
    for index, (source, attempt) in enumerate(attempts):
        if attempt.result != "ok":
            continue
        slow_link = attempt.mbit_s is not None and len(rates) > 1 and bandwidth_suspect(attempt.mbit_s, max(rates))
        slow_setup = attempt.ms is not None and len(latencies) > 1 and latency_suspect(attempt.ms, min(latencies))
        if slow_link or slow_setup:
            suspects.setdefault(source, []).append(index)
    if rates:  # and the fastest pair alone: what one link carries with nothing else on the wire
        fastest = max((i for i, (_, a) in enumerate(attempts) if a.mbit_s is not None),
                      key=lambda i: attempts[i][1].mbit_s or 0.0)
        if fastest not in suspects.get(attempts[fastest][0], []):
            suspects.setdefault(attempts[fastest][0], []).append(fastest)
    confirmed: dict[tuple[str, int], Attempt] = {}
    for source, indexes in suspects.items():  # one source after another: nothing else on the wire
        try:
            reply = await session.call(source, ConnectRequest(targets=[attempts[i][1].target for i in indexes],
                                                              timeout=connect_timeout, sequential=True), timeout=60)
        except (AgentFailed, AgentError):
            continue
        for index, attempt in zip(indexes, reply.attempts):
            confirmed[(source, index)] = attempt
    return confirmed
