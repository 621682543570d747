"""Which interface and address each node should use for training traffic.

A pure function of what the nodes reported (their interfaces and their routes to
each other). `doctor` prints the choice and `run` launches with it, so both agree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trainfleet.agent.protocol import FactsReply, Interface, Route
from trainfleet.fleet.model import Fleet, Node

# Container and VM bridges: they carry traffic to local guests, not to other machines.
_VIRTUAL_PREFIXES = ("docker", "br-", "virbr", "cni", "flannel", "cali", "veth", "vxlan", "tun", "tailscale",
                     "zt", "wg")


@dataclass(frozen=True)
class NetworkChoice:
    node: str
    interface: str | None
    address: str
    reason: str
    problem: str | None = None


@dataclass(frozen=True)
class _Candidate:
    interface: str
    address: ipaddress.IPv4Address
    network: ipaddress.IPv4Network


def _usable(entry: Interface) -> bool:
    if entry.loopback or entry.name == "lo" or not entry.up:
        return False
    if entry.master:  # a bridge port carries no address of its own
        return False
    return not (entry.name.startswith(_VIRTUAL_PREFIXES) and entry.kind in ("bridge", "veth", "vxlan", "tun", ""))


def _candidates(interfaces: Sequence[Interface], include_virtual: bool = False) -> list[_Candidate]:
    found = []
    for entry in interfaces:
        if not include_virtual and not _usable(entry):
            continue
        if entry.loopback or entry.name == "lo":
            continue
        for cidr in entry.addrs:
            iface = ipaddress.IPv4Interface(cidr)
            found.append(_Candidate(entry.name, iface.ip, iface.network))
    return found


def _holder(candidates: list[_Candidate], address: str) -> _Candidate | None:
    for candidate in candidates:
        if str(candidate.address) == address:
            return candidate
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def choose(fleet: Fleet, facts: Mapping[str, FactsReply]) -> dict[str, NetworkChoice]:
    """Per node: the interface and address peers should use, from the `net` facts the
    nodes reported (their interfaces and their routes to each other).

    1. What the fleet file says (`address`, `interface`) wins, checked against the node.
    2. Else a subnet that every node has an address in. When there are several, one
       that does not hold the SSH addresses (a dedicated training network) is preferred.
    3. Else the interface each node's routing table uses towards node 0 (node 0: towards node 1).
    Bridges, veths of bridges, docker and loopback are skipped unless nothing else exists.
    """
    interfaces = {name: f.interfaces for name, f in facts.items()}
    routes = {name: f.routes for name, f in facts.items()}
    choices: dict[str, NetworkChoice] = {}
    per_node = {n.name: _candidates(interfaces.get(n.name, [])) for n in fleet.nodes}
    for node in fleet.nodes:
        if not per_node[node.name]:
            per_node[node.name] = _candidates(interfaces.get(node.name, []), include_virtual=True)

    explicit = {n.name: n for n in fleet.nodes if n.address != n.host or n.interface}
    common = _common_subnets(fleet.nodes, per_node) if len(fleet.nodes) > 1 else []
    for node in fleet.nodes:
        candidates = per_node[node.name]
        if node.name in explicit:
            choices[node.name] = _explicit(node, candidates)
        elif common:
            network = common[0]
            pick = next(c for c in candidates if c.network.overlaps(network))
            choices[node.name] = NetworkChoice(node.name, pick.interface, str(pick.address),
                                               f"subnet {network} is shared by every node")
        else:
            choices[node.name] = _by_route(fleet, node, candidates, routes.get(node.name, {}))
    return choices


def _explicit(node: Node, candidates: list[_Candidate]) -> NetworkChoice:
    if node.interface and node.address == node.host and not _is_ip(node.host):
        return NetworkChoice(node.name, node.interface, node.address, "interface from the fleet file")
    holder = _holder(candidates, node.address)
    if holder is None and _is_ip(node.address):
        return NetworkChoice(node.name, node.interface, node.address, "address from the fleet file",
                             problem=f"address {node.address} is not assigned to any interface of {node.name}")
    if holder is not None and node.interface and holder.interface != node.interface:
        return NetworkChoice(node.name, node.interface, node.address, "from the fleet file",
                             problem=f"address {node.address} is on {holder.interface}, "
                                     f"but the fleet file says interface {node.interface}")
    interface = node.interface or (holder.interface if holder else None)
    return NetworkChoice(node.name, interface, node.address, "from the fleet file")


def _common_subnets(nodes: Sequence[Node], per_node: Mapping[str, list[_Candidate]]) -> list[ipaddress.IPv4Network]:
    first = per_node[nodes[0].name]
    shared = []
    for candidate in first:
        if all(any(c.network.overlaps(candidate.network) for c in per_node[n.name]) for n in nodes[1:]):
            if candidate.network not in shared:
                shared.append(candidate.network)
    ssh_addresses = [ipaddress.ip_address(n.host) for n in nodes if _is_ip(n.host)]

    def rank(network: ipaddress.IPv4Network) -> tuple[int, int]:
        holds_ssh = any(address in network for address in ssh_addresses)
        return (1 if holds_ssh else 0, -network.prefixlen)

    return sorted(shared, key=rank)


def route_peers(fleet: Fleet) -> list[str]:
    """The addresses whose routes `choose` may need: node 0's (node 0 itself: node 1's)."""
    peers = [fleet.head] + list(fleet.nodes[1:2])
    return sorted({a for n in peers for a in (n.address, n.host)})


def _by_route(fleet: Fleet, node: Node, candidates: list[_Candidate],
              routes: Mapping[str, Route | None]) -> NetworkChoice:
    peer = fleet.nodes[1] if node is fleet.head and len(fleet.nodes) > 1 else fleet.head
    if peer is node:  # gloo still binds somewhere: an unresolvable hostname would mean a loopback warning
        holder = _holder(candidates, node.address)
        return NetworkChoice(node.name, holder.interface if holder else "lo", node.address,
                             "a single node: the interface of its own address" if holder else "a single node: loopback")
    route = routes.get(peer.address) or routes.get(peer.host)
    if not route or not route.dev:
        return NetworkChoice(node.name, None, node.address, "no route information",
                             problem=f"{node.name} has no route to {peer.name} ({peer.address})")
    address = route.src or node.address
    via = f" via gateway {route.via}" if route.via else ""
    return NetworkChoice(node.name, route.dev, address, f"routing table towards {peer.name}{via}")
