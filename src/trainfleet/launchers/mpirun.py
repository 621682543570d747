"""Open MPI's `mpirun` on node 0, as GPT-NeoX and DeepSpeed users on MPI clusters launch.

`mpirun --hostfile H -npernode N` starts every rank, reaching the other nodes by name
over SSH (the aliases `trainfleet ssh setup` writes). Each rank is the user's script,
unchanged: a small `sh -c` turns Open MPI's own variables into the ones
`torch.distributed.init_process_group()` reads (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE), and MASTER_ADDR/MASTER_PORT (node 0's training address, a free
port there) go to every rank with `-x`. As with `head`, each node is prepared with its
own variables (its interface) and the secrets, which trainfleet's sitecustomize loads
into the ranks, marking their output and recording their failures: nothing secret is
in any command line.
"""

from __future__ import annotations

from typing import ClassVar

from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import Placement
from trainfleet.job.plan import LaunchPlan, job_path
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.agent.procs import JOB_VARIABLE
from trainfleet.launchers.base import (LauncherOption, base_env, endpoint, node_launch, refuse_scheduler,
                                       rendezvous_env, same_nproc, with_site)
from trainfleet.launchers.head import NODE_VARIABLES, prepare_nodes

RANK_FROM_MPI = ('RANK=$OMPI_COMM_WORLD_RANK WORLD_SIZE=$OMPI_COMM_WORLD_SIZE '
                 'LOCAL_RANK=$OMPI_COMM_WORLD_LOCAL_RANK LOCAL_WORLD_SIZE=$OMPI_COMM_WORLD_LOCAL_SIZE '
                 'exec "$0" "$@"')
"""Each rank's variables from Open MPI's, then the rank's own command (its argv, unquoted by nobody)."""


class Mpirun:
    name: ClassVar[str] = "mpirun"
    options: ClassVar[tuple[LauncherOption, ...]] = ()
    script_entry: ClassVar[bool] = True
    needs_gpu_facts: ClassVar[bool] = False

    def plan(self, fleet: Fleet, job: JobSpec, placement: Placement) -> LaunchPlan:
        validate_job(job)
        refuse_scheduler(placement, self.name, "mpirun starts every node's ranks from node 0 itself")
        per_node = same_nproc(placement, "mpirun -npernode")
        hostfile = f"{job_path(fleet.workdir, job.job_id)}/hostfile"
        head = placement.places[0]
        env = {**base_env(fleet, job, head, placement), **rendezvous_env(job, head, placement),
               # Open MPI refuses root unless told; rented machines often log in as root.
               "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
               # The daemon Open MPI starts on each node over SSH carries the job id too, so
               # stopping the job on that node ends it (not only its ranks, after which it lingers).
               "OMPI_MCA_orte_launch_agent": f"env {JOB_VARIABLE}={job.job_id} orted"}
        # Every rank gets what is the same everywhere; each node's own variables come from its node.env.
        # (PYTHONPATH: trainfleet's sitecustomize, which marks and records every rank)
        exported = sorted(k for k in {**env, "PYTHONPATH": ""}
                          if k not in (*NODE_VARIABLES, "NODE_RANK") and not k.startswith("OMPI_"))
        entry = ["-m", job.entrypoint] if job.module else [job.entrypoint]
        argv = ["mpirun", "--hostfile", hostfile, "-np", str(placement.world_size), "-npernode", str(per_node),
                "--bind-to", "none", *(w for name in exported for w in ("-x", name)), *job.launcher_args,
                "sh", "-c", RANK_FROM_MPI, fleet.python, *entry, *job.args]
        launch = with_site(node_launch(fleet, head, placement, argv, env), fleet, job)
        hosts = "".join(f"{p.node} slots={p.nproc}\n" for p in placement.places)
        return LaunchPlan(job_id=job.job_id, launcher=self.name,
                          rendezvous=f"{head.node} runs mpirun; MASTER_ADDR:MASTER_PORT="
                                     f"{endpoint(placement.head_address, placement.port)}",
                          world_size=placement.world_size, nodes=(launch,),
                          prepare=prepare_nodes(fleet, job, placement, hostfile, hosts), needs_node_ssh=True,
                          # -npernode fills each node in hostfile order: ranks 0..N-1 on node 0, and so on.
                          rank_nodes=tuple(p.node for p in placement.places for _ in range(per_node)))
