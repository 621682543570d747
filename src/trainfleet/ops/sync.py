"""Putting code on every node: real rsync over the fleet's verified SSH settings."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import time
from pathlib import Path

from trainfleet.errors import FleetError, UsageError
from trainfleet.fleet.model import Fleet, Node
from trainfleet.results import FleetResult, NodeResult
from trainfleet.transport.session import gather_bounded
from trainfleet.transport.ssh import openssh_command

# Never worth shipping: VCS data, caches, and trainfleet's own run records.
DEFAULT_EXCLUDES = (".git/", "__pycache__/", "*.pyc", ".trainfleet/", ".venv/", "trainfleet-runs/")


def rsync_argv(fleet: Fleet, node: Node, source: Path, destination: str) -> list[str]:
    argv = [
        "rsync", "--archive", "--compress", "--mkpath", "--partial",
        "--rsh", openssh_command(fleet, node),
    ]
    argv += [f"--exclude={pattern}" for pattern in DEFAULT_EXCLUDES]
    if (source / ".gitignore").is_file():
        argv.append("--filter=:- .gitignore")
    target = destination.rstrip("/") + "/"
    argv += [str(source).rstrip("/") + "/", f"{node.user}@{_rsync_host(node.host)}:{target}"]
    return argv


def _rsync_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _sync_node(fleet: Fleet, node: Node, source: Path, destination: str) -> NodeResult:
    argv = rsync_argv(fleet, node, source, destination)
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    stderr = err.decode(errors="replace")
    error = None
    if process.returncode != 0:
        last = stderr.strip().splitlines()
        error = f"rsync exited with status {process.returncode}: {last[-1] if last else 'no output'}"
    return NodeResult(node=node.name, command=shlex.join(argv[:1] + argv[-2:]), exit_status=process.returncode,
                      stdout=out.decode(errors="replace"), stderr=stderr, error=error,
                      seconds=time.monotonic() - started)


async def sync_code(fleet: Fleet, nodes: tuple[Node, ...], source: Path, destination: str | None = None) -> FleetResult:
    """Copy `source` (a directory) into the workdir of every node; never deletes there."""
    if shutil.which("rsync") is None:
        raise UsageError("rsync is not installed on this machine", fix="apt-get install rsync")
    if not source.is_dir():
        raise UsageError(f"{source}: not a directory to sync")
    target = destination or fleet.workdir
    return await gather_bounded([lambda n=n: _sync_node(fleet, n, source, target) for n in nodes],
                                fleet.ssh.fanout)


def refuse_unsafe_source(source: Path) -> Path:
    resolved = source.resolve()
    if resolved == Path("/") or resolved == Path.home().resolve():
        raise UsageError(f"refusing to sync {resolved} to every node",
                         fix="run from your project directory, or pass --sync-dir DIR")
    return resolved


async def sync_project(fleet: Fleet, nodes: tuple[Node, ...], source: Path) -> FleetResult:
    """`trainfleet sync` and `run`'s sync: the directory into every node's workdir, or a FleetError."""
    resolved = refuse_unsafe_source(source)
    result = await sync_code(fleet, nodes, resolved)
    if not result.ok:
        raise FleetError(f"sync of {resolved} failed", result)
    return result
