"""Doctor's checks are pure: gathered facts in, findings out."""

from __future__ import annotations

from trainfleet.checks import Finding, Gathered, Verdict, _blame, _outliers, check_consistency, check_ports, fold
from trainfleet.fleetfile import fleet_from_data

FLEET = fleet_from_data({"nodes": [{"name": f"node{i}", "host": f"10.0.0.{i + 1}"} for i in range(3)]}, "f.yaml")


def pair(source: str, node: str, **values: object) -> dict[str, object]:
    return {"source": source, "node": node, "result": "ok", "label": "peer-to-peer", "port": 40000, **values}


def test_a_single_slow_pair_blames_the_node_with_the_larger_share_of_slow_pairs() -> None:
    # node0 takes part in more measurements (everyone connects to its rendezvous port).
    measured = [pair("node1", "node0", ms=0.2), pair("node2", "node0", ms=0.2), pair("node2", "node0", ms=0.3),
                pair("node0", "node1", ms=45.8), pair("node1", "node2", ms=0.3)]
    slow = [a for a in measured if a["ms"] > 5]  # type: ignore[operator]
    finding = _outliers("latency", slow, measured, lambda a: f"{a['ms']} ms", "set-up {value}", "fix")[0]
    assert finding.verdict is Verdict.FAIL and finding.nodes == ("node1",)


def test_uniformly_slow_links_are_a_warning_not_a_culprit() -> None:
    measured = [pair("node0", "node1", mbit_s=90.0), pair("node1", "node2", mbit_s=95.0)]
    finding = _outliers("bandwidth", measured, measured, lambda a: "", "{value}", "fix")[0]
    assert finding.verdict is Verdict.WARN


def test_port_blame_names_the_blocking_side() -> None:
    attempts = [("node1", "node0"), ("node2", "node0"), ("node0", "node1"), ("node1", "node2")]
    assert _blame([("node1", "node0"), ("node2", "node0")], attempts) == {"node0": ["incoming"]}
    assert _blame([("node1", "node0"), ("node1", "node2")], attempts) == {"node1": ["outgoing"]}
    assert _blame([("node1", "node2")], attempts) == {"node2": ["from node1"]}


def test_drop_and_reject_are_told_apart() -> None:
    data = Gathered(fleet=FLEET, rdzv_port=29500)
    data.connects = [pair("node1", "node0", result="timeout", label="rendezvous", port=29500),
                     pair("node2", "node0", result="timeout", label="rendezvous", port=29500),
                     pair("node0", "node1", result="refused"), pair("node2", "node1", result="ok")]
    found = {(f.nodes, f.summary.split(":")[1].split("(")[0].strip()) for f in check_ports(data)
             if f.verdict is Verdict.FAIL}
    assert found == {(("node0",), "DROP"), (("node1",), "REJECT")}


def test_the_odd_version_out_is_named() -> None:
    data = Gathered(fleet=FLEET, rdzv_port=29500)
    data.facts = {f"node{i}": {"python": {"version": "3.11.7"}, "torch": {"version": v}}
                  for i, v in enumerate(["2.13.0", "2.12.1", "2.13.0"])}
    failing = [f for f in check_consistency(data) if f.verdict is Verdict.FAIL]
    assert len(failing) == 1 and failing[0].nodes == ("node1",)
    assert failing[0].summary == "torch is 2.12.1 here but 2.13.0 on node[0,2]"


def test_identical_findings_fold_into_one_row() -> None:
    rows = fold([Finding("gpus", Verdict.WARN, ("node0",), "no GPU"), Finding("gpus", Verdict.WARN, ("node2",), "no GPU"),
                 Finding("disk", Verdict.FAIL, ("node1",), "full")])
    assert [(r.check, r.nodes) for r in rows] == [("disk", ("node1",)), ("gpus", ("node0", "node2"))]
