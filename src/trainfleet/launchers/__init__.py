"""Launchers, by name: each renders a job's `LaunchPlan` for a placement. A new launcher
is one file in this package and one line in `_LAUNCHERS`."""

from __future__ import annotations

import importlib

from dataclasses import replace

from trainfleet.agent.protocol import RESTART_VARIABLE
from trainfleet.errors import SpecError, UsageError
from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import LaunchFacts, facts_placement
from trainfleet.job.plan import LaunchPlan
from trainfleet.job.spec import JobSpec
from trainfleet.launchers.base import Launcher, LauncherOption

_LAUNCHERS = {
    "torchrun": ("trainfleet.launchers.torchrun", "Torchrun"),
    "deepspeed": ("trainfleet.launchers.deepspeed", "DeepSpeed"),
    "accelerate": ("trainfleet.launchers.accelerate", "Accelerate"),
    "command": ("trainfleet.launchers.command", "Command"),
    "head": ("trainfleet.launchers.head", "Head"),
    "mpirun": ("trainfleet.launchers.mpirun", "Mpirun"),
}


def launcher_names() -> tuple[str, ...]:
    return tuple(_LAUNCHERS)


def get_launcher(name: str) -> Launcher:
    """The launcher called `name` (its module imported only when asked for)."""
    if name not in _LAUNCHERS:
        raise UsageError(f"unknown launcher {name!r}", fix=f"use one of: {', '.join(launcher_names())}")
    module, attribute = _LAUNCHERS[name]
    return getattr(importlib.import_module(module), attribute)()  # type: ignore[no-any-return]


def fleet_launcher(fleet: Fleet, name: str | None = None) -> str:
    """The launcher a job uses: `name` (the command line's), else the fleet file's
    `launcher:`, which is checked here, where the registry is (fleet/ sits below launchers/)."""
    chosen = name or fleet.launcher
    if chosen not in _LAUNCHERS:
        where = f"{fleet.source}: launcher: " if not name else ""
        raise SpecError(f"{where}unknown launcher {chosen!r}", fix=f"use one of: {', '.join(launcher_names())}")
    return chosen


def launcher_options() -> dict[str, tuple[str, LauncherOption]]:
    """Every launcher's own options, by name: (the launcher, the option)."""
    return {o.name: (name, o) for name in launcher_names() for o in get_launcher(name).options}


def check_options(job: JobSpec) -> None:
    """An option given for another launcher than the job's is a mistake, said as one."""
    owners = launcher_options()
    for name in job.options:
        owner = owners[name][0] if name in owners else None
        if owner != job.launcher:
            raise UsageError(f"--{name} is an option of --launcher {owner}" if owner else f"unknown option --{name}",
                             fix=f"add --launcher {owner}, or leave --{name} out" if owner else
                             "see `trainfleet run --help`")


def plan_job(fleet: Fleet, job: JobSpec, facts: LaunchFacts, cwd: str) -> LaunchPlan:
    """The job's plan for the fleet's nodes, as they were found."""
    check_options(job)
    placement = facts_placement(fleet, job, facts, cwd)
    if placement.spares and job.launcher != "torchrun":
        spares = ", ".join(p.node for p in placement.spares)
        raise UsageError(f"{spares}: a spare (`spare: true`) takes a lost node's place through torchrun's "
                         f"rendezvous, which --launcher {job.launcher} does not have",
                         fix="use --launcher torchrun, or leave the spares out with -n")
    plan = get_launcher(job.launcher).plan(fleet, job, placement)
    if job.max_restarts and job.launcher != "torchrun":
        # torchrun restarts on its own; the others are started again whole, on the same
        # nodes, by the nodes' supervisors; each rank is told which start it is.
        nodes = tuple(replace(n, env=tuple(sorted((*n.env, (RESTART_VARIABLE, "0"))))) for n in plan.nodes)
        plan = replace(plan, nodes=nodes, restarts=job.max_restarts)
    return plan


__all__ = ["LaunchFacts", "Launcher", "LauncherOption", "check_options", "get_launcher", "launcher_names",
           "launcher_options", "plan_job"]
