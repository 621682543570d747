"""A Kubeflow PyTorchJob for the job: one Master and Worker replicas, torchrun in each pod.

The training operator gives each pod PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR and
PET_MASTER_PORT, which torchrun reads; secrets become secretKeyRefs to a Kubernetes
Secret (named after the job unless told), never values.
"""

from __future__ import annotations

import copy
from typing import Any

from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet
from trainfleet.job.spec import JobSpec, validate_job


def render_pytorchjob(fleet: Fleet, job: JobSpec, image: str, secret_name: str = "") -> dict[str, Any]:
    validate_job(job)
    if job.launcher not in ("torchrun", "command"):
        raise UsageError(f"--launcher {job.launcher} cannot be exported to a PyTorchJob",
                         fix="use torchrun (or command); the training operator sets torchrun's variables")
    if not image:
        raise UsageError("a PyTorchJob needs an image", fix="pass --image, or set `container: {image: ...}`")
    per_node = job.nproc_per_node or min(n.slots for n in fleet.nodes)
    entry = (["-m"] if job.module else []) + [job.entrypoint, *job.args]
    if job.launcher == "torchrun":
        command = ["torchrun", f"--nproc-per-node={per_node}", f"--max-restarts={job.max_restarts}",
                   *job.launcher_args, *entry]
    else:
        command = ["sh", "-c", job.entrypoint] if not job.args else [job.entrypoint, *job.args]
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted({**fleet.env, **job.env}.items())]
    secret = secret_name or f"{job.job_id}-secrets"
    env += [{"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}} for name in fleet.secrets]

    def replica(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {"spec": {"containers": [{
                "name": "pytorch",
                "image": image,
                "command": list(command),  # copies: YAML would otherwise share them by anchors
                "env": copy.deepcopy(env),
                "resources": {"limits": {"nvidia.com/gpu": per_node}},
            }]}},
        }

    spec: dict[str, Any] = {"nprocPerNode": str(per_node), "pytorchReplicaSpecs": {"Master": replica(1)}}
    if len(fleet.nodes) > 1:
        spec["pytorchReplicaSpecs"]["Worker"] = replica(len(fleet.nodes) - 1)
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": job.job_id.lower().replace("_", "-").replace(".", "-")}, "spec": spec}
