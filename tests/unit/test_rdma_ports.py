"""RDMA ports read as the kernel shows them (/sys/class/infiniband, in the form of the
kernel's Documentation/ABI/stable/sysfs-class-infiniband: `4: ACTIVE`, `5: LinkUp`,
`200 Gb/sec (4X HDR)`), and what doctor says of them."""

from __future__ import annotations

from pathlib import Path

from trainfleet.agent.rdma import ib_ports
from trainfleet.doctor.rdma import fleet_findings, hca_selects, node_findings


def sysfs(root: Path, ports: dict[str, tuple[str, str, str, str]]) -> Path:
    """`mlx5_0:1` -> (state, phys_state, rate, link_layer), as the kernel's files hold them."""
    for name, (state, phys, rate, layer) in ports.items():
        device, number = name.split(":")
        here = root / device / "ports" / number
        here.mkdir(parents=True)
        for file, text in (("state", state), ("phys_state", phys), ("rate", rate), ("link_layer", layer)):
            (here / file).write_text(text + "\n")
    return root


UP = ("4: ACTIVE", "5: LinkUp", "200 Gb/sec (4X HDR)", "InfiniBand")
DOWN = ("1: DOWN", "2: Polling", "10 Gb/sec (4X SDR)", "InfiniBand")
SLOW = ("4: ACTIVE", "5: LinkUp", "100 Gb/sec (4X EDR)", "InfiniBand")
UNUSED = ("1: DOWN", "3: Disabled", "40 Gb/sec (4X QDR)", "Ethernet")


def test_ports_are_read_from_the_kernels_files(tmp_path: Path) -> None:
    ports = ib_ports(str(sysfs(tmp_path, {"mlx5_0:1": UP, "mlx5_1:1": DOWN, "mlx5_1:2": UNUSED})))
    assert [(p.device, p.port, p.state, p.phys_state, p.rate, p.link_layer) for p in ports] == [
        ("mlx5_0", 1, "ACTIVE", "LinkUp", "200 Gb/sec (4X HDR)", "InfiniBand"),
        ("mlx5_1", 1, "DOWN", "Polling", "10 Gb/sec (4X SDR)", "InfiniBand"),
        ("mlx5_1", 2, "DOWN", "Disabled", "40 Gb/sec (4X QDR)", "Ethernet")]
    assert ib_ports(str(tmp_path / "none")) == []  # no device, no driver: nothing


def test_a_down_port_a_wrong_hca_and_a_slow_link_are_named(tmp_path: Path) -> None:
    good = ib_ports(str(sysfs(tmp_path / "a", {"mlx5_0:1": UP, "mlx5_1:1": UP, "mlx5_1:2": UNUSED})))
    half = ib_ports(str(sysfs(tmp_path / "b", {"mlx5_0:1": UP, "mlx5_1:1": DOWN})))
    dead = ib_ports(str(sysfs(tmp_path / "c", {"mlx5_0:1": DOWN})))
    slow = ib_ports(str(sysfs(tmp_path / "d", {"mlx5_0:1": SLOW})))
    assert node_findings("node0", good, "") == []  # (a disabled second port is a choice)
    [(verdict, summary, fix)] = node_findings("node1", half, "")
    assert verdict == "WARN" and summary.startswith("mlx5_1 port 1: DOWN (Polling), while 1 other port(s) are up")
    assert "`ibstat mlx5_1`" in fix
    [(verdict, summary, _)] = node_findings("node2", dead, "")
    assert verdict == "FAIL" and "NCCL falls back to TCP sockets" in summary
    # NCCL_IB_HCA: prefixes, exact names, ports, exclusions; naming nothing here is a failure.
    assert hca_selects("mlx5", good[1]) and not hca_selects("=mlx5", good[1]) and hca_selects("=mlx5_1", good[1])
    assert hca_selects("mlx5_1:1", good[1]) and not hca_selects("mlx5_1:2", good[1]) and not hca_selects("^mlx5_1", good[1])
    assert node_findings("node1", half, "mlx5_0") == []  # pinned to the port that is up
    [(verdict, summary, _)] = node_findings("node1", half, "=mlx5_1")
    assert verdict == "FAIL" and summary.startswith("no RDMA port NCCL may use is up (mlx5_1 port 1: DOWN")
    [(verdict, summary, _)] = node_findings("node0", good, "mlx5_7")
    assert verdict == "FAIL" and summary.startswith("NCCL_IB_HCA=mlx5_7 selects none of this node's RDMA ports")
    # Across the fleet: the node whose link trained down, and one with no RDMA at all.
    found = fleet_findings({"node0": good, "node1": half, "node3": slow, "node4": []})
    assert found[0][0] == ("node3",) and found[0][1].startswith("node3: RDMA links at 100 Gb/sec where the others "
                                                                "run 200 Gb/sec")
    assert found[1][0] == ("node4",) and "no RDMA device, while node[0-1,3] have one" in found[1][1]
