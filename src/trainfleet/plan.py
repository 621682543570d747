"""Planning a launch: a pure function from (fleet, job, facts) to every node's exact command.

Nothing here does I/O. `trainfleet run --dry-run` prints `LaunchPlan.render()`, and the
golden tests compare it byte for byte.
"""

from __future__ import annotations

import datetime as _dt
import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from trainfleet.errors import UsageError
from trainfleet.spec import Fleet

DEFAULT_RDZV_PORT = 29500
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RANK_PREFIX = "[tf:rank${rank}] "
"""torchrun tees every worker line with this prefix; the supervisor parses it back."""


@dataclass(frozen=True)
class Job:
    """What to run. Plain data: the CLI builds it, `plan` reads it."""

    entrypoint: str
    args: tuple[str, ...] = ()
    module: bool = False
    nproc_per_node: int | None = None
    max_restarts: int = 0
    job_id: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchFacts:
    """What had to be asked of the nodes before planning (see `supervise.probe_facts`)."""

    rdzv_port: int = DEFAULT_RDZV_PORT
    interfaces: Mapping[str, str] = field(default_factory=dict)
    addresses: Mapping[str, str] = field(default_factory=dict)
    """Training addresses chosen on the nodes; a node missing here uses its `address`."""


@dataclass(frozen=True)
class NodeLaunch:
    node: str
    host: str
    node_rank: int
    nproc: int
    workdir: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    def shell_line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return f"cd {_shell_path(self.workdir)} && env {env} {shlex.join(self.argv)}"

    @property
    def interface(self) -> str | None:
        return dict(self.env).get("NCCL_SOCKET_IFNAME")


def _shell_path(path: str) -> str:
    """Quote a path for a shell, leaving a leading ~/ to expand as the node's home."""
    if path == "~" or path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~"
    return shlex.quote(path)


@dataclass(frozen=True)
class LaunchPlan:
    job_id: str
    launcher: str
    rdzv_endpoint: str
    world_size: int
    nodes: tuple[NodeLaunch, ...]

    def render(self) -> str:
        lines = [
            f"# job {self.job_id}: {self.launcher} on {len(self.nodes)} node(s), {self.world_size} process(es), "
            f"c10d rendezvous at {self.rdzv_endpoint}",
        ]
        for launch in self.nodes:
            interface = launch.interface or "(detected on the node at launch)"
            lines.append(f"[{launch.node}] node_rank={launch.node_rank} nproc={launch.nproc} host={launch.host} "
                         f"interface={interface}")
            lines.append(f"  {launch.shell_line()}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "launcher": self.launcher,
            "rdzv_endpoint": self.rdzv_endpoint,
            "world_size": self.world_size,
            "nodes": [
                {"node": n.node, "host": n.host, "node_rank": n.node_rank, "nproc": n.nproc,
                 "workdir": n.workdir, "argv": list(n.argv), "env": dict(n.env)}
                for n in self.nodes
            ],
        }


def tee_dir(job_id: str, node: str) -> str:
    """Where torchrun tees each worker's output on a node: in memory, outside the
    workdir, and removed by the node agent when the job ends (output may hold secrets)."""
    return f"/dev/shm/trainfleet-{job_id}-{node}"


def new_job_id(now: _dt.datetime | None = None) -> str:
    moment = now or _dt.datetime.now()
    return f"tf-{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def plan_torchrun(fleet: Fleet, job: Job, facts: LaunchFacts) -> LaunchPlan:
    """One torchrun (elastic agent, c10d rendezvous on node 0) per node.

    Rendezvous across machines that cannot resolve each other's hostnames needs two
    things torchrun cannot guess: `is_host` (only node 0 hosts the store; hostname
    matching is wrong when hostnames don't resolve or all nodes share one) and
    `--local-addr` (else rank 0 advertises a hostname the others cannot resolve).
    """
    if not JOB_ID_PATTERN.match(job.job_id):
        raise UsageError(f"job id {job.job_id!r} is not usable",
                         fix="use letters, digits, '.', '_' and '-' (it names log directories)")
    if job.nproc_per_node is not None and job.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be >= 1 (got {job.nproc_per_node})")
    head = fleet.head
    endpoint = _endpoint(facts.addresses.get(head.name, head.address), facts.rdzv_port)
    launches = []
    for rank, node in enumerate(fleet.nodes):
        nproc = job.nproc_per_node or node.slots
        interface = node.interface or facts.interfaces.get(node.name)
        env: dict[str, str] = {
            "PYTHONUNBUFFERED": "1",
            "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": RANK_PREFIX,
            "TRAINFLEET_NODE": node.name,
        }
        if interface:
            env["GLOO_SOCKET_IFNAME"] = interface
            env["NCCL_SOCKET_IFNAME"] = interface
        env.update(fleet.env)
        env.update(job.env)
        entry = ["--module", job.entrypoint] if job.module else [job.entrypoint]
        argv = [
            fleet.python, "-m", "torch.distributed.run",
            f"--nnodes={len(fleet.nodes)}",
            f"--nproc-per-node={nproc}",
            f"--node-rank={rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={job.job_id}",
            f"--rdzv-conf=is_host={'true' if rank == 0 else 'false'}",
            f"--local-addr={facts.addresses.get(node.name, node.address)}",
            f"--max-restarts={job.max_restarts}",
            "--tee=3",
            f"--log-dir={tee_dir(job.job_id, node.name)}",
            *entry,
            *job.args,
        ]
        launches.append(NodeLaunch(
            node=node.name,
            host=node.host,
            node_rank=rank,
            nproc=nproc,
            workdir=fleet.workdir,
            argv=tuple(argv),
            env=tuple(sorted(env.items())),
        ))
    return LaunchPlan(
        job_id=job.job_id,
        launcher="torchrun",
        rdzv_endpoint=endpoint,
        world_size=sum(launch.nproc for launch in launches),
        nodes=tuple(launches),
    )
