"""Open exactly the ports a training job needs, only between fleet nodes, instead of
switching the firewall off.

`plan_firewall` is pure: from the fleet, each node's training address and ephemeral
port range it computes per-node allow rules. The node agent applies them to whichever
firewall the node uses (iptables, or native nftables), each rule marked with the
fleet's tag so that `revoke` removes exactly those.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trainfleet.plan import DEFAULT_RDZV_PORT
from trainfleet.spec import Fleet

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


def iptables_args(rule: AllowRule, source: str, tag: str) -> list[str]:
    ports = ",".join(p.replace("-", ":") for p in rule.ports)
    return ["INPUT", "-s", source, "-p", "tcp", "-m", "multiport", "--dports", ports,
            "-m", "comment", "--comment", f"trainfleet:{tag}", "-j", "ACCEPT"]


def nft_rule(rule: AllowRule, tag: str, index: int) -> str:
    """As the node agent inserts it: the comment carries the rule's index, so a second
    `apply` finds it already there."""
    return (f"ip saddr {{ {', '.join(rule.sources)} }} tcp dport {{ {', '.join(rule.ports)} }} accept "
            f'comment "trainfleet:{tag}:{index}"')


def render(plans: tuple[NodeFirewall, ...], tag: str) -> str:
    lines = [f"# firewall plan, tag trainfleet:{tag}: allow only what training needs, only between fleet nodes",
             "# `trainfleet firewall apply` inserts these into the node's own firewall (iptables or nftables)"]
    for plan in plans:
        lines.append(f"[{plan.node}]")
        for rule in plan.rules:
            lines.append(f"  allow tcp {','.join(rule.ports)} from {', '.join(rule.sources)}  # {rule.why}")
        for rule in plan.rules:
            for source in rule.sources:
                lines.append("    iptables -I " + " ".join(iptables_args(rule, source, tag)))
        for index, rule in enumerate(plan.rules):
            lines.append(f"    nft insert rule inet filter input {nft_rule(rule, tag, index)}")
    return "\n".join(lines) + "\n"
