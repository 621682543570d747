"""The firewall plan opens what training needs, between fleet nodes only (pure)."""

from __future__ import annotations

from trainfleet.fleet.schema import fleet_from_data
from trainfleet.plans.firewall import closing_chain, plan_firewall, render, steps


def test_plan_is_only_between_fleet_nodes() -> None:
    fleet = fleet_from_data({"nodes": [{"name": "a", "host": "203.0.113.1", "address": "10.0.0.1"},
                                       {"name": "b", "host": "203.0.113.2", "address": "10.0.0.2", "port": 2222}]},
                            "f.yaml")
    plans = {p.node: p for p in plan_firewall(fleet, {"a": "10.0.0.1", "b": "10.0.0.2"}, {"b": (40000, 50000)})}
    a = [(r.sources, r.ports) for r in plans["a"].rules]
    b = [(r.sources, r.ports) for r in plans["b"].rules]
    assert a == [(("10.0.0.2", "203.0.113.2"), ("22",)), (("10.0.0.2",), ("32768-60999",)),
                 (("10.0.0.2",), ("29500",))]
    assert b == [(("10.0.0.1", "203.0.113.1"), ("2222",)), (("10.0.0.1",), ("40000-50000",))]
    # Closed to everyone else: the rendezvous port on every node, each node's own range.
    assert plans["a"].closed == ("29500", "32768-60999") and plans["b"].closed == ("29500", "40000-50000")
    assert set(plans["a"].fleet) == {"10.0.0.1", "10.0.0.2", "203.0.113.1", "203.0.113.2"}


def test_the_job_ports_are_closed_in_a_chain_of_our_own_and_nfs_is_planned() -> None:
    fleet = fleet_from_data({"nodes": [{"name": "a", "host": "203.0.113.1", "address": "10.0.0.1"},
                                       {"name": "b", "host": "2001:db8::2", "address": "10.0.0.2"}],
                             "storage": [{"type": "nfs", "mount": "/data", "source": "/srv/data"}]}, "f.yaml")
    plans = {p.node: p for p in plan_firewall(fleet, {"a": "10.0.0.1", "b": "10.0.0.2"}, {})}
    assert (("10.0.0.2",), ("2049",)) in [(r.sources, r.ports) for r in plans["a"].rules]
    assert plans["a"].closed == ("29500", "32768-60999", "2049") and "2049" not in plans["b"].closed
    found = steps(plans["a"], "abc123")
    chain = closing_chain("abc123")
    v4 = [step.apply for step in found["iptables-close"]]
    assert v4[0] == ["iptables", "-w", "-N", chain]
    assert ["iptables", "-w", "-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"] in v4
    assert ["iptables", "-w", "-A", chain, "-s", "203.0.113.1", "-j", "RETURN"] in v4
    assert v4[-2] == ["iptables", "-w", "-A", chain, "-p", "tcp", "-m", "multiport", "--dports",
                      "29500,32768:60999,2049", "-j", "DROP"]
    assert v4[-1] == ["iptables", "-w", "-I", "INPUT", "-m", "comment", "--comment", "trainfleet:abc123", "-j", chain]
    v6 = [step.apply for step in found["ip6tables-close"]]
    assert ["ip6tables", "-w", "-A", chain, "-s", "2001:db8::2", "-j", "RETURN"] in v6
    assert not any("10.0.0.1" in step for step in v6)
    nft = [" ".join(step.apply) for step in found["nft-close"]]
    assert "nft add rule inet trainfleet_abc123 input tcp dport { 29500, 32768-60999, 2049 } drop" in nft
    assert "nft add rule inet trainfleet_abc123 input ip6 saddr { 2001:db8::2 } accept" in nft
    shown = render(tuple(plans.values()), "abc123")
    assert "close tcp 29500,32768-60999,2049 to everyone else (new connections; IPv4 and IPv6)" in shown
    assert " ".join(v4[-1]) in shown  # what apply runs is what plan prints
