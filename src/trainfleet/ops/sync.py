"""`trainfleet sync`: a project's code into its own directory on every node.

Each local directory gets its own directory under the fleet's workdir, named after it
and a hash of where it is (two checkouts cannot collide). rsync copies it over the
session's SSH connections (`transport/relay.py` is its remote shell), honouring
.gitignore and the exclude lists, never deleting unless asked. A manifest of what was
synced goes with it; at every launch the nodes check their copy against it, and a node
whose code differs (edited there, or synced at another time) blocks the launch.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import re
import shlex
import shutil
import socket
import stat
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainfleet.agent.project import file_digest
from trainfleet.agent.protocol import ManifestRequest, ProjectState, SyncFile, SyncFilesRequest
from trainfleet.errors import TrainfleetError, UsageError
from trainfleet.fleet.model import Fleet, Node
from trainfleet.results import FleetResult, NodeResult, fold_nodes
from trainfleet.transport.session import FleetSession

# Never worth shipping: VCS data, caches, environments and trainfleet's own records.
DEFAULT_EXCLUDES = (".git/", "__pycache__/", "*.pyc", ".trainfleet/", ".venv/", "trainfleet-runs/")
HASHED_LIMIT = 64 * 1024 * 1024
"""Bigger files are checked by size only at each launch (rsync itself compares size and time)."""
Progress = Callable[[str, int], None]
"""(node, percent) as rsync reports it."""


@dataclass(frozen=True)
class Project:
    source: Path
    """The local directory."""
    name: str
    """Its directory under the workdir on the nodes."""

    def remote(self, fleet: Fleet) -> str:
        return f"{fleet.workdir.rstrip('/')}/{self.name}"


@dataclass(frozen=True)
class Manifest:
    digest: str
    files: dict[str, list[object]]
    """name -> [size, sha256 or None], as recorded on the nodes."""
    modes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """name -> (permission bits, mtime in ns) of each file here."""
    dirs: tuple[str, ...] = ()
    others: int = 0
    """Entries rsync sends that are neither files nor directories (symlinks, devices)."""

    @property
    def plain(self) -> bool:
        """Only files small enough to hash and directories: the agent can take it."""
        return not self.others and all(digest is not None for _, digest in self.files.values())


def project_for(source: Path) -> Project:
    """The project a local directory is: its name on the nodes is stable for this
    directory on this machine, and differs for any other checkout."""
    resolved = source.resolve()
    if resolved == Path("/") or resolved == Path.home().resolve():
        raise UsageError(f"refusing to sync {resolved} to every node",
                         fix="run from your project directory, or pass --sync-dir DIR")
    where = f"{socket.gethostname()}:{resolved}"
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", resolved.name)[:40] or "project"
    return Project(source=resolved, name=f"{label}-{hashlib.sha256(where.encode()).hexdigest()[:8]}")


def filters(source: Path, excludes: Iterable[str]) -> list[str]:
    found = [f"--exclude={pattern}" for pattern in (*DEFAULT_EXCLUDES, *excludes)]
    return found + ["--filter=:- .gitignore"]  # each directory's .gitignore, as git reads them


def manifest(source: Path, excludes: Iterable[str]) -> Manifest:
    """What rsync sends (its own file list, with the same filters), hashed here."""
    listing = _rsync(["--recursive", "--list-only", *filters(source, excludes), f"{source}/"])
    files: dict[str, list[object]] = {}
    modes: dict[str, tuple[int, int]] = {}
    dirs: list[str] = []
    others = 0
    for line in listing.splitlines():
        fields = line.split(None, 4)
        if len(fields) != 5:
            continue
        name = fields[4]
        if fields[0].startswith("-"):
            seen = (source / name).stat()
            files[name] = [seen.st_size, file_digest(str(source / name)) if seen.st_size <= HASHED_LIMIT else None]
            modes[name] = (stat.S_IMODE(seen.st_mode), seen.st_mtime_ns)
        elif fields[0].startswith("d"):
            if name != ".":
                dirs.append(name)
        else:
            others += 1
    text = "\n".join(f"{name} {size} {digest}" for name, (size, digest) in sorted(files.items()))
    return Manifest(digest=hashlib.sha256(text.encode()).hexdigest()[:16], files=files, modes=modes,
                    dirs=tuple(dirs), others=others)


def _rsync(args: list[str]) -> str:
    import subprocess

    if shutil.which("rsync") is None:
        raise UsageError("rsync is not installed on this machine", fix="apt-get install rsync")
    done = subprocess.run(["rsync", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise TrainfleetError(f"rsync failed: {done.stderr.strip()}")
    return done.stdout


def rsync_argv(remote_shell: str, node: Node, source: Path, destination: str, excludes: Iterable[str],
               delete: bool) -> list[str]:
    argv = ["rsync", "--archive", "--compress", "--mkpath", "--partial", "--info=progress2", "--rsh", remote_shell,
            *filters(source, excludes)]
    if delete:
        argv.append("--delete")  # excluded files (the node's .trainfleet/ records) are kept
    return argv + [f"{source}/", f"{node.name}:{destination.rstrip('/')}/"]


_PERCENT = re.compile(rb"(\d+)%")


async def _rsync_node(argv: list[str], node: str, progress: Progress | None,
                     session: FleetSession | None = None) -> NodeResult:
    """One rsync; with `session` (whose relay carries it), what the node's side wrote to
    stderr is taken from the relay when rsync itself showed nothing (it may end, and end
    its remote shell, before that arrives)."""
    if session is not None:
        session.relayed_errors.pop(node, None)
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None

    async def watch() -> None:
        while chunk := await process.stdout.read(4096):  # type: ignore[union-attr]
            found = _PERCENT.findall(chunk)
            if found and progress is not None:
                progress(node, int(found[-1]))

    _, err = await asyncio.gather(watch(), process.stderr.read())
    code = await process.wait()
    stderr = err.decode(errors="replace")
    if code != 0 and not stderr.strip() and session is not None:
        stderr = session.relayed_errors.get(node, b"").decode(errors="replace")
    error = None
    if code != 0:
        last = stderr.strip().splitlines()
        error = f"rsync exited with status {code}: {last[-1] if last else 'no output'}"
    return NodeResult(node=node, command=shlex.join(argv[:1] + argv[-2:]), exit_status=code, stderr=stderr,
                      error=error, seconds=time.monotonic() - started)


INLINE_BYTES = 4 * 1024 * 1024
"""A node that needs at most this much gets it over its agent's channel; more goes by rsync."""


async def _over_agent(session: FleetSession, node: Node, project: Project, request: SyncFilesRequest,
                      packed: dict[str, str]) -> NodeResult | None:
    """Sync one node over the channel its agent already has: the node says which files it
    lacks, and gets those, compressed. No process starts on either side (each rsync
    costs a login shell on the node, whose start-up files are often most of the time).
    `packed`: files already compressed for another node (each is read and compressed once).
    None: too much to send this way (rsync does it, with its delta transfer)."""
    from trainfleet.transport.agent_client import AgentError, AgentFailed

    started = time.monotonic()
    command = f"sync {len(request.files)} file(s) over the agent"
    try:
        reply = await session.call(node.name, request, timeout=60)
        if reply.needs:
            if sum(request.files[name].size for name in reply.needs) > INLINE_BYTES:
                return None
            for name in reply.needs:
                if name not in packed:
                    packed[name] = base64.b64encode(zlib.compress((project.source / name).read_bytes(), 6)).decode()
            reply = await session.call(node.name, dataclasses.replace(
                request, dirs=[], contents={name: packed[name] for name in reply.needs}), timeout=120)
    except (AgentFailed, AgentError) as exc:
        return NodeResult(node=node.name, command=command, exit_status=None, error=str(exc),
                          seconds=time.monotonic() - started)
    except OSError as exc:  # a file changed here while it was being sent
        return NodeResult(node=node.name, command=command, exit_status=None, error=f"cannot read {exc.filename}: "
                          f"{exc.strerror}", seconds=time.monotonic() - started)
    error = None
    if reply.needs:
        error = f"{', '.join(reply.needs[:3])} still differ{'s' if len(reply.needs) == 1 else ''} after being sent"
    return NodeResult(node=node.name, command=command, exit_status=1 if error else 0, error=error,
                      seconds=time.monotonic() - started)


async def sync(session: FleetSession, project: Project, *, excludes: Sequence[str] = (), delete: bool = False,
               progress: Progress | None = None) -> tuple[FleetResult, Manifest]:
    """Copy the project to every node of the session and record its manifest there."""
    fleet = session.fleet
    if not project.source.is_dir():
        raise UsageError(f"{project.source}: not a directory to sync")
    every = (*fleet.sync_exclude, *excludes)
    listed = manifest(project.source, every)
    destination = project.remote(fleet)
    limit = asyncio.Semaphore(fleet.ssh.fanout)
    # --delete and what only rsync carries (symlinks, files too big to hash) go by rsync.
    inline = None
    if listed.plain and not delete:
        files = {name: SyncFile(size=int(size), digest=str(digest),  # type: ignore[call-overload]
                                mode=listed.modes[name][0], mtime_ns=listed.modes[name][1])
                 for name, (size, digest) in listed.files.items()}
        inline = SyncFilesRequest(workdir=fleet.workdir, project=project.name, digest=listed.digest, files=files,
                                  dirs=list(listed.dirs))
    packed: dict[str, str] = {}

    async def one(node: Node) -> NodeResult:
        if inline is not None:
            result = await _over_agent(session, node, project, inline, packed)
            if result is not None:
                if progress is not None and result.ok:
                    progress(node.name, 100)
                return result
        async with limit:
            result = await _rsync_node(rsync_argv(await session.remote_shell(), node, project.source, destination,
                                                  every, delete), node.name, progress, session)
        if result.ok:
            await session.call(node.name, ManifestRequest(workdir=fleet.workdir, project=project.name,
                                                          digest=listed.digest, files=listed.files), timeout=60)
        return result

    results = FleetResult(tuple(await asyncio.gather(*(one(n) for n in session.nodes))))
    results.require(f"sync of {project.source} failed", fleet)
    return results, listed


async def sync_nodes(fleet: Fleet, nodes: Sequence[Node], project: Project, *, excludes: Sequence[str] = (),
                     delete: bool = False, progress: Progress | None = None) -> tuple[FleetResult, Manifest]:
    """`trainfleet sync`: the project onto these nodes, over a session of its own."""
    
    async with await FleetSession.open(fleet, nodes) as session:
        session.unreachable.require("cannot sync", fleet)
        return await sync(session, project, excludes=excludes, delete=delete, progress=progress)


def check_code(states: Mapping[str, ProjectState | None], project: Project, synced: str | None = None,
               local: str | None = None) -> None:
    """Every node holds the same synced code, unchanged since. `synced`: the digest of a
    sync just made (every node must hold it); `local`: this directory's, to name which
    nodes are the odd ones when they disagree."""
    missing = [n for n, s in states.items() if s is None or not s.exists or s.manifest is None]
    if missing:
        raise TrainfleetError(f"{project.source} has not been synced to {fold_nodes(missing)} "
                              f"(its directory there: {project.name})",
                              fix="run `trainfleet sync`, or `run` without --no-sync")
    edited = {n: s.changed for n, s in states.items() if s is not None and s.changed}
    if edited:
        where = "; ".join(f"{node}: {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}"
                          for node, files in sorted(edited.items()))
        raise TrainfleetError(f"code on the nodes was changed after the last sync ({where})",
                              fix="`trainfleet sync` puts your copy back on every node (or copy the edit into "
                                  "your project first)")
    groups: dict[str, list[str]] = {}
    for node, state in states.items():
        assert state is not None and state.manifest is not None
        groups.setdefault(state.manifest, []).append(node)
    reference = synced or local
    if len(groups) == 1 and (synced is None or synced in groups):
        return
    if reference in groups:
        good, note = groups[reference], " (which matches this directory)"
    else:
        good, note = max(groups.values(), key=len), ""
    odd = [n for nodes in groups.values() if nodes is not good for n in nodes]
    raise TrainfleetError(f"{fold_nodes(odd)} hold{'s' if len(odd) == 1 else ''} different code than "
                          f"{fold_nodes(good)}{note}: synced at another time",
                          fix="run `trainfleet sync` so every node has the same code")


def exec_directories(fleet: Fleet) -> list[str]:
    """Where `exec` runs: the current directory's project once it is synced, else the workdir."""
    here = Path.cwd().resolve()
    if here in (Path("/"), Path.home().resolve()):
        return [fleet.workdir]
    return [project_for(here).remote(fleet), fleet.workdir]
