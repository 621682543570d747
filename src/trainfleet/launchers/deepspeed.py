"""DeepSpeed's own per-node launcher (`deepspeed.launcher.launch`) on every node.

What `deepspeed --hostfile` would do over pdsh, started over trainfleet's connections
instead: each node gets the same `--world_info` (node -> slots, after --include and
--exclude), its `--node_rank`, and the master on node 0's training address; DeepSpeed's
launcher then gives each rank RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_SIZE, CROSS_RANK,
CROSS_SIZE, MASTER_ADDR, MASTER_PORT and the `--local_rank` argument, as it always does.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import ClassVar

from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import Placement, nproc
from trainfleet.job.plan import LaunchPlan
from trainfleet.job.spec import JobSpec, validate_job
from trainfleet.launchers.base import LauncherOption, base_env, endpoint, node_launch, option, wrapped_entry


def parse_filter(text: str, flag: str, fleet: Fleet) -> dict[str, list[int] | None]:
    """DeepSpeed's `host[:slot,slot][@host...]` (None: every slot of that host)."""
    chosen: dict[str, list[int] | None] = {}
    known = {n.name for n in fleet.nodes}
    for part in filter(None, text.split("@")):
        host, _, slots = part.partition(":")
        if host not in known:
            raise UsageError(f"--{flag} {text}: no node named {host!r}", fix=f"use the fleet's node names: "
                             f"{', '.join(sorted(known))}")
        try:
            chosen[host] = [int(s) for s in slots.split(",")] if slots else None
        except ValueError:
            raise UsageError(f"--{flag} {text}: slots must be numbers (host:0,1)") from None
    return chosen


def world_info(fleet: Fleet, job: JobSpec) -> dict[str, list[int]]:
    """Node -> the slots it runs, in fleet order, after --include / --exclude."""
    include, exclude = str(option(job, "include")), str(option(job, "exclude"))
    if include and exclude:
        raise UsageError("--include and --exclude cannot be used together (as with DeepSpeed)")
    slots = {n.name: list(range(nproc(job, n))) for n in fleet.nodes}
    if include:
        wanted = parse_filter(include, "include", fleet)
        slots = {n: (wanted[n] if wanted[n] is not None else s) for n, s in slots.items() if n in wanted}
    if exclude:
        unwanted = parse_filter(exclude, "exclude", fleet)
        slots = {n: ([] if unwanted[n] is None else [x for x in s if x not in unwanted[n]]) if n in unwanted else s
                 for n, s in slots.items()}
    for node, chosen in slots.items():
        bad = [x for x in chosen if x >= nproc(job, fleet.node(node))]
        if bad:
            raise UsageError(f"{node} has no slot {bad[0]} (slots 0-{nproc(job, fleet.node(node)) - 1})")
    chosen = {n: s for n, s in slots.items() if s}
    if not chosen:
        raise UsageError("--include/--exclude leave no slot to run on")
    return chosen


class DeepSpeed:
    name: ClassVar[str] = "deepspeed"
    options: ClassVar[tuple[LauncherOption, ...]] = (
        LauncherOption("include", "only these nodes/slots (node0:0,1@node1)", metavar="NODES"),
        LauncherOption("exclude", "not these nodes/slots", metavar="NODES"),
    )
    script_entry: ClassVar[bool] = True
    needs_gpu_facts: ClassVar[bool] = False

    def plan(self, fleet: Fleet, job: JobSpec, placement: Placement) -> LaunchPlan:
        validate_job(job)
        if placement.for_scheduler and (option(job, "include") or option(job, "exclude")):
            raise UsageError(f"--include/--exclude choose the fleet's nodes; {placement.scheduler} chooses them in "
                             f"its allocation", fix="leave them out of the export")
        info = world_info(fleet, job)
        if not placement.for_scheduler:  # (spares wait outside the world)
            info = {node: slots for node, slots in info.items() if any(p.node == node for p in placement.places)}
        if placement.for_scheduler:
            info = {name: list(range(placement.places[0].nproc)) for name in info}
            places = list(placement.places)
        else:  # the nodes --include/--exclude leave, ranked in that order
            chosen = [p for p in placement.places if p.node in info]
            places = [dataclasses.replace(p, rank=str(i), nproc=len(info[p.node])) for i, p in enumerate(chosen)]
        encoded = base64.urlsafe_b64encode(json.dumps(info).encode()).decode()
        # Rank 0 hosts the rendezvous: on the first node chosen, which --include/--exclude may
        # make another than the fleet's node 0.
        master = placement.head_address if placement.for_scheduler else places[0].address
        entry = wrapped_entry(job, placement, fleet.workdir)
        launches = []
        for place in places:
            argv = [fleet.python, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={encoded}",
                    f"--node_rank={place.rank}", f"--master_addr={master}",
                    f"--master_port={placement.port}", *job.launcher_args, *entry]
            launches.append(node_launch(fleet, place, placement, argv, base_env(fleet, job, place, placement)))
        return LaunchPlan(job_id=job.job_id, launcher=self.name,
                          rendezvous=f"master at {endpoint(master, placement.port)}",
                          world_size=sum(len(s) for s in info.values()), nodes=tuple(launches), wraps_ranks=True)
