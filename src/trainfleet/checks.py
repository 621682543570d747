"""Doctor's checks: pure functions from what was gathered on the nodes to findings.

Each check names what it looked at, gives a verdict, the evidence, and a remedy. The
gathering (SSH, the node agent, test listeners) lives in `doctor.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from trainfleet.netchoice import NetworkChoice
from trainfleet.results import fold_nodes
from trainfleet.spec import Fleet

GIB = 1024**3


class Verdict(str, Enum):
    OK = "ok"
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


@dataclass
class Gathered:
    """Everything doctor learned, per node; checks only read it."""

    fleet: Fleet
    rdzv_port: int
    ssh_errors: dict[str, str] = field(default_factory=dict)
    agent_errors: dict[str, str] = field(default_factory=dict)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    skew: dict[str, tuple[float, float]] = field(default_factory=dict)
    """node -> (clock offset estimate in s, its uncertainty in s)."""
    choices: dict[str, NetworkChoice] = field(default_factory=dict)
    listeners: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    connects: list[dict[str, Any]] = field(default_factory=list)
    resolved: dict[str, dict[str, str | None]] = field(default_factory=dict)

    @property
    def live(self) -> list[str]:
        return [n.name for n in self.fleet.nodes if n.name in self.facts]


Check = Callable[[Gathered], list[Finding]]


def _split_fix(reason: str) -> tuple[str, str]:
    summary, _, fix = reason.partition("; fix: ")
    return summary, fix


def check_ssh(data: Gathered) -> list[Finding]:
    findings = []
    for node in data.fleet.nodes:
        if node.name in data.ssh_errors:
            summary, fix = _split_fix(data.ssh_errors[node.name])
            findings.append(Finding("ssh", Verdict.FAIL, (node.name,), summary, fix))
    reached = [n.name for n in data.fleet.nodes if n.name not in data.ssh_errors]
    if reached:
        findings.append(Finding("ssh", Verdict.OK, tuple(reached), "reachable, host key verified, key accepted"))
    return findings


def check_shell(data: Gathered) -> list[Finding]:
    """The non-interactive SSH shell (how trainfleet, pdsh and DeepSpeed run) must find Python."""
    findings = []
    python = data.fleet.python
    for name, reason in data.agent_errors.items():
        findings.append(Finding("shell", Verdict.FAIL, (name,), reason,
                                "set `python:` in the fleet file to the full path of the Python with torch"))
    for name in data.live:
        facts = data.facts[name]
        login = facts.get("login") or {}
        if facts.get("python_found"):
            continue
        if login.get("python"):
            findings.append(Finding(
                "shell", Verdict.WARN, (name,),
                f"`{python}` is on PATH only in login shells (found at {login['python']})",
                f"set `python: {login['python']}` in the fleet file, or export PATH in ~/.bashrc above its "
                f"interactive-only guard"))
    ok = [n for n in data.live if data.facts[n].get("python_found")]
    if ok:
        findings.append(Finding("shell", Verdict.OK, tuple(ok), f"non-interactive SSH finds `{python}`"))
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


def check_ports(data: Gathered) -> list[Finding]:
    findings: list[Finding] = []
    for name, ports in data.listeners.items():
        for label, bound in ports.items():
            if "error" in bound:
                holder = bound.get("holder") or {}
                who = f" by pid {holder['pid']} ({holder.get('cmdline', '')})" if holder.get("pid") else ""
                findings.append(Finding(
                    "ports", Verdict.FAIL, (name,), f"{label} port {bound.get('wanted')} is in use{who}",
                    "stop that process (an earlier job?) or pass `--port` to run"))
    by_label: dict[str, list[dict[str, Any]]] = {}
    for attempt in data.connects:
        by_label.setdefault(attempt["label"], []).append(attempt)
    for label, attempts in sorted(by_label.items()):
        pairs = [(a["source"], a["node"]) for a in attempts]
        bad = [a for a in attempts if a["result"] != "ok"]
        if not bad:
            findings.append(Finding("ports", Verdict.OK, tuple(sorted({a["node"] for a in attempts})),
                                    f"{label} port reachable from every peer tried"))
            continue
        for result in sorted({a["result"] for a in bad}):
            failures = [(a["source"], a["node"]) for a in bad if a["result"] == result]
            kind, cause = _RESULT_CAUSE.get(result, _RESULT_CAUSE["error"])
            for node, how in _blame(failures, pairs).items():
                port = next(a["port"] for a in bad if a["node"] == node or a["source"] == node)
                direction = ", ".join(how)
                findings.append(Finding(
                    "ports", Verdict.FAIL, (node,),
                    f"{label} port {port}: {kind} ({direction}): {cause}",
                    f"allow TCP between fleet nodes on {node} (`trainfleet firewall plan` lists the rules); "
                    f"do not disable the firewall",
                    evidence="; ".join(f"{s}->{d}:{a['port']} {a['result']}" for a in bad
                                       for s, d in [(a['source'], a['node'])])))
    return findings


def check_links(data: Gathered) -> list[Finding]:
    """Latency and throughput outliers among the measured pairs name the slow node."""
    findings: list[Finding] = []
    latency = [a for a in data.connects if a["result"] == "ok" and "ms" in a]
    if len(latency) >= 2:
        fastest = min(a["ms"] for a in latency)
        slow = [a for a in latency if a["ms"] > 5 and a["ms"] > 4 * max(fastest, 0.2)]
        findings += _outliers("latency", slow, latency,
                              lambda a: f"{a['ms']:.1f} ms", "connection set-up takes {value} (others: "
                              f"{fastest:.1f} ms)", "check this node's link (tc qdisc, a congested or "
                              "misrouted path); NCCL/gloo collectives wait on the slowest link")
    throughput = [a for a in data.connects if a["result"] == "ok" and "mbit_s" in a]
    if len(throughput) >= 2:
        best = max(a["mbit_s"] for a in throughput)
        slow = [a for a in throughput if a["mbit_s"] < best / 4]
        findings += _outliers("bandwidth", slow, throughput, lambda a: f"{a['mbit_s']:.0f} Mbit/s",
                              "throughput {value} (best pair: " + f"{best:.0f} Mbit/s)",
                              "check this node's NIC speed and any rate limit (tc qdisc, cloud bandwidth "
                              "tier); every all-reduce runs at the slowest link")
    return findings


def _outliers(check: str, slow: list[dict[str, Any]], measured: list[dict[str, Any]],
              value: Callable[[dict[str, Any]], str], summary: str, remedy: str) -> list[Finding]:
    if not slow:
        nodes = sorted({a["node"] for a in measured} | {a["source"] for a in measured})
        return [Finding(check, Verdict.OK, tuple(nodes), f"no slow link among {len(measured)} measured pair(s)")]
    if len(slow) == len(measured):
        return [Finding(check, Verdict.WARN, tuple(sorted({a["node"] for a in slow})),
                        "every measured link is equally slow", remedy)]
    # The node whose measured pairs are slow most often (as a share of its pairs: node 0
    # takes part in more measurements than the others).
    slow_count: dict[str, int] = {}
    measured_count: dict[str, int] = {}
    for attempt in measured:
        for node in {attempt["source"], attempt["node"]}:
            measured_count[node] = measured_count.get(node, 0) + 1
            if attempt in slow:
                slow_count[node] = slow_count.get(node, 0) + 1
    share = {node: count / measured_count[node] for node, count in slow_count.items()}
    top = max(share.values())
    culprits = sorted(n for n, s in share.items() if s == top)
    worst = min(slow, key=lambda a: a.get("mbit_s", 0)) if check == "bandwidth" else max(slow, key=lambda a: a["ms"])
    evidence = "; ".join(f"{a['source']}->{a['node']} {value(a)}" for a in slow)
    return [Finding(check, Verdict.FAIL, tuple(culprits), summary.format(value=value(worst)), remedy, evidence)]


def check_hostnames(data: Gathered) -> list[Finding]:
    findings = []
    addresses = {n.name: {n.address, n.host} | ({data.choices[n.name].address} if n.name in data.choices else set())
                 for n in data.fleet.nodes}
    for target in data.live:
        hostname = data.facts[target].get("hostname")
        missing = [src for src, table in data.resolved.items() if src != target and not table.get(hostname)]
        wrong = [src for src, table in data.resolved.items()
                 if src != target and table.get(hostname) and table[hostname] not in addresses[target]]
        if missing:
            peers = len([n for n in data.resolved if n != target])
            where = "its peers" if len(missing) == peers else fold_nodes(missing)
            findings.append(Finding(
                "hostnames", Verdict.WARN, (target,), f"its hostname does not resolve on {where}",
                "trainfleet passes addresses explicitly, so `run` is unaffected; scripts that reach peers by "
                "hostname need `trainfleet ssh setup --hosts-file` or MASTER_ADDR",
                evidence=f"{target}: {hostname} unresolved on {fold_nodes(missing)}"))
        if wrong:
            findings.append(Finding(
                "hostnames", Verdict.WARN, (target,),
                f"its hostname {hostname!r} resolves elsewhere on {fold_nodes(wrong)}",
                "fix /etc/hosts (a stale entry from an earlier machine?)"))
    return findings


_CONSISTENT = {
    "python": lambda f: (f.get("python") or {}).get("version"),
    "torch": lambda f: (f.get("torch") or {}).get("version") if f.get("torch") else "not installed",
    "CUDA (torch build)": lambda f: (f.get("torch") or {}).get("cuda"),
    "NCCL": lambda f: (f.get("torch") or {}).get("nccl"),
    "GPU driver": lambda f: ((f.get("gpu") or {}).get("gpus") or [{}])[0].get("driver"),
    "code in workdir": lambda f: (f.get("code") or {}).get("sha256"),
}


def check_consistency(data: Gathered) -> list[Finding]:
    findings = []
    for what, read in _CONSISTENT.items():
        values = {name: read(data.facts[name]) for name in data.live}
        present = {n: v for n, v in values.items() if v is not None}
        if not present:
            continue
        groups: dict[str, list[str]] = {}
        for name, value in values.items():
            groups.setdefault(str(value) if value is not None else "(none)", []).append(name)
        if len(groups) == 1:
            value = next(iter(groups))
            findings.append(Finding("versions", Verdict.OK, tuple(values), f"{what}: {value} everywhere"))
            continue
        majority = max(groups.values(), key=len)
        for value, nodes in groups.items():
            if nodes is majority:
                continue
            common = next(v for v, ns in groups.items() if ns is majority)
            fix = ("run `trainfleet sync` so every node has the same code" if what == "code in workdir"
                   else f"install the same {what} on every node")
            findings.append(Finding("versions", Verdict.FAIL, tuple(nodes),
                                    f"{what} is {value} here but {common} on {fold_nodes(majority)}", fix))
    return findings


def check_gpus(data: Gathered) -> list[Finding]:
    findings = []
    none = [n for n in data.live if data.facts[n].get("gpu") is None]
    if none:
        findings.append(Finding("gpus", Verdict.WARN, tuple(none), "no NVIDIA GPU (no nvidia-smi): ranks will use "
                                "the CPU and gloo", "install the NVIDIA driver if this node should have GPUs"))
    for name in data.live:
        gpu = data.facts[name].get("gpu")
        if gpu is None:
            continue
        if "error" in gpu:
            findings.append(Finding("gpus", Verdict.FAIL, (name,), f"nvidia-smi failed ({gpu['error']})",
                                    "check the driver: `nvidia-smi` on the node"))
            continue
        gpus = gpu.get("gpus", [])
        slots = data.fleet.node(name).slots
        if len(gpus) < slots:
            findings.append(Finding("gpus", Verdict.FAIL, (name,), f"{len(gpus)} GPU(s) but slots: {slots}",
                                    f"set `slots: {len(gpus)}` for this node"))
        busy = [f"GPU {g['index']}: " + ", ".join(f"pid {p['pid']} {p['name']}" for p in g["busy"])
                for g in gpus if g.get("busy")]
        if busy:
            findings.append(Finding("gpus", Verdict.FAIL, (name,), "GPUs already in use: " + "; ".join(busy),
                                    "end the other job first (stale processes from an earlier run?)"))
        elif len(gpus) >= slots:
            findings.append(Finding("gpus", Verdict.OK, (name,), f"{len(gpus)} GPU(s), idle, >= slots"))
    return findings


def check_disk(data: Gathered) -> list[Finding]:
    findings = []
    for name in data.live:
        for label, key in (("workdir", "disk"), ("Docker data-root", "docker_disk")):
            disk = data.facts[name].get(key)
            if not disk:
                continue
            free = disk["free"]
            where = f"{label} {disk['path']}"
            if free < 1 * GIB:
                findings.append(Finding("disk", Verdict.FAIL, (name,), f"{where}: only {free / 2**20:.0f} MiB free",
                                        "free space or point `workdir:` at a bigger disk; checkpoints will fail"))
            elif free < 10 * GIB:
                findings.append(Finding("disk", Verdict.WARN, (name,), f"{where}: {free / GIB:.1f} GiB free",
                                        "checkpoints of large models need more room"))
    ok = [n for n in data.live if not any(f.nodes == (n,) for f in findings)]
    if ok:
        findings.append(Finding("disk", Verdict.OK, tuple(ok), "at least 10 GiB free in the workdir"))
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


def check_stale(data: Gathered) -> list[Finding]:
    findings = []
    for name in data.live:
        for job in data.facts[name].get("stale") or []:
            pids = ", ".join(str(p["pid"]) for p in job["processes"][:5])
            first = job["processes"][0]["cmdline"]
            findings.append(Finding("stale", Verdict.FAIL, (name,),
                                    f"processes of earlier job {job['job_id']} still run (pids {pids}: {first})",
                                    f"end them: `trainfleet exec -n {name} -- kill {pids}`"))
    clean = [n for n in data.live if not data.facts[n].get("stale")]
    if clean:
        findings.append(Finding("stale", Verdict.OK, tuple(clean), "no processes left from earlier jobs"))
    return findings


CHECKS: tuple[tuple[str, Check], ...] = (
    ("ssh", check_ssh),
    ("shell", check_shell),
    ("network", check_network),
    ("ports", check_ports),
    ("links", check_links),
    ("hostnames", check_hostnames),
    ("versions", check_consistency),
    ("gpus", check_gpus),
    ("disk", check_disk),
    ("clock", check_clock),
    ("stale", check_stale),
)


def evaluate(data: Gathered) -> list[Finding]:
    findings: list[Finding] = []
    for _, check in CHECKS:
        findings += check(data)
    return fold(findings)


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
    order = {name: index for index, (name, _) in enumerate(CHECKS)}
    rank = {Verdict.FAIL: 0, Verdict.WARN: 1, Verdict.OK: 2}
    return sorted(folded, key=lambda f: (rank[f.verdict], order.get(f.check, 99)))




