"""The controller's end of a node agent: one channel, many typed requests at once.

The agent is started once per node per command with the fleet's Python; its sources
arrive on stdin after a one-line bootstrap, so nothing of it (or of a job) shows in argv.
Where the node kept a resident agent from an earlier command, a unix-socket channel
to it takes the place of that start (agent/resident.py).
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from trainfleet.agent import protocol

if TYPE_CHECKING:
    import asyncssh

R = TypeVar("R")
EventHandler = Callable[[dict[str, Any]], None]

_PAYLOAD: tuple[str, str, str] | None = None
START_TIMEOUT = 180.0
"""Seconds the node's login shell may take to start the agent. A request's own timeout
counts from then: at 128 nodes whose start-up files queue on one lock (pyenv's rehash in
a shared home), the last agents start a minute after the first, and are not slow to answer."""
ATTACH_TIMEOUT = 10.0
"""Seconds a resident agent has to say it is ready; past that the command starts one."""


AGENT_PYTHON = "python3"
"""What the agent runs on where the fleet's `python:` (the job's, with torch) is not there
yet: a bare node's own Python, so that `setup:` can make the job's environment."""


def shell_word(path: str) -> str:
    """A path for a POSIX shell, its leading ~/ still the node's home."""
    return f'"$HOME"/{shlex.quote(path[2:])}' if path.startswith("~/") else shlex.quote(path)


def agent_command(python: str) -> str:
    """The remote command line; the agent itself comes over stdin. It runs on the fleet's
    Python where a non-interactive shell finds it (the job's, as before), else on the
    node's python3; exit 127 when there is neither."""
    loader = shlex.quote("import sys,json;exec(json.loads(sys.stdin.readline()))")
    script = (f"for p in {shell_word(python)} {AGENT_PYTHON}; do "
              f'command -v "$p" >/dev/null 2>&1 && exec "$p" -c {loader}; done; exit 127')
    # (/bin/sh: the user's login shell may be fish or csh, whose loops differ.)
    return f"exec /bin/sh -c {shlex.quote(script)}"


def _payload() -> tuple[str, str, str]:
    """(the first stage's code, about 2 KB: how to load the agent from the node's cache by
    its sha256; the sources line, about 160 KB, sent only to a node that asks for it; that
    sha256)."""
    global _PAYLOAD
    if _PAYLOAD is None:
        import hashlib

        from trainfleet.agent import SOURCES_MARK, cached_bootstrap, sources

        text = json.dumps(sources())
        digest = hashlib.sha256(text.encode()).hexdigest()
        _PAYLOAD = cached_bootstrap(digest), SOURCES_MARK + text + "\n", digest
    return _PAYLOAD


def first_line(resident: str = "", keep: float = 0.0) -> str:
    """What a login shell's Python reads first: the first stage, then the agent's loop
    (told to leave a resident agent named `resident` behind, for `keep` idle seconds)."""
    return json.dumps(_payload()[0] + f"import tfagent.main; tfagent.main.serve({resident!r}, {keep!r})\n") + "\n"


def resident_key(python: str, user: str, host: str, port: int, keep: float) -> str:
    """The resident agent's name on the node: this agent's sources, the Python it runs
    with, the node as the controller reaches it (nodes sharing a home keep apart), and
    how long it stays."""
    import hashlib

    text = "\0".join((_payload()[2], python, f"{user}@{host}:{port}", f"{keep:g}"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class _Attached:
    """A resident agent's connection, shaped as the process a login shell starts."""

    class _Ended:
        exit_status = 0
        exit_signal = None

    def __init__(self, reader: asyncssh.SSHReader[str], writer: asyncssh.SSHWriter[str]) -> None:
        self.stdout = reader
        self.stdin = writer
        self.stderr = self._nothing()

    @staticmethod
    async def _nothing() -> Any:
        return
        yield

    async def wait(self) -> _Attached._Ended:
        return self._Ended()

    def close(self) -> None:
        self.stdin.close()


class AgentFailed(Exception):
    """The agent could not run, or died: `exit_status` 127 means the Python was not found."""

    def __init__(self, node: str, message: str, exit_status: int | None = None, stderr: str = "",
                 link_closed: bool = False) -> None:
        super().__init__(message)
        self.node = node
        self.exit_status = exit_status
        self.stderr = stderr
        self.link_closed = link_closed
        """This controller's link to the node closed under the agent (no exit status, no
        signal came back): what runs on the node may well go on."""


class AgentError(Exception):
    """A request raised on the node; `trace` is the node's traceback."""

    def __init__(self, node: str, op: str, message: str, trace: str = "") -> None:
        super().__init__(f"{op} failed on {node}: {message}")
        self.node = node
        self.message = message
        self.trace = trace


class AgentClient:
    def __init__(self, node: str, python: str, process: asyncssh.SSHClientProcess | _Attached,
                 resident: str = "", resident_secret: str = "") -> None:
        self.node = node
        self.python = python
        self.process = process
        self.attached = isinstance(process, _Attached)
        """Served by the node's resident agent (no login shell, no Python started)."""
        self.resident = resident
        """Where the node's resident agent listens, as that agent said ("": none)."""
        self.resident_secret = resident_secret
        """What it proves before it is sent a request (the login shell's agent said it)."""
        self.resident_refused = ""
        """Why the node kept no resident agent, where it said (its folder is not safe)."""
        self.said_ready = self.attached
        self._next = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._handlers: dict[int, EventHandler] = {}
        self._stderr: list[str] = []
        self._closed: AgentFailed | None = None
        self._up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once the agent has said anything (it says `ready` first), or its channel closed."""
        if self.attached:
            self._up.set_result(None)
        self._reader = asyncio.ensure_future(self._read())
        self._errors = asyncio.ensure_future(self._read_stderr())

    @classmethod
    async def start(cls, conn: asyncssh.SSHClientConnection, node: str, python: str, *, resident: str = "",
                    kept_at: tuple[str, str] | None = None, keep: float = 0.0) -> AgentClient:
        """Start the agent; requests may follow at once (they queue behind the sources).

        `kept_at`: where this node's resident agent was last said to listen, and its
        secret; it is tried first. `resident` (its key) and `keep` (idle seconds) ask a
        login shell's agent to leave one behind."""
        if kept_at:
            attached = await cls.attach(conn, node, python, kept_at)
            if attached is not None:
                return attached
        process = await conn.create_process(agent_command(python), encoding="utf-8", errors="replace")
        process.stdin.write(first_line(resident, keep))
        return cls(node, python, process)

    @classmethod
    async def attach(cls, conn: asyncssh.SSHClientConnection, node: str, python: str,
                      kept: tuple[str, str]) -> AgentClient | None:
        """The resident agent at `kept` (path, secret), once it proved it knows the secret
        the login shell's agent reported, and said it is ready; None if it is gone, stale,
        cannot prove it (a socket someone else planted there is sent no request), or the
        node's sshd forwards no unix sockets (then a login shell starts one)."""
        import hmac
        import secrets

        from trainfleet.agent.resident import proof

        path, secret = kept
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                conn.open_unix_connection(path, encoding="utf-8", errors="replace"), ATTACH_TIMEOUT)
            challenge = secrets.token_hex(32)
            writer.write(json.dumps({"challenge": challenge}) + "\n")
            answer = json.loads(await asyncio.wait_for(reader.readline(), ATTACH_TIMEOUT) or "{}")
            if isinstance(answer, dict) and hmac.compare_digest(str(answer.get("proof", "")).encode(),
                                                                proof(secret, challenge).encode()):
                line = await asyncio.wait_for(reader.readline(), ATTACH_TIMEOUT)
                if json.loads(line or "{}").get("ready") is True:
                    return cls(node, python, _Attached(reader, writer), path, secret)
        except Exception:  # refused, no such socket, closed at once (stale), slow: start one afresh
            pass
        if writer is not None:
            writer.close()
        return None

    async def _read_stderr(self) -> None:
        async for line in self.process.stderr:
            if line:
                self._stderr.append(line)
                del self._stderr[:-50]

    async def _read(self) -> None:
        try:
            async for line in self.process.stdout:
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # something on the node printed to the agent's stdout
                if not self._up.done():
                    self._up.set_result(None)
                if message.get("ready") is True:  # (a node without the agent cached asks for it first)
                    self.said_ready = True
                    self.resident = message.get("resident") or ""
                    self.resident_secret = message.get("resident_secret") or ""
                    self.resident_refused = message.get("resident_refused") or ""
                    continue
                ident = message.get("id")
                if message.get("need") == "agent":  # not in the node's cache yet (or changed): send it
                    self.process.stdin.write(_payload()[1])
                    continue
                if "event" in message:
                    handler = self._handlers.get(ident)
                    if handler is not None:
                        handler(message["event"])
                    continue
                future = self._pending.pop(ident, None)
                self._handlers.pop(ident, None)
                if future is not None and not future.done():
                    future.set_result(message)
        except Exception:  # the channel broke: every waiter learns below
            pass
        await asyncio.gather(self._errors, return_exceptions=True)
        completed = await self.process.wait()
        status = completed.exit_status
        stderr = "".join(self._stderr).strip()
        if self.attached:
            message = "the node's resident agent closed the connection"
        elif status == 127:
            message = f"`{self.python}` was not found by a non-interactive SSH shell"
        elif status is None and completed.exit_signal:
            message = f"the node agent was killed by SIG{completed.exit_signal[0]}"
        else:
            tail = stderr.splitlines()[-1] if stderr else "no output"
            message = f"the node agent ended (exit status {status}): {tail}"
        # Through a resident agent the stream is all there is (no exit status comes back): its
        # end under a request is the link's, or a fork's that the job does not depend on.
        self._closed = AgentFailed(self.node, message, status, stderr,
                                   link_closed=self.attached or (status is None and not completed.exit_signal))
        if not self._up.done():
            self._up.set_result(None)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._closed)
        self._pending.clear()

    async def call(self, request: protocol.Request[R], *, on_event: EventHandler | None = None,
                   timeout: float | None = None) -> R:
        """Send one request and wait for its typed reply (events go to `on_event`)."""
        if self._closed is not None:
            raise self._closed
        self._next += 1
        ident = self._next
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        if on_event is not None:
            self._handlers[ident] = on_event
        message = {"id": ident, **protocol.to_wire(request)}
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
        except Exception as exc:  # the channel is closing
            self._pending.pop(ident, None)
            raise AgentFailed(self.node, f"the node agent is gone: {exc}", link_closed=True) from None
        try:
            if not self._up.done():
                await asyncio.wait_for(asyncio.shield(self._up), START_TIMEOUT)
        except (asyncio.TimeoutError, TimeoutError):
            self._pending.pop(ident, None)
            self._handlers.pop(ident, None)
            raise AgentFailed(self.node, f"the node agent did not start within {START_TIMEOUT:g}s: the login shell "
                                         f"is slow or stuck (its start-up files: ~/.bashrc, ~/.profile?)") from None
        try:
            answer = await asyncio.wait_for(future, timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self._pending.pop(ident, None)
            self._handlers.pop(ident, None)
            raise AgentFailed(self.node, f"no answer to {request.op} within {timeout:g}s") from None
        if "error" in answer:
            raise AgentError(self.node, request.op, answer["error"], answer.get("trace", ""))
        return protocol.decode(type(request).reply_type, answer["reply"])  # type: ignore[no-any-return]

    async def close(self) -> None:
        """End the agent (EOF on its stdin) and wait a moment for it."""
        try:
            self.process.stdin.write_eof()
        except Exception:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        except (asyncio.TimeoutError, TimeoutError):
            self.process.close()
