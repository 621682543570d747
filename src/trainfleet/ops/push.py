"""`trainfleet push SRC DEST`: large files onto every node, through a chain of nodes.

The controller sends the stream once, through an SSH tunnel to the first node of the
chain; each node writes its copy and forwards the same bytes over the training network
to the next (agent/push.py), so the controller's link carries every byte once. Before
each round every node says what it already has (whole files are skipped, parts are
resumed); a node that fails is named and left out, and the nodes after it in the chain
get what they missed in the next round. Every node checks every file's sha256 against
the controller's.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from trainfleet.agent import handshake
from trainfleet.agent.project import file_digest
from trainfleet.agent.protocol import (FactSection, PushFile, PushHaveReply, PushHaveRequest, PushProgress, PushReply, PushRequest,
                                       Target, decode)
from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet, Node
from trainfleet.plans.network import choose
from trainfleet.ops.common import facts_request
from trainfleet.transport.agent_client import AgentError, AgentFailed
from trainfleet.transport.session import FleetSession

CHUNK = 1 << 20
ROUNDS = 3
Progress = Callable[[str, int, int], None]
"""(node, bytes it holds so far, bytes it will hold)."""


@dataclass(frozen=True)
class LocalFile:
    source: Path
    wire: PushFile


@dataclass(frozen=True)
class PushPlan:
    root: str
    """The destination directory on every node (~/ is each node's home)."""
    files: tuple[LocalFile, ...]

    @property
    def size(self) -> int:
        return sum(f.wire.size for f in self.files)


@dataclass
class PushOutcome:
    plan: PushPlan
    done: list[str] = field(default_factory=list)
    """Nodes that hold every file, checked."""
    failed: dict[str, str] = field(default_factory=dict)
    """Nodes left without the files, and why."""
    sent: int = 0
    """Bytes the controller sent (once per round, whatever the number of nodes)."""
    resumed: dict[str, int] = field(default_factory=dict)
    """Bytes that nodes already had from an earlier push (parts and whole files)."""
    seconds: float = 0.0


def plan_push(source: Path, dest: str, workdir: str) -> PushPlan:
    """What goes where. A file goes to DEST (into DEST when it ends with /); a directory's
    contents go into DEST. A relative DEST is under the fleet's workdir."""
    if not source.exists():
        raise UsageError(f"{source}: no such file or directory", fix="check the path")
    if not dest:
        raise UsageError("push needs a destination", fix="e.g. `trainfleet push data/ ~/datasets/mine`")
    if not dest.startswith(("/", "~")):
        dest = f"{workdir.rstrip('/')}/{dest}"
    if source.is_file():
        if dest.endswith("/"):
            root, names = dest.rstrip("/") or "/", [(source, source.name)]
        else:
            parent = str(PurePosixPath(dest).parent)
            root, names = parent, [(source, PurePosixPath(dest).name)]
    else:
        root = dest.rstrip("/") or "/"
        names = []
        for folder, subfolders, files in os.walk(source):
            subfolders.sort()
            for name in sorted(files):
                path = Path(folder) / name
                if path.is_file():
                    names.append((path, path.relative_to(source).as_posix()))
        if not names:
            raise UsageError(f"{source}: no files to push")
    files = tuple(LocalFile(source=path, wire=PushFile(path=relative, size=path.stat().st_size,
                                                       sha256=file_digest(str(path)),
                                                       mode=path.stat().st_mode & 0o777)) for path, relative in names)
    return PushPlan(root=root, files=files)


async def _handshake(reader: Any, writer: Any, token: str, timeout: float) -> None:
    """The node's listener and the controller prove the push's token to each other (an
    HMAC over each other's fresh nonce: the token itself never crosses the tunnel)."""
    server_nonce = handshake.parse_challenge(await asyncio.wait_for(reader.readline(), timeout))
    if server_nonce is None:
        raise ConnectionError("the first node's listener did not offer a challenge")
    mine = handshake.nonce()
    writer.write(handshake.hello_line(token, server_nonce, mine, {"push": True}))
    if not handshake.check_proof(token, mine, await asyncio.wait_for(reader.readline(), timeout)):
        raise ConnectionError("the first node's listener did not prove the push's token")


async def _stream(session: FleetSession, first: str, address: str, port: int, token: str, plan: PushPlan,
                  start: dict[str, int], stall_timeout: float) -> int:
    """The controller's end: the files from their offsets into the first node's listener,
    through a tunnel in that node's SSH connection, once each side has proven the token."""
    reader, writer = await session.tunnel(first, address, port)
    sent = 0
    try:
        await _handshake(reader, writer, token, stall_timeout)
        for local in plan.files:
            if local.wire.path not in start:
                continue
            offset = start[local.wire.path]
            header = {"path": local.wire.path, "size": local.wire.size, "sha256": local.wire.sha256, "offset": offset}
            writer.write((json.dumps(header) + "\n").encode())
            with local.source.open("rb") as handle:
                handle.seek(offset)
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    writer.write(chunk)
                    sent += len(chunk)
                    await asyncio.wait_for(writer.drain(), stall_timeout)
        writer.write(b'{"end": true}\n')
        await asyncio.wait_for(writer.drain(), stall_timeout)
        writer.write_eof()
        # The first node closes once it has taken (and passed on) everything.
        await asyncio.wait_for(reader.read(), stall_timeout + 30)
    finally:
        writer.close()
    return sent


async def push(fleet: Fleet, nodes: Sequence[Node], plan: PushPlan, progress: Progress = lambda *a: None,
               stall_timeout: float = 20.0) -> PushOutcome:
    started = time.monotonic()
    outcome = PushOutcome(plan=plan)
    async with await FleetSession.open(fleet, nodes) as session:
        outcome.failed.update({n: r.error or "unreachable" for n, r in session.failures.items()})
        live = [n for n in nodes if n.name in session.agents]
        wanted = [f.wire for f in plan.files]
        # The training network: each node listens there only (the controller's tunnel ends there too).
        facts = await session.call_all(facts_request(fleet, [FactSection.NET]), live, timeout=30)
        outcome.failed.update({n: f.error or "no answer" for n, f in facts.failures.items()})
        choices = choose(fleet, facts.answers) if len(facts.answers) > 1 else {}
        addresses = {n.name: choices[n.name].address if n.name in choices else "127.0.0.1" for n in live}
        first_round = True
        for _ in range(ROUNDS):
            candidates = [n for n in live if n.name not in outcome.failed and n.name not in outcome.done]
            if not candidates:
                break
            held = await session.call_all(lambda n: PushHaveRequest(root=plan.root, files=wanted,
                                                                    address=addresses[n.name]), candidates, timeout=600)
            outcome.failed.update({n: f.error or "no answer" for n, f in held.failures.items()})
            needs = _needs(plan, held.answers)
            for name, answer in held.answers.items():
                if name not in needs:
                    outcome.done.append(name)
                if first_round:
                    outcome.resumed[name] = _already(plan, answer)
                progress(name, _already(plan, answer), plan.size)
            first_round = False
            chain = [n for n in candidates if n.name in needs]
            if not chain:
                break
            outcome.sent += await _round(session, chain, plan, needs, held.answers, addresses, outcome, progress,
                                         stall_timeout)
        for name in [n.name for n in live if n.name not in outcome.done and n.name not in outcome.failed]:
            outcome.failed[name] = "still incomplete after %d rounds" % ROUNDS
    outcome.done = [n.name for n in nodes if n.name in outcome.done]
    outcome.seconds = time.monotonic() - started
    return outcome


def _needs(plan: PushPlan, answers: dict[str, PushHaveReply]) -> dict[str, dict[str, int]]:
    """Node -> the files it lacks and the bytes of each it has."""
    found = {}
    for name, answer in answers.items():
        lacking = {f.wire.path: answer.partial.get(f.wire.path, 0) for f in plan.files
                   if f.wire.path not in answer.complete}
        if lacking:
            found[name] = lacking
    return found


def _already(plan: PushPlan, answer: PushHaveReply) -> int:
    return sum(f.wire.size if f.wire.path in answer.complete else answer.partial.get(f.wire.path, 0)
               for f in plan.files)


async def _round(session: FleetSession, chain: list[Node], plan: PushPlan, needs: dict[str, dict[str, int]],
                 held: dict[str, PushHaveReply], addresses: dict[str, str], outcome: PushOutcome, progress: Progress,
                 stall_timeout: float) -> int:
    """One pass of the stream along `chain`; returns the bytes the controller sent."""
    # The stream starts each file where the node that has least of it stopped.
    start: dict[str, int] = {}
    for lacking in needs.values():
        for path, have in lacking.items():
            start[path] = min(have, start.get(path, have))
    chain = [n for n in chain if n.name not in outcome.failed]
    if not chain:
        return 0
    tokens = {n.name: secrets.token_hex(16) for n in chain}
    base = {name: _already(plan, held[name]) for name in needs}

    def request(index: int) -> PushRequest:
        node = chain[index]
        after = chain[index + 1] if index + 1 < len(chain) else None
        forward = Target(node=after.name, address=addresses[after.name], port=held[after.name].port,
                         label="push") if after else None
        mine = {path: start[path] for path in needs[node.name]}
        return PushRequest(handle=held[node.name].handle, token=tokens[node.name], root=plan.root,
                           start=mine, files=[f.wire for f in plan.files if f.wire.path in mine], forward=forward,
                           forward_token=tokens[after.name] if after else "", stall_timeout=stall_timeout)

    def on_event(name: str) -> Callable[[dict[str, object]], None]:
        kept = base[name] - sum(have - start[path] for path, have in needs[name].items())

        def handle(event: dict[str, object]) -> None:
            taken = decode(PushProgress, event).received
            progress(name, min(plan.size, kept + taken), plan.size)
        return handle

    async def take(index: int) -> tuple[str, PushReply | str]:
        name = chain[index].name
        try:
            return name, await session.call(name, request(index), on_event=on_event(name), timeout=None)
        except (AgentFailed, AgentError) as exc:
            return name, str(exc)

    takers = {asyncio.ensure_future(take(i)): chain[i].name for i in range(len(chain))}
    sent = 0
    try:
        sent = await _stream(session, chain[0].name, addresses[chain[0].name], held[chain[0].name].port,
                             tokens[chain[0].name], plan, start, stall_timeout)
    except (OSError, EOFError, ConnectionError, asyncio.TimeoutError):
        pass  # the first node went away: its own reply (or its silence) says why
    # Once the stream has left, a node that is still silent after the stall timeout has
    # stopped answering (a cut network): it is not waited for until SSH gives up on it.
    done, pending = await asyncio.wait(takers, timeout=stall_timeout + 30)
    for task in pending:
        task.cancel()
        outcome.failed[takers[task]] = f"stopped answering during the push (no reply for {stall_timeout + 30:.0f}s)"
    for name, reply in (task.result() for task in done):
        if isinstance(reply, str):
            outcome.failed[name] = reply
            continue
        wrong = [path for path, digest in reply.written.items()
                 if digest != next(f.wire.sha256 for f in plan.files if f.wire.path == path)]
        if wrong:
            outcome.failed[name] = f"sha256 differs from the source for {', '.join(sorted(wrong))}"
    return sent
