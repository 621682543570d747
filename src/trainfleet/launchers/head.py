"""A command on node 0 only, for tools that start their own multi-node runner: GPT-NeoX's
deepy.py, `deepspeed --hostfile`, mpirun.

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

from trainfleet.fleet.hostfiles import render_hostfile
from trainfleet.fleet.model import Fleet
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.launchers.base import (LaunchFacts, LaunchPlan, NodePrepare, NoRankReport, base_env, job_dir,
                                       node_launch, nproc, rendezvous_env)
from trainfleet.launchers.command import command_argv

NODE_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TRAINFLEET_NODE", "TRAINFLEET_NODE_RANK")


class Head(NoRankReport):
    name: ClassVar[str] = "head"
    wraps_ranks: ClassVar[bool] = False
    needs_gpu_facts: ClassVar[bool] = False

    def plan(self, fleet: Fleet, job: JobSpec, facts: LaunchFacts, cwd: str) -> LaunchPlan:
        validate_job(job)
        hostfile = job.hostfile_path or f"{job_dir(fleet.workdir, job.job_id)}/hostfile"
        head = fleet.head
        env = {**base_env(fleet, job, head, 0, facts), **rendezvous_env(fleet, job, facts, 0),
               "TRAINFLEET_HOSTFILE": hostfile}
        # Everything but each node's own variables and the secrets, for the runner to export.
        shared = {**fleet.env, **job.env}
        launch = dataclasses.replace(node_launch(fleet, head, 0, nproc(job, head), cwd, command_argv(job), env), site=True,
                                     runner_env=tuple(sorted(shared.items())))
        prepare = []
        for rank, node in enumerate(fleet.nodes):
            node_env = base_env(fleet, job, node, rank, facts)
            prepare.append(NodePrepare(node=node.name,
                                       env=tuple((k, node_env[k]) for k in NODE_VARIABLES if k in node_env),
                                       write=((hostfile, render_hostfile(fleet, "deepspeed", job.nproc_per_node)),)))
        return LaunchPlan(job_id=job.job_id, launcher=self.name,
                          rendezvous=f"{head.name} runs the job's own runner; hostfile {hostfile}",
                          world_size=sum(nproc(job, n) for n in fleet.nodes), nodes=(launch,), prepare=tuple(prepare),
                          needs_node_ssh=True)
