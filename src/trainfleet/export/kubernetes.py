"""A Kubeflow PyTorchJob for the job: one Master and Worker replicas, the launcher's plan in each pod.

The training operator gives each pod RANK (its replica's rank: the node rank),
MASTER_ADDR and MASTER_PORT (the master's service); the pod's own address comes from
the downward API. Secrets become secretKeyRefs to a Kubernetes Secret (named after the
job unless told), never values.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import Placement, scheduler_placement
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.export.node_command import node_command, scheduled_plan

NODE_PRELUDE = 'if [ "$RANK" = 0 ]; then TF_IS_HOST=true; else TF_IS_HOST=false; fi\n'


def kubernetes_placement(fleet: Fleet, job: JobSpec) -> Placement:
    """Pods have one network: gloo and NCCL find it without an interface name."""
    return scheduler_placement(fleet, job, "Kubernetes", "${PWD}", node="${HOSTNAME}", rank="${RANK}",
                               address="${POD_IP}", interface="", is_head="${TF_IS_HOST}",
                               head_address="${MASTER_ADDR}", port="${MASTER_PORT}")


def pod_command(fleet: Fleet, job: JobSpec, python: str) -> list[str]:
    """The node's command in the image: its Python (as in a container on the nodes), its PATH."""
    placement = kubernetes_placement(fleet, job)
    launch = scheduled_plan(fleet, job, placement).nodes[0]
    argv = (python, *launch.argv[1:]) if launch.argv and launch.argv[0] == fleet.python else launch.argv
    launch = dataclasses.replace(launch, argv=argv, path=())
    return ["sh", "-c", NODE_PRELUDE + node_command(launch, placement)]


def render_pytorchjob(fleet: Fleet, job: JobSpec, image: str, secret_name: str = "",
                      gpus_per_node: int = 0) -> dict[str, Any]:
    validate_job(job)
    if not image:
        raise UsageError("a PyTorchJob needs an image", fix="pass --image, or set `container: {image: ...}`")
    per_node = job.nproc_per_node or min(n.slots for n in fleet.nodes)
    python = fleet.container.python if fleet.container else "python"  # the image's, not the nodes' path
    command = pod_command(fleet, job, python)
    env: list[dict[str, Any]] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
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
                **({"resources": {"limits": {"nvidia.com/gpu": str(gpus_per_node)}}} if gpus_per_node else {}),
            }]}},
        }

    # The job fails as `run` would: after --max-restarts restarts (pods' included), leaving no running pod.
    spec: dict[str, Any] = {"nprocPerNode": str(per_node),
                            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": job.max_restarts},
                            "pytorchReplicaSpecs": {"Master": replica(1)}}
    if len(fleet.nodes) > 1:
        spec["pytorchReplicaSpecs"]["Worker"] = replica(len(fleet.nodes) - 1)
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": job.job_id.lower().replace("_", "-").replace(".", "-")}, "spec": spec}
