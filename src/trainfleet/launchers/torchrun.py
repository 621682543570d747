"""torchrun (torch.distributed.elastic's agent) on every node, c10d rendezvous on node 0."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import Placement
from trainfleet.job.plan import ExitReport, LaunchPlan
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.launchers.base import LauncherOption, base_env, endpoint, node_launch, option, wrapped_entry


class Torchrun:
    name: ClassVar[str] = "torchrun"
    options: ClassVar[tuple[LauncherOption, ...]] = (
        LauncherOption("min-nodes", "after a node is lost, go on with at least this many (with --max-restarts)",
                       metavar="N", type=int),
    )
    script_entry: ClassVar[bool] = True
    needs_gpu_facts: ClassVar[bool] = False

    def plan(self, fleet: Fleet, job: JobSpec, placement: Placement) -> LaunchPlan:
        """One elastic agent per node; the c10d store on node 0.

        Rendezvous across machines that cannot resolve each other's hostnames needs two
        things torchrun cannot guess: `is_host` (only node 0 hosts the store; hostname
        matching is wrong when hostnames don't resolve or all nodes share one) and
        `--local-addr` (else rank 0 advertises a hostname the others cannot resolve).
        """
        validate_job(job)
        min_nodes = int(option(job, "min-nodes", 0))  # type: ignore[call-overload]
        if min_nodes < 0:
            raise UsageError("--min-nodes cannot be negative")
        if min_nodes and not job.max_restarts:
            raise UsageError("--min-nodes restarts the job on the nodes left: it needs --max-restarts N (N >= 1)")
        if min_nodes > placement.nnodes:
            raise UsageError(f"--min-nodes {min_nodes} is more than the fleet's {placement.nnodes} nodes")
        spares = tuple(p.node for p in placement.spares)
        if spares and not job.max_restarts:
            raise UsageError(f"a spare ({', '.join(spares)}) joins the job when torchrun restarts it: it needs "
                             f"--max-restarts N (N >= 1)")
        rendezvous = endpoint(placement.head_address, placement.port)
        # With spares and no --min-nodes the job needs all its nodes: a spare makes up for a lost one.
        needed = min_nodes or (placement.nnodes if spares else 0)
        nnodes = f"{needed}:{placement.nnodes}" if needed else str(placement.nnodes)
        # Elastic: a lost node's agent is dropped after 3 missed one-second heartbeats, and
        # the survivors meet again 2 s after the last of them arrives. A spare's agent waits
        # in the rendezvous's redundancy list (a full round admits no more) and is let in
        # the round after a node is dropped.
        elastic = ",keep_alive_interval=1,keep_alive_max_attempt=3,last_call_timeout=2" if needed else ""
        entry = wrapped_entry(job, placement, fleet.workdir)
        # Node 0 hosts the store: should it be lost, node 1 hosts a new one, and every
        # other node's agent starts again there (what torchrun cannot do by itself).
        successor = placement.places[1] if needed and len(placement.places) > 1 else None
        launches = []
        for place in placement.places + placement.spares:
            env = base_env(fleet, job, place, placement)
            if job.max_restarts:
                # Restarted ranks would otherwise meet in the agent's one shared store, where
                # keys from the attempt before (gloo's and NCCL's addresses) are still found
                # (pytorch/pytorch#135712): a store of their own per attempt.
                env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
            argv = [
                fleet.python, "-m", "torch.distributed.run",
                f"--nnodes={nnodes}",
                f"--nproc-per-node={place.nproc}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rendezvous}",
                f"--rdzv-id={job.rendezvous_id or job.job_id}",
                f"--rdzv-conf=is_host={place.is_head}{elastic}",
                f"--local-addr={place.address}",
                f"--max-restarts={job.max_restarts}",
                *job.launcher_args,
                *entry,
            ]
            failover: list[str] = []
            if successor is not None and place is not placement.places[0]:
                moved = endpoint(successor.address, placement.successor_port)
                host = "true" if place is successor else "false"
                failover = [f"--rdzv-endpoint={moved}" if a.startswith("--rdzv-endpoint=") else
                            f"--rdzv-conf=is_host={host}{elastic}" if a.startswith("--rdzv-conf=") else a
                            for a in argv]
            launch = node_launch(fleet, place, placement, argv, env)
            launches.append(replace(launch, spare=place.node in spares, failover=tuple(failover)))
        return LaunchPlan(job_id=job.job_id, launcher=self.name, rendezvous=f"c10d rendezvous at {rendezvous}",
                          world_size=placement.world_size, nodes=tuple(launches), wraps_ranks=True,
                          exit_report=ExitReport.TORCHELASTIC, min_nodes=needed, spares=spares,
                          successor=successor.node if successor is not None else "")
