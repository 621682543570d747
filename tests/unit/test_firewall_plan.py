"""The firewall plan opens what training needs, between fleet nodes only (pure)."""

from __future__ import annotations

from trainfleet.fleet.schema import fleet_from_data
from trainfleet.plans.firewall import plan_firewall


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
