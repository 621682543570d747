"""Plain shell commands on an open connection, with their output streamed line by line.

Each command runs under a small POSIX-sh watchdog: the command's stdin is /dev/null
and the channel's stdin stays open as a liveness pipe. When it reaches EOF (timeout,
Ctrl-C, or the controller died and sshd closed it), the watchdog ends the command's
whole process group, as a pty hangup would.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from trainfleet.results import NodeResult
from trainfleet.shellwords import shell_path

if TYPE_CHECKING:
    import asyncssh

    from trainfleet.transport.agent_client import AgentClient

OutputCallback = Callable[[str, str, str], None]
"""Called as (node name, "stdout" | "stderr", line without its newline)."""

_KEEP_CHARS = 256 * 1024

# (sh gives background lists /dev/null as stdin, hence the explicit fd 3.)
_WATCHDOG = ('exec 3<&0; { eval "$1"; } </dev/null 3<&- & c=$!; '
             '{ while read -r _; do :; done <&3; kill -TERM 0; } & w=$!; '
             'exec 3<&-; wait $c; s=$?; kill $w 2>/dev/null; exit $s')


def watched_argv(command: str, cwd: str | Sequence[str] | None = None) -> list[str]:
    """`command` run by sh under the watchdog (works whatever the login shell is); in
    the first of `cwd` that exists, else in the home directory."""
    places = [cwd] if isinstance(cwd, str) else list(cwd or ())
    if places:
        moves = " || ".join(f"cd {shell_path(p)} 2>/dev/null" for p in places)
        command = f"{{ {moves}; }}; {command}"
    return ["sh", "-c", _WATCHDOG, "trainfleet", command]


def watched_command(command: str, cwd: str | Sequence[str] | None = None) -> str:
    """The same, as the command line of an SSH session (its login shell runs it)."""
    return "exec " + shlex.join(watched_argv(command, cwd))


class AgentCommand:
    """A watched command run by a node's resident agent (no login shell to start: the
    agent already has the environment one gives), shaped as the asyncssh process the
    functions here read: line streams, `stdin.write_eof()`, `wait()`, `close()`."""

    class _Lines:
        def __init__(self) -> None:
            self.queue: asyncio.Queue[str] = asyncio.Queue()

        def __aiter__(self) -> AgentCommand._Lines:
            return self

        async def __anext__(self) -> str:
            line = await self.queue.get()
            if not line:
                raise StopAsyncIteration
            return line

    class _Ended:
        def __init__(self, exit_status: int | None, exit_signal: tuple[str, ...] | None) -> None:
            self.exit_status = exit_status
            self.exit_signal = exit_signal

    def __init__(self, agent: AgentClient, argv: list[str]) -> None:
        from trainfleet.agent.protocol import CommandRequest

        self.agent = agent
        self.stdout = self._Lines()
        self.stderr = self._Lines()
        self.stdin = self
        self._ending = False
        self._task = asyncio.ensure_future(agent.call(CommandRequest(argv=argv), on_event=self._event))
        self._task.add_done_callback(lambda _: (self.stdout.queue.put_nowait(""), self.stderr.queue.put_nowait("")))

    def _event(self, event: dict[str, str]) -> None:
        (self.stderr if event.get("stream") == "stderr" else self.stdout).queue.put_nowait(event.get("line", ""))

    def write_eof(self) -> None:
        """Ends the agent's connection: its fork exits, and the watchdog ends the command."""
        self._ending = True
        asyncio.ensure_future(self.agent.close())

    def close(self) -> None:
        self.write_eof()

    async def wait(self) -> AgentCommand._Ended:
        try:
            ended = await self._task
        except Exception:  # a broken connection: run_on_connection reports it, unless we broke it
            if not self._ending:
                raise
            return self._Ended(None, None)
        return self._Ended(ended.exit_status, (ended.signal,) if ended.signal else None)


async def stream_process(process: asyncssh.SSHClientProcess, node: str,
                         on_output: OutputCallback | None) -> tuple[str, str]:
    """Read stdout and stderr line by line until both close; returns their (bounded) text."""
    kept: dict[str, list[str]] = {"stdout": [], "stderr": []}
    sizes = {"stdout": 0, "stderr": 0}

    async def pump(reader: asyncssh.SSHReader[str], name: str) -> None:
        async for line in reader:
            if not line:  # the reader's end-of-stream marker
                continue
            if on_output is not None:
                on_output(node, name, line.rstrip("\n"))
            kept[name].append(line)
            sizes[name] += len(line)
            while sizes[name] > _KEEP_CHARS and len(kept[name]) > 1:
                sizes[name] -= len(kept[name].pop(0))

    await asyncio.gather(pump(process.stdout, "stdout"), pump(process.stderr, "stderr"))
    return "".join(kept["stdout"]), "".join(kept["stderr"])


async def run_on_connection(conn: asyncssh.SSHClientConnection, node: str, command: str, *,
                            on_output: OutputCallback | None = None, timeout: float | None = None,
                            cwd: str | Sequence[str] | None = None, agent: AgentClient | None = None) -> NodeResult:
    """One shell command, under the watchdog, on an open connection (by its resident
    `agent` when given one)."""
    started = time.monotonic()

    def result(**kwargs: object) -> NodeResult:
        return NodeResult(node=node, command=command, seconds=time.monotonic() - started, **kwargs)  # type: ignore[arg-type]

    try:
        process: Any
        if agent is not None:
            process = AgentCommand(agent, watched_argv(command, cwd))
        else:
            process = await conn.create_process(watched_command(command, cwd), encoding="utf-8", errors="replace")
        try:
            stdout, stderr = await asyncio.wait_for(stream_process(process, node, on_output), timeout)
            completed = await asyncio.wait_for(process.wait(), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            process.stdin.write_eof()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except (asyncio.TimeoutError, TimeoutError):
                process.close()
            return result(exit_status=None, error=f"`{command}` timed out after {timeout:g}s")
        except asyncio.CancelledError:
            process.stdin.write_eof()  # Ctrl-C: the watchdog ends the remote command tree
            raise
        status = completed.exit_status
        if status is None and completed.exit_signal:
            return result(exit_status=None, stdout=stdout, stderr=stderr,
                          error=f"`{command}` was killed by SIG{completed.exit_signal[0]}")
        return result(exit_status=status, stdout=stdout, stderr=stderr)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the connection broke mid-command
        return result(exit_status=None, error=f"connection lost while running `{command}`: {exc}")
