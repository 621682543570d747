"""torchrun (torch.distributed.elastic's agent) on every node, c10d rendezvous on node 0."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.launchers.base import (RANK_LINE, LaunchFacts, LaunchPlan, RankExit, base_env, endpoint, node_launch,
                                       nproc, wrapped_entry)

_FAILURE_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_FAILURE_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
_FAILURE_TIME = re.compile(r"^\s*time\s*:\s*(\S+)")
_FAILURE_SIGNAL = re.compile(r"\((SIG[A-Z0-9]+)\)")


class Torchrun:
    name: ClassVar[str] = "torchrun"
    wraps_ranks: ClassVar[bool] = True
    needs_gpu_facts: ClassVar[bool] = False

    def plan(self, fleet: Fleet, job: JobSpec, facts: LaunchFacts, cwd: str) -> LaunchPlan:
        """One elastic agent per node; the c10d store on node 0.

        Rendezvous across machines that cannot resolve each other's hostnames needs two
        things torchrun cannot guess: `is_host` (only node 0 hosts the store; hostname
        matching is wrong when hostnames don't resolve or all nodes share one) and
        `--local-addr` (else rank 0 advertises a hostname the others cannot resolve).
        """
        validate_job(job)
        if job.min_nodes > len(fleet.nodes):
            raise UsageError(f"--min-nodes {job.min_nodes} is more than the fleet's {len(fleet.nodes)} nodes")
        rendezvous = endpoint(facts.address(fleet.head), facts.rdzv_port)
        nnodes = f"{job.min_nodes}:{len(fleet.nodes)}" if job.min_nodes else str(len(fleet.nodes))
        # Elastic: a lost node's agent is dropped after 3 missed one-second heartbeats, and
        # the survivors meet again 2 s after the last of them arrives.
        elastic = ",keep_alive_interval=1,keep_alive_max_attempt=3,last_call_timeout=2" if job.min_nodes else ""
        entry = wrapped_entry(job, fleet.workdir)
        launches = []
        for rank, node in enumerate(fleet.nodes):
            count = nproc(job, node)
            env = base_env(fleet, job, node, rank, facts)
            if job.max_restarts:
                # Restarted ranks would otherwise meet in the agent's one shared store, where
                # keys from the attempt before (gloo's and NCCL's addresses) are still found
                # (pytorch/pytorch#135712): a store of their own per attempt.
                env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
            argv = [
                fleet.python, "-m", "torch.distributed.run",
                f"--nnodes={nnodes}",
                f"--nproc-per-node={count}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rendezvous}",
                f"--rdzv-id={job.job_id}",
                f"--rdzv-conf=is_host={'true' if rank == 0 else 'false'}{elastic}",
                f"--local-addr={facts.address(node)}",
                f"--max-restarts={job.max_restarts}",
                *job.launcher_args,
                *entry,
            ]
            launches.append(node_launch(fleet, node, rank, count, cwd, argv, env))
        return LaunchPlan(job_id=job.job_id, launcher=self.name, rendezvous=f"c10d rendezvous at {rendezvous}",
                          world_size=sum(n.nproc for n in launches), nodes=tuple(launches))

    def rank_exits(self, node: str, lines: Sequence[str]) -> list[RankExit]:
        """The ranks in torchrun's failure report ('Failures:' and 'Root Cause')."""
        exits: dict[int, RankExit] = {}
        rank: int | None = None
        code: int | None = None
        signal: str | None = None
        when = ""
        for raw in [*lines, "==="]:
            text = RANK_LINE.sub(r"\2", raw)
            if re.match(r"^\s*\[\d+\]:\s*$", text) or text.startswith("===") or text.startswith("---"):
                if rank is not None and code is not None:
                    exits.setdefault(rank, RankExit(node=node, rank=rank, exit_code=code, signal=signal, time=when))
                rank, code, signal, when = None, None, None, ""
            elif match := _FAILURE_RANK.match(text):
                rank = int(match.group(1))
            elif match := _FAILURE_EXIT.match(text):
                code = int(match.group(1))
                named = _FAILURE_SIGNAL.search(text)
                signal = named.group(1) if named else None
            elif match := _FAILURE_TIME.match(text):
                when = match.group(1)
        return list(exits.values())
