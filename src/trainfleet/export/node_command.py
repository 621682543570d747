"""What the exports share: a launcher's plan rendered for one node of a scheduler's
allocation, as a shell command in which the scheduler's variables expand on the node."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import VARIABLE, Placement
from trainfleet.job.plan import LaunchPlan, NodeLaunch
from trainfleet.job.spec import JobSpec
from trainfleet.launchers import check_options, get_launcher


def scheduler_quote(variables: tuple[str, ...]) -> Callable[[str], str]:
    """Quotes a word for a shell, except the scheduler's `${VARIABLE}`s, which expand there."""
    def quote(word: str) -> str:
        parts, last = [], 0
        for match in VARIABLE.finditer(word):
            if match.group(1) not in variables:
                continue
            if match.start() > last:
                parts.append(shlex.quote(word[last:match.start()]))
            parts.append(f'"${{{match.group(1)}}}"')
            last = match.end()
        if last < len(word) or not parts:
            parts.append(shlex.quote(word[last:]))
        return "".join(parts)
    return quote


def scheduled_plan(fleet: Fleet, job: JobSpec, placement: Placement) -> LaunchPlan:
    """The launcher's plan for the scheduler's placement: one launch that stands for every node."""
    check_options(job)
    plan = get_launcher(job.launcher).plan(fleet, job, placement)
    assert len(plan.nodes) == 1, "a scheduler's placement has one place"
    return plan


def gpu_check(node: str) -> str:
    """Sets TF_NO_GPU on the node from the GPUs it sees, and says so when there are none:
    a launcher told to use the CPU then trains there, loudly, never silently alone."""
    return ('if nvidia-smi -L >/dev/null 2>&1; then TF_NO_GPU=0; else TF_NO_GPU=1; '
            f'echo "trainfleet: {node}: no GPU visible; training on the CPU" >&2; fi\n')


def node_command(launch: NodeLaunch, placement: Placement) -> str:
    """`cd DIR && env NAME=value ... argv`, the scheduler's variables left to expand (and
    before it, the GPU check where the command reads its outcome)."""
    line = launch.shell_line(scheduler_quote(placement.variables))
    return (gpu_check(placement.places[0].node) if placement.no_gpu and placement.no_gpu in line else "") + line
