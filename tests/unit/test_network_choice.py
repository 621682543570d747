"""The training network each node uses, chosen from what the nodes reported (pure)."""

from __future__ import annotations

from typing import Any

from trainfleet.agent.protocol import FactsReply, Interface, Route
from trainfleet.fleet.schema import fleet_from_data
from trainfleet.plans.network import choose, route_peers


def nic(name: str, *addrs: str, kind: str = "", master: str | None = None, up: bool = True) -> Interface:
    return Interface(name=name, up=up, loopback=name == "lo", kind=kind, master=master, addrs=list(addrs))


def facts(*interfaces: Interface, routes: dict[str, Route | None] | None = None) -> FactsReply:
    return FactsReply(hostname="h", time=0.0, home="/root", interfaces=[nic("lo", "127.0.0.1/8"), *interfaces],
                      routes=routes or {})


def fleet(*nodes: dict[str, Any]) -> Any:
    return fleet_from_data({"nodes": list(nodes)}, "fleet.yaml")


def test_a_private_subnet_every_node_has_wins_over_the_ssh_one_and_names_may_differ() -> None:
    chosen = choose(fleet({"name": "a", "host": "203.0.113.1"}, {"name": "b", "host": "203.0.113.2"}), {
        "a": facts(nic("eth0", "203.0.113.1/24"), nic("ens5", "10.0.0.1/24"), nic("docker0", "172.17.0.1/16",
                                                                                 kind="bridge")),
        "b": facts(nic("eth0", "203.0.113.2/24"), nic("enp6s0", "10.0.0.2/24"), nic("docker0", "172.17.0.1/16",
                                                                                   kind="bridge")),
    })
    assert {n: (c.interface, c.address, c.problem) for n, c in chosen.items()} == {
        "a": ("ens5", "10.0.0.1", None), "b": ("enp6s0", "10.0.0.2", None)}
    assert chosen["a"].reason == "subnet 10.0.0.0/24 is shared by every node"


def test_the_fleet_files_address_wins_and_a_wrong_one_is_named() -> None:
    spec = fleet({"name": "a", "host": "203.0.113.1", "address": "10.0.0.1"},
                 {"name": "b", "host": "203.0.113.2", "address": "10.0.0.9", "interface": "ens5"})
    chosen = choose(spec, {"a": facts(nic("ens5", "10.0.0.1/24")), "b": facts(nic("ens5", "10.0.0.2/24"))})
    assert (chosen["a"].interface, chosen["a"].problem) == ("ens5", None)
    assert chosen["b"].problem == "address 10.0.0.9 is not assigned to any interface of b"
    moved = fleet({"name": "a", "host": "203.0.113.1", "address": "10.0.0.1", "interface": "eth1"},
                  {"name": "b", "host": "203.0.113.2"})
    wrong = choose(moved, {"a": facts(nic("ens5", "10.0.0.1/24")), "b": facts(nic("eth0", "203.0.113.2/24"))})
    assert wrong["a"].problem == "address 10.0.0.1 is on ens5, but the fleet file says interface eth1"


def test_without_a_shared_subnet_the_route_towards_node_0_decides() -> None:
    spec = fleet({"name": "a", "host": "198.51.100.1"}, {"name": "b", "host": "203.0.113.2"})
    chosen = choose(spec, {
        "a": facts(nic("eth0", "198.51.100.1/24"), routes={"203.0.113.2": Route(dev="eth0", src="198.51.100.1",
                                                                                  via="198.51.100.254")}),
        "b": facts(nic("ens3", "203.0.113.2/24"), routes={"198.51.100.1": None}),
    })
    assert (chosen["a"].interface, chosen["a"].reason) == ("eth0", "routing table towards b via gateway 198.51.100.254")
    assert chosen["b"].problem == "b has no route to a (198.51.100.1)"
    assert route_peers(spec) == ["198.51.100.1", "203.0.113.2"]


def test_bridges_and_down_links_are_skipped_unless_nothing_else_exists() -> None:
    spec = fleet({"name": "a", "host": "10.1.0.1"}, {"name": "b", "host": "10.1.0.2"})
    only_bridges = choose(spec, {"a": facts(nic("virbr0", "10.1.0.1/24", kind="bridge"), nic("eth9", "10.2.0.1/24",
                                                                                            up=False)),
                                 "b": facts(nic("virbr0", "10.1.0.2/24", kind="bridge"))})
    assert only_bridges["a"].interface == "virbr0" and only_bridges["b"].interface == "virbr0"
    single = choose(fleet({"name": "a", "host": "10.1.0.1"}), {"a": facts(nic("eth0", "10.1.0.1/24"))})
    assert (single["a"].interface, single["a"].reason) == ("eth0", "a single node: the interface of its own address")
