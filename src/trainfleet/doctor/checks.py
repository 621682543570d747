"""Doctor's checks: pure functions from what was gathered on the nodes to findings.

Each check names what it looked at, gives a verdict, the evidence, and a remedy. The
gathering (SSH, the node agent, test listeners) lives in `ops/doctor.py`. Only what
matters for training fails; a job of this fleet that is running is information.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from trainfleet.agent.protocol import JobStatus, Attempt, Bound, FactsReply
from trainfleet.fleet.model import Fleet
from trainfleet.plans.network import NetworkChoice
from trainfleet.results import fold_nodes
from trainfleet.plans.mounts import Visibility

GIB = 1024**3
LATENCY_FLOOR_MS = 10.0
"""Connection set-up slower than this (and than its peers) hurts collectives."""
BANDWIDTH_FLOOR_MBIT = 1000.0
"""A training link below 1 Gbit/s fails; a slower-than-its-peers link above it warns."""


class Verdict(str, Enum):
    OK = "ok"
    INFO = "info"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    check: str
    verdict: Verdict
    nodes: tuple[str, ...]
    summary: str
    remedy: str = ""
    evidence: str = ""

    def to_json(self) -> dict[str, object]:
        return {"check": self.check, "verdict": self.verdict.value, "nodes": list(self.nodes),
                "summary": self.summary, "remedy": self.remedy, "evidence": self.evidence}


@dataclass(frozen=True)
class Measured:
    """One connection attempt from `source`, re-measured alone when it looked slow."""

    source: str
    attempt: Attempt
    confirmed: Attempt | None = None

    @property
    def target(self) -> str:
        return self.attempt.target.node

    @property
    def best(self) -> Attempt:
        """The better of the two measurements: a slow pair is slow in both."""
        if self.confirmed is None or self.confirmed.result != "ok":
            return self.attempt
        if self.attempt.target.bytes:
            return max(self.attempt, self.confirmed, key=lambda a: a.mbit_s or 0.0)
        return min(self.attempt, self.confirmed, key=lambda a: a.ms if a.ms is not None else float("inf"))


@dataclass
class Gathered:
    """Everything doctor learned, per node; checks only read it."""

    fleet: Fleet
    rdzv_port: int
    ssh_errors: dict[str, str] = field(default_factory=dict)
    agent_errors: dict[str, str] = field(default_factory=dict)
    login_pythons: dict[str, list[str]] = field(default_factory=dict)
    """For nodes whose agent could not start: what a login shell finds instead."""
    facts: dict[str, FactsReply] = field(default_factory=dict)
    skew: dict[str, tuple[float, float]] = field(default_factory=dict)
    """node -> (clock offset estimate in s, its uncertainty in s)."""
    choices: dict[str, NetworkChoice] = field(default_factory=dict)
    listeners: dict[str, dict[str, Bound]] = field(default_factory=dict)
    """node -> label (rendezvous, ephemeral) -> what was bound."""
    measured: list[Measured] = field(default_factory=list)
    resolved: dict[str, dict[str, str | None]] = field(default_factory=dict)
    project: str = ""
    """The current directory's project directory on the nodes ("" when there is none)."""
    storage: list[Visibility] = field(default_factory=list)
    exposed: dict[str, list[str]] = field(default_factory=dict)
    """Job ports (as `label port`) this machine, not a fleet node, could connect to."""
    probed_from_here: bool = False
    cordoned: dict[str, dict[str, object]] = field(default_factory=dict)
    """Nodes `run` leaves out (a job lost them), from the controller's state of the fleet."""

    @property
    def live(self) -> list[str]:
        return [n.name for n in self.fleet.nodes if n.name in self.facts]


Check = Callable[[Gathered], list[Finding]]


def _split_fix(reason: str) -> tuple[str, str]:
    summary, _, fix = reason.partition("; fix: ")
    return summary, fix


def check_ssh(data: Gathered) -> list[Finding]:
    findings = []
    alike: dict[tuple[str, str], list[tuple[str, str]]] = {}  # nodes that fail the same way, one row
    for node in data.fleet.nodes:
        if node.name in data.ssh_errors:
            summary, fix = _split_fix(data.ssh_errors[node.name])
            address = f"{node.host}:{node.port}"
            alike.setdefault((summary.replace(address, "its SSH address"), fix), []).append((node.name, summary))
    for (shared, fix), failed in alike.items():
        if len(failed) == 1:
            findings.append(Finding("ssh", Verdict.FAIL, (failed[0][0],), failed[0][1], fix))
        else:
            addresses = ", ".join(f"{n.name} {n.host}:{n.port}" for n in data.fleet.nodes if n.name in dict(failed))
            findings.append(Finding("ssh", Verdict.FAIL, tuple(n for n, _ in failed), shared, fix, evidence=addresses))
    reached = [n.name for n in data.fleet.nodes if n.name not in data.ssh_errors]
    if reached:
        findings.append(Finding("ssh", Verdict.OK, tuple(reached), "reachable, host key verified, key accepted"))
    return findings


BOOTSTRAP_FIX = ("make it on every node with `setup:` in the fleet file (e.g. `python3 -m venv ~/venv && "
                 "~/venv/bin/pip install torch`, with `python: ~/venv/bin/python`), then `trainfleet setup`")


def check_shell(data: Gathered) -> list[Finding]:
    """The non-interactive SSH shell (how trainfleet, pdsh and DeepSpeed run) must find
    the fleet's Python (the job's). The node agent runs on it, or on python3 where it is
    not there yet; a node with neither fails."""
    findings = []
    missing = {name: f.python_missing for name, f in data.facts.items() if f.python_missing}
    for name, reason in [*data.agent_errors.items(), *missing.items()]:
        found = data.login_pythons.get(name) or []
        if found:
            reason += f" (a login shell finds {', '.join(found)})"
            remedy = (f"set `python: {found[0]}` in the fleet file (or the Python with torch), or export PATH in "
                      f"~/.bashrc above its interactive-only guard; or {BOOTSTRAP_FIX}")
        elif name in missing:
            remedy = f"set `python:` to the full path of the Python with torch, or {BOOTSTRAP_FIX}"
        else:  # not even python3: the agent has nothing to run on
            remedy = "install python3 (3.8 or newer) on the node, e.g. `sudo apt install python3`"
        findings.append(Finding("shell", Verdict.FAIL, (name,), reason, remedy))
    found_everywhere = [n for n in data.live if n not in missing]
    if found_everywhere:
        findings.append(Finding("shell", Verdict.OK, tuple(found_everywhere),
                                f"non-interactive SSH finds `{data.fleet.python}`"))
    return findings


def check_network(data: Gathered) -> list[Finding]:
    findings = []
    for name, choice in data.choices.items():
        if choice.problem:
            findings.append(Finding("network", Verdict.FAIL, (name,), choice.problem,
                                    "correct `address:` / `interface:` for this node in the fleet file"))
        else:
            findings.append(Finding("network", Verdict.OK, (name,),
                                    f"training traffic on {choice.interface or '?'} ({choice.reason})",
                                    evidence=f"{name}: {choice.interface} {choice.address}"))
    return findings


def _blame(failures: Sequence[tuple[str, str]], attempts: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Which node to name for failed (source, destination) pairs: a destination that no
    source reaches, or a source that reaches no destination; otherwise the pair."""
    blamed: dict[str, list[str]] = {}
    failed = set(failures)
    destinations = {dst for _, dst in attempts}
    sources = {src for src, _ in attempts}
    for dst in sorted(destinations):
        tried = [pair for pair in attempts if pair[1] == dst]
        if len(tried) > 1 and all(pair in failed for pair in tried):
            blamed.setdefault(dst, []).append("incoming")
            failed -= set(tried)
    for src in sorted(sources):
        tried = [pair for pair in attempts if pair[0] == src]
        if len(tried) > 1 and all(pair in failed for pair in tried):
            blamed.setdefault(src, []).append("outgoing")
            failed -= set(tried)
    for src, dst in sorted(failed):
        blamed.setdefault(dst, []).append(f"from {src}")
    return blamed


_RESULT_CAUSE = {
    "timeout": ("DROP", "packets are silently dropped (a firewall DROP rule, or a security group)"),
    "refused": ("REJECT", "connections are refused although doctor's listener was up (a firewall REJECT rule)"),
    "unreachable": ("unreachable", "no route to the address (wrong subnet, link down, or ICMP host-prohibited)"),
    "error": ("error", "the connection failed"),
}


def _running_jobs(data: Gathered, node: str) -> set[str]:
    return {job.job_id for job in data.facts[node].jobs if job.live} if node in data.facts else set()


def check_ports(data: Gathered) -> list[Finding]:
    findings: list[Finding] = []
    for name, ports in data.listeners.items():
        for label, bound in ports.items():
            if not bound.error:
                continue
            holder = (data.facts[name].ports or {}).get(str(bound.wanted)) if name in data.facts else None
            if holder is not None and holder.job_id and holder.job_id in _running_jobs(data, name):
                findings.append(Finding("ports", Verdict.INFO, (name,),
                                        f"{label} port {bound.wanted} is used by running job {holder.job_id}",
                                        "`run` picks another free port while it runs"))
                continue
            who = f" by pid {holder.pid} ({holder.cmdline})" if holder is not None and holder.pid else ""
            findings.append(Finding(
                "ports", Verdict.FAIL, (name,), f"{label} port {bound.wanted} is in use{who}",
                "stop that process (an earlier job?), or pass `--port` to run"))
    by_label: dict[str, list[Measured]] = {}
    for measured in data.measured:
        by_label.setdefault(measured.attempt.target.label, []).append(measured)
    for label, attempts in sorted(by_label.items()):
        pairs = [(m.source, m.target) for m in attempts]
        bad = [m for m in attempts if m.attempt.result != "ok"]
        if not bad:
            findings.append(Finding("ports", Verdict.OK, tuple(sorted({m.target for m in attempts})),
                                    f"{label} port reachable from every peer tried"))
            continue
        for result in sorted({m.attempt.result for m in bad}):
            failures = [(m.source, m.target) for m in bad if m.attempt.result == result]
            kind, cause = _RESULT_CAUSE.get(result, _RESULT_CAUSE["error"])
            for node, how in _blame(failures, pairs).items():
                port = next(m.attempt.target.port for m in bad if m.target == node or m.source == node)
                findings.append(Finding(
                    "ports", Verdict.FAIL, (node,), f"{label} port {port}: {kind} ({', '.join(how)}): {cause}",
                    f"allow TCP between fleet nodes on {node} (`trainfleet firewall apply` adds exactly the "
                    f"rules `trainfleet firewall plan` lists); do not disable the firewall",
                    evidence="; ".join(f"{m.source}->{m.target}:{m.attempt.target.port} {m.attempt.result}"
                                       for m in bad)))
    return findings


def check_links(data: Gathered) -> list[Finding]:
    """Latency and throughput outliers against the best pair, each confirmed by a second
    measurement taken alone: one noisy sample on a loaded machine is not a slow link."""
    findings: list[Finding] = []
    latency = [m for m in data.measured if m.attempt.result == "ok" and m.attempt.ms is not None]
    if len(latency) >= 2:
        fastest = min(m.attempt.ms or 0.0 for m in latency)  # the concurrent round: like with like
        slow = [m for m in latency if latency_suspect(m.best.ms or 0.0, fastest)]
        findings += _outliers("latency", slow, latency, lambda m: f"{m.best.ms:.1f} ms",
                              "connection set-up takes {value} (fastest pair: " + f"{fastest:.1f} ms)",
                              "check this node's link (tc qdisc, a congested or misrouted path); NCCL/gloo "
                              "collectives wait on the slowest link",
                              fails=lambda m: (m.best.ms or 0.0) > LATENCY_FLOOR_MS)
    throughput = [m for m in data.measured if m.attempt.result == "ok" and m.attempt.mbit_s is not None]
    if len(throughput) >= 2:
        best = max(m.attempt.mbit_s or 0.0 for m in throughput)
        slow = [m for m in throughput if bandwidth_suspect(m.best.mbit_s or 0.0, best)]
        findings += _outliers("bandwidth", slow, throughput, lambda m: f"{m.best.mbit_s:.0f} Mbit/s",
                              "throughput {value} (best pair: " + f"{best:.0f} Mbit/s)",
                              "check this node's NIC speed and any rate limit (tc qdisc, cloud bandwidth tier); "
                              "every all-reduce runs at the slowest link",
                              fails=lambda m: (m.best.mbit_s or 0.0) < BANDWIDTH_FLOOR_MBIT)
        alone = max(m.best.mbit_s or 0.0 for m in throughput)  # re-measured pairs had the wire to themselves
        if alone < BANDWIDTH_FLOOR_MBIT:
            findings.append(Finding("bandwidth", Verdict.WARN, tuple(sorted({m.source for m in throughput})),
                                    f"no link measures more than {alone:.0f} Mbit/s",
                                    "training traffic will be slow on every node: use a faster network"))
    return findings


def latency_suspect(ms: float, fastest: float) -> bool:
    return ms > max(4 * fastest, fastest + 5.0)


def bandwidth_suspect(mbit_s: float, best: float) -> bool:
    return mbit_s < best / 4


def _outliers(check: str, slow: list[Measured], measured: list[Measured], value: Callable[[Measured], str],
              summary: str, remedy: str, fails: Callable[[Measured], bool]) -> list[Finding]:
    nodes = sorted({m.target for m in measured} | {m.source for m in measured})
    if not slow:
        return [Finding(check, Verdict.OK, tuple(nodes), f"no slow link among {len(measured)} measured pair(s)")]
    # The node whose measured pairs are slow most often (as a share of its pairs: node 0
    # takes part in more measurements than the others).
    slow_count: dict[str, int] = {}
    measured_count: dict[str, int] = {}
    for item in measured:
        for node in {item.source, item.target}:
            measured_count[node] = measured_count.get(node, 0) + 1
            if item in slow:
                slow_count[node] = slow_count.get(node, 0) + 1
    share = {node: count / measured_count[node] for node, count in slow_count.items()}
    top = max(share.values())
    culprits = sorted(n for n, s in share.items() if s == top)
    worst = slow[0]
    for item in slow:
        if check == "bandwidth" and (item.best.mbit_s or 0) < (worst.best.mbit_s or 0):
            worst = item
        elif check == "latency" and (item.best.ms or 0) > (worst.best.ms or 0):
            worst = item
    verdict = Verdict.FAIL if fails(worst) else Verdict.WARN
    evidence = "; ".join(f"{m.source}->{m.target} {value(m)}" for m in slow)
    return [Finding(check, verdict, tuple(culprits), summary.format(value=value(worst)), remedy, evidence)]


def check_hostnames(data: Gathered) -> list[Finding]:
    findings = []
    addresses = {n.name: {n.address, n.host} | ({data.choices[n.name].address} if n.name in data.choices else set())
                 for n in data.fleet.nodes}
    unresolved: dict[str, str] = {}  # node -> its hostname, where no peer resolves it
    for target in data.live:
        hostname = data.facts[target].hostname
        missing = [src for src, table in data.resolved.items() if src != target and not table.get(hostname)]
        wrong = [src for src, table in data.resolved.items()
                 if src != target and table.get(hostname) and table[hostname] not in addresses[target]]
        if missing:
            peers = len([n for n in data.resolved if n != target])
            if len(missing) == peers:
                unresolved[target] = hostname
                continue
            findings.append(Finding(
                "hostnames", Verdict.INFO, (target,), f"its hostname does not resolve on {fold_nodes(missing)}",
                "trainfleet passes addresses explicitly, so `run` is unaffected; scripts that reach peers by "
                "hostname need `trainfleet ssh setup --hosts-file` or MASTER_ADDR",
                evidence=f"{target}: {hostname} unresolved on {fold_nodes(missing)}"))
        if wrong:
            findings.append(Finding(
                "hostnames", Verdict.WARN, (target,),
                f"its hostname {hostname!r} resolves elsewhere on {fold_nodes(wrong)}",
                "fix /etc/hosts (a stale entry from an earlier machine?)"))
    if unresolved:  # one line for them all (at 128 nodes, one a node would fill the screen)
        findings.insert(0, Finding(
            "hostnames", Verdict.INFO, tuple(unresolved), "its hostname does not resolve on its peers",
            "trainfleet passes addresses explicitly, so `run` is unaffected; scripts that reach peers by "
            "hostname need `trainfleet ssh setup --hosts-file` or MASTER_ADDR",
            evidence=f"{fold_nodes(list(unresolved.values()))} unresolved on every peer"))
    return findings


def check_workdir_shared(data: Gathered) -> list[Finding]:
    """A workdir that several nodes see as one (an NFS home): fine, and worth knowing."""
    keys = {name: data.facts[name].node_key for name in data.live if data.facts[name].node_key}
    groups: list[list[str]] = []
    for name in data.live:
        seen = set(data.facts[name].workdir_keys)
        group = sorted(other for other, key in keys.items() if key in seen)
        if len(group) > 1 and group not in groups:
            groups.append(group)
    return [Finding("workdir", Verdict.INFO, tuple(group),
                    f"the workdir {data.fleet.workdir} is one shared directory on {fold_nodes(group)} (an NFS home?)",
                    "nothing to do for trainfleet (each node keeps its records apart); have one rank write each "
                    "checkpoint, or write them to a path of each node's own")
            for group in groups]


def _gpu_driver(facts: FactsReply) -> str | None:
    return facts.gpu.gpus[0].driver if facts.gpu and facts.gpu.gpus else None


_CONSISTENT: dict[str, Callable[[FactsReply], str | None]] = {
    "python": lambda f: f.python.version if f.python else None,
    "torch": lambda f: (f.torch.version if f.torch else "not installed"),
    "CUDA (torch build)": lambda f: f.torch.cuda if f.torch else None,
    "NCCL": lambda f: f.torch.nccl if f.torch else None,
    "GPU driver": _gpu_driver,
}


_SOFTWARE = ("python", "torch", "CUDA (torch build)", "NCCL")


def check_consistency(data: Gathered) -> list[Finding]:
    findings = []
    for what, read in _CONSISTENT.items():
        # (A node without the fleet's Python is said once, by `shell`; its torch is unknown.)
        values = {name: read(data.facts[name]) for name in data.live
                  if not (what in _SOFTWARE and data.facts[name].python_missing)}
        if not any(v is not None for v in values.values()):
            continue
        groups: dict[str, list[str]] = {}
        for name, value in values.items():
            groups.setdefault(str(value) if value is not None else "(none)", []).append(name)
        if len(groups) == 1:
            value = next(iter(groups))
            verdict = Verdict.FAIL if what == "torch" and value == "not installed" else Verdict.OK
            remedy = f"install torch for `{data.fleet.python}` on every node" if verdict is Verdict.FAIL else ""
            findings.append(Finding("versions", verdict, tuple(values), f"{what}: {value} everywhere", remedy))
            continue
        majority = max(groups.values(), key=len)
        common = next(v for v, ns in groups.items() if ns is majority)
        for value, nodes in groups.items():
            if nodes is majority:
                continue
            findings.append(Finding("versions", Verdict.FAIL, tuple(nodes),
                                    f"{what} is {value} here but {common} on {fold_nodes(majority)}",
                                    f"install the same {what} on every node"))
    return findings


def check_code(data: Gathered) -> list[Finding]:
    """This directory's project on the nodes: synced everywhere, the same, unedited."""
    states = {n: data.facts[n].project for n in data.live}
    synced = {n: s for n, s in states.items() if s is not None and s.manifest}
    if not data.project or not synced:
        return []
    findings = []
    missing = [n for n in data.live if n not in synced]
    if missing:
        findings.append(Finding("code", Verdict.FAIL, tuple(missing), f"project {data.project} is not synced here",
                                "run `trainfleet sync`"))
    for node, state in synced.items():
        if state.changed:
            findings.append(Finding("code", Verdict.FAIL, (node,),
                                    f"synced files changed on the node since: {', '.join(state.changed[:5])}",
                                    "run `trainfleet sync` to put your copy back"))
    groups: dict[str, list[str]] = {}
    for node, state in synced.items():
        groups.setdefault(state.manifest or "", []).append(node)
    if len(groups) > 1:
        majority = max(groups.values(), key=len)
        for nodes in groups.values():
            if nodes is not majority:
                findings.append(Finding("code", Verdict.FAIL, tuple(nodes),
                                        f"holds other code than {fold_nodes(majority)} (synced at another time)",
                                        "run `trainfleet sync` so every node has the same code"))
    if not findings:
        findings.append(Finding("code", Verdict.OK, tuple(synced), f"the same code of {data.project} everywhere"))
    return findings


def check_gpus(data: Gathered) -> list[Finding]:
    findings = []
    none = [n for n in data.live if data.facts[n].gpu is None]
    if none:
        findings.append(Finding("gpus", Verdict.WARN, tuple(none), "no NVIDIA GPU (no nvidia-smi): ranks will use "
                                "the CPU and gloo", "install the NVIDIA driver if this node should have GPUs"))
    for name in data.live:
        gpu = data.facts[name].gpu
        if gpu is None:
            continue
        if gpu.error:
            findings.append(Finding("gpus", Verdict.FAIL, (name,), f"nvidia-smi failed ({gpu.error})",
                                    "check the driver: `nvidia-smi` on the node"))
            continue
        slots = data.fleet.node(name).slots
        if len(gpu.gpus) < slots:
            findings.append(Finding("gpus", Verdict.FAIL, (name,), f"{len(gpu.gpus)} GPU(s) but slots: {slots}",
                                    f"set `slots: {len(gpu.gpus)}` for this node"))
        running = _running_jobs(data, name)
        busy = [f"GPU {g.index}: " + ", ".join(f"pid {p.pid} {p.cmdline}" for p in g.busy)
                for g in gpu.gpus if any(p.job_id not in running for p in g.busy)]
        if busy:
            findings.append(Finding("gpus", Verdict.FAIL, (name,), "GPUs already in use: " + "; ".join(busy),
                                    "end the other job first (stale processes from an earlier run?)"))
        elif len(gpu.gpus) >= slots:
            findings.append(Finding("gpus", Verdict.OK, (name,), f"{len(gpu.gpus)} GPU(s), idle, >= slots"))
    return findings


def check_gpu_health(data: Gathered) -> list[Finding]:
    """Xid events, ECC, row remapping, PCIe links, hardware slowdowns, persistence, and a
    GPU model that differs from the rest (doctor/gpu_health.py)."""
    from trainfleet.doctor.gpu_health import fleet_findings, node_findings

    findings = []
    infos = {n: data.facts[n].gpu_health for n in data.live if data.facts[n].gpu_health is not None}
    for name, info in infos.items():
        for verdict, summary, remedy, evidence in node_findings(name, info):  # type: ignore[arg-type]
            findings.append(Finding("gpu health", Verdict(verdict), (name,), summary, remedy, evidence))
    for nodes, summary, remedy in fleet_findings(infos):  # type: ignore[arg-type]
        findings.append(Finding("gpu health", Verdict.WARN, nodes, summary, remedy))
    healthy = [n for n, info in infos.items() if info.gpus and not any(
        f.nodes == (n,) and f.verdict in (Verdict.FAIL, Verdict.WARN) for f in findings)]
    if healthy:
        findings.append(Finding("gpu health", Verdict.OK, tuple(healthy),
                                "no Xid errors, ECC errors, pending remaps, narrow links or hardware slowdowns"))
    return findings


def check_rdma(data: Gathered) -> list[Finding]:
    """InfiniBand / RoCE ports: down where NCCL would use them, NCCL_IB_HCA naming none,
    and links slower than the rest's (doctor/rdma.py)."""
    from trainfleet.doctor.rdma import fleet_findings, node_findings

    hca = data.fleet.env.get("NCCL_IB_HCA", "")
    ports = {n: data.facts[n].ib_ports for n in data.live}
    if not any(ports.values()) and not hca:
        return []  # no RDMA anywhere: nothing to say
    findings = [Finding("rdma", Verdict(verdict), (name,), summary, remedy)
                for name, listed in ports.items() for verdict, summary, remedy in node_findings(name, listed, hca)]
    findings += [Finding("rdma", Verdict.WARN, nodes, summary, remedy) for nodes, summary, remedy in
                 fleet_findings(ports, hca)]
    healthy = [n for n, listed in ports.items() if listed and not any(n in f.nodes for f in findings)]
    if healthy:
        findings.append(Finding("rdma", Verdict.OK, tuple(healthy), "RDMA ports up, at the same rate as the rest"))
    return findings


def check_disk(data: Gathered) -> list[Finding]:
    findings = []
    container = data.fleet.container
    podman = container is not None and container.engine == "podman"
    engine_root = "podman storage root" if podman else "Docker data-root"
    move = ("`--root DIR` in container.engine_options" if podman
            else '{"data-root": DIR} in /etc/docker/daemon.json, then restart docker')
    for name in data.live:
        facts = data.facts[name]
        for label, disk in (("workdir", facts.disk), (engine_root, facts.container_disk)):
            if disk is None:
                continue
            where = f"{label} {disk.path}"
            if disk.free < 1 * GIB:
                fix = ("free space or point `workdir:` at a bigger disk; checkpoints will fail" if label == "workdir"
                       else f"free space, or put the {label} on a bigger disk ({move}) before images and data go "
                            f"in, else they fail with `No space left on device`")
                findings.append(Finding("disk", Verdict.FAIL, (name,), f"{where}: only {disk.free / 2**20:.0f} MiB free",
                                        fix))
            elif disk.free < 10 * GIB:
                findings.append(Finding("disk", Verdict.WARN, (name,), f"{where}: {disk.free / GIB:.1f} GiB free",
                                        "checkpoints of large models need more room"))
    ok = [n for n in data.live if not any(f.nodes == (n,) for f in findings)]
    # Where the engine keeps images is worth knowing even when it has room: grouped by path.
    by_root: dict[str, list[str]] = {}
    for name in ok:
        disk = data.facts[name].container_disk
        by_root.setdefault(disk.path if disk else "", []).append(name)
    for root, nodes in by_root.items():
        also = f" and in the {engine_root} {root}" if root else ""
        findings.append(Finding("disk", Verdict.OK, tuple(nodes), f"at least 10 GiB free in the workdir{also}"))
    return findings


def check_clock(data: Gathered) -> list[Finding]:
    findings = []
    for name, (offset, uncertainty) in data.skew.items():
        beyond = abs(offset) - uncertainty
        if beyond > 30:
            verdict = Verdict.FAIL
        elif beyond > 1:
            verdict = Verdict.WARN
        else:
            continue
        findings.append(Finding("clock", verdict, (name,), f"clock is {offset:+.1f}s off the controller's",
                                "enable time sync (chrony / systemd-timesyncd); logs and timeouts rely on it"))
    synced = [n for n in data.skew if not any(f.nodes == (n,) for f in findings)]
    if synced:
        findings.append(Finding("clock", Verdict.OK, tuple(synced), "clock within 1 s of the controller"))
    return findings


def check_jobs(data: Gathered) -> list[Finding]:
    """Jobs of trainfleet on the nodes: a running one is information; processes of a job
    that has ended (or whose supervisor is gone) are left over and in the way."""
    findings = []
    for name in data.live:
        for job in data.facts[name].jobs:
            pids = " ".join(str(p.pid) for p in job.processes)
            if job.live:
                findings.append(Finding("jobs", Verdict.INFO, (name,),
                                        f"job {job.job_id} is running ({len(job.processes)} process(es))"))
                continue
            first = job.processes[0].cmdline if job.processes else ""
            ended = f"job {job.job_id} ({job.state})" if job.state != JobStatus.UNKNOWN else f"earlier job {job.job_id}"
            findings.append(Finding("jobs", Verdict.FAIL, (name,),
                                    f"processes of {ended} still run (pids {pids}: {first})",
                                    f"end them: `trainfleet exec -n {name} -- kill {pids}`"))
    clean = [n for n in data.live if not data.facts[n].jobs]
    if clean:
        findings.append(Finding("jobs", Verdict.OK, tuple(clean), "no processes left from earlier jobs"))
    return findings


def check_storage(data: Gathered) -> list[Finding]:
    """Each storage mounted on every node, and a file written through it on one node read on all the others."""
    findings = []
    for seen in data.storage:
        where = f"{seen.label} at {seen.storage.mount}"
        if seen.absent:
            findings.append(Finding("storage", Verdict.FAIL, seen.absent, f"{where} is not mounted",
                                    "`trainfleet mount` mounts it (and `trainfleet run` does before a job)"))
        if seen.error:
            findings.append(Finding("storage", Verdict.FAIL, (seen.writer or "",), f"{where}: {seen.error}",
                                    "check the mount's permissions and free space"))
            continue
        for node, what in sorted(seen.unseen.items()):
            findings.append(Finding("storage", Verdict.FAIL, (node,),
                                    f"{where}: a file written on {seen.writer} is not read here ({what})",
                                    "`trainfleet umount` then `trainfleet mount`; a stale mount serves old data"))
        seeing = tuple(n for n in seen.mounted if n not in seen.unseen)
        if seen.writer and len(seeing) == len(data.fleet.nodes):
            findings.append(Finding("storage", Verdict.OK, seeing,
                                    f"{where}: a file written on {seen.writer} is read on every node"))
    return findings + _nfs_in_the_open(data)


def _nfs_in_the_open(data: Gathered) -> list[Finding]:
    """NFS (AUTH_SYS: it believes the client's address and uid) served by a node to the
    others over public addresses: whoever can send from such an address is believed."""
    import ipaddress

    served = [s for s in data.fleet.storage if s.type == "nfs" and not s.server]
    public = []
    for name, choice in data.choices.items():
        try:
            if ipaddress.ip_address(choice.address).is_global:
                public.append(name)
        except ValueError:
            continue
    if not served or not public:
        return []
    return [Finding("storage", Verdict.WARN, tuple(public),
                    f"NFS {', '.join(s.mount for s in served)} travels over public addresses (NFS believes the "
                    f"client's address and uid)",
                    "use a private network between the nodes (`interface:`/`address:`), and `trainfleet firewall "
                    "apply` (which leaves 2049 to the fleet alone)")]


def check_exposed(data: Gathered) -> list[Finding]:
    """torch's store (unauthenticated, pickled state) and the ranks' ports, reachable by
    anyone who reaches the node: named, with the fix."""
    findings = [Finding("exposure", Verdict.WARN, (name,),
                        "job ports reachable from outside the fleet (from this machine, which is not a fleet node)",
                        "`trainfleet firewall apply` closes them to everyone but the fleet (SSH stays open)",
                        evidence=f"{name}: {', '.join(ports)}")
                for name, ports in sorted(data.exposed.items())]
    closed = [n.name for n in data.fleet.nodes if n.name in data.listeners and n.name not in data.exposed]
    if data.probed_from_here and closed:
        findings.append(Finding("exposure", Verdict.OK, tuple(closed),
                                "job ports closed to this machine (not a fleet node)"))
    return findings


def check_cordoned(data: Gathered) -> list[Finding]:
    """A cordoned node that looks healthy again is the user's call to let back in."""
    findings = []
    for name, entry in data.cordoned.items():
        job = f" by job {entry['job']}" if entry.get("job") else ""
        findings.append(Finding("cordon", Verdict.WARN, (name,),
                                f"cordoned ({entry.get('why', 'lost')}{job}): `run` leaves it out",
                                f"once the checks here pass for it, `trainfleet uncordon {name}`"))
    return findings


CHECKS: tuple[tuple[str, Check], ...] = (
    ("ssh", check_ssh),
    ("shell", check_shell),
    ("network", check_network),
    ("ports", check_ports),
    ("links", check_links),
    ("hostnames", check_hostnames),
    ("workdir", check_workdir_shared),
    ("versions", check_consistency),
    ("code", check_code),
    ("gpus", check_gpus),
    ("gpu health", check_gpu_health),
    ("rdma", check_rdma),
    ("disk", check_disk),
    ("storage", check_storage),
    ("clock", check_clock),
    ("jobs", check_jobs),
    ("exposure", check_exposed),
    ("cordon", check_cordoned),
)


def evaluate(data: Gathered) -> list[Finding]:
    findings: list[Finding] = []
    for _, check in CHECKS:
        findings += check(data)
    return fold(findings)


_ORDER = {"ssh": 0, "shell": 1, "network": 2, "ports": 3, "latency": 4, "bandwidth": 4, "hostnames": 5,
          "versions": 6, "code": 7, "gpus": 8, "gpu health": 8, "disk": 9, "storage": 10, "clock": 11, "jobs": 12, "exposure": 13, "cordon": 14}


def fold(findings: Sequence[Finding]) -> list[Finding]:
    """Identical findings on several nodes become one, with the nodes together."""
    merged: dict[tuple[str, Verdict, str, str], list[Finding]] = {}
    for finding in findings:
        merged.setdefault((finding.check, finding.verdict, finding.summary, finding.remedy), []).append(finding)
    folded = []
    for (check, verdict, summary, remedy), group in merged.items():
        nodes = tuple(dict.fromkeys(n for f in group for n in f.nodes))
        evidence = "; ".join(f.evidence for f in group if f.evidence)
        folded.append(Finding(check, verdict, nodes, summary, remedy, evidence))
    rank = {Verdict.FAIL: 0, Verdict.WARN: 1, Verdict.INFO: 2, Verdict.OK: 3}
    return sorted(folded, key=lambda f: (rank[f.verdict], _ORDER.get(f.check, 99)))
