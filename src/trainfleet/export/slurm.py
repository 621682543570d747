"""An sbatch script for the job: one task per node, the launcher's plan run by srun on each.

The launcher renders its plan for Slurm's placement: each node's rank is
SLURM_NODEID, the head's address comes from the allocation (the first node's
NodeAddr), each node's own training address and interface are the ones that route to
the head (what trainfleet otherwise asks the nodes for), and the rendezvous port is
the job's own. Secrets are named, never written: set them in the environment sbatch
is run from.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import Placement, scheduler_placement
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.export.node_command import node_command, scheduled_plan

NODE_PRELUDE = (
    "TF_LOCAL_ADDR=$(ip -o route get \"$MASTER_ADDR\" | sed -n 's/.* src \\([^ ]*\\).*/\\1/p')\n"
    "TF_IFACE=$(ip -o addr show to \"$TF_LOCAL_ADDR\" | awk '{print $2; exit}')\n"
    "if [ \"$SLURM_NODEID\" = 0 ]; then TF_IS_HOST=true; else TF_IS_HOST=false; fi\n"
)
"""On each node, before the command: its address and interface towards the head, and whether it is the head."""


def slurm_placement(fleet: Fleet, job: JobSpec) -> Placement:
    return scheduler_placement(fleet, job, "Slurm", "${SLURM_SUBMIT_DIR}", node="${SLURMD_NODENAME}",
                               rank="${SLURM_NODEID}", address="${TF_LOCAL_ADDR}", interface="${TF_IFACE}",
                               is_head="${TF_IS_HOST}", head_address="${MASTER_ADDR}", port="${MASTER_PORT}")


def node_script(fleet: Fleet, job: JobSpec) -> str:
    """What srun runs on every node: the prelude, then the launcher's command."""
    placement = slurm_placement(fleet, job)
    plan = scheduled_plan(fleet, job, placement)
    return NODE_PRELUDE + node_command(plan.nodes[0], placement)


@dataclass(frozen=True)
class SlurmResources:
    """What the allocation asks for besides the nodes."""

    gpus_per_node: int = 0
    """0: ask for none (a CPU cluster refuses a GPU request outright)."""
    cpus_per_node: int = 0
    """0: one per process, so a cluster that pins tasks never puts every rank on one CPU."""
    exclusive: bool = False
    """Whole nodes: nothing else runs beside the job."""


def render_sbatch(fleet: Fleet, job: JobSpec, resources: SlurmResources = SlurmResources()) -> str:
    validate_job(job)
    script = node_script(fleet, job)
    per_node = job.nproc_per_node or min(n.slots for n in fleet.nodes)
    cpus = resources.cpus_per_node or per_node
    allocation = [f"#SBATCH --cpus-per-task={cpus}"]
    allocation += [f"#SBATCH --gpus-per-node={resources.gpus_per_node}"] if resources.gpus_per_node else []
    allocation += ["#SBATCH --exclusive"] if resources.exclusive else []
    lines = [
        "#!/bin/bash",
        f"# trainfleet export slurm: job {job.job_id} ({job.launcher}), {len(fleet.nodes)} node(s) x {per_node}",
        f"#SBATCH --job-name={job.job_id}",
        f"#SBATCH --nodes={len(fleet.nodes)}",
        "#SBATCH --ntasks-per-node=1",
        *allocation,
        "#SBATCH --output=%x-%j.out",
        "set -euo pipefail",
        "",
        "# The head's address from the allocation (node names need not resolve), a port of this job's own.",
        'TF_HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "MASTER_ADDR=$(scontrol show node \"$TF_HEAD\" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')",
        "MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        "export MASTER_ADDR MASTER_PORT",
    ]
    if fleet.secrets:
        lines.append(f"# secrets, from the environment sbatch runs in (never written here): {' '.join(fleet.secrets)}")
        lines += [f': "${{{name}:?set {name} before sbatch}}"' for name in fleet.secrets]
        lines.append(f"export {' '.join(fleet.secrets)}")
    # srun does not inherit --cpus-per-task from sbatch since Slurm 22.05: say it again.
    lines += ["", f"srun --ntasks-per-node=1 --cpus-per-task={cpus} --kill-on-bad-exit=1 bash -c {shlex.quote(script)}",
              ""]
    return "\n".join(lines)
