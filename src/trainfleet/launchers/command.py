"""Any command, once per node, for launchers trainfleet does not know.

The command finds its peers in the environment: NODE_RANK, NNODES, NPROC_PER_NODE,
MASTER_ADDR, MASTER_PORT (node 0's training address and a free port there) and the
TRAINFLEET_* variables. A single argument with spaces runs through `sh -c`; a first word
that is a `.py` script runs under the fleet's Python.
"""

from __future__ import annotations

import shlex
from typing import ClassVar

from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import Placement
from trainfleet.job.plan import LaunchPlan
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.launchers.base import LauncherOption, base_env, endpoint, node_launch, rendezvous_env


def command_argv(job: JobSpec, python: str) -> list[str]:
    """The command as given; a first word that is a Python script (`deepy.py train.py`)
    runs under the fleet's Python, as `python deepy.py` would: it need not be executable."""
    if not job.args and any(ch.isspace() for ch in job.entrypoint):
        first = job.entrypoint.split()[0]
        line = f"{shlex.quote(python)} {job.entrypoint.strip()}" if first.endswith(".py") else job.entrypoint
        return ["sh", "-c", line]
    return ([python] if job.entrypoint.endswith(".py") else []) + [job.entrypoint, *job.args]


class Command:
    name: ClassVar[str] = "command"
    options: ClassVar[tuple[LauncherOption, ...]] = ()
    script_entry: ClassVar[bool] = False
    needs_gpu_facts: ClassVar[bool] = False

    def plan(self, fleet: Fleet, job: JobSpec, placement: Placement) -> LaunchPlan:
        validate_job(job)
        launches = [node_launch(fleet, place, placement, command_argv(job, fleet.python),
                                {**base_env(fleet, job, place, placement), **rendezvous_env(job, place, placement)})
                    for place in placement.places]
        master = endpoint(placement.head_address, placement.port)
        return LaunchPlan(job_id=job.job_id, launcher=self.name, rendezvous=f"MASTER_ADDR:MASTER_PORT={master}",
                          world_size=placement.world_size, nodes=tuple(launches))
