"""Any command, once per node, for launchers trainfleet does not know.

The command finds its peers in the environment: NODE_RANK, NNODES, NPROC_PER_NODE,
MASTER_ADDR, MASTER_PORT (node 0's training address and a free port there) and the
TRAINFLEET_* variables. A single argument with spaces runs through `sh -c`.
"""

from __future__ import annotations

from typing import ClassVar

from trainfleet.fleet.model import Fleet
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.launchers.base import (LaunchFacts, LaunchPlan, NoRankReport, base_env, endpoint, node_launch, nproc,
                                       rendezvous_env)


def command_argv(job: JobSpec) -> list[str]:
    if not job.args and any(ch.isspace() for ch in job.entrypoint):
        return ["sh", "-c", job.entrypoint]
    return [job.entrypoint, *job.args]


class Command(NoRankReport):
    name: ClassVar[str] = "command"
    wraps_ranks: ClassVar[bool] = False
    needs_gpu_facts: ClassVar[bool] = False

    def plan(self, fleet: Fleet, job: JobSpec, facts: LaunchFacts, cwd: str) -> LaunchPlan:
        validate_job(job)
        launches = []
        for rank, node in enumerate(fleet.nodes):
            env = {**base_env(fleet, job, node, rank, facts), **rendezvous_env(fleet, job, facts, rank)}
            launches.append(node_launch(fleet, node, rank, nproc(job, node), cwd, command_argv(job), env))
        master = endpoint(facts.address(fleet.head), facts.rdzv_port)
        return LaunchPlan(job_id=job.job_id, launcher=self.name, rendezvous=f"MASTER_ADDR:MASTER_PORT={master}",
                          world_size=sum(n.nproc for n in launches), nodes=tuple(launches))
