"""`trainfleet pull`: a path of the project's (or a job's) directory on the nodes, back
to this machine by rsync over the session's connections (host keys pinned as always).
A second pull of the same path sends only what changed. (rsync's `--partial` is passed,
but a pull interrupted by Ctrl-C does not resume yet: bench/pull.py measures it, and the
next pull after one has failed with rsync's code 12 here; run it again.)"""

from __future__ import annotations

import asyncio
import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainfleet.agent.protocol import FactSection, FactsReply
from trainfleet.agent.records import job_path
from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet, Node
from trainfleet.ops.common import facts_request
from trainfleet.ops.sync import Progress, _rsync_node
from trainfleet.results import FleetResult, NodeResult, fold_nodes
from trainfleet.transport.session import FleetSession


JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class PullPlan:
    """Where a pull reads on the nodes and writes here."""

    remote: str
    """The path on each node, relative to the workdir (the project's or the job's directory)."""
    relative: str
    """The path as given, relative to that directory."""
    local: dict[str, Path]
    """node -> where its copy lands here."""

    def lines(self, fleet: Fleet) -> list[str]:
        return [f"[{node}] {fleet.workdir.rstrip('/')}/{self.remote} -> {path}" for node, path in self.local.items()]


def clean_path(path: str) -> str:
    """A path under the directory it is relative to; refused in one line otherwise."""
    parts = [p for p in path.strip().split("/") if p not in ("", ".")]
    if path.startswith(("/", "~")) or ".." in parts or not path.strip():
        raise UsageError(f"pull {path!r}: give a path inside the project's directory on the nodes (or the job's, "
                         f"with --job)", fix="e.g. `trainfleet pull checkpoints/`, or `trainfleet pull --job JOB .` "
                                             "for the job's records; no leading / or ~, no `..`")
    return "/".join(parts)


def plan_pull(fleet: Fleet, nodes: Sequence[Node], path: str, *, project: str, job_id: str,
              destination: Path) -> PullPlan:
    """Pure: one node's copy lands at DESTINATION/PATH, several nodes' at DESTINATION/NODE/PATH
    (each node wrote its own)."""
    relative = clean_path(path)
    if job_id and not JOB_ID.match(job_id):
        raise UsageError(f"--job {job_id!r} is not a job id", fix="`trainfleet status` lists the fleet's jobs")
    base = job_path("", job_id).lstrip("/") if job_id else project
    remote = f"{base}/{relative}" if relative else base
    named = relative or posixpath.basename(base)  # ".": the whole directory, under its own name
    local = {n.name: (destination / named if len(nodes) == 1 else destination / n.name / named) for n in nodes}
    return PullPlan(remote=remote, relative=named, local=local)


def rsync_pull_argv(remote_shell: str, node: Node, fleet: Fleet, remote: str, local: Path) -> list[str]:
    # The last component is copied into the local parent: a directory arrives whole, a file as itself.
    source = f"{fleet.workdir.rstrip('/')}/{remote}".rstrip("/")
    return ["rsync", "--archive", "--compress", "--partial", "--info=progress2", "--rsh", remote_shell,
            f"{node.name}:{source}", f"{local.parent}/"]


async def pull(fleet: Fleet, nodes: Sequence[Node], plan: PullPlan, progress: Progress | None = None) -> FleetResult:
    async with await FleetSession.open(fleet, nodes) as session:
        session.unreachable.require("cannot pull", fleet)
        replies = await session.call_all(facts_request(fleet, [FactSection.FILES], files=[plan.remote]), timeout=30)
        replies.require("cannot pull", fleet)
        answers: dict[str, FactsReply] = replies.answers
        lacking = [n for n, a in answers.items() if not a.files.get(plan.remote)]
        if lacking:
            raise UsageError(f"{fleet.workdir.rstrip('/')}/{plan.remote}: no such file or directory on "
                             f"{fold_nodes(lacking)}",
                             fix="check the path (relative to the project's directory there, or the job's with "
                                 "--job); `trainfleet exec -n NODE -- ls DIR` lists what is there")
        limit = asyncio.Semaphore(fleet.ssh.fanout)
        shell = await session.remote_shell()

        async def one(node: Node) -> NodeResult:
            local = plan.local[node.name]
            local.parent.mkdir(parents=True, exist_ok=True)
            async with limit:
                return await _rsync_node(rsync_pull_argv(shell, node, fleet, plan.remote, local), node.name, progress,
                                         session)

        result = FleetResult(tuple(await asyncio.gather(*(one(n) for n in session.nodes))))
    result.require(f"pull of {shlex.quote(posixpath.basename(plan.remote))} failed", fleet)
    return result
