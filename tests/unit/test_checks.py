"""Doctor's checks are pure: gathered facts in, findings out."""

from __future__ import annotations

from trainfleet.agent.protocol import JobStatus, Attempt, Bound, FactsReply, JobSeen, Proc, PythonInfo, Target, TorchInfo
from trainfleet.doctor.checks import (Finding, Gathered, Measured, Verdict, _blame, check_consistency, check_jobs,
                                      check_links, check_ports, fold)
from trainfleet.fleet.schema import fleet_from_data

FLEET = fleet_from_data({"nodes": [{"name": f"node{i}", "host": f"10.0.0.{i + 1}"} for i in range(3)]}, "f.yaml")


def measured(source: str, node: str, result: str = "ok", label: str = "peer-to-peer", port: int = 40000,
             again: Attempt | None = None, **values: float) -> Measured:
    target = Target(node=node, address="10.0.0.9", port=port, label=label, bytes=8 if "mbit_s" in values else 0)
    return Measured(source=source, attempt=Attempt(target=target, result=result, **values), confirmed=again)


def facts(**values: object) -> FactsReply:
    return FactsReply(hostname="h", time=0.0, **values)  # type: ignore[arg-type]


def gathered(ring: list[Measured]) -> Gathered:
    data = Gathered(fleet=FLEET, rdzv_port=29500)
    data.measured = ring
    return data


def test_a_slow_pair_confirmed_alone_blames_the_node_with_the_larger_share_of_slow_pairs() -> None:
    slow = Attempt(target=Target("node1", "x", 1, "peer-to-peer"), result="ok", ms=44.0)
    ring = [measured("node1", "node0", ms=0.2), measured("node2", "node0", ms=0.2),
            measured("node2", "node0", ms=0.3), measured("node0", "node1", ms=45.8, again=slow),
            measured("node1", "node2", ms=0.3)]
    [finding] = [f for f in check_links(gathered(ring)) if f.check == "latency"]
    assert finding.verdict is Verdict.FAIL and finding.nodes == ("node1",)
    assert "44.0 ms" in finding.summary


def test_a_slow_sample_that_is_fast_when_measured_again_is_no_finding() -> None:
    """One noisy sample on a loaded machine (32 nodes, 2 cores) is not a slow link."""
    fast = Attempt(target=Target("node1", "x", 1, "peer-to-peer", bytes=8), result="ok", ms=0.4, mbit_s=12000.0)
    ring = [measured("node0", "node1", ms=15.9, mbit_s=2238.0, again=fast),
            measured("node1", "node2", ms=0.2, mbit_s=13768.0), measured("node2", "node0", ms=0.2, mbit_s=12000.0)]
    assert [f.verdict for f in check_links(gathered(ring))] == [Verdict.OK, Verdict.OK]


def test_a_confirmed_slow_link_above_the_floor_warns_below_it_fails() -> None:
    def ring(rate: float) -> list[Measured]:
        confirm = Attempt(target=Target("node1", "x", 1, "peer-to-peer", bytes=8), result="ok", mbit_s=rate)
        return [measured("node0", "node1", mbit_s=rate, again=confirm),
                measured("node1", "node2", mbit_s=20000.0), measured("node2", "node0", mbit_s=21000.0)]

    [warn] = [f for f in check_links(gathered(ring(3000.0))) if f.check == "bandwidth"]
    [fail] = [f for f in check_links(gathered(ring(45.0))) if f.check == "bandwidth"]
    assert warn.verdict is Verdict.WARN and fail.verdict is Verdict.FAIL and "45 Mbit/s" in fail.summary


def test_uniformly_slow_links_are_not_pinned_on_a_node() -> None:
    ring = [measured("node0", "node1", mbit_s=90.0), measured("node1", "node2", mbit_s=95.0)]
    findings = [f for f in check_links(gathered(ring)) if f.check == "bandwidth"]
    assert [f.verdict for f in findings] == [Verdict.OK, Verdict.WARN]
    assert findings[1].summary == "no link measures more than 95 Mbit/s"


def test_port_blame_names_the_blocking_side() -> None:
    attempts = [("node1", "node0"), ("node2", "node0"), ("node0", "node1"), ("node1", "node2")]
    assert _blame([("node1", "node0"), ("node2", "node0")], attempts) == {"node0": ["incoming"]}
    assert _blame([("node1", "node0"), ("node1", "node2")], attempts) == {"node1": ["outgoing"]}
    assert _blame([("node1", "node2")], attempts) == {"node2": ["from node1"]}


def test_drop_and_reject_are_told_apart() -> None:
    data = gathered([measured("node1", "node0", result="timeout", label="rendezvous", port=29500),
                     measured("node2", "node0", result="timeout", label="rendezvous", port=29500),
                     measured("node0", "node1", result="refused"), measured("node2", "node1")])
    found = {(f.nodes, f.summary.split(":")[1].split("(")[0].strip()) for f in check_ports(data)
             if f.verdict is Verdict.FAIL}
    assert found == {(("node0",), "DROP"), (("node1",), "REJECT")}


def test_a_running_job_of_this_fleet_is_information_and_a_stale_one_gets_a_working_command() -> None:
    data = Gathered(fleet=FLEET, rdzv_port=29500)
    running = JobSeen(job_id="tf-now", state=JobStatus.RUNNING, live=True,
                      processes=[Proc(pid=11, cmdline="torchrun", job_id="tf-now")])
    stale = JobSeen(job_id="tf-old", state=JobStatus.FAILED, live=False,
                    processes=[Proc(pid=21, cmdline="python train.py", job_id="tf-old"),
                               Proc(pid=22, cmdline="python train.py", job_id="tf-old")])
    holder = Proc(pid=11, cmdline="torchrun", job_id="tf-now")
    data.facts = {"node0": facts(jobs=[running], ports={"29500": holder}), "node1": facts(jobs=[stale]),
                  "node2": facts()}
    data.listeners = {"node0": {"rendezvous": Bound(wanted=29500, error="Address already in use")}}
    found = fold(check_jobs(data) + check_ports(data))
    info = [f for f in found if f.verdict is Verdict.INFO]
    assert {f.summary for f in info} == {"job tf-now is running (1 process(es))",
                                         "rendezvous port 29500 is used by running job tf-now"}
    [stale_finding] = [f for f in found if f.verdict is Verdict.FAIL]
    assert stale_finding.nodes == ("node1",) and "job tf-old (failed)" in stale_finding.summary
    assert stale_finding.remedy == "end them: `trainfleet exec -n node1 -- kill 21 22`"


def test_the_odd_version_out_is_named() -> None:
    data = Gathered(fleet=FLEET, rdzv_port=29500)
    data.facts = {f"node{i}": facts(python=PythonInfo("3.11.7", "/x"), torch=TorchInfo(version=v))
                  for i, v in enumerate(["2.13.0", "2.12.1", "2.13.0"])}
    failing = [f for f in check_consistency(data) if f.verdict is Verdict.FAIL]
    assert len(failing) == 1 and failing[0].nodes == ("node1",)
    assert failing[0].summary == "torch is 2.12.1 here but 2.13.0 on node[0,2]"


def test_torch_missing_everywhere_fails() -> None:
    data = Gathered(fleet=FLEET, rdzv_port=29500)
    data.facts = {f"node{i}": facts(python=PythonInfo("3.11.7", "/x")) for i in range(3)}
    [failing] = [f for f in check_consistency(data) if f.verdict is Verdict.FAIL]
    assert failing.summary == "torch: not installed everywhere" and "install torch" in failing.remedy


def test_identical_findings_fold_into_one_row() -> None:
    rows = fold([Finding("gpus", Verdict.WARN, ("node0",), "no GPU"), Finding("gpus", Verdict.WARN, ("node2",), "no GPU"),
                 Finding("disk", Verdict.FAIL, ("node1",), "full")])
    assert [(r.check, r.nodes) for r in rows] == [("disk", ("node1",)), ("gpus", ("node0", "node2"))]


def test_hostnames_no_peer_resolves_are_one_line_for_the_fleet_and_a_partial_miss_names_the_peers() -> None:
    from trainfleet.doctor.checks import check_hostnames

    big = fleet_from_data({"nodes": [{"name": f"node{i}", "host": f"10.0.0.{i + 1}"} for i in range(128)]}, "f.yaml")
    data = Gathered(fleet=big, rdzv_port=29500)
    data.facts = {n.name: FactsReply(hostname=f"gpu-{n.name[4:]}", time=0.0) for n in big.nodes}
    data.resolved = {n.name: {} for n in big.nodes}
    data.resolved["node1"] = {"gpu-0": "10.0.0.1"}  # node0's name resolves on one peer
    findings = check_hostnames(data)
    assert [(f.nodes[:2], len(f.nodes), f.summary, f.evidence) for f in findings] == [
        (("node1", "node2"), 127, "its hostname does not resolve on its peers", "gpu-[1-127] unresolved on every peer"),
        (("node0",), 1, "its hostname does not resolve on node[2-127]", "node0: gpu-0 unresolved on node[2-127]")]


def test_nodes_unreachable_alike_are_one_row_each_address_in_the_evidence() -> None:
    from trainfleet.doctor.checks import check_ssh

    data = Gathered(fleet=FLEET, rdzv_port=29500)
    for i in (1, 2):
        data.ssh_errors[f"node{i}"] = (f"no answer from 10.0.0.{i + 1}:22 within 5s; fix: check the address, that "
                                       "the machine is up, and firewalls on the path")
    data.ssh_errors["node0"] = "connection refused at 10.0.0.1:22; fix: start sshd there or correct `port:`"
    failed = [f for f in check_ssh(data) if f.verdict is Verdict.FAIL]
    assert [(f.nodes, f.summary, f.evidence) for f in failed] == [
        (("node0",), "connection refused at 10.0.0.1:22", ""),
        (("node1", "node2"), "no answer from its SSH address within 5s", "node1 10.0.0.2:22, node2 10.0.0.3:22")]


def test_nfs_over_public_addresses_is_named_and_job_ports_a_stranger_reaches_are_too() -> None:
    from trainfleet.doctor.checks import check_exposed, check_storage
    from trainfleet.plans.network import NetworkChoice

    def fleet_data(addresses: list[str]) -> Gathered:
        fleet = fleet_from_data({"nodes": [{"name": f"node{i}", "host": a} for i, a in enumerate(addresses)],
                                 "storage": [{"type": "nfs", "mount": "/data", "source": "/srv/data"}]}, "f.yaml")
        data = Gathered(fleet=fleet, rdzv_port=29500)
        data.choices = {n.name: NetworkChoice(n.name, "eth0", n.host, "given") for n in fleet.nodes}
        return data

    [warning] = check_storage(fleet_data(["203.0.113.1", "198.51.100.2"])) or [None]
    assert warning is None  # (documentation ranges are not global either)
    [warning] = check_storage(fleet_data(["8.8.4.4", "1.1.1.1"]))
    assert warning.verdict is Verdict.WARN and warning.nodes == ("node0", "node1")
    assert "NFS /data travels over public addresses" in warning.summary and "firewall apply" in warning.remedy
    assert check_storage(fleet_data(["10.0.0.1", "10.0.0.2"])) == []
    exposed = fleet_data(["10.0.0.1", "10.0.0.2"])
    exposed.exposed = {"node0": ["rendezvous 29500", "ephemeral 40001"], "node1": ["ephemeral 40002"]}
    [both] = fold(check_exposed(exposed))
    assert both.verdict is Verdict.WARN and both.nodes == ("node0", "node1")
    assert both.evidence == "node0: rendezvous 29500, ephemeral 40001; node1: ephemeral 40002"
