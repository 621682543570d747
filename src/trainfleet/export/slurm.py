"""An sbatch script for the job: one task per node, the launcher started by srun on each.

The head node's address comes from the allocation (the first host of SLURM_JOB_NODELIST),
each node's rank from SLURM_NODEID: what trainfleet otherwise asks the nodes for.
Secrets are named, never written: set them in the environment sbatch is run from.
"""

from __future__ import annotations

import shlex

from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.launchers.deepspeed import world_info


def _quoted(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def launcher_command(fleet: Fleet, job: JobSpec, per_node: int) -> str:
    """The command srun runs on every node ($MASTER_ADDR etc. expanded there)."""
    entry = (["-m"] if job.module else []) + [job.entrypoint, *job.args]
    python = shlex.quote(fleet.python)
    extra = _quoted(list(job.launcher_args))
    if job.launcher == "torchrun":
        return (f"{python} -m torch.distributed.run --nnodes=\"$SLURM_NNODES\" --nproc-per-node={per_node} "
                f"--rdzv-backend=c10d --rdzv-endpoint=\"$MASTER_ADDR:$MASTER_PORT\" --rdzv-id=\"$SLURM_JOB_ID\" "
                f"--max-restarts={job.max_restarts} {extra} {_quoted(entry)}")
    if job.launcher == "deepspeed":
        import base64
        import json

        info = base64.urlsafe_b64encode(json.dumps(world_info(fleet, job)).encode()).decode()
        return (f"{python} -u -m deepspeed.launcher.launch --world_info={info} --node_rank=\"$SLURM_NODEID\" "
                f"--master_addr=\"$MASTER_ADDR\" --master_port=\"$MASTER_PORT\" {extra} {_quoted(entry)}")
    if job.launcher == "accelerate":
        return (f"{python} -m accelerate.commands.launch --multi_gpu --num_machines=\"$SLURM_NNODES\" "
                f"--machine_rank=\"$SLURM_NODEID\" --main_process_ip=\"$MASTER_ADDR\" "
                f"--main_process_port=\"$MASTER_PORT\" --num_processes=$((SLURM_NNODES * {per_node})) "
                f"--rdzv_backend=static {extra} {_quoted(entry)}")
    if job.launcher == "command":
        return (f"NODE_RANK=\"$SLURM_NODEID\" NNODES=\"$SLURM_NNODES\" NPROC_PER_NODE={per_node} "
                f"{job.entrypoint if not job.args else _quoted([job.entrypoint, *job.args])}")
    raise UsageError(f"--launcher {job.launcher} cannot be exported to Slurm",
                     fix="use torchrun, deepspeed, accelerate or command")


def render_sbatch(fleet: Fleet, job: JobSpec, workdir: str = '"$SLURM_SUBMIT_DIR"') -> str:
    validate_job(job)
    per_node = job.nproc_per_node or min(n.slots for n in fleet.nodes)
    lines = [
        "#!/bin/bash",
        f"# trainfleet export slurm: job {job.job_id} ({job.launcher}), {len(fleet.nodes)} node(s) x {per_node}",
        f"#SBATCH --job-name={job.job_id}",
        f"#SBATCH --nodes={len(fleet.nodes)}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={per_node}",
        "#SBATCH --output=%x-%j.out",
        "set -euo pipefail",
        "",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "MASTER_PORT=29500",
        "export MASTER_ADDR MASTER_PORT",
    ]
    for name, value in sorted({**fleet.env, **job.env}.items()):
        lines.append(f"export {name}={shlex.quote(value)}")
    if fleet.secrets:
        lines.append(f"# secrets, from the environment sbatch runs in (never written here): {' '.join(fleet.secrets)}")
        lines += [f': "${{{name}:?set {name} before sbatch}}"' for name in fleet.secrets]
        lines.append(f"export {' '.join(fleet.secrets)}")
    lines += ["", f"cd {workdir}",
              f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote(launcher_command(fleet, job, per_node))}",
              ""]
    return "\n".join(lines)
