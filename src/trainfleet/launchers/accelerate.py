"""`accelerate launch` on every node: one machine each, the processes counted across all.

Accelerate's static rendezvous (torchrun's, with the master on node 0's training
address) needs no `is_host` or local address. On nodes without GPUs it must be told to
use the CPU (ACCELERATE_USE_CPU=1): otherwise every process silently trains alone.
"""

from __future__ import annotations

from typing import ClassVar

from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.launchers.base import (LaunchFacts, LaunchPlan, base_env, endpoint, node_launch, nproc,
                                       wrapped_entry)
from trainfleet.launchers.torchrun import Torchrun


class Accelerate(Torchrun):
    """Its ranks are torchrun's workers, so torchrun's failure report applies."""

    name: ClassVar[str] = "accelerate"
    wraps_ranks: ClassVar[bool] = True
    needs_gpu_facts: ClassVar[bool] = True

    def plan(self, fleet: Fleet, job: JobSpec, facts: LaunchFacts, cwd: str) -> LaunchPlan:
        validate_job(job)
        counts = {nproc(job, n) for n in fleet.nodes}
        if len(counts) > 1:
            raise UsageError(f"accelerate runs the same number of processes on every node; the fleet's slots differ "
                             f"({', '.join(f'{n.name}={nproc(job, n)}' for n in fleet.nodes)})",
                             fix="pass --nproc-per-node N")
        per_node = counts.pop()
        total = per_node * len(fleet.nodes)
        master = facts.address(fleet.head)
        cpu_only = bool(facts.gpus) and not any(facts.gpus.get(n.name) for n in fleet.nodes)
        entry = wrapped_entry(job, fleet.workdir)
        launches = []
        for rank, node in enumerate(fleet.nodes):
            env = base_env(fleet, job, node, rank, facts)
            if cpu_only:
                env.setdefault("ACCELERATE_USE_CPU", "1")
            argv = [fleet.python, "-m", "accelerate.commands.launch", "--multi_gpu",
                    f"--num_machines={len(fleet.nodes)}", f"--machine_rank={rank}",
                    f"--main_process_ip={master}", f"--main_process_port={facts.rdzv_port}",
                    f"--num_processes={total}", "--rdzv_backend=static", "--mixed_precision=no",
                    "--dynamo_backend=no", "--num_cpu_threads_per_process=1", *job.launcher_args, *entry]
            launches.append(node_launch(fleet, node, rank, per_node, cwd, argv, env))
        return LaunchPlan(job_id=job.job_id, launcher=self.name,
                          rendezvous=f"static rendezvous at {endpoint(master, facts.rdzv_port)}"
                                     + (", on the CPU (no GPU on the nodes)" if cpu_only else ""),
                          world_size=total, nodes=tuple(launches))
