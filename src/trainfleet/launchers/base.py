"""What every launcher shares: the seam, its options, and the helpers every plan uses.

A launcher is a small pure object: from a launcher-neutral `JobSpec`, the `Fleet` and a
`Placement` (the facts gathered from the nodes, or a scheduler's variables) it renders,
for every node, the exact argv, working directory and environment (`LaunchPlan`). It
does no I/O; `--dry-run` prints its plan, `export` wraps it for a scheduler, and golden
tests compare it. Supervision runs any plan the same way.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

from trainfleet.agent.procs import JOB_VARIABLE
from trainfleet.agent.protocol import NODE_KEY_VARIABLE
from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import Place, Placement
from trainfleet.job.plan import LaunchPlan, NodeLaunch, job_path
from trainfleet.job.spec import JobSpec


@dataclass(frozen=True)
class LauncherOption:
    """A command-line option that belongs to one launcher (`--include` to deepspeed)."""

    name: str
    """`include` for `--include`; the key in `JobSpec.options`."""
    help: str
    metavar: str = "VALUE"
    type: type = str


class Launcher(Protocol):
    name: ClassVar[str]
    options: ClassVar[tuple[LauncherOption, ...]]
    script_entry: ClassVar[bool]
    """The entrypoint is a Python script (or module) of the project, not a command line."""
    needs_gpu_facts: ClassVar[bool]
    """Planning depends on whether the nodes have GPUs."""

    def plan(self, fleet: Fleet, job: JobSpec, placement: Placement) -> LaunchPlan: ...


def endpoint(address: str, port: str) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def option(job: JobSpec, name: str, default: object = "") -> object:
    return job.options.get(name, default)


def refuse_scheduler(placement: Placement, launcher: str, why: str) -> None:
    """For launchers that need every node's facts: a scheduler cannot run them as they are."""
    if placement.for_scheduler:
        raise UsageError(f"--launcher {launcher} cannot be exported to {placement.scheduler}: {why}",
                         fix="use torchrun, deepspeed, accelerate or command")


def same_nproc(placement: Placement, launcher: str) -> int:
    """The processes per node, for launchers that run as many on every node."""
    counts = {p.nproc for p in placement.places}
    if len(counts) > 1:
        raise UsageError(f"{launcher} runs the same number of processes on every node; the fleet's slots differ "
                         f"({', '.join(f'{p.node}={p.nproc}' for p in placement.places)})",
                         fix="pass --nproc-per-node N")
    return counts.pop()


def base_env(fleet: Fleet, job: JobSpec, place: Place, placement: Placement) -> dict[str, str]:
    """Every rank's environment, before the launcher's own variables: one place decides it."""
    env: dict[str, str] = {
        "PYTHONUNBUFFERED": "1",
        "TRAINFLEET_NODE": place.node,
        "TRAINFLEET_NODE_RANK": place.rank,
        "TRAINFLEET_NNODES": str(placement.nnodes),
    }
    if place.interface:
        env["GLOO_SOCKET_IFNAME"] = place.interface
        env["NCCL_SOCKET_IFNAME"] = place.interface
    if fleet.secrets:
        env["TRAINFLEET_SECRET_NAMES"] = ",".join(fleet.secrets)
    # NCCL's warnings name the NIC and the peer when a link fails (the root cause reads them);
    # quiet otherwise. The fleet or the job may say otherwise.
    env["NCCL_DEBUG"] = "WARN"
    env.update(fleet.env)
    env.update(job.env)
    env.update(supervised_env(fleet, job, placement))  # last: how the job's processes are found and ended
    return env


def supervised_env(fleet: Fleet, job: JobSpec, placement: Placement) -> dict[str, str]:
    """What a job that trainfleet's node supervisors run (not a scheduler) gives every
    process: its id (how the node finds and ends all of them) and its directory."""
    if placement.for_scheduler:
        return {}
    return {JOB_VARIABLE: job.job_id, "TRAINFLEET_JOB_DIR": job_path(fleet.workdir, job.job_id)}


def with_site(launch: NodeLaunch, fleet: Fleet, job: JobSpec) -> NodeLaunch:
    """trainfleet's sitecustomize first on the path of every Python the job starts."""
    return replace(launch, site=True, python_path=(f"{job_path(fleet.workdir, job.job_id)}/site",))


def wrapped_entry(job: JobSpec, placement: Placement, workdir: str) -> list[str]:
    """The rank wrapper (where trainfleet runs the ranks), then the user's script (or
    `-m module`), then its arguments."""
    entry = ["-m", job.entrypoint] if job.module else [job.entrypoint]
    wrapper = [f"{job_path(workdir, job.job_id)}/rankwrap.py"] if placement.wrap_ranks else []
    return [*wrapper, *entry, *job.args]


def rendezvous_env(job: JobSpec, place: Place, placement: Placement) -> dict[str, str]:
    """What launchers we do not know (and people's own scripts) read to find each other."""
    return {
        "MASTER_ADDR": placement.head_address,
        "MASTER_PORT": placement.port,
        "NODE_RANK": place.rank,
        "NNODES": str(placement.nnodes),
        "NPROC_PER_NODE": str(place.nproc),
        "TRAINFLEET_WORLD_SIZE": str(placement.world_size),
    }


def python_path(fleet: Fleet) -> tuple[str, ...]:
    """The fleet's Python's directory, when `python:` is a path: its pip, deepspeed and
    accelerate are found by name, as in the shell where it was installed."""
    folder = posixpath.dirname(fleet.python)
    return (folder,) if folder.startswith(("/", "~/")) else ()


def node_launch(fleet: Fleet, place: Place, placement: Placement, argv: Sequence[str],
                env: Mapping[str, str]) -> NodeLaunch:
    rank = int(place.rank) if place.rank.isdigit() else -1  # -1: every node of a scheduler's allocation
    filled = () if placement.for_scheduler else (NODE_KEY_VARIABLE, *fleet.secrets)
    return NodeLaunch(node=place.node, host=place.host, node_rank=rank, nproc=place.nproc, cwd=placement.cwd,
                      argv=tuple(argv), env=tuple(sorted(env.items())), path=python_path(fleet), filled=filled)
