"""Requests to the node agent and its replies: plain dataclasses, shared by both sides.

The controller imports this module as `trainfleet.agent.protocol`; the nodes receive it
inside the agent (as `tfagent.protocol`). Stdlib only, Python 3.8 syntax (`typing`
generics, no `X | Y`), because the nodes' Python may be older than the controller's.

On the wire every message is one JSON line:
- controller -> node: {"id": N, "op": "...", ...the request's fields}
- node -> controller: {"id": N, "reply": {...}} or {"id": N, "error": "...", "trace": "..."}
  and, for streaming requests, any number of {"id": N, "event": {...}} before the reply.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Dict, Generic, List, Optional, Tuple, Type, TypeVar, Union, get_type_hints

R = TypeVar("R")
T = TypeVar("T")


class Request(Generic[R]):
    """A request whose answer is an R. Subclasses are dataclasses naming their `op`."""

    op: ClassVar[str] = ""
    reply_type: ClassVar[Type[Any]]
    handler: ClassVar[str] = ""
    """`module.function` in the agent that answers it (imported when first asked for)."""
    streams: ClassVar[bool] = False
    """The handler also takes an `emit` function for the events it sends before its reply."""


# ---- the names both sides share (str enums: they travel and are stored as their value) ----


class Name(str, Enum):
    def __str__(self) -> str:  # a plain word in messages and f-strings, on every Python
        return str(self.value)


class JobStatus(Name):
    """Where a job stands on one node: its record's `state`."""

    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"
    UNKNOWN = "unknown"
    """Only seen, never recorded: processes of a job whose record is gone (an orphan)."""

    @property
    def ended(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.LOST)

    @property
    def live(self) -> bool:
        return self in (JobStatus.STARTING, JobStatus.RUNNING)


class MountStatus(Name):
    MOUNTED = "mounted"
    ALREADY = "already"
    """It was mounted before this request."""
    UNMOUNTED = "unmounted"
    ABSENT = "absent"
    """It was not mounted (and is not)."""
    FAILED = "failed"


class FactSection(Name):
    """What a facts request asks a node about."""

    NET = "net"
    PORTS = "ports"
    SOFTWARE = "software"
    GPU = "gpu"
    DISK = "disk"
    JOBS = "jobs"
    FILES = "files"
    PROJECT = "project"
    WORKDIR = "workdir"
    PYTHON = "python"
    GPU_HEALTH = "gpu_health"
    """`nvidia-smi -q -x` and the kernel log's Xid events (doctor's; about a second on 8 GPUs)."""
    RDMA = "rdma"
    """InfiniBand / RoCE ports as the kernel sees them (/sys/class/infiniband)."""
    """Only whether the fleet's `python:` is there (SOFTWARE's cheap part, for `run`)."""


# ---- values that appear in several replies ---------------------------------------------


@dataclass
class Proc:
    pid: int
    cmdline: str
    job_id: Optional[str] = None


@dataclass
class Empty:
    pass


# ---- facts -------------------------------------------------------------------------------


@dataclass
class Interface:
    name: str
    up: bool
    loopback: bool
    kind: str
    master: Optional[str]
    addrs: List[str]


@dataclass
class Route:
    dev: Optional[str] = None
    src: Optional[str] = None
    via: Optional[str] = None


@dataclass
class PythonInfo:
    version: str
    executable: str


@dataclass
class TorchInfo:
    version: Optional[str]
    cuda: Optional[str] = None
    nccl: Optional[str] = None


@dataclass
class Gpu:
    index: str
    uuid: str
    name: str
    driver: str
    busy: List[Proc] = field(default_factory=list)


@dataclass
class GpuHealth:
    """One GPU as `nvidia-smi -q -x` describes it (None: the GPU does not report it)."""

    index: str
    uuid: str
    bus_id: str
    name: str
    memory_mib: Optional[int] = None
    persistence: Optional[bool] = None
    pcie_gen: Optional[int] = None
    pcie_gen_max: Optional[int] = None
    pcie_width: Optional[int] = None
    pcie_width_max: Optional[int] = None
    ecc_uncorrected: Optional[int] = None
    """Uncorrected ECC errors since the driver loaded (volatile)."""
    retired_pending: Optional[bool] = None
    remap_pending: Optional[bool] = None
    remap_failure: Optional[bool] = None
    slowdown: List[str] = field(default_factory=list)
    """Clock event reasons held for hardware causes: hw_slowdown, hw_thermal_slowdown, hw_power_brake_slowdown."""
    idle: bool = False
    nvlinks: Optional[int] = None
    """NVLink links the GPU has (`nvidia-smi nvlink -s`); None where it has none, or was not asked."""
    nvlinks_down: List[int] = field(default_factory=list)
    """Those of its links that are inactive."""


@dataclass
class NcclLine:
    """A line in which NCCL said what went wrong (agent/nccl.py), as a rank printed it."""

    at: float
    rank: Optional[int]
    text: str


@dataclass
class XidEvent:
    """An `NVRM: Xid` line of the kernel log."""

    xid: int
    bus_id: str
    """As the line gives it (PCI:0000:4e:00)."""
    text: str
    when: str = ""
    at: Optional[float] = None
    """When it happened (epoch seconds), where the node could tell (dmesg's seconds since boot)."""
    gpu: str = ""
    """The GPU's index and UUID on the node, where known (`3 GPU-...`)."""


@dataclass
class GpuHealthInfo:
    gpus: List[GpuHealth] = field(default_factory=list)
    xids: List[XidEvent] = field(default_factory=list)
    kernel_log: str = ""
    """Where the Xid events were read from, or why they could not be."""
    error: Optional[str] = None


@dataclass
class IbPort:
    """One port of an RDMA device (InfiniBand or RoCE), from /sys/class/infiniband."""

    device: str
    """mlx5_0"""
    port: int
    state: str
    """ACTIVE, DOWN, INIT, ARMED (the number the kernel prints is left out)."""
    phys_state: str = ""
    """LinkUp, Polling, Disabled, ..."""
    rate: str = ""
    """As the kernel says it: `200 Gb/sec (4X HDR)`."""
    link_layer: str = ""
    """InfiniBand, or Ethernet for RoCE."""


@dataclass
class GpuInfo:
    gpus: List[Gpu] = field(default_factory=list)
    error: Optional[str] = None


@dataclass
class Disk:
    path: str
    free: int
    total: int


@dataclass
class JobSeen:
    """A trainfleet job with processes on this node. `state` is the job's own record,
    or UNKNOWN when no record says (an orphan)."""

    job_id: str
    state: JobStatus
    processes: List[Proc]
    live: bool
    """True while the job's node supervisor is alive: the job is running, not left over."""


@dataclass
class ProjectState:
    """A project directory on a node, against the manifest its last sync left there."""

    exists: bool
    manifest: Optional[str] = None
    """The digest of the code last synced here (None: never synced)."""
    changed: List[str] = field(default_factory=list)
    """Synced files that are no longer as synced (edited or removed on the node)."""
    setup: Optional[str] = None
    """The digest of the setup that last succeeded here."""


@dataclass
class FactsReply:
    hostname: str
    time: float
    home: str = ""
    port_range: Optional[List[int]] = None
    interfaces: List[Interface] = field(default_factory=list)
    routes: Dict[str, Optional[Route]] = field(default_factory=dict)
    ports: Dict[str, Optional[Proc]] = field(default_factory=dict)
    """Port -> who holds it (pid None: another user's process), or None when free."""
    free_port: Optional[int] = None
    free_ports: List[int] = field(default_factory=list)
    python: Optional[PythonInfo] = None
    torch: Optional[TorchInfo] = None
    torch_installed: bool = False
    python_missing: str = ""
    """Why the fleet's `python:` (the job's) did not answer here, where it did not (the
    agent then ran on the node's python3, and `python`/`torch` are left empty)."""
    gpu: Optional[GpuInfo] = None
    gpu_health: Optional[GpuHealthInfo] = None
    ib_ports: List[IbPort] = field(default_factory=list)
    driver: Optional[str] = None
    disk: Optional[Disk] = None
    container_disk: Optional[Disk] = None
    """Free space where the container engine keeps images and containers."""
    jobs: List[JobSeen] = field(default_factory=list)
    files: Dict[str, bool] = field(default_factory=dict)
    project: Optional[ProjectState] = None
    node_key: str = ""
    """This machine's name for its own records in a job directory (rankwrap.node_key)."""
    workdir_keys: List[str] = field(default_factory=list)
    """The machines that have marked the workdir as theirs: more than this one where it is shared."""


@dataclass
class FactsRequest(Request[FactsReply]):
    op: ClassVar[str] = "facts"
    handler: ClassVar[str] = "facts.gather"
    reply_type: ClassVar[Type[Any]] = FactsReply
    sections: List[FactSection]
    python: str
    workdir: str
    peers: List[str] = field(default_factory=list)
    ports: List[int] = field(default_factory=list)
    port_address: Optional[str] = None
    files: List[str] = field(default_factory=list)
    """Paths (relative to the workdir, or absolute) whose existence is reported."""
    project: str = ""
    """The project directory (relative to the workdir) that the `project` section reports on."""
    free: int = 1
    """How many free ports the `ports` section finds."""
    container_engine: str = ""
    container_root: str = ""
    """The engine's data root when the fleet's options name it (podman --root); else the engine's own."""


@dataclass
class ManifestRequest(Request[Empty]):
    """Record what a sync put into a project directory: path -> [size, sha256 or None
    for files too big to hash at every launch]."""

    op: ClassVar[str] = "manifest"
    handler: ClassVar[str] = "project.write_manifest"
    reply_type: ClassVar[Type[Any]] = Empty
    workdir: str
    project: str
    digest: str
    files: Dict[str, List[Any]]


@dataclass
class SyncFile:
    """A file of a project as the controller has it."""

    size: int
    digest: str
    mode: int
    mtime_ns: int


@dataclass
class SyncFilesReply:
    needs: List[str] = field(default_factory=list)
    """Files this node lacks or holds with other content; none: the directory matches and
    the manifest is recorded."""


@dataclass
class SyncFilesRequest(Request[SyncFilesReply]):
    """A sync over the agent's channel: write `contents` (name -> zlib-compressed data,
    base64), make `dirs`, bring mode and time of files already right in line, say which
    files must still be sent, and record the manifest once none must."""

    op: ClassVar[str] = "sync-files"
    handler: ClassVar[str] = "project.sync_files"
    reply_type: ClassVar[Type[Any]] = SyncFilesReply
    workdir: str
    project: str
    digest: str
    files: Dict[str, SyncFile]
    dirs: List[str] = field(default_factory=list)
    contents: Dict[str, str] = field(default_factory=dict)


@dataclass
class WriteRequest(Request[Empty]):
    """Write files (absolute or ~/ paths), each atomically, making their directories."""

    op: ClassVar[str] = "write"
    handler: ClassVar[str] = "records.write"
    reply_type: ClassVar[Type[Any]] = Empty
    files: Dict[str, str]


# ---- reachability probes -------------------------------------------------------------------


@dataclass
class Bound:
    wanted: int
    port: Optional[int] = None
    error: Optional[str] = None


@dataclass
class ListenReply:
    handle: int
    bound: List[Bound]


@dataclass
class ListenRequest(Request[ListenReply]):
    """Hold TCP listeners (port 0: any free one) until `release` or the agent ends."""

    op: ClassVar[str] = "listen"
    handler: ClassVar[str] = "probes.listen"
    reply_type: ClassVar[Type[Any]] = ListenReply
    ports: List[int]
    address: Optional[str] = None
    max_seconds: float = 120.0


@dataclass
class ReleaseRequest(Request[Empty]):
    op: ClassVar[str] = "release"
    handler: ClassVar[str] = "main.release"
    reply_type: ClassVar[Type[Any]] = Empty
    handle: int


@dataclass
class Target:
    node: str
    address: str
    port: int
    label: str
    bytes: int = 0
    """When non-zero, also send this many bytes to measure throughput."""


@dataclass
class Attempt:
    target: Target
    result: str
    """ok, timeout (silently dropped), refused, unreachable, error."""
    ms: Optional[float] = None
    mbit_s: Optional[float] = None
    error: Optional[str] = None


@dataclass
class ConnectReply:
    attempts: List[Attempt]
    resolved: Dict[str, Optional[str]]


@dataclass
class ConnectRequest(Request[ConnectReply]):
    op: ClassVar[str] = "connect"
    handler: ClassVar[str] = "probes.connect"
    reply_type: ClassVar[Type[Any]] = ConnectReply
    targets: List[Target]
    timeout: float = 2.0
    resolve: List[str] = field(default_factory=list)
    sequential: bool = False
    """One target after another (a re-measurement), instead of all at once."""


# ---- jobs -----------------------------------------------------------------------------------


@dataclass
class ErrorRecord:
    """The first exception of one rank, as the rank wrapper recorded it."""

    rank: int
    node: str
    time: float
    kind: str
    """exception, exit (non-zero SystemExit), signal (seen by its output reader)"""
    summary: str
    traceback: str
    exit_code: int = 1
    attempt: int = 0
    """torchrun's restart count when it happened (a restarted job's earlier failures are history)."""


@dataclass
class Mesh:
    """How a job's node supervisors find and watch each other (see the agent's mesh)."""

    coordinator: str
    """Node 0's training address."""
    port: int
    token: str
    nodes: List[str]
    node: str
    loss_timeout: float = 15.0
    """Seconds of silence before a node counts as lost. A closed connection (its supervisor
    died, its machine refused) is a fact and counts at once; silence may be a blip."""
    join_timeout: float = 60.0
    min_nodes: int = 0
    """With a restart policy: go on without a lost node while this many remain."""
    hang_timeout: float = 0.0
    spares: List[str] = field(default_factory=list)
    """Nodes (among `nodes`) whose launcher starts once the others' ranks run, to wait in
    the rendezvous for a lost node's place."""
    successor: str = ""
    """The node whose supervisor coordinates (at `successor_address:successor_port`)
    should node 0 be lost; "": the job ends with node 0."""
    successor_address: str = ""
    successor_port: int = 0
    addresses: List[str] = field(default_factory=list)
    """Every address of the job's nodes: a connection from any other is closed unread
    (empty: any address may try the handshake)."""
    restarts: int = 0
    """Whole-job restarts on the same nodes when a part fails (launchers without their own)."""
    replans: Dict[str, List[str]] = field(default_factory=dict)
    """Sorted lost nodes ("node1,node3") -> the nodes the job starts again on without them,
    in rank order (launchers that cannot go on without a node by themselves)."""


@dataclass
class JobState:
    """A job's record on one node, kept in its job directory."""

    job_id: str
    node: str
    state: JobStatus
    started: float
    ended: Optional[float] = None
    exit_code: Optional[int] = None
    signal: Optional[str] = None
    supervisor_pid: Optional[int] = None
    launcher_pid: Optional[int] = None
    argv: List[str] = field(default_factory=list)
    cwd: str = ""
    detached: bool = False
    reason: str = ""
    errors: List[ErrorRecord] = field(default_factory=list)
    left: List[Proc] = field(default_factory=list)
    lost: List[str] = field(default_factory=list)
    """Nodes this job lost (the job ended without them, or went on without them)."""
    hang: str = ""
    """Where this node's ranks were when the job hung (from their stacks)."""
    nproc: int = 0
    launcher: str = ""
    wrapped: bool = False
    """The ranks' lines are marked by the rank wrapper (the rest is the launcher's)."""
    rank_nodes: List[str] = field(default_factory=list)
    disk_full: Optional[float] = None
    """When writing this node's records first failed for want of space (they went on in
    memory from then); `disk_full_path` is where."""
    disk_full_path: str = ""
    gpu_faults: List["XidEvent"] = field(default_factory=list)
    """Hardware Xid events on this node's GPUs while the job ran (read when its part failed)."""
    nccl: List["NcclLine"] = field(default_factory=list)
    """The first lines (up to NCCL_KEPT) in which NCCL said what went wrong on this node."""
    controller_gone: Optional[float] = None
    """When the link to the controller that started this attached job last closed (the job
    goes on); None while it is there, and for a detached job."""
    spare: str = ""
    """On a spare: "waiting", "joined" (it took a lost node's place) or "not needed"."""
    restarts: List["Restart"] = field(default_factory=list)
    """Each time the job went on after losing a node (kept on node 0)."""
    metrics: Dict[str, float] = field(default_factory=dict)
    """The latest value of each metric in this node's output (lowest rank first), as
    `status` asks for it; not kept in the record."""
    waits: Dict[str, List[int]] = field(default_factory=dict)
    """Rank -> [stack samples taken while it ran, of which inside a collective]: the ranks
    that wait least are the ones the others wait for (supervise/straggler.py)."""


@dataclass
class Restart:
    """The job went on after losing a node: its ranks were restarted on the nodes left."""

    at: float
    lost: str
    cause: str
    nodes: List[str] = field(default_factory=list)
    """The nodes it went on with (spares that took a place included)."""
    resumed: Optional[float] = None
    """When ranks ran again on node 0 (None: they never did)."""


@dataclass
class OutputEvent:
    lines: List[Tuple[float, str]]


@dataclass
class LostEvent:
    """A node the job lost while it ran (sent by node 0's stream)."""

    lost: List[str]
    reason: str = ""


@dataclass
class EnvFile:
    """NAME=value lines for the job's own runner to export to every node: written in the
    job directory after the user's own files of that kind (home, then the working
    directory), and named to the runner by `variable`."""

    variable: str
    name: str
    merge: List[str] = field(default_factory=list)
    values: Dict[str, str] = field(default_factory=dict)


NODE_KEY_VARIABLE = "TRAINFLEET_NODE_KEY"
RESTART_VARIABLE = "TRAINFLEET_RESTART_COUNT"
"""Which start of the job this is (0, then 1 after the first whole-job restart), as
torchrun's TORCHELASTIC_RESTART_COUNT: a script that resumes from a checkpoint reads it."""
"""The one variable whose value a node supplies itself (its key: where its records are)."""


@dataclass
class NodeReplan:
    """This node's part of the job planned again without some lost nodes."""

    argv: List[str]
    env: Dict[str, str]


@dataclass
class LaunchRequest(Request[JobState]):
    """Start `argv` under a node supervisor that outlives this agent. Streams the job's
    output as OutputEvents and answers with its final state. With `detach` the
    answer comes once it has started and the job does not end with the agent."""

    op: ClassVar[str] = "launch"
    handler: ClassVar[str] = "job_requests.launch"
    streams: ClassVar[bool] = True
    reply_type: ClassVar[Type[Any]] = JobState
    job_id: str
    argv: List[str]
    cwd: str
    workdir: str
    env: Dict[str, str]
    """The plan's variables, as the plan (and --dry-run) says them."""
    secrets: Dict[str, str] = field(default_factory=dict)
    """Values redacted from the job's output; never written anywhere."""
    filled: List[str] = field(default_factory=list)
    """Variables the plan names whose values only the node has: a secret of that name (its
    value from `secrets`), or NODE_KEY_VARIABLE. Nothing else is added."""
    files: Dict[str, str] = field(default_factory=dict)
    """Written into the job directory before the start (the rank wrapper)."""
    grace: float = 10.0
    detach: bool = False
    path: List[str] = field(default_factory=list)
    """Directories put first on PATH."""
    python_path: List[str] = field(default_factory=list)
    """Directories put first on PYTHONPATH (the job directory's site/: trainfleet's sitecustomize)."""
    env_file: Optional[EnvFile] = None
    """Variables the job's own runner exports to every node (DeepSpeed's DS_ENV_FILE)."""
    after: List[List[str]] = field(default_factory=list)
    """Commands run when the job has ended, however it ended (removing its container)."""
    mesh: Optional[Mesh] = None
    tether: float = 0.0
    """An attached job ends once its controller, and any later viewer, has been gone this
    many seconds (`--tether`); 0: a lost controller never ends it (only a person does)."""
    holds_lock: bool = False
    """This job took this node's lock: its supervisor gives it back at the end."""
    nproc: int = 0
    """Ranks this node runs (a detached launch answers once they have all started)."""
    launcher: str = ""
    wrapped: bool = False
    """The ranks run under the rank wrapper (their lines are marked)."""
    rank_nodes: List[str] = field(default_factory=list)
    """The node of each rank whose output this node relays (mpirun), by global rank."""
    failover: List[str] = field(default_factory=list)
    """The argv to start instead should node 0 be lost (`mesh.successor` then coordinates)."""
    secrets_file: bool = False
    """Write `secrets` to the node's in-memory secrets file before the start (a container
    mounts it), and remove it at the end."""
    replans: Dict[str, NodeReplan] = field(default_factory=dict)
    """This node's part once the nodes of a key of `mesh.replans` are lost (none: it has no
    part then, as a spare another spare is chosen over)."""


@dataclass
class PrepareRequest(Request[Empty]):
    """Ready a node for a job that another node's runner will start processes in: the
    job directory and its files, the node's own variables, the secrets (a 0600 file in
    /dev/shm until the job ends), and files the runner expects (a hostfile)."""

    op: ClassVar[str] = "prepare"
    handler: ClassVar[str] = "job_requests.prepare"
    reply_type: ClassVar[Type[Any]] = Empty
    job_id: str
    workdir: str
    files: Dict[str, str] = field(default_factory=dict)
    env: Dict[str, str] = field(default_factory=dict)
    secrets: Dict[str, str] = field(default_factory=dict)
    write: Dict[str, str] = field(default_factory=dict)
    """Absolute (or ~/) path -> content."""


@dataclass
class LockReply:
    ok: bool
    holder: str = ""
    """The job that holds the fleet (when not ok)."""
    holder_state: Optional[JobStatus] = None


@dataclass
class LockRequest(Request[LockReply]):
    """Take the fleet for a job (on node 0): refused while another job holds it and runs.
    A lock whose job has ended, or whose supervisor died, is taken over."""

    op: ClassVar[str] = "lock"
    handler: ClassVar[str] = "lock.lock"
    reply_type: ClassVar[Type[Any]] = LockReply
    job_id: str
    workdir: str
    release: bool = False
    """Give it back (a launch that failed before its job started)."""


@dataclass
class JobsReply:
    states: List[JobState]


@dataclass
class JobsRequest(Request[JobsReply]):
    """The jobs this node has records of (one, when `job_id` is given)."""

    op: ClassVar[str] = "jobs"
    handler: ClassVar[str] = "records.jobs"
    reply_type: ClassVar[Type[Any]] = JobsReply
    workdir: str
    job_id: str = ""


@dataclass
class FollowRequest(Request[JobState]):
    """A job's output on this node as OutputEvents (from `since`); with `follow`, until
    the job ends; answers with its state."""

    op: ClassVar[str] = "follow"
    handler: ClassVar[str] = "logs.follow_request"
    streams: ClassVar[bool] = True
    reply_type: ClassVar[Type[Any]] = JobState
    job_id: str
    workdir: str
    since: float = 0.0
    follow: bool = False
    skip: int = 0
    """Lines of the log already received (a client that lost its link catches up from there)."""


@dataclass
class TopJob:
    job_id: str
    processes: int
    cpu_percent: float
    rss_bytes: int
    last_line: str = ""
    steps_per_s: Optional[float] = None


@dataclass
class TopGpu:
    index: str
    util: float
    """Percent busy."""
    memory_used: float
    memory_total: float
    """Bytes."""


@dataclass
class TopReply:
    cpu_percent: float
    memory_used: int
    memory_total: int
    gpus: List[TopGpu] = field(default_factory=list)
    jobs: List[TopJob] = field(default_factory=list)
    states: List[JobState] = field(default_factory=list)
    """Every job's record on this node (as `status` gets them), when asked for."""


@dataclass
class TopRequest(Request[TopReply]):
    op: ClassVar[str] = "top"
    handler: ClassVar[str] = "top.top"
    reply_type: ClassVar[Type[Any]] = TopReply
    workdir: str
    interval: float = 0.5
    states: bool = False
    """Also every job's record: the dashboard's one request per node per look."""


@dataclass
class StopRequest(Request[JobState]):
    """End a job on this node: its supervisor stops every process of it."""

    op: ClassVar[str] = "stop"
    handler: ClassVar[str] = "job_requests.stop"
    reply_type: ClassVar[Type[Any]] = JobState
    job_id: str
    workdir: str
    grace: float = 10.0
    reason: str = "stopped"


@dataclass
class SweepReply:
    left: List[Proc]
    errors: List[ErrorRecord] = field(default_factory=list)
    """The failure records of ranks of this job on this node."""


@dataclass
class SweepRequest(Request[SweepReply]):
    """Kill (optionally) and list every process that carries the job's id; report the
    job's failure records there and remove its secrets file."""

    op: ClassVar[str] = "sweep"
    handler: ClassVar[str] = "main.sweep"
    reply_type: ClassVar[Type[Any]] = SweepReply
    job_id: str
    kill: bool = True
    grace: float = 3.0
    workdir: str = ""


# ---- trust ----------------------------------------------------------------------------------


@dataclass
class TrustReply:
    changed: List[str]
    errors: List[str]


@dataclass
class TrustRequest(Request[TrustReply]):
    op: ClassVar[str] = "trust"
    handler: ClassVar[str] = "trust.trust"
    reply_type: ClassVar[Type[Any]] = TrustReply
    tag: str
    private_key: str
    public_key: str
    known_hosts: str
    ssh_config: str
    hosts: str = ""
    controller_key: str = ""
    """The controller's own public key: accepted from anywhere (a laptop's address changes)."""
    sources: List[str] = field(default_factory=list)
    """The addresses the fleet key is accepted from (`from=`); empty: from anywhere."""


@dataclass
class UntrustReply:
    restored: List[str]
    removed: List[str]


@dataclass
class UntrustRequest(Request[UntrustReply]):
    op: ClassVar[str] = "untrust"
    handler: ClassVar[str] = "trust.untrust"
    reply_type: ClassVar[Type[Any]] = UntrustReply
    tag: str


@dataclass
class CleanReply:
    removed: List[str]
    """What went (or, with dry_run, would go): paths, and lines or blocks as `FILE: what`."""
    kept: List[str]
    """What stays, the user's: each project's directory (code and outputs), with its size."""


@dataclass
class CleanRequest(Request[CleanReply]):
    """Remove what trainfleet left on this node: its caches (the agent, the resident agents'
    sockets: they leave), job records, in-memory leftovers, and the fleet's trust (`tag`);
    with `workdirs`, the projects it synced too."""

    op: ClassVar[str] = "clean"
    handler: ClassVar[str] = "clean.clean"
    reply_type: ClassVar[Type[Any]] = CleanReply
    workdir: str
    tag: str = ""
    workdirs: bool = False
    dry_run: bool = False


@dataclass
class Reach:
    ok: bool
    error: str = ""
    source: str = ""
    """The address the other node saw this connection come from (its SSH_CONNECTION)."""


@dataclass
class SSHMatrixReply:
    reach: Dict[str, Reach]


@dataclass
class SSHMatrixRequest(Request[SSHMatrixReply]):
    """From this node, `ssh ALIAS true` to every alias at once."""

    op: ClassVar[str] = "ssh_matrix"
    handler: ClassVar[str] = "trust.ssh_matrix"
    reply_type: ClassVar[Type[Any]] = SSHMatrixReply
    aliases: List[str]
    timeout: int = 5


# ---- firewall -------------------------------------------------------------------------------


@dataclass
class FirewallStep:
    """One rule: run `apply` unless `present` shows it is already there (exit status 0,
    or, when `marker` is set, `present`'s output contains the marker)."""

    apply: List[str]
    present: List[str] = field(default_factory=list)
    marker: str = ""
    describe: str = ""


@dataclass
class FirewallReply:
    backend: str
    added: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    closed: List[str] = field(default_factory=list)
    """The tools whose rules close the job's ports to everyone outside the fleet (revoke:
    whose closing it removed)."""
    still_open: str = ""
    """Why the job's ports stay open to strangers here, if they do."""


@dataclass
class FirewallRequest(Request[FirewallReply]):
    """apply: run the steps planned for the backend this node uses; revoke: remove every
    rule carrying the tag, whichever firewall holds it."""

    op: ClassVar[str] = "firewall"
    handler: ClassVar[str] = "firewall_backends.firewall"
    reply_type: ClassVar[Type[Any]] = FirewallReply
    action: str
    tag: str
    steps: Dict[str, List[FirewallStep]] = field(default_factory=dict)
    """Backend (iptables, nft, ufw) -> its steps; the node picks its own."""


# ---- push: files through a chain of nodes ----------------------------------------------------


@dataclass
class PushFile:
    path: str
    """Relative to the push's destination, with / between parts."""
    size: int
    sha256: str
    mode: int = 0o644
    """Permission bits, as the source file has them."""


@dataclass
class PushHaveReply:
    complete: List[str]
    """Files already there whole (same size and sha256)."""
    partial: Dict[str, int]
    """Bytes already received of the others (an earlier push that was cut short)."""
    handle: int = 0
    port: int = 0
    """A listener for this round's stream (from the controller's tunnel, or the node
    before), when some file is not complete here."""


@dataclass
class PushHaveRequest(Request[PushHaveReply]):
    op: ClassVar[str] = "push_have"
    handler: ClassVar[str] = "push.have"
    reply_type: ClassVar[Type[Any]] = PushHaveReply
    root: str
    files: List[PushFile]
    address: str = "127.0.0.1"
    """Where this node listens for the stream: its training address (the controller's
    tunnel ends there too), never every address the node has."""


@dataclass
class PushProgress:
    received: int
    """Bytes of this round's stream that this node has taken in so far."""


@dataclass
class PushReply:
    written: Dict[str, str]
    """File -> the sha256 of what this node wrote (equal to the sender's, or the file is not kept)."""
    received: int
    error: Optional[str] = None
    """Why the stream from upstream ended early (the node keeps what it got, to resume)."""
    forward_error: Optional[str] = None
    """Why the next node stopped taking the stream (this node went on without it)."""


@dataclass
class PushRequest(Request[PushReply]):
    """Take one stream on the listener `handle`: write the files this node needs (from
    `start`, truncating what it had there), and pass everything on to `forward`."""

    op: ClassVar[str] = "push"
    handler: ClassVar[str] = "push.receive"
    streams: ClassVar[bool] = True
    reply_type: ClassVar[Type[Any]] = PushReply
    handle: int
    token: str
    root: str
    start: Dict[str, int]
    """The files this node writes, and the offset the stream starts them at."""
    files: List[PushFile] = field(default_factory=list)
    """What each file must be (size, sha256, mode), as the controller has it: not what the
    stream says, which the node before in the chain could have changed."""
    forward: Optional[Target] = None
    forward_token: str = ""
    stall_timeout: float = 20.0


# ---- storage ---------------------------------------------------------------------------------


@dataclass
class MountItem:
    mount: str
    label: str
    role: str
    """client (a mount is made) or server (a directory is served)."""
    fstypes: List[str]
    commands: List[List[str]]
    undo: List[List[str]]
    env: Dict[str, str] = field(default_factory=dict)
    """Variable -> the name of the secret (in the request's `secrets`) that holds its value."""
    requires: List[str] = field(default_factory=list)


@dataclass
class MountResult:
    mount: str
    state: MountStatus
    detail: str = ""
    """For a failure: which command, and its output's tail."""


@dataclass
class StorageReply:
    results: List[MountResult]


@dataclass
class StorageRequest(Request[StorageReply]):
    """`action`: status, mount (what is missing) or umount."""

    op: ClassVar[str] = "storage"
    handler: ClassVar[str] = "mounts.storage"
    reply_type: ClassVar[Type[Any]] = StorageReply
    action: str
    items: List[MountItem]
    secrets: Dict[str, str] = field(default_factory=dict)


@dataclass
class ProbeReply:
    read: Dict[str, Optional[str]]
    """Path -> its content (None: no such file)."""
    errors: Dict[str, str]


@dataclass
class ProbeRequest(Request[ProbeReply]):
    """Write, read and remove small files, each with a time limit (a hung mount must not
    hang the caller)."""

    op: ClassVar[str] = "probe"
    handler: ClassVar[str] = "mounts.probe"
    reply_type: ClassVar[Type[Any]] = ProbeReply
    write: Dict[str, str] = field(default_factory=dict)
    read: List[str] = field(default_factory=list)
    remove: List[str] = field(default_factory=list)
    timeout: float = 10.0


# ---- a shell command, for `exec` through a resident agent ------------------------------------


@dataclass
class CommandOutput:
    stream: str
    """stdout or stderr"""
    line: str


@dataclass
class CommandExit:
    exit_status: Optional[int]
    """None when a signal ended it."""
    signal: str = ""


@dataclass
class CommandRequest(Request[CommandExit]):
    """`argv` run as sshd would run `exec` it for a session (new session, stdin a pipe the
    command's watchdog reads for liveness); its output as CommandOutput events. The
    pipe closes when this request's connection does: the watchdog then ends the command."""

    op: ClassVar[str] = "command"
    handler: ClassVar[str] = "commands.run"
    streams: ClassVar[bool] = True
    reply_type: ClassVar[Type[Any]] = CommandExit
    argv: List[str]


REQUESTS: Dict[str, Type[Any]] = {
    cls.op: cls
    for cls in (FactsRequest, ManifestRequest, SyncFilesRequest, WriteRequest, PrepareRequest, LockRequest,
                JobsRequest, FollowRequest, TopRequest, ListenRequest, ReleaseRequest, ConnectRequest, LaunchRequest, StopRequest,
                SweepRequest, TrustRequest, UntrustRequest, CleanRequest, SSHMatrixRequest, FirewallRequest, PushHaveRequest,
                PushRequest, StorageRequest, ProbeRequest, CommandRequest)
}


# ---- encoding ---------------------------------------------------------------------------------


def to_wire(value: Any) -> Dict[str, Any]:
    data = dataclasses.asdict(value)
    op = getattr(value, "op", "")
    if op:
        data["op"] = op
    return data


def decode(kind: Any, data: Any) -> Any:
    """Build a `kind` (a dataclass, or a typing generic of them) from JSON data."""
    if data is None:
        return None
    origin = getattr(kind, "__origin__", None)
    args = getattr(kind, "__args__", ())
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        return decode(inner[0], data) if len(inner) == 1 else data
    if origin in (list, List):
        return [decode(args[0], item) for item in data]
    if origin in (tuple, Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], item) for item in data)
        return tuple(decode(a, item) for a, item in zip(args, data))
    if origin in (dict, Dict):
        return {key: decode(args[1], item) for key, item in data.items()}
    if isinstance(kind, type) and issubclass(kind, Enum):
        return kind(data)
    if dataclasses.is_dataclass(kind):
        hints = _hints(kind)
        values = {}
        for item in dataclasses.fields(kind):
            if item.name in data and item.init:
                values[item.name] = decode(hints[item.name], data[item.name])
        return kind(**values)
    return data


_HINTS: Dict[Any, Dict[str, Any]] = {}


def _hints(kind: Any) -> Dict[str, Any]:
    if kind not in _HINTS:
        _HINTS[kind] = get_type_hints(kind, vars(sys.modules[kind.__module__]))
    return _HINTS[kind]


def request_from_wire(data: Dict[str, Any]) -> Any:
    kind = REQUESTS.get(data.get("op", ""))
    if kind is None:
        raise ValueError("unknown request %r" % data.get("op"))
    return decode(kind, data)
