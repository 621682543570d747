"""The launch plan: what a launcher produces and the only thing anything else reads.

A plan says, for every node, the exact argv, working directory and environment, the
files a runner expects (a hostfile, a runner's environment file), whether the ranks
run under trainfleet's rank wrapper and how a rank's exit is read from the launcher's
output. `--dry-run` prints it, `run` supervises it, `export` renders it for a
scheduler. These types live beside `JobSpec` so that the supervisor and the node agent
read plans without knowing any launcher.
"""

from __future__ import annotations

import enum
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from trainfleet.agent.protocol import NODE_KEY_VARIABLE
from trainfleet.agent.rankwrap import RANK_LINE
from trainfleet.agent.records import job_path
from trainfleet.shellwords import shell_path, shell_value, shell_word

RELAYED_RANK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*): " + RANK_LINE.pattern[1:])
"""A rank's line relayed by pdsh from another node (`node1: [tf:rank3] ...`)."""


class ExitReport(enum.Enum):
    """How a launcher's own output says which rank ended how (signals are known only this way)."""

    NONE = "none"
    """Nothing reliable: the rank wrapper's records (exceptions, signals its reader saw) say it."""
    TORCHELASTIC = "torchelastic"
    """torchelastic's failure report ('Failures:' / 'Root Cause'), printed by torchrun and accelerate."""


@dataclass(frozen=True)
class EnvFile:
    """A file of NAME=value lines that the job's own runner exports to every node it
    starts processes on (DeepSpeed's DS_ENV_FILE): written in the job directory, after
    the lines of the user's own files of that kind (home, then the working directory)."""

    variable: str
    """The variable that names the file for the runner."""
    name: str
    """The file's name in the job directory."""
    merge: tuple[str, ...]
    """The user's own files of this kind, read from home and the working directory first."""
    values: tuple[tuple[str, str], ...]


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
    """trainfleet's sitecustomize (in `python_path`): ranks that a runner started on other
    nodes are marked, recorded and given their node's variables."""
    filled: tuple[str, ...] = ()
    """Variables every rank gets whose values only the node has (the secrets, by name, and
    the node's key): the node fills them in, and nothing else."""
    python_path: tuple[str, ...] = ()
    """Directories put first on PYTHONPATH."""
    env_file: EnvFile | None = None
    """Variables the job's own runner exports to every node."""
    path: tuple[str, ...] = ()
    """Directories put first on PATH (the fleet's Python's, so its tools are found)."""
    after: tuple[tuple[str, ...], ...] = ()
    """Commands run on the node when the job has ended, however it ended."""
    spare: bool = False
    """Started only once the others train, outside the job until a node is lost."""
    secrets_file: bool = False
    """The node writes the secrets to their in-memory file before the start (a container
    reads them there: its engine would keep variables' values on its disk)."""
    failover: tuple[str, ...] = ()
    """The argv this node starts instead should node 0 be lost (the rendezvous then on
    node 1); empty where the job cannot go on without node 0."""

    def shell_line(self, quote: Callable[[str], str] | None = None) -> str:
        """`cd DIR && env NAME=value ... argv`, quoted for a POSIX shell (a leading ~/ left to
        expand as the node's home); a scheduler's renderer passes its own `quote`,
        which leaves its own variables to expand on the node."""
        word, value, folder = (quote, quote, quote) if quote else (shell_word, shell_value, shell_path)
        path = [f"PATH={':'.join(value(p) for p in self.path)}:$PATH"] if self.path else []
        if self.python_path:
            path.append(f"PYTHONPATH={':'.join(value(p) for p in self.python_path)}${{PYTHONPATH:+:$PYTHONPATH}}")
        env = " ".join(path + [f"{k}={value(v)}" for k, v in self.env])
        argv = " ".join(word(a) for a in self.argv)
        return f"cd {folder(self.cwd)} && env {env} {argv}"

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
class Replan:
    """The job planned again on the nodes left once `lost` are gone, a spare in each lost
    node's place while spares last: what every node's supervisor starts, with no
    controller, when the job's mesh says those nodes are lost (for launchers that cannot
    go on without a node by themselves: DeepSpeed, Accelerate, command)."""

    lost: tuple[str, ...]
    """Sorted: the mesh looks a loss up by `key`."""
    nodes: tuple[NodeLaunch, ...]
    """Each node's launch in the smaller job, in its new rank order (node 0 first)."""
    rendezvous: str
    world_size: int

    @property
    def key(self) -> str:
        return ",".join(self.lost)


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
    """The launched command reaches the other nodes itself, by name, over SSH (pdsh, mpirun)."""
    wraps_ranks: bool = False
    """Ranks run under the rank wrapper: their lines are marked, the node's own lines are
    the launcher's chatter (shown with --verbose). Else every line is the user's."""
    exit_report: ExitReport = ExitReport.NONE
    min_nodes: int = 0
    """After a node is lost the launcher goes on while this many remain (0: the job ends)."""
    spares: tuple[str, ...] = ()
    """Nodes waiting to take a lost node's place (their launches are among `nodes`)."""
    successor: str = ""
    """The node that hosts the rendezvous should node 0 be lost ("": the job ends then)."""
    restarts: int = 0
    """When a part fails, the whole job starts again on the same nodes, up to this many
    times (launchers that do not restart by themselves)."""
    rank_nodes: tuple[str, ...] = ()
    """The node each rank runs on, by global rank, where one node's runner starts every
    rank and relays all their output (mpirun): their lines are shown as that node's."""
    replans: tuple[Replan, ...] = ()
    """The job on fewer nodes, planned ahead for each loss it can survive (with `restarts`)."""

    def render(self) -> str:
        lines = [f"# job {self.job_id}: {self.launcher} on {len(self.nodes)} node(s), {self.world_size} "
                 f"process(es), {self.rendezvous}"]
        if self.restarts:
            lines.append(f"# when a part fails, every node's part starts again, up to {self.restarts} time(s)")
        if self.replans:
            lines.append("# when a node is lost, the job starts again without it (a spare in its place while one "
                         "waits), planned ahead:")
        for replan in self.replans:
            names = ", ".join(n.node for n in replan.nodes)
            lines.append(f"#   without {' and '.join(replan.lost)}: {names}; {replan.world_size} process(es), "
                         f"{replan.rendezvous}")
        for launch in self.nodes:
            interface = launch.interface or "(detected on the node at launch)"
            role = "spare (joins once a node is lost)" if launch.spare else f"node_rank={launch.node_rank}"
            lines.append(f"[{launch.node}] {role} nproc={launch.nproc} host={launch.host} interface={interface}")
            lines.append(f"  {launch.shell_line()}")
            if launch.filled:
                lines.append("  filled in on the node: " + ", ".join(
                    f"{name}=<this node's key>" if name == NODE_KEY_VARIABLE else f"{name}=<secret>"
                    for name in launch.filled))
            if launch.failover:
                lines.append(f"  if {self.nodes[0].node} is lost: {' '.join(shell_word(w) for w in launch.failover)}")
            for command in launch.after:
                lines.append(f"  afterwards: {' '.join(shell_word(w) for w in command)}")
            if launch.env_file:
                lines.append("  exported by the runner to every node: "
                             + " ".join(f"{k}={shlex.quote(v)}" for k, v in launch.env_file.values))
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
            "spares": list(self.spares),
            "nodes": [{"node": n.node, "host": n.host, "node_rank": n.node_rank, "nproc": n.nproc, "cwd": n.cwd,
                       "argv": list(n.argv), "env": dict(n.env), "filled": list(n.filled),
                       "path": list(n.path), "python_path": list(n.python_path), "failover": list(n.failover),
                       "runner_env": dict(n.env_file.values) if n.env_file else {}}
                      for n in self.nodes],
            "prepare": [{"node": p.node, "env": dict(p.env), "write": dict(p.write)} for p in self.prepare],
            "replans": [{"lost": list(r.lost), "rendezvous": r.rendezvous, "world_size": r.world_size,
                         "nodes": [{"node": n.node, "node_rank": n.node_rank, "argv": list(n.argv), "env": dict(n.env)}
                                   for n in r.nodes]} for r in self.replans],
        }


@dataclass(frozen=True)
class RankExit:
    """A rank whose end the launcher reported (signals are known only this way)."""

    node: str
    rank: int
    exit_code: int
    signal: str | None
    time: str = ""


__all__ = ["EnvFile", "ExitReport", "LaunchPlan", "NodeLaunch", "NodePrepare", "RANK_LINE", "RELAYED_RANK_LINE",
           "RankExit", "job_path"]
