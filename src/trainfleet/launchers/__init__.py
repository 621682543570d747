"""Launchers, by name: each renders a job's `LaunchPlan` for a placement. A new launcher
is one file in this package and one line in `_LAUNCHERS`."""

from __future__ import annotations

import importlib
from dataclasses import replace
from itertools import combinations

from trainfleet.agent.protocol import RESTART_VARIABLE
from trainfleet.errors import SpecError, UsageError
from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import LaunchFacts, Placement, facts_placement
from trainfleet.job.plan import LaunchPlan, NodeLaunch, Replan
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


COMMON_OPTIONS = ("spares",)
"""Options every launcher takes (each refuses what it cannot do with them when it plans)."""

REPLANNED = ("deepspeed", "accelerate", "command")
"""Launchers started on every node that cannot go on without a node by themselves: with
--max-restarts, the job is planned again ahead of time for each loss it can survive."""

REPLAN_LIMIT = 256
"""Sets of lost nodes planned ahead at most (beyond one loss each): what each node is
sent stays small on a large fleet, where a second loss then ends the job."""


def check_options(job: JobSpec) -> None:
    """An option given for another launcher than the job's is a mistake, said as one."""
    owners = launcher_options()
    for name in job.options:
        if name in COMMON_OPTIONS:
            continue
        owner = owners[name][0] if name in owners else None
        if owner != job.launcher:
            raise UsageError(f"--{name} is an option of --launcher {owner}" if owner else f"unknown option --{name}",
                             fix=f"add --launcher {owner}, or leave --{name} out" if owner else
                             "see `trainfleet run --help`")


def plan_job(fleet: Fleet, job: JobSpec, facts: LaunchFacts, cwd: str) -> LaunchPlan:
    """The job's plan for the fleet's nodes, as they were found."""
    check_options(job)
    placement = facts_placement(fleet, job, facts, cwd)
    if placement.spares and job.launcher not in ("torchrun", *REPLANNED):
        spares = ", ".join(p.node for p in placement.spares)
        raise UsageError(f"{spares}: a spare (`spare: true`) cannot take a lost node's place in a job of --launcher "
                         f"{job.launcher}, whose runner on node 0 starts every node's processes itself",
                         fix="use torchrun, deepspeed, accelerate or command, or leave the spares out with -n")
    if placement.spares and not job.max_restarts and job.launcher != "torchrun":
        spares = ", ".join(p.node for p in placement.spares)
        raise UsageError(f"a spare ({spares}) joins the job when it restarts: it needs --max-restarts N (N >= 1)",
                         fix="add --max-restarts 1 (or more), or leave the spares out with -n")
    plan = get_launcher(job.launcher).plan(fleet, job, placement)
    if job.max_restarts and job.launcher != "torchrun":
        # torchrun restarts on its own; the others are started again whole by the nodes'
        # supervisors (on the same nodes, or planned again without a lost one); each rank is
        # told which start it is.
        replans = plan_replans(fleet, job, facts, cwd, placement) if job.launcher in REPLANNED else ()
        spares = tuple(_spare_launch(p.node, replans) for p in placement.spares)
        nodes = tuple(_restartable(n) for n in plan.nodes) + spares
        plan = replace(plan, nodes=nodes, restarts=job.max_restarts, spares=tuple(n.node for n in spares),
                       replans=replans, successor=placement.places[1].node if replans and len(placement.places) > 1
                       else "")
    return plan


def _restartable(launch: NodeLaunch) -> NodeLaunch:
    return replace(launch, env=tuple(sorted((*launch.env, (RESTART_VARIABLE, "0")))))


def _spare_launch(node: str, replans: tuple[Replan, ...]) -> NodeLaunch:
    """A spare's part: waiting, then what it runs in the smaller plan it is first in
    (--dry-run shows that one; which node it replaces decides its command)."""
    for replan in sorted(replans, key=lambda r: len(r.lost)):
        for launch in replan.nodes:
            if launch.node == node:
                return replace(launch, spare=True)
    raise UsageError(f"spare {node} would never take a place (--max-restarts is lower than the spares before it)",
                     fix="raise --max-restarts, or leave it out with -n")


def plan_replans(fleet: Fleet, job: JobSpec, facts: LaunchFacts, cwd: str, placement: Placement) -> tuple[Replan, ...]:
    """The job on the nodes left for every set of lost nodes it can survive, one loss
    each, then two, ... up to --max-restarts (while REPLAN_LIMIT allows): the nodes left
    keep their order, and spares not lost fill the lost nodes' places, ranked last. Where
    node 0 is lost, the rendezvous moves to the next node, on the port asked for there."""
    training = [p.node for p in placement.places]
    spares = [p.node for p in placement.spares]
    candidates = training + spares
    sets: list[tuple[str, ...]] = []
    for size in range(1, min(job.max_restarts, len(candidates) - 1) + 1):
        more = [tuple(sorted(c)) for c in combinations(candidates, size)]
        if size > 1 and len(sets) + len(more) > REPLAN_LIMIT:
            break
        sets += more
    launcher = get_launcher(job.launcher)
    unspared = replace(job, options={k: v for k, v in job.options.items() if k != "spares"})
    replans = []
    for lost in sets:
        left = [n for n in training if n not in lost]
        if not left or training[:2] == [n for n in training[:2] if n in lost]:
            continue  # (the job's mesh moves from node 0 to the next node once, not twice)
        filling = [s for s in spares if s not in lost][:len(training) - len(left)]
        nodes = tuple(replace(fleet.node(n), spare=False) for n in left + filling)
        moved = nodes[0].name != fleet.head.name
        port = facts.successor_ports[0] if moved and facts.successor_ports else facts.rdzv_port
        smaller = replace(fleet, nodes=nodes)
        try:
            plan = launcher.plan(smaller, unspared, facts_placement(smaller, unspared, replace(facts, rdzv_port=port),
                                                                     cwd))
        except UsageError:
            continue  # (--include naming a lost node, say): that loss ends the job
        replans.append(Replan(lost=lost, nodes=tuple(_restartable(n) for n in plan.nodes),
                              rendezvous=plan.rendezvous, world_size=plan.world_size))
    return tuple(replans)


__all__ = ["LaunchFacts", "Launcher", "LauncherOption", "check_options", "get_launcher", "launcher_names",
           "launcher_options", "plan_job"]
