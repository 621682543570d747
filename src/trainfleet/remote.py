"""Remote execution over SSH: one asyncssh event loop, bounded fan-out, verified host keys.

This is the only module that opens SSH connections. Host keys are always checked
against the fleet's known_hosts file; an unknown or changed key is refused.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shlex
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from trainfleet.results import FleetResult, NodeResult
from trainfleet.spec import Fleet, Node, SSHSettings

if TYPE_CHECKING:
    import asyncssh

OutputCallback = Callable[[str, str, str], None]
"""Called as (node name, "stdout" | "stderr", line without its newline)."""

_KEEP_CHARS = 256 * 1024


class NodeUnreachable(Exception):
    """SSH to a node failed before any command ran; the message names cause and fix."""

    def __init__(self, node: Node, reason: str) -> None:
        super().__init__(f"{node.name} ({node.ssh_target}): {reason}")
        self.node = node
        self.reason = reason


def _host_in_known_hosts(paths: list[str], host: str, port: int) -> bool:
    wanted = host if port == 22 else f"[{host}]:{port}"
    for path in paths:
        try:
            with open(path) as handle:
                for line in handle:
                    fields = line.split()
                    if fields and not line.startswith("#") and wanted in fields[0].split(","):
                        return True
        except OSError:
            continue
    return False


def _explain(node: Node, ssh: SSHSettings, exc: BaseException) -> str:
    import asyncssh

    target = f"{node.host}:{node.port}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        files = ssh.known_hosts_files()
        shown = " and ".join(files) or ssh.known_hosts
        if _host_in_known_hosts(files, node.host, node.port):
            return (f"host key of {target} does not match {shown}: refusing to connect "
                    f"(the machine was replaced, or someone is in the middle); fix: if the change is "
                    f"expected, remove its line with `ssh-keygen -R '[{node.host}]:{node.port}' -f FILE` "
                    f"and check the new fingerprint")
        return (f"host key of {target} is not in {shown}; fix: run `trainfleet ssh setup` to see its "
                f"fingerprint and pin it")
    if isinstance(exc, asyncssh.PermissionDenied):
        key = node.identity_file or "your default keys / agent"
        return (f"authentication failed as {node.user!r} with {key}; fix: install the public key in "
                f"{node.user}'s ~/.ssh/authorized_keys, or `trainfleet ssh setup --ask-password`")
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused at {target}; fix: start sshd there or correct `port:`"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return (f"no answer from {target} within {ssh.connect_timeout:g}s; fix: check the address, "
                f"that the machine is up, and firewalls on the path")
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"file not found: {exc.filename}"
    if isinstance(exc, OSError):
        return f"cannot reach {target}: {exc.strerror or exc}"
    if isinstance(exc, asyncssh.Error):
        return f"ssh error from {target}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def client_keys(node: Node, ssh: SSHSettings) -> list[str] | None:
    """The node's key (or the usual defaults), then the fleet key once `ssh setup` made one."""
    if node.identity_file:
        keys = [node.identity_file]
    else:
        keys = [p for p in (os.path.expanduser(f"~/.ssh/{name}") for name in ("id_ed25519", "id_ecdsa", "id_rsa"))
                if os.path.isfile(p)]
    if ssh.fleet_key and os.path.isfile(ssh.fleet_key):
        keys.append(ssh.fleet_key)
    return keys or None


def start_tcp(nodes: Sequence[Node]) -> dict[str, socket.socket]:
    """Begin TCP connections to nodes (no jump host) before the SSH library is even loaded.

    Each sshd forks and re-executes itself on accept; starting that now lets the nodes
    do it while this process is still importing asyncssh (about 0.2 s). `connect`
    finishes the handshake on these sockets, and falls back to a fresh connection.
    """
    sockets: dict[str, socket.socket] = {}
    for node in nodes:
        if node.jump is not None:
            continue
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                node.host, node.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)[0]
        except (socket.gaierror, IndexError):
            continue  # a name to resolve: asyncssh does that itself
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        if sock.connect_ex(address) not in (0, errno.EINPROGRESS):
            sock.close()
            continue
        sockets[node.name] = sock
    return sockets


async def _connected(sock: socket.socket, timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    writable = loop.create_future()
    loop.add_writer(sock.fileno(), lambda: writable.done() or writable.set_result(None))
    try:
        await asyncio.wait_for(writable, timeout)
    finally:
        loop.remove_writer(sock.fileno())
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))
    return sock


async def connect(node: Node, ssh: SSHSettings, sock: socket.socket | None = None, *,
                  password: str | None = None, known_hosts: object = None) -> asyncssh.SSHClientConnection:
    """An authenticated connection, or NodeUnreachable with the cause and a fix.

    `password` is tried after the keys (it is never stored); `known_hosts` overrides the
    fleet's files (`ssh setup` passes the keys it has just pinned)."""
    import asyncssh

    tunnel = None
    try:
        if sock is not None:
            try:
                sock = await _connected(sock, ssh.connect_timeout)
            except OSError:
                sock.close()
                raise
        if known_hosts is None:
            files = ssh.known_hosts_files()
            if not files:
                raise FileNotFoundError(2, "known_hosts file does not exist", ssh.known_hosts)
            known_hosts = asyncssh.read_known_hosts(files)
        common = {
            "known_hosts": known_hosts,
            "config": (),
            "connect_timeout": ssh.connect_timeout,
            "login_timeout": ssh.connect_timeout,
            "keepalive_interval": 15,
            "keepalive_count_max": 4,
            "client_keys": client_keys(node, ssh),
        }
        if password is not None:
            common["password"] = password
        if node.jump is not None:
            tunnel = await asyncssh.connect(node.jump.host, port=node.jump.port,
                                            username=node.jump.user or node.user, **common)
        return await asyncssh.connect(node.host, port=node.port, username=node.user,
                                      tunnel=tunnel, sock=sock, **common)
    except Exception as exc:
        if tunnel is not None:
            tunnel.close()
        raise NodeUnreachable(node, _explain(node, ssh, exc)) from None


async def stream_process(
    process: asyncssh.SSHClientProcess,
    node: str,
    on_output: OutputCallback | None,
) -> tuple[str, str]:
    """Read stdout and stderr line by line until both close; returns their (bounded) text."""
    kept: dict[str, list[str]] = {"stdout": [], "stderr": []}
    sizes = {"stdout": 0, "stderr": 0}

    async def pump(reader: asyncssh.SSHReader[str], name: str) -> None:
        async for line in reader:
            if not line:  # the reader's end-of-stream marker
                continue
            text = line.rstrip("\n")
            if on_output is not None:
                on_output(node, name, text)
            kept[name].append(line)
            sizes[name] += len(line)
            while sizes[name] > _KEEP_CHARS and len(kept[name]) > 1:
                sizes[name] -= len(kept[name].pop(0))

    await asyncio.gather(pump(process.stdout, "stdout"), pump(process.stderr, "stderr"))
    return "".join(kept["stdout"]), "".join(kept["stderr"])


# The command's stdin is /dev/null; the channel's stdin stays open as a liveness pipe.
# When it reaches EOF (timeout, Ctrl-C, or the controller died and sshd closed it),
# the watcher ends the whole process group of the session, as a pty hangup would.
# (sh gives background lists /dev/null as stdin, hence the explicit fd 3.)
_WATCHDOG = ('exec 3<&0; { eval "$1"; } </dev/null 3<&- & c=$!; '
             '{ while read -r _; do :; done <&3; kill -TERM 0; } & w=$!; '
             'exec 3<&-; wait $c; s=$?; kill $w 2>/dev/null; exit $s')


def watched_command(command: str) -> str:
    """`command` run by sh under the watchdog above (works whatever the login shell is)."""
    return f"exec sh -c {shlex.quote(_WATCHDOG)} trainfleet {shlex.quote(command)}"


async def run_command(
    node: Node,
    ssh: SSHSettings,
    command: str,
    *,
    on_output: OutputCallback | None = None,
    timeout: float | None = None,
    stdin_text: str | None = None,
    sock: socket.socket | None = None,
) -> NodeResult:
    """Connect, run one command, disconnect."""
    started = time.monotonic()
    try:
        conn = await connect(node, ssh, sock)
    except NodeUnreachable as exc:
        return NodeResult(node=node.name, command=command, exit_status=None, error=exc.reason,
                          seconds=time.monotonic() - started)
    async with conn:
        return await run_on_connection(conn, node.name, command, on_output=on_output, timeout=timeout,
                                       stdin_text=stdin_text)


async def run_on_connection(
    conn: asyncssh.SSHClientConnection,
    node: str,
    command: str,
    *,
    on_output: OutputCallback | None = None,
    timeout: float | None = None,
    stdin_text: str | None = None,
) -> NodeResult:
    """One command on an open connection. With `stdin_text` (the agent) it is sent and
    stdin closed; without, the command runs under the watchdog and stdin stays open."""
    started = time.monotonic()

    def result(**kwargs: object) -> NodeResult:
        return NodeResult(node=node, command=command, seconds=time.monotonic() - started, **kwargs)  # type: ignore[arg-type]

    try:
        if stdin_text is not None:
            process = await conn.create_process(command, encoding="utf-8", errors="replace")
            process.stdin.write(stdin_text)
            process.stdin.write_eof()
        else:
            process = await conn.create_process(watched_command(command), encoding="utf-8", errors="replace")
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
        status = completed.exit_status
        if status is None and completed.exit_signal:
            return result(exit_status=None, stdout=stdout, stderr=stderr,
                          error=f"`{command}` was killed by SIG{completed.exit_signal[0]}")
        return result(exit_status=status, stdout=stdout, stderr=stderr)
    except Exception as exc:  # the connection broke mid-command
        return result(exit_status=None, error=f"connection lost while running `{command}`: {exc}")


async def gather_bounded(jobs: Sequence[Callable[[], Awaitable[NodeResult]]], fanout: int) -> FleetResult:
    limit = asyncio.Semaphore(fanout)

    async def bounded(job: Callable[[], Awaitable[NodeResult]]) -> NodeResult:
        async with limit:
            return await job()

    return FleetResult(tuple(await asyncio.gather(*(bounded(job) for job in jobs))))


async def run_on_nodes(
    fleet: Fleet,
    nodes: Sequence[Node],
    command: str | Callable[[Node], str],
    *,
    on_output: OutputCallback | None = None,
    timeout: float | None = None,
    stdin_text: str | None = None,
    sockets: dict[str, socket.socket] | None = None,
) -> FleetResult:
    """Run a shell command on every node concurrently (at most `ssh.fanout` at once).

    `sockets` may hold connections begun early by `start_tcp`."""
    early = sockets or {}

    def job(node: Node) -> Callable[[], Awaitable[NodeResult]]:
        text = command(node) if callable(command) else command
        return lambda: run_command(node, fleet.ssh, text, on_output=on_output, timeout=timeout,
                                   stdin_text=stdin_text, sock=early.get(node.name))

    return await gather_bounded([job(node) for node in nodes], fleet.ssh.fanout)


_AGENT_SOURCE: str | None = None


def agent_command(python: str) -> str:
    """The remote command line that starts the agent; the agent itself comes over stdin."""
    return f"exec {shlex.quote(python)} -c 'import sys,json;exec(json.loads(sys.stdin.readline()))'"


def agent_stdin(mode: str, spec: dict[str, object]) -> str:
    global _AGENT_SOURCE
    if _AGENT_SOURCE is None:
        from importlib.resources import files

        _AGENT_SOURCE = files("trainfleet").joinpath("agent.py").read_text()
    return json.dumps(_AGENT_SOURCE) + "\n" + json.dumps({"mode": mode, **spec}) + "\n"


async def run_agent_on_nodes(
    fleet: Fleet,
    nodes: Sequence[Node],
    mode: str,
    spec_for: Callable[[Node], dict[str, object]],
    *,
    timeout: float = 60,
) -> tuple[FleetResult, dict[str, dict[str, object]]]:
    """Run one agent mode everywhere; returns the raw results and each node's JSON answer."""

    def job(node: Node) -> Callable[[], Awaitable[NodeResult]]:
        return lambda: run_command(node, fleet.ssh, agent_command(fleet.python), timeout=timeout,
                                   stdin_text=agent_stdin(mode, spec_for(node)))

    result = await gather_bounded([job(node) for node in nodes], fleet.ssh.fanout)
    answers = {r.node: answer for r in result.results if (answer := agent_answer(r)) is not None}
    return result, answers


def agent_answer(result: NodeResult) -> dict[str, object] | None:
    """The JSON document an agent mode printed last, if it ran to success."""
    if not result.ok:
        return None
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    except (ValueError, IndexError):
        return None


def openssh_options(fleet: Fleet, node: Node) -> list[str]:
    """The same trust settings for OpenSSH-based tools (rsync, pdsh): keys checked, no prompts."""
    options = [
        "-p", str(node.port),
        "-l", node.user,
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={' '.join(fleet.ssh.known_hosts_files()) or fleet.ssh.known_hosts}",
        "-o", f"ConnectTimeout={max(1, int(fleet.ssh.connect_timeout))}",
    ]
    keys = client_keys(node, fleet.ssh) if node.identity_file else None
    for key in keys or []:
        options += ["-i", key]
    if keys:
        options += ["-o", "IdentitiesOnly=yes"]
    if node.jump is not None:
        jump_user = node.jump.user or node.user
        options += ["-J", f"{jump_user}@{node.jump.host}:{node.jump.port}"]
    return options


def openssh_command(fleet: Fleet, node: Node) -> str:
    return shlex.join(["ssh", *openssh_options(fleet, node)])
