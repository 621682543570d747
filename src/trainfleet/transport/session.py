"""One SSH connection per node for the whole of one command, with everything on it.

A `FleetSession` connects to every node at once (bounded by `ssh.fanout`), starts the
node agent on each connection right away (or reaches the node's resident agent, which
needs no login shell: agent/resident.py), and then carries every request, shell
command and stream of the command as channels of that one connection. SSH set-up is
what costs (about 0.35 s per connection on a loaded machine): it is paid once per node.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from trainfleet.fleet.model import Fleet, Node
from trainfleet.fleet.state import kept_agents, save_kept_agents
from trainfleet.results import FleetResult, NodeResult
from trainfleet.transport.commands import OutputCallback, run_on_connection
from trainfleet.transport.ssh import NodeUnreachable, connect, start_tcp

if TYPE_CHECKING:
    import asyncssh

    from trainfleet.agent import protocol
    from trainfleet.transport.agent_client import AgentClient

R = TypeVar("R")
PasswordPrompt = Callable[[Node], str]


class FleetSession:
    def __init__(self, fleet: Fleet, nodes: Sequence[Node]) -> None:
        self.fleet = fleet
        self.nodes = tuple(nodes)
        self.connections: dict[str, asyncssh.SSHClientConnection] = {}
        self.agents: dict[str, AgentClient] = {}
        self.failures: dict[str, NodeResult] = {}
        """Nodes that could not be reached, or whose agent could not start."""
        self.connect_seconds: dict[str, float] = {}
        self._ready: dict[str, asyncio.Task[None]] = {}
        self._relay: asyncio.AbstractServer | None = None
        self._relay_path = ""
        self.relayed_errors: dict[str, bytes] = {}
        """What each node's commands through the relay wrote to stderr, the latest 8 KiB."""
        self._relay_lock = asyncio.Lock()
        self._kept = kept_agents(fleet)
        self._refusals_said: set[str] = set()
        """Where each node's resident agent was last said to listen (key -> path)."""

    @classmethod
    async def open(cls, fleet: Fleet, nodes: Sequence[Node] | None = None, *, agents: bool | str = True,
                   sockets: dict[str, socket.socket] | None = None, known_hosts: object = None,
                   ask_password: PasswordPrompt | None = None, wait: bool = True) -> FleetSession:
        """Connect to every node (`nodes`: a subset) and start its agent.

        `known_hosts` overrides the fleet's files (`ssh setup` passes the keys it has just
        pinned); nodes that refuse every key get `ask_password`'s answer, asked once for
        the whole fleet and kept in memory only. `agents="resident"`: only nodes whose
        resident agent answers get one (no login shell starts an agent). With `wait=False`
        it returns at once, and each node's requests and commands start as soon as that
        node is connected."""
        session = cls(fleet, nodes if nodes is not None else fleet.nodes)
        if sockets is None:
            sockets = start_tcp(session.nodes[:fleet.ssh.fanout])
        session._start(agents, sockets, known_hosts, ask_password)
        if wait:
            await asyncio.gather(*session._ready.values())
        return session

    async def __aenter__(self) -> FleetSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _start(self, agents: bool | str, sockets: dict[str, socket.socket], known_hosts: object,
               ask_password: PasswordPrompt | None) -> None:
        limit = asyncio.Semaphore(self.fleet.ssh.fanout)
        password: list[str] = []
        asking = asyncio.Lock()

        async def connected(node: Node) -> asyncssh.SSHClientConnection:
            try:
                return await connect(node, self.fleet.ssh, sockets.get(node.name), known_hosts=known_hosts)
            except NodeUnreachable as exc:
                if ask_password is None or "authentication failed" not in exc.reason:
                    raise
            async with asking:
                if not password:
                    loop = asyncio.get_running_loop()
                    password.append(await loop.run_in_executor(None, ask_password, node))
            return await connect(node, self.fleet.ssh, password=password[0], known_hosts=known_hosts)

        async def one(node: Node) -> None:
            async with limit:
                started = time.monotonic()
                try:
                    conn = await connected(node)
                except NodeUnreachable as exc:
                    self.failures[node.name] = NodeResult(node=node.name, command="ssh", exit_status=None,
                                                          error=exc.reason, seconds=time.monotonic() - started)
                    return
                self.connect_seconds[node.name] = time.monotonic() - started
                self.connections[node.name] = conn
                if agents:
                    from trainfleet.transport.agent_client import AgentClient

                    keep = self.fleet.ssh.keep_agent
                    key = self._resident_key(node) if keep > 0 else ""
                    try:
                        if agents == "resident":
                            kept = await AgentClient.attach(conn, node.name, self.fleet.python, self._kept[key]) \
                                if self._kept.get(key) else None
                            if kept is not None:
                                self.agents[node.name] = kept
                            return
                        self.agents[node.name] = await AgentClient.start(
                            conn, node.name, self.fleet.python, resident=key, kept_at=self._kept.get(key),
                            keep=keep)
                    except Exception as exc:  # the channel could not be opened
                        self.failures[node.name] = NodeResult(node=node.name, command="agent", exit_status=None,
                                                              error=f"cannot start the node agent: {exc}")

        self._ready = {n.name: asyncio.ensure_future(one(n)) for n in self.nodes}

    async def ready(self, node: str) -> None:
        """Until `node` is connected (or known to be unreachable)."""
        await self._ready[node]

    @property
    def live(self) -> tuple[Node, ...]:
        """Nodes reached, in fleet order."""
        return tuple(n for n in self.nodes if n.name not in self.failures)

    @property
    def unreachable(self) -> FleetResult:
        """The nodes this session could not reach (or start an agent on), as one result:
        `session.unreachable.require(what, fleet)` stops an operation that needs them all."""
        return FleetResult(tuple(self.failures.values()))

    def _failed(self, node: str, exc: BaseException, op: str) -> NodeResult:
        from trainfleet.transport.agent_client import AgentError, AgentFailed

        if isinstance(exc, AgentFailed):
            result = NodeResult(node=node, command=op, exit_status=exc.exit_status, stderr=exc.stderr,
                                error=str(exc))
            if exc.exit_status == 127:  # the agent never ran: every later request fails alike
                self.failures.setdefault(node, result)
            return result
        if isinstance(exc, AgentError):
            # No exit status: nothing ran to an end; the request raised on the node (its
            # message says how; the agent's own traceback is kept, never shown as the user's).
            return NodeResult(node=node, command=op, exit_status=None, stderr=exc.trace, error=exc.message)
        return NodeResult(node=node, command=op, exit_status=None, error=f"{type(exc).__name__}: {exc}")

    async def call(self, node: str, request: protocol.Request[R], **kwargs: Any) -> R:
        from trainfleet.transport.agent_client import AgentFailed

        await self.ready(node)
        if node in self.failures:
            raise AgentFailed(node, self.failures[node].error or "unreachable")
        return await self.agents[node].call(request, **kwargs)

    async def call_all(self, request: protocol.Request[R] | Callable[[Node], protocol.Request[R] | None],
                       nodes: Iterable[Node] | None = None, *, timeout: float | None = 60,
                       on_event: Callable[[str, dict[str, Any]], None] | None = None) -> FleetResult[R]:
        """The same request (or one per node) on every live node at once."""
        from trainfleet.transport.agent_client import AgentError, AgentFailed

        results: dict[str, NodeResult] = {}
        answers: dict[str, R] = {}
        targets = [n for n in (nodes if nodes is not None else self.nodes)]

        async def one(node: Node) -> None:
            await self.ready(node.name)
            if node.name in self.failures:
                results[node.name] = self.failures[node.name]
                return
            each = request(node) if callable(request) else request
            if each is None:
                return
            handler = (lambda event, name=node.name: on_event(name, event)) if on_event else None
            started = time.monotonic()
            try:
                answers[node.name] = await self.agents[node.name].call(each, on_event=handler, timeout=timeout)
                results[node.name] = NodeResult(node=node.name, command=each.op, exit_status=0,
                                                seconds=time.monotonic() - started)
            except (AgentFailed, AgentError) as exc:
                results[node.name] = self._failed(node.name, exc, each.op)

        await asyncio.gather(*(one(n) for n in targets))
        return FleetResult(tuple(results[n.name] for n in targets if n.name in results), answers)

    async def run(self, command: str | Callable[[Node], str], nodes: Iterable[Node] | None = None, *,
                  on_output: OutputCallback | None = None, timeout: float | None = None,
                  cwd: str | Sequence[str] | None = None, resident: bool = False) -> FleetResult:
        """A shell command on every node (each on a new channel of its connection; with
        `resident`, by the node's resident agent where one answered)."""
        targets = [n for n in (nodes if nodes is not None else self.nodes)]

        async def one(node: Node) -> NodeResult:
            text = command(node) if callable(command) else command
            await self.ready(node.name)
            if node.name not in self.connections:  # (a node whose agent failed still takes commands)
                failed = self.failures[node.name]
                return NodeResult(node=node.name, command=text, exit_status=None, error=failed.error)
            agent = self.agents.get(node.name) if resident else None
            return await run_on_connection(self.connections[node.name], node.name, text, on_output=on_output,
                                           timeout=timeout, cwd=cwd,
                                           agent=agent if agent is not None and agent.attached else None)

        return FleetResult(tuple(await asyncio.gather(*(one(n) for n in targets))))

    async def remote_shell(self) -> str:
        """A command for rsync's `--rsh` (or any tool that runs `SHELL NODE COMMAND`): the
        command runs over this session's connection to NODE, host key checked as always."""
        relay = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")
        return f"{shlex.quote(sys.executable)} -S {shlex.quote(relay)} {shlex.quote(await self.relay())}"

    async def tunnel(self, node: str, host: str, port: int) -> tuple[Any, Any]:
        """A TCP connection to host:port as seen from `node`, through its SSH connection:
        a reader and a writer, as asyncio's streams have them."""
        return await self.connections[node].open_connection(host, port)  # type: ignore[no-any-return]

    async def relay(self) -> str:
        """A unix socket that `relay.py` (rsync's remote shell) hands commands to: they
        run over this session's connections. Returns the path; it goes with `close`."""
        async with self._relay_lock:  # nodes ask for it at once: one server for them all
            if self._relay is None:
                import tempfile

                folder = tempfile.mkdtemp(prefix="trainfleet-relay-")  # 0700: only this user reaches the socket
                path = os.path.join(folder, "socket")
                self._relay = await asyncio.start_unix_server(self._serve_relay, path)
                self._relay_path = path
        return self._relay_path

    async def _serve_relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def frame(kind: bytes, data: bytes) -> None:
            writer.write(struct.pack("!cI", kind, len(data)) + data)

        feeding: asyncio.Future[None] | None = None
        try:
            header = json.loads(await reader.readline())
            node = header["node"]
            await self.ready(node)
            if node not in self.connections:
                failed = self.failures.get(node)
                frame(b"e", f"trainfleet relay: {node}: {failed.error if failed else 'unknown node'}\n".encode())
                frame(b"x", struct.pack("!i", 255))
                return
            process = await self.connections[node].create_process(header["command"], encoding=None)

            import asyncssh  # (loaded by now: the node's connection is up)

            async def upstream() -> None:
                try:
                    while chunk := await reader.read(65536):
                        process.stdin.write(chunk)
                    process.stdin.write_eof()
                except (OSError, asyncssh.Error):
                    # rsync's side closed first (it had what it needed, or it failed): its
                    # exit status, not this pipe, is what the user is told.
                    pass

            async def downstream(stream: Any, kind: bytes) -> None:
                while chunk := await stream.read(65536):
                    if kind == b"e":  # kept too: rsync may end (and end this relay) before it shows it
                        self.relayed_errors[node] = (self.relayed_errors.get(node, b"") + chunk)[-8192:]
                    frame(kind, chunk)
                    await writer.drain()

            feeding = asyncio.ensure_future(upstream())
            await asyncio.gather(downstream(process.stdout, b"o"), downstream(process.stderr, b"e"))
            completed = await process.wait()
            status = completed.exit_status if completed.exit_status is not None else 255
            frame(b"x", struct.pack("!i", status))
            await writer.drain()
        except (OSError, ValueError, KeyError) as exc:
            frame(b"e", f"trainfleet relay: {exc}\n".encode())
            frame(b"x", struct.pack("!i", 255))
        except asyncio.CancelledError:
            # The session ends (another node failed) while this node's rsync still talks:
            # the connection just closes. Ending cancelled would make Python 3.11's stream
            # callback print a traceback under the user's one-line error.
            pass
        finally:
            if feeding is not None:
                feeding.cancel()
                await asyncio.gather(feeding, return_exceptions=True)
            writer.close()

    def _resident_key(self, node: Node) -> str:
        from trainfleet.transport.agent_client import resident_key

        return resident_key(self.fleet.python, node.user, node.host, node.port, self.fleet.ssh.keep_agent)

    def _keep_residents(self) -> None:
        """Note where each node's resident agent listens, for the next command."""
        if not self.fleet.ssh.state_dir or self.fleet.ssh.keep_agent <= 0:
            return
        kept = dict(self._kept)
        for node in self.nodes:
            agent = self.agents.get(node.name)
            if agent is not None and agent.said_ready:
                key = self._resident_key(node)
                if agent.resident and agent.resident_secret:
                    kept[key] = (agent.resident, agent.resident_secret)
                else:
                    kept.pop(key, None)
                if agent.resident_refused and node.name not in self._refusals_said:
                    # Said once per command: the node works, but each command pays a login shell.
                    self._refusals_said.add(node.name)
                    sys.stderr.write(f"[trainfleet] {node.name}: no resident agent kept (each command starts a login "
                                     f"shell): {agent.resident_refused}; fix: make it a folder of yours alone "
                                     f"(`chmod 700` it; a link: replace it with a folder)\n")
        if kept != self._kept:
            save_kept_agents(self.fleet, kept)

    async def close(self) -> None:
        self._keep_residents()
        if self._relay is not None:
            self._relay.close()
            shutil.rmtree(os.path.dirname(self._relay_path), ignore_errors=True)
        for task in self._ready.values():
            task.cancel()
        await asyncio.gather(*self._ready.values(), return_exceptions=True)
        await asyncio.gather(*(agent.close() for agent in self.agents.values()), return_exceptions=True)
        for conn in self.connections.values():
            conn.close()
        await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in self.connections.values()] or
                           [asyncio.ensure_future(asyncio.sleep(0))], timeout=2)
