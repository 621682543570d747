"""Open exactly the ports a training job needs, only between fleet nodes, instead of
switching the firewall off; and close those ports to everyone else, on hosts whose
firewall lets anything in (rented machines often have none).

`plan_firewall` is pure: from the fleet, each node's training address and ephemeral
port range it computes per-node allow rules and the job ports to close to strangers,
and `steps` renders them as the commands for iptables (and ip6tables), nftables and
ufw. The node agent runs the ones for whichever firewall the node uses, each rule marked
with the fleet's tag so that `revoke` removes exactly those. Closing lives in a chain
(iptables) or a table (nftables) of trainfleet's own: new connections to the job's ports
from outside the fleet are dropped, established ones and SSH are never touched.
"""

from __future__ import annotations

import hashlib
import ipaddress
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
    closed: tuple[str, ...] = ()
    """Ports ("29500", "32768-60999") that only the fleet may open connections to."""
    fleet: tuple[str, ...] = ()
    """Every address of every fleet node (training and SSH), this node's own included."""


def fleet_tag(fleet: Fleet) -> str:
    """Marks this fleet's rules; stable for as long as the fleet file keeps its place."""
    return hashlib.sha256(str(Path(fleet.source).absolute()).encode()).hexdigest()[:12]


NFS_PORT = 2049


def plan_firewall(fleet: Fleet, addresses: Mapping[str, str], port_ranges: Mapping[str, tuple[int, int]],
                  rdzv_port: int = DEFAULT_RDZV_PORT) -> tuple[NodeFirewall, ...]:
    """Per node: TCP from every other node to SSH (node-to-node trust), to the ephemeral
    range (gloo/NCCL connections, torch's MASTER_PORT, the supervisors' mesh), on node 0 to
    the rendezvous port, and on a node that serves NFS to 2049. The same job ports (the
    rendezvous port on every node: another node may be node 0 of the next job, or take
    over when node 0 is lost) are closed to everyone outside the fleet."""
    everyone = tuple(dict.fromkeys([addresses.get(n.name, n.address) for n in fleet.nodes]
                                   + [n.address for n in fleet.nodes] + [n.host for n in fleet.nodes]))
    nfs = {s.node or fleet.head.name for s in fleet.storage if s.type == "nfs" and not s.server}
    plans = []
    for node in fleet.nodes:
        peers = [n for n in fleet.nodes if n is not node]
        low, high = port_ranges.get(node.name, DEFAULT_EPHEMERAL)
        closed = [str(rdzv_port), f"{low}-{high}"] + ([str(NFS_PORT)] if node.name in nfs else [])
        if not peers:
            plans.append(NodeFirewall(node.name, (), tuple(closed), everyone))
            continue
        training = tuple(dict.fromkeys(addresses.get(p.name, p.address) for p in peers))
        everywhere = tuple(dict.fromkeys(list(training) + [p.host for p in peers]))
        rules = [AllowRule(everywhere, (str(node.port),), "ssh between nodes (pdsh, DeepSpeed, trainfleet ssh)"),
                 AllowRule(training, (f"{low}-{high}",), "gloo/NCCL peer connections and torch's MASTER_PORT")]
        if node is fleet.head:
            rules.append(AllowRule(training, (str(rdzv_port),), "torchrun c10d rendezvous on node 0"))
        if node.name in nfs:
            rules.append(AllowRule(training, (str(NFS_PORT),), "NFS, served by this node (`storage:`)"))
        plans.append(NodeFirewall(node.name, tuple(rules), tuple(closed), everyone))
    return tuple(plans)


def closing_chain(tag: str) -> str:
    """trainfleet's own iptables chain for this fleet (28 characters at most)."""
    return f"TF-{tag}"


def closing_table(tag: str) -> str:
    """trainfleet's own nftables table for this fleet."""
    return f"trainfleet_{tag}"


def _closing_steps(plan: NodeFirewall, tag: str) -> dict[str, list[FirewallStep]]:
    """Close the job's ports to strangers: for iptables and ip6tables a chain of our own
    that INPUT jumps to first, for nftables a table of our own whose input chain runs
    before the node's (a drop there is final; its accept passes the packet on)."""
    marker = f"trainfleet:{tag}"
    chain, ports = closing_chain(tag), ",".join(p.replace("-", ":") for p in plan.closed)
    found: dict[str, list[FirewallStep]] = {}
    for tool, family in (("iptables", 4), ("ip6tables", 6)):
        sources = [a for a in plan.fleet if _family(a) == family]
        listing = [tool, "-w", "-S", chain]
        rules = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"], ["-i", "lo", "-j", "RETURN"]]
        rules += [["-s", source, "-j", "RETURN"] for source in sources]
        rules.append(["-p", "tcp", "-m", "multiport", "--dports", ports, "-j", "DROP"])
        steps_here = [FirewallStep(apply=[tool, "-w", "-N", chain], present=listing, describe=f"chain {chain}")]
        steps_here += [FirewallStep(apply=[tool, "-w", "-A", chain, *rule], present=[tool, "-w", "-C", chain, *rule],
                                    describe=" ".join(rule)) for rule in rules]
        jump = ["INPUT", "-m", "comment", "--comment", marker, "-j", chain]
        steps_here.append(FirewallStep(apply=[tool, "-w", "-I", *jump], present=[tool, "-w", "-C", *jump],
                                       describe=f"INPUT -> {chain}"))
        found[f"{tool}-close"] = steps_here
    table = closing_table(tag)
    v4 = [a for a in plan.fleet if _family(a) == 4]
    v6 = [a for a in plan.fleet if _family(a) == 6]
    nft_rules = [["iif", "lo", "accept"], ["ct", "state", "established,related", "accept"]]
    nft_rules += [["ip", "saddr", "{", ", ".join(v4), "}", "accept"]] if v4 else []
    nft_rules += [["ip6", "saddr", "{", ", ".join(v6), "}", "accept"]] if v6 else []
    nft_rules.append(["tcp", "dport", "{", ", ".join(plan.closed), "}", "drop"])
    # The table is made anew each time (flushed first): what is in it is exactly the plan.
    found["nft-close"] = [
        FirewallStep(apply=["nft", "add", "table", "inet", table], describe=f"table inet {table}"),
        FirewallStep(apply=["nft", "add", "chain", "inet", table, "input", "{", "type", "filter", "hook", "input",
                            "priority", "-10", ";", "policy", "accept", ";", "}"], describe="its input chain"),
        FirewallStep(apply=["nft", "flush", "chain", "inet", table, "input"], describe="emptied"),
    ] + [FirewallStep(apply=["nft", "add", "rule", "inet", table, "input", *rule], describe=" ".join(rule))
         for rule in nft_rules]
    return found


def _family(address: str) -> int:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 0  # a host name: a firewall matches addresses only


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
    if plan.closed:
        found.update(_closing_steps(plan, tag))
    return found


def render(plans: tuple[NodeFirewall, ...], tag: str) -> str:
    lines = [f"# firewall plan, tag trainfleet:{tag}: allow only what training needs, only between fleet nodes",
             "# `trainfleet firewall apply` runs, on each node, the commands for the firewall it uses"]
    for plan in plans:
        lines.append(f"[{plan.node}]")
        for rule in plan.rules:
            lines.append(f"  allow tcp {','.join(rule.ports)} from {', '.join(rule.sources)}  # {rule.why}")
        if plan.closed:
            lines.append(f"  close tcp {','.join(plan.closed)} to everyone else (new connections; IPv4 and IPv6)")
        for backend, backend_steps in steps(plan, tag).items():
            lines.append(f"  {backend}:")
            lines += [f"    {shlex.join(step.apply)}" for step in backend_steps]
    return "\n".join(lines) + "\n"
