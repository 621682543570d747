"""Runbook 002 (LMFlow: DeepSpeed + pdsh, NCCL_SOCKET_IFNAME, "init can take ~20 mins,
hard to tell from a stuck run"), as docs/runbooks/002-lmflow-deepspeed-nccl-interface.md shows it: a
private training network whose NIC names differ between nodes, found without the user
naming them; doctor and `bench net` before training; single-node runs first, then all
nodes with DeepSpeed; `--hang-timeout` lets a slow start finish and ends a stuck one
with every rank's stack."""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml

from conftest import Sandboxes
from runbook import Session, trained


def test_lmflow_on_a_private_network_with_differing_nic_names(fresh: Sandboxes, tmp_path: Path) -> None:
    state = fresh.make(3, slots=2, private_network=True)
    user = Session("002-lmflow-deepspeed-nccl-interface", tmp_path / "lmflow")
    data = yaml.safe_load(Path(state.fleet_file).read_text())
    # The runbook's hostfile: servers A and B with more slots than C, by their public addresses
    # only; which network and NIC carry training is left to trainfleet.
    private = {n["name"]: (n.pop("address"), n.pop("interface")) for n in data["nodes"]}
    data["nodes"][2]["slots"] = 1
    (user.project / "fleet.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert len({nic for _, nic in private.values()}) == 3, private  # ens5, enp6s0, ...: all different

    doctor = user("doctor")
    chosen = ", ".join(f"{name}={nic}({address})" for name, (address, nic) in private.items())
    assert f"training network: {chosen}" in doctor.stdout, doctor.stdout
    bench = user("bench", "net", "--max-size", "256K", "--p2p-size", "256K", "--seconds-per-size", "0",
                 timeout=300)
    assert re.search(r"slowest link", bench.stdout + bench.stderr), bench.stdout

    for node in ("node0", "node1", "node2"):  # "make sure single-node training is fine in each server"
        alone = user("run", "-n", node, "--launcher", "deepspeed", "train.py", "--deepspeed_config",
                     "configs/zero2.json", "--steps", "20", timeout=300)
        trained(alone.stdout, 20)
        world = 1 if node == "node2" else 2
        assert f"[{node}:0] deepspeed: ZeRO stage 2, world {world}" in alone.stdout, alone.stdout[-2000:]

    everywhere = user("run", "--launcher", "deepspeed", "train.py", "--deepspeed_config", "configs/zero2.json",
                      "--steps", "20", timeout=300)
    trained(everywhere.stdout, 20)
    found = re.findall(r"^\[(node\d):(\d)\] rank \2 of 5 on \1 interface (\S+) nccl (\S+)$", everywhere.stdout,
                       re.MULTILINE)
    assert len(found) == 5, everywhere.stdout[-3000:]
    for node, _, gloo, nccl in found:  # every rank on its own node's private NIC, under its own name
        assert gloo == nccl == private[node][1]

    # Init that is slow but alive (a rank loading weights, printing as it goes) is not a hang ...
    started = time.monotonic()
    slow = user("run", "--hang-timeout", "10", "train.py", "--slow-start", "20", "--steps", "20", timeout=300)
    assert time.monotonic() - started > 20
    trained(slow.stdout, 20)
    # ... a rank that never arrives, silent, is: every rank's stack is shown and the job ends.
    stuck = user("run", "--hang-timeout", "10", "train.py", "--stuck-rank", "3", expect=1, timeout=300)
    assert "failed: hung: no rank wrote anything for 10s" in stuck.stderr, stuck.stderr
    assert re.search(r"^\[node1:3\]     stuck_forever \(train.py:\d+\)$", stuck.stdout, re.MULTILINE), stuck.stdout
    assert re.search(r"rank 3 in stuck_forever \(train.py:\d+\)", stuck.stderr), stuck.stderr
    assert re.search(r"node0: ranks 0,1 in init_process_group \(train.py:\d+\)", stuck.stderr), stuck.stderr
    user.check_page()
