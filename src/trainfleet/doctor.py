"""`trainfleet doctor`: gather everything the checks need, in three concurrent rounds.

1. facts: one agent call per node (network, ports, software, GPUs, disk, stale jobs).
2. listeners: node 0 holds the rendezvous port and an ephemeral one, every other
   node an ephemeral one, as torchrun, gloo and NCCL will.
3. connects: every node tries node 0's ports, and a ring of pairs measures latency
   and throughput; each node also resolves its peers' hostnames.
One SSH connection per node serves all three rounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from trainfleet.checks import Finding, Gathered, evaluate
from trainfleet.netchoice import choose
from trainfleet.plan import DEFAULT_RDZV_PORT
from trainfleet.remote import NodeUnreachable, agent_answer, agent_command, agent_stdin, connect, run_on_connection
from trainfleet.spec import Fleet, Node
from trainfleet.supervise import facts_request

if TYPE_CHECKING:
    import asyncssh

THROUGHPUT_BYTES = 8 * 1024 * 1024
SECTIONS = ["net", "software", "gpu", "disk", "stale"]


@dataclasses.dataclass(frozen=True)
class DoctorReport:
    findings: tuple[Finding, ...]
    seconds: float
    gathered: Gathered

    @property
    def ok(self) -> bool:
        return not any(f.verdict.value == "FAIL" for f in self.findings)

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "seconds": round(self.seconds, 2),
                "findings": [f.to_json() for f in self.findings],
                "network": {n: {"interface": c.interface, "address": c.address, "reason": c.reason}
                            for n, c in self.gathered.choices.items()}}


async def examine(fleet: Fleet, rdzv_port: int = DEFAULT_RDZV_PORT, connect_timeout: float = 2.0,
                  throughput_bytes: int = THROUGHPUT_BYTES) -> DoctorReport:
    started = time.monotonic()
    data = Gathered(fleet=fleet, rdzv_port=rdzv_port)
    attempts = await asyncio.gather(*(connect(n, fleet.ssh) for n in fleet.nodes), return_exceptions=True)
    conns: dict[str, asyncssh.SSHClientConnection] = {}
    for node, attempt in zip(fleet.nodes, attempts):
        if isinstance(attempt, NodeUnreachable):
            data.ssh_errors[node.name] = attempt.reason
        elif isinstance(attempt, BaseException):
            data.ssh_errors[node.name] = f"{type(attempt).__name__}: {attempt}"
        else:
            conns[node.name] = attempt
    try:
        await _gather_facts(fleet, conns, data)
        live = [n for n in fleet.nodes if n.name in data.facts]
        if live:
            subset = dataclasses.replace(fleet, nodes=tuple(live))
            data.choices = choose(subset, data.facts)
        if len(live) > 1:
            await _test_ports(fleet, live, conns, data, connect_timeout, throughput_bytes)
    finally:
        for conn in conns.values():
            conn.close()
    return DoctorReport(findings=tuple(evaluate(data)), seconds=time.monotonic() - started, gathered=data)


async def _agent(conn: asyncssh.SSHClientConnection, fleet: Fleet, node: str, mode: str,
                 spec: dict[str, object], timeout: float = 30) -> tuple[dict[str, Any] | None, str | None]:
    result = await run_on_connection(conn, node, agent_command(fleet.python), timeout=timeout,
                                     stdin_text=agent_stdin(mode, spec))
    answer = agent_answer(result)
    if answer is not None:
        return answer, None
    if result.exit_status == 127:
        return None, f"`{fleet.python}` not found by a non-interactive SSH shell"
    return None, result.error or f"node agent failed (exit {result.exit_status}): {result.tail(3)}"


async def _gather_facts(fleet: Fleet, conns: dict[str, asyncssh.SSHClientConnection], data: Gathered) -> None:
    async def one(node: Node) -> None:
        conn = conns[node.name]
        sent = time.time()
        head = node.name == fleet.head.name
        answer, error = await _agent(conn, fleet, node.name, "facts", facts_request(
            fleet, SECTIONS + (["ports"] if head else []), {"ports": [data.rdzv_port]}))
        received = time.time()
        if answer is None:
            data.agent_errors[node.name] = error or "no answer"
            return
        data.facts[node.name] = answer
        midpoint = (sent + received) / 2
        data.skew[node.name] = (float(answer["time"]) - midpoint, (received - sent) / 2)

    await asyncio.gather(*(one(n) for n in fleet.nodes if n.name in conns))


async def _test_ports(fleet: Fleet, live: list[Node], conns: dict[str, asyncssh.SSHClientConnection],
                      data: Gathered, connect_timeout: float, throughput_bytes: int) -> None:
    head = live[0]
    if head.name != fleet.head.name:
        head = fleet.head  # node 0 itself is unreachable: its ports cannot be tested
    address = {n.name: data.choices[n.name].address for n in live if n.name in data.choices}
    listeners: dict[str, asyncssh.SSHClientProcess] = {}

    async def listen(node: Node) -> None:
        ports = [data.rdzv_port, 0] if node.name == head.name else [0]
        process = await conns[node.name].create_process(agent_command(fleet.python), encoding="utf-8",
                                                        errors="replace")
        process.stdin.write(agent_stdin("listen", {"ports": ports, "address": address.get(node.name),
                                                   "max_seconds": 60}))
        listeners[node.name] = process
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 15)
            bound = json.loads(line)
        except (asyncio.TimeoutError, TimeoutError, ValueError):
            bound = {str(p): {"error": "listener did not start"} for p in ports}
        labels = {}
        for port in ports:
            entry = dict(bound.get(str(port), {"error": "not reported"}))
            label = "rendezvous" if port == data.rdzv_port else "ephemeral"
            entry["wanted"] = port
            if "error" in entry and port == data.rdzv_port:
                entry["holder"] = (data.facts[node.name].get("ports") or {}).get(str(port))
            labels[label] = entry
        data.listeners[node.name] = labels

    await asyncio.gather(*(listen(n) for n in live))
    try:
        hostnames = [data.facts[n.name].get("hostname") for n in live]
        targets: dict[str, list[dict[str, object]]] = {n.name: [] for n in live}
        ring = live
        for index, source in enumerate(ring):
            if source.name != head.name and head.name in data.listeners:
                for label in ("rendezvous", "ephemeral"):
                    port = data.listeners[head.name][label].get("port")
                    if port:
                        targets[source.name].append({"node": head.name, "address": address[head.name],
                                                     "port": port, "label": label})
            peer = ring[(index + 1) % len(ring)]
            port = data.listeners.get(peer.name, {}).get("ephemeral", {}).get("port")
            if port and peer.name != source.name:
                targets[source.name].append({"node": peer.name, "address": address[peer.name], "port": port,
                                             "label": "peer-to-peer", "bytes": throughput_bytes})

        async def probe(node: Node) -> None:
            answer, _ = await _agent(conns[node.name], fleet, node.name, "connect", {
                "targets": targets[node.name], "timeout": connect_timeout,
                "resolve": [h for h in hostnames if h and h != data.facts[node.name].get("hostname")]})
            if answer is None:
                return
            for attempt in answer["connects"]:
                attempt["source"] = node.name
                data.connects.append(attempt)
            data.resolved[node.name] = answer.get("resolved", {})

        await asyncio.gather(*(probe(n) for n in live))
    finally:
        for process in listeners.values():
            try:
                process.stdin.write_eof()
            except Exception:  # already closed with its connection
                pass
        await asyncio.gather(*(asyncio.wait_for(p.wait(), 5) for p in listeners.values()), return_exceptions=True)
