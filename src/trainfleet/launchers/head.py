"""A command on node 0 only, for tools that start their own multi-node runner: GPT-NeoX's
deepy.py, `deepspeed --hostfile`.

trainfleet writes the hostfile where the tool expects it (on every node), and relies on
the node aliases `trainfleet ssh setup` writes, so pdsh and ssh reach the nodes by name.
The fleet's variables go the way DeepSpeed's runner forwards them (its env file), with
the job's id, so every process the runner starts on any node belongs to the job:
teardown, `stop` and the root cause reach them, and nothing else. Secrets never go
into that file or any command line: each node keeps them in memory (a 0600 file in
/dev/shm for the job's lifetime) and trainfleet's sitecustomize loads them into the
job's Python processes, with each node's own interface.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from trainfleet.errors import UsageError
from trainfleet.fleet.hostfiles import render_hostfile
from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import Placement
from trainfleet.job.plan import EnvFile, LaunchPlan, NodePrepare, job_path
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.launchers.base import (LauncherOption, base_env, node_launch, option, refuse_scheduler,
                                       rendezvous_env, supervised_env, with_site)
from trainfleet.launchers.command import command_argv

NODE_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TRAINFLEET_NODE", "TRAINFLEET_NODE_RANK")
RUNNER_FORWARDS = ("MLFLOW", "NCCL", "PYTHON", "MV2", "UCX")
"""Prefixes of the variables DeepSpeed's runner copies into its pdsh command line (its
EXPORT_ENVS): a secret so named would be in `ps` on every node."""


def prepare_nodes(fleet: Fleet, job: JobSpec, placement: Placement, hostfile: str, text: str) -> tuple[NodePrepare, ...]:
    """Every node: its own variables (for trainfleet's sitecustomize) and the hostfile."""
    prepared = []
    for place in placement.places:
        node_env = base_env(fleet, job, place, placement)
        prepared.append(NodePrepare(node=place.node, env=tuple((k, node_env[k]) for k in NODE_VARIABLES
                                                               if k in node_env), write=((hostfile, text),)))
    return tuple(prepared)


class Head:
    name: ClassVar[str] = "head"
    options: ClassVar[tuple[LauncherOption, ...]] = (
        LauncherOption("hostfile-path", "where the hostfile is written on every node (default: in the job's "
                                        "directory)", metavar="PATH"),
    )
    script_entry: ClassVar[bool] = False
    needs_gpu_facts: ClassVar[bool] = False

    def plan(self, fleet: Fleet, job: JobSpec, placement: Placement) -> LaunchPlan:
        validate_job(job)
        refuse_scheduler(placement, self.name, "its runner starts the other nodes' processes over SSH itself")
        forwarded = [name for name in fleet.secrets if name.startswith(RUNNER_FORWARDS)]
        if forwarded:
            raise UsageError(f"secret {forwarded[0]} would be copied by DeepSpeed's runner into its pdsh command "
                             f"line (it forwards every {'_*, '.join(RUNNER_FORWARDS)}_* variable), where `ps` "
                             f"shows it on every node", fix="give the secret another name in `secrets:` and "
                                                           "read that name in your code")
        hostfile = str(option(job, "hostfile-path")) or f"{job_path(fleet.workdir, job.job_id)}/hostfile"
        head = placement.places[0]
        env = {**base_env(fleet, job, head, placement), **rendezvous_env(job, head, placement),
               "TRAINFLEET_HOSTFILE": hostfile}
        # Everything but each node's own variables and the secrets, for the runner to export.
        shared = {**fleet.env, **job.env, **supervised_env(fleet, job, placement)}
        runner_env = EnvFile(variable="DS_ENV_FILE", name="deepspeed_env", merge=(".deepspeed_env",),
                             values=tuple(sorted(shared.items())))
        argv = command_argv(job, fleet.python)
        launch = dataclasses.replace(with_site(node_launch(fleet, head, placement, argv, env), fleet, job),
                                     env_file=runner_env)
        prepare = prepare_nodes(fleet, job, placement, hostfile,
                                render_hostfile(fleet, "deepspeed", job.nproc_per_node))
        return LaunchPlan(job_id=job.job_id, launcher=self.name,
                          rendezvous=f"{head.node} runs the job's own runner; hostfile {hostfile}",
                          world_size=placement.world_size, nodes=(launch,), prepare=prepare, needs_node_ssh=True)
