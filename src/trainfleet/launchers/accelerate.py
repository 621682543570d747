"""`accelerate launch` on every node: one machine each, the processes counted across all.

Accelerate's static rendezvous (torchrun's, with the master on node 0's training
address) needs no `is_host` or local address. On nodes without GPUs it must be told to
use the CPU (ACCELERATE_USE_CPU=1): otherwise every process silently trains alone.
"""

from __future__ import annotations

from typing import ClassVar

from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import Placement
from trainfleet.job.plan import ExitReport, LaunchPlan
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.launchers.base import LauncherOption, base_env, endpoint, node_launch, same_nproc, wrapped_entry


class Accelerate:
    """Its ranks are torchrun's workers, so torchelastic's failure report applies."""

    name: ClassVar[str] = "accelerate"
    options: ClassVar[tuple[LauncherOption, ...]] = ()
    script_entry: ClassVar[bool] = True
    needs_gpu_facts: ClassVar[bool] = True

    def plan(self, fleet: Fleet, job: JobSpec, placement: Placement) -> LaunchPlan:
        validate_job(job)
        same_nproc(placement, "accelerate")
        total = placement.world_size
        cpu_only = all(p.gpus == 0 for p in placement.places)
        entry = wrapped_entry(job, placement, fleet.workdir)
        launches = []
        for place in placement.places:
            env = base_env(fleet, job, place, placement)
            if placement.for_scheduler:  # each node decides, from the GPUs it sees: never every process alone
                env.setdefault("ACCELERATE_USE_CPU", placement.no_gpu)
            elif cpu_only:
                env.setdefault("ACCELERATE_USE_CPU", "1")
            argv = [fleet.python, "-m", "accelerate.commands.launch", "--multi_gpu",
                    f"--num_machines={placement.nnodes}", f"--machine_rank={place.rank}",
                    f"--main_process_ip={placement.head_address}", f"--main_process_port={placement.port}",
                    f"--num_processes={total}", "--rdzv_backend=static", "--mixed_precision=no",
                    "--dynamo_backend=no", "--num_cpu_threads_per_process=1", *job.launcher_args, *entry]
            launches.append(node_launch(fleet, place, placement, argv, env))
        return LaunchPlan(job_id=job.job_id, launcher=self.name,
                          rendezvous=f"static rendezvous at {endpoint(placement.head_address, placement.port)}"
                                     + (", on the CPU (no GPU on the nodes)" if cpu_only else ""),
                          world_size=total, nodes=tuple(launches), wraps_ranks=True,
                          exit_report=ExitReport.TORCHELASTIC)
