"""Open exactly the ports a training job needs, only between fleet nodes, instead of
switching the firewall off.

`plan_firewall` is pure: from the fleet, each node's training address and ephemeral
port range it computes per-node allow rules, and `steps` renders them as the commands
for iptables, nftables and ufw. The node agent runs the ones for whichever firewall the
node uses, each rule marked with the fleet's tag so that `revoke` removes exactly those.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trainfleet.agent.protocol import FirewallStep
from trainfleet.fleet.model import Fleet
from trainfleet.job.placement import DEFAULT_RDZV_PORT

DEFAULT_EPHEMERAL = (32768, 60999)


@dataclass(frozen=True)
class AllowRule:
    sources: tuple[str, ...]
    ports: tuple[str, ...]
    """"22", "29500" or "32768-60999"."""
    why: str

    def to_json(self) -> dict[str, object]:
        return {"sources": list(self.sources), "ports": list(self.ports), "why": self.why}


@dataclass(frozen=True)
class NodeFirewall:
    node: str
    rules: tuple[AllowRule, ...]


def fleet_tag(fleet: Fleet) -> str:
    """Marks this fleet's rules; stable for as long as the fleet file keeps its place."""
    return hashlib.sha256(str(Path(fleet.source).absolute()).encode()).hexdigest()[:12]


def plan_firewall(fleet: Fleet, addresses: Mapping[str, str], port_ranges: Mapping[str, tuple[int, int]],
                  rdzv_port: int = DEFAULT_RDZV_PORT) -> tuple[NodeFirewall, ...]:
    """Per node: TCP from every other node to SSH (node-to-node trust), to the ephemeral
    range (gloo/NCCL connections, torch's MASTER_PORT), and on node 0 to the rendezvous port."""
    plans = []
    for node in fleet.nodes:
        peers = [n for n in fleet.nodes if n is not node]
        if not peers:
            plans.append(NodeFirewall(node.name, ()))
            continue
        training = tuple(dict.fromkeys(addresses.get(p.name, p.address) for p in peers))
        everywhere = tuple(dict.fromkeys(list(training) + [p.host for p in peers]))
        low, high = port_ranges.get(node.name, DEFAULT_EPHEMERAL)
        rules = [AllowRule(everywhere, (str(node.port),), "ssh between nodes (pdsh, DeepSpeed, trainfleet ssh)"),
                 AllowRule(training, (f"{low}-{high}",), "gloo/NCCL peer connections and torch's MASTER_PORT")]
        if node is fleet.head:
            rules.append(AllowRule(training, (str(rdzv_port),), "torchrun c10d rendezvous on node 0"))
        plans.append(NodeFirewall(node.name, tuple(rules)))
    return tuple(plans)


def steps(plan: NodeFirewall, tag: str) -> dict[str, list[FirewallStep]]:
    """The commands that put one node's rules into each kind of firewall: what `firewall
    plan` prints is exactly what `firewall apply` runs. Each step says how to see that
    its rule is already there, so that a second apply adds nothing."""
    marker = f"trainfleet:{tag}"
    found: dict[str, list[FirewallStep]] = {"iptables": [], "nft": [], "ufw": []}
    for index, rule in enumerate(plan.rules):
        ports = ",".join(p.replace("-", ":") for p in rule.ports)
        for source in rule.sources:
            args = ["INPUT", "-s", source, "-p", "tcp", "-m", "multiport", "--dports", ports,
                    "-m", "comment", "--comment", marker, "-j", "ACCEPT"]
            found["iptables"].append(FirewallStep(apply=["iptables", "-w", "-I", *args],
                                                  present=["iptables", "-w", "-C", *args],
                                                  describe=f"{source} -> {ports}"))
            for port in rule.ports:
                found["ufw"].append(FirewallStep(
                    apply=["ufw", "allow", "from", source, "to", "any", "port", port.replace("-", ":"), "proto", "tcp",
                           "comment", marker], describe=f"{source} -> {port}"))
        # The node's own input chain replaces `inet filter input` where it is called otherwise.
        rule_marker = f"{marker}:{index}"
        found["nft"].append(FirewallStep(
            apply=["nft", "insert", "rule", "inet", "filter", "input", "ip", "saddr", "{", ", ".join(rule.sources),
                   "}", "tcp", "dport", "{", ", ".join(rule.ports), "}", "accept", "comment", f'"{rule_marker}"'],
            present=["nft", "-a", "list", "chain", "inet", "filter", "input"], marker=f'"{rule_marker}"',
            describe=", ".join(rule.ports)))
    return found


def render(plans: tuple[NodeFirewall, ...], tag: str) -> str:
    lines = [f"# firewall plan, tag trainfleet:{tag}: allow only what training needs, only between fleet nodes",
             "# `trainfleet firewall apply` runs, on each node, the commands for the firewall it uses"]
    for plan in plans:
        lines.append(f"[{plan.node}]")
        for rule in plan.rules:
            lines.append(f"  allow tcp {','.join(rule.ports)} from {', '.join(rule.sources)}  # {rule.why}")
        for backend, backend_steps in steps(plan, tag).items():
            lines.append(f"  {backend}:")
            lines += [f"    {shlex.join(step.apply)}" for step in backend_steps]
    return "\n".join(lines) + "\n"
