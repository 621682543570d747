"""Where a job's parts run: the placement a launcher renders its plan for.

A placement is either the facts trainfleet gathered from the nodes (`run`, `--dry-run`:
one place per node, every value known) or a scheduler's own variables (`export slurm`,
`export k8s`: one place that stands for every node, its rank and addresses written as
`${VARIABLE}`s the scheduler fills in on each node). Launchers render both the same
way, so a fix to a launcher reaches `run`, `--dry-run` and every export at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet, Node
from trainfleet.job.spec import JobSpec

DEFAULT_RDZV_PORT = 29500


@dataclass(frozen=True)
class LaunchFacts:
    """What had to be asked of the nodes before planning."""

    rdzv_port: int = DEFAULT_RDZV_PORT
    interfaces: Mapping[str, str] = field(default_factory=dict)
    addresses: Mapping[str, str] = field(default_factory=dict)
    """Training addresses chosen on the nodes; a node missing here uses its `address`."""
    gpus: Mapping[str, int] = field(default_factory=dict)
    """NVIDIA GPUs per node, where known (0: none found; missing: not asked)."""
    homes: Mapping[str, str] = field(default_factory=dict)
    """Each node's home directory (what a leading ~/ means there)."""
    mesh_port: int = 0
    """A free port on node 0 for the job's node supervisors to meet on."""
    successor_ports: tuple[int, ...] = ()
    """Free ports on node 1 (rendezvous, mesh): where both move if node 0 is lost."""

    def address(self, node: Node) -> str:
        return self.addresses.get(node.name, node.address)

    def interface(self, node: Node) -> str | None:
        return node.interface or self.interfaces.get(node.name)


@dataclass(frozen=True)
class Place:
    """One node's part of the job: values, or a scheduler's variables."""

    node: str
    """The node's name (TRAINFLEET_NODE)."""
    host: str
    rank: str
    """The node's rank among the job's nodes."""
    address: str
    """Its training address (what it tells its peers)."""
    interface: str | None
    is_head: str
    """"true" on node 0 (it hosts the rendezvous), else "false"."""
    nproc: int
    gpus: int | None = None
    """GPUs on the node; None where not known."""


@dataclass(frozen=True)
class Placement:
    places: tuple[Place, ...]
    head_address: str
    port: str
    nnodes: int
    cwd: str
    wrap_ranks: bool = True
    """trainfleet's rank wrapper runs each rank (it is on the nodes: not under a scheduler)."""
    scheduler: str = ""
    """"" for facts; else the scheduler whose variables stand in `places[0]` for every node."""
    variables: tuple[str, ...] = ()
    """The variables the scheduler's renderer leaves to the shell on each node."""
    successor_port: str = ""
    """The rendezvous port on node 1 should node 0 be lost ("": the job cannot move)."""
    spares: tuple[Place, ...] = ()
    """Nodes that wait, outside the job, to take a lost node's place (torchrun only): not in
    `places`, `nnodes` or the world size."""
    no_gpu: str = ""
    """For a scheduler: a variable that is 1 on a node that sees no GPU, else 0 (a launcher
    that must be told to use the CPU reads it; the facts say so per place instead)."""

    @property
    def for_scheduler(self) -> bool:
        return bool(self.scheduler)

    @property
    def world_size(self) -> int:
        if self.for_scheduler:
            return self.nnodes * self.places[0].nproc
        return sum(p.nproc for p in self.places)


def nproc(job: JobSpec, node: Node) -> int:
    return job.nproc_per_node or node.slots


def spare_names(fleet: Fleet, job: JobSpec) -> tuple[str, ...]:
    """The fleet's nodes marked `spare: true`, and the last `--spares K` of the others."""
    marked = [n.name for n in fleet.nodes if n.spare]
    wanted = int(job.options.get("spares", 0) or 0)
    others = [n.name for n in fleet.nodes if not n.spare]
    if wanted < 0:
        raise UsageError("--spares cannot be negative")
    if wanted >= len(others):
        raise UsageError(f"--spares {wanted} leaves no node to train on ({len(others)} node(s) are not spares)",
                         fix="keep at least one node, node 0, out of the spares")
    chosen = set(marked) | set(others[len(others) - wanted:] if wanted else [])
    if fleet.head.name in chosen:
        raise UsageError(f"{fleet.head.name} is node 0 (it hosts the rendezvous) and cannot be a spare",
                         fix="choose the nodes with -n so that node 0 is one that trains")
    return tuple(n.name for n in fleet.nodes if n.name in chosen)


def facts_placement(fleet: Fleet, job: JobSpec, facts: LaunchFacts, cwd: str) -> Placement:
    """Every node of the fleet, in order (node 0 first), with what the nodes said; spares
    after the nodes that train, ranked after them."""
    spares = set(spare_names(fleet, job))
    ordered = [n for n in fleet.nodes if n.name not in spares] + [n for n in fleet.nodes if n.name in spares]
    places = tuple(Place(node=node.name, host=node.host, rank=str(rank), address=facts.address(node),
                         interface=facts.interface(node), is_head="true" if rank == 0 else "false",
                         nproc=nproc(job, node), gpus=facts.gpus.get(node.name) if facts.gpus else None)
                   for rank, node in enumerate(ordered))
    training = len(fleet.nodes) - len(spares)
    successor = str(facts.successor_ports[0]) if facts.successor_ports else str(facts.rdzv_port)
    return Placement(places=places[:training], head_address=facts.address(fleet.head), port=str(facts.rdzv_port),
                     nnodes=training, cwd=cwd, spares=places[training:], successor_port=successor)


def scheduler_placement(fleet: Fleet, job: JobSpec, scheduler: str, cwd: str, *, node: str, rank: str, address: str,
                        interface: str, is_head: str, head_address: str, port: str,
                        no_gpu: str = "${TF_NO_GPU}") -> Placement:
    """One place for every node of an allocation of the fleet's size, each value a
    variable the scheduler (or the script around the command) sets on the node."""
    per_node = job.nproc_per_node or min(n.slots for n in fleet.nodes)
    values = (node, rank, address, interface, is_head, head_address, port, cwd, no_gpu)
    variables = tuple(dict.fromkeys(name for value in values for name in VARIABLE.findall(value)))
    place = Place(node=node, host=node, rank=rank, address=address, interface=interface, is_head=is_head,
                  nproc=per_node)
    return Placement(places=(place,), head_address=head_address, port=port, nnodes=len(fleet.nodes), cwd=cwd,
                     wrap_ranks=False, scheduler=scheduler, variables=variables, no_gpu=no_gpu)


VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""How a scheduler's variable is written in a placement's values."""
