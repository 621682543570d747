"""What every launcher shares: the plan it produces, the facts it is given, the seam.

A launcher is a small pure object: from a launcher-neutral `JobSpec`, the `Fleet` and
the `LaunchFacts` gathered from the nodes it renders, for every node, the exact argv,
working directory and environment (`LaunchPlan`). It does no I/O; `--dry-run` prints
its plan and golden tests compare it. Supervision runs any plan the same way.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from trainfleet.fleet.model import Fleet, Node
from trainfleet.job.spec import JobSpec
from trainfleet.shellwords import shell_path, shell_word

DEFAULT_RDZV_PORT = 29500
RANK_LINE = re.compile(r"^\[tf:rank(\d+)\] ?(.*)$")
"""How the rank wrapper marks each line a rank writes."""
RELAYED_RANK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*): \[tf:rank(\d+)\] ?(.*)$")
"""A rank's line relayed by pdsh from another node (`node1: [tf:rank3] ...`)."""


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

    def address(self, node: Node) -> str:
        return self.addresses.get(node.name, node.address)

    def interface(self, node: Node) -> str | None:
        return node.interface or self.interfaces.get(node.name)


@dataclass(frozen=True)
class NodeLaunch:
    node: str
    host: str
    node_rank: int
    nproc: int
    cwd: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    site: bool = False
    """trainfleet's sitecustomize on PYTHONPATH: ranks that a runner started on other
    nodes are marked, recorded and given their node's variables."""
    runner_env: tuple[tuple[str, str], ...] = ()
    """Variables the job's own runner exports to every node (DeepSpeed's DS_ENV_FILE)."""
    path: tuple[str, ...] = ()
    """Directories put first on PATH (the fleet's Python's, so its tools are found)."""
    after: tuple[tuple[str, ...], ...] = ()
    """Commands run on the node when the job has ended, however it ended."""

    def shell_line(self) -> str:
        path = [f"PATH={':'.join(shlex.quote(p) for p in self.path)}:$PATH"] if self.path else []
        env = " ".join(path + [f"{k}={shlex.quote(v)}" for k, v in self.env])
        argv = " ".join(shell_word(a) for a in self.argv)
        return f"cd {shell_path(self.cwd)} && env {env} {argv}"

    @property
    def interface(self) -> str | None:
        return dict(self.env).get("GLOO_SOCKET_IFNAME")


@dataclass(frozen=True)
class NodePrepare:
    """A node the job's own runner will start processes on: what it needs first."""

    node: str
    env: tuple[tuple[str, str], ...]
    write: tuple[tuple[str, str], ...] = ()
    """(path, content) of files the runner expects there, such as its hostfile."""


@dataclass(frozen=True)
class LaunchPlan:
    job_id: str
    launcher: str
    rendezvous: str
    """Where the nodes meet, in the launcher's own terms."""
    world_size: int
    nodes: tuple[NodeLaunch, ...]
    prepare: tuple[NodePrepare, ...] = ()
    needs_node_ssh: bool = False
    """The launched command reaches the other nodes itself, by name, over SSH (pdsh)."""

    def render(self) -> str:
        lines = [f"# job {self.job_id}: {self.launcher} on {len(self.nodes)} node(s), {self.world_size} "
                 f"process(es), {self.rendezvous}"]
        for launch in self.nodes:
            interface = launch.interface or "(detected on the node at launch)"
            lines.append(f"[{launch.node}] node_rank={launch.node_rank} nproc={launch.nproc} host={launch.host} "
                         f"interface={interface}")
            lines.append(f"  {launch.shell_line()}")
            for command in launch.after:
                lines.append(f"  afterwards: {' '.join(shell_word(w) for w in command)}")
            if launch.runner_env:
                lines.append("  exported by the runner to every node: "
                             + " ".join(f"{k}={shlex.quote(v)}" for k, v in launch.runner_env))
        for prepared in self.prepare:
            files = ", ".join(path for path, _ in prepared.write)
            lines.append(f"[{prepared.node}] prepared: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in prepared.env)
                         + (f"; writes {files}" if files else ""))
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "launcher": self.launcher,
            "rendezvous": self.rendezvous,
            "world_size": self.world_size,
            "nodes": [{"node": n.node, "host": n.host, "node_rank": n.node_rank, "nproc": n.nproc, "cwd": n.cwd,
                       "argv": list(n.argv), "env": dict(n.env), "runner_env": dict(n.runner_env)}
                      for n in self.nodes],
            "prepare": [{"node": p.node, "env": dict(p.env), "write": dict(p.write)} for p in self.prepare],
        }


@dataclass(frozen=True)
class RankExit:
    """A rank whose end the launcher reported (signals are known only this way)."""

    node: str
    rank: int
    exit_code: int
    signal: str | None
    time: str = ""


class Launcher(Protocol):
    name: ClassVar[str]
    wraps_ranks: ClassVar[bool]
    """Ranks run under the rank wrapper: their lines are marked, the node's own lines
    are the launcher's chatter (shown with --verbose). Else every line is the user's."""
    needs_gpu_facts: ClassVar[bool]
    """Planning depends on whether the nodes have GPUs."""

    def plan(self, fleet: Fleet, job: JobSpec, facts: LaunchFacts, cwd: str) -> LaunchPlan: ...

    def rank_exits(self, node: str, lines: Sequence[str]) -> list[RankExit]: ...


class NoRankReport:
    """For launchers whose logs do not say reliably which rank ended how: the rank
    wrapper's records (exceptions, and signals seen by its output reader) say it."""

    def rank_exits(self, node: str, lines: Sequence[str]) -> list[RankExit]:
        return []


def job_dir(workdir: str, job_id: str) -> str:
    """The job's directory on a node (as the node agent makes it)."""
    return f"{workdir.rstrip('/')}/.trainfleet/jobs/{job_id}"


def endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def base_env(fleet: Fleet, job: JobSpec, node: Node, node_rank: int, facts: LaunchFacts) -> dict[str, str]:
    """Every rank's environment, before the launcher's own variables: one place decides it."""
    env: dict[str, str] = {
        "PYTHONUNBUFFERED": "1",
        "TRAINFLEET_NODE": node.name,
        "TRAINFLEET_NODE_RANK": str(node_rank),
        "TRAINFLEET_NNODES": str(len(fleet.nodes)),
    }
    interface = facts.interface(node)
    if interface:
        env["GLOO_SOCKET_IFNAME"] = interface
        env["NCCL_SOCKET_IFNAME"] = interface
    if fleet.secrets:
        env["TRAINFLEET_SECRET_NAMES"] = ",".join(fleet.secrets)
    env.update(fleet.env)
    env.update(job.env)
    return env


def wrapped_entry(job: JobSpec, workdir: str) -> list[str]:
    """The rank wrapper, then the user's script (or `-m module`), then its arguments."""
    entry = ["-m", job.entrypoint] if job.module else [job.entrypoint]
    return [f"{job_dir(workdir, job.job_id)}/rankwrap.py", *entry, *job.args]


def nproc(job: JobSpec, node: Node) -> int:
    return job.nproc_per_node or node.slots


def rendezvous_env(fleet: Fleet, job: JobSpec, facts: LaunchFacts, node_rank: int) -> dict[str, str]:
    """What launchers we do not know (and people's own scripts) read to find each other."""
    head = facts.address(fleet.head)
    return {
        "MASTER_ADDR": head,
        "MASTER_PORT": str(facts.rdzv_port),
        "NODE_RANK": str(node_rank),
        "NNODES": str(len(fleet.nodes)),
        "NPROC_PER_NODE": str(nproc(job, fleet.nodes[node_rank])),
        "TRAINFLEET_WORLD_SIZE": str(sum(nproc(job, n) for n in fleet.nodes)),
    }


def python_path(fleet: Fleet) -> tuple[str, ...]:
    """The fleet's Python's directory, when `python:` is a path: its pip, deepspeed and
    accelerate are found by name, as in the shell where it was installed."""
    folder = posixpath.dirname(fleet.python)
    return (folder,) if folder.startswith(("/", "~/")) else ()


def node_launch(fleet: Fleet, node: Node, node_rank: int, count: int, cwd: str, argv: Sequence[str],
                env: Mapping[str, str]) -> NodeLaunch:
    return NodeLaunch(node=node.name, host=node.host, node_rank=node_rank, nproc=count, cwd=cwd, argv=tuple(argv),
                      env=tuple(sorted(env.items())), path=python_path(fleet))
