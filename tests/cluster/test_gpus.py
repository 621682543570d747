"""GPU health on a sandbox whose nodes have GPUs that answer like real ones
(`sandbox up --fake-gpus`): each fault `sandbox fault gpu` injects is named by doctor on
the right node and GPU, with the fix; cleared, the GPUs pass."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Sandboxes
from helpers import tf
from trainfleet.sandbox import cluster as sb

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpus(sandboxes: Sandboxes) -> Iterator[sb.SandboxState]:
    state = sandboxes.make(3, slots=2, fake_gpus=2)
    yield state
    sandboxes.remove(state)


def gpu_findings(fleet: str) -> list[dict]:  # type: ignore[type-arg]
    done = tf("doctor", "-f", fleet, "--json", timeout=120)
    return [f for f in json.loads(done.stdout)["findings"] if f["check"] in ("gpu health", "gpus")]


def test_each_gpu_fault_is_named_on_its_node_and_gpu(gpus: sb.SandboxState) -> None:
    fleet = gpus.fleet_file
    healthy = gpu_findings(fleet)
    assert [f["verdict"] for f in healthy if f["check"] == "gpu health"] == ["ok"], healthy
    assert any(f["check"] == "gpus" and f["verdict"] == "ok" and "2 GPU(s)" in f["summary"] for f in healthy)
    try:
        for node, args in (("node1", ["--gpu", "1", "--xid", "79"]), ("node2", ["--gpu", "0", "--ecc", "2"]),
                           ("node2", ["--gpu", "1", "--row-remap-pending"]), ("node0", ["--xid", "13"]),
                           ("node0", ["--gpu", "1", "--pcie-width", "4", "--slowdown", "hw_power_brake_slowdown"])):
            tf("sandbox", "fault", "gpu", node, *args, "-f", fleet, check=True)
        found = {(f["verdict"], tuple(f["nodes"]), f["summary"].split(": ", 1)[-1][:40]) for f in gpu_findings(fleet)
                 if f["check"] == "gpu health"}
        said = gpu_findings(fleet)
        by = {(f["verdict"], f["nodes"][0]): [] for f in said}  # type: ignore[var-annotated]
        for f in said:
            by[(f["verdict"], f["nodes"][0])].append(f["summary"])
        assert any("GPU 1 (bus 00000000:28:00.0" in s and "Xid 79, fallen off the bus" in s
                   for s in by[("FAIL", "node1")]), found
        assert any("GPU 0 " in s and "2 uncorrected ECC error(s)" in s for s in by[("FAIL", "node2")]), found
        assert any("GPU 1 " in s and "a row remap is pending" in s for s in by[("warn", "node2")]), found
        assert any("GPU 0 " in s and "Xid 13" in s and "a job's fault" in s for s in by[("info", "node0")]), found
        node0 = by[("warn", "node0")]
        assert any("GPU 1 " in s and "PCIe link x4, below its x16" in s for s in node0), found
        assert any("hw_power_brake_slowdown" in s for s in node0), found
        fix = next(f["remedy"] for f in said if "Xid 79" in f["summary"])
        assert "sudo nvidia-smi -r -i 1" in fix and "trainfleet cordon node1" in fix
        # The fix, as the finding gives it: a reset applies the pending remap.
        tf("exec", "-f", fleet, "-n", "node2", "--", "nvidia-smi -r -i 1", check=True)
        after = [f["summary"] for f in gpu_findings(fleet) if "node2" in f["nodes"]]
        assert not any("row remap" in s for s in after), after
    finally:
        tf("sandbox", "fault", "clear", "-f", fleet, check=True)
    cleared = gpu_findings(fleet)
    assert [f["verdict"] for f in cleared if f["check"] == "gpu health"] == ["ok"], cleared


def test_a_fault_on_a_sandbox_without_gpus_is_one_line(cluster3: sb.SandboxState) -> None:
    done = tf("sandbox", "fault", "gpu", "node0", "--xid", "79", "--name", cluster3.name)
    assert done.returncode != 0 and done.stderr.count("\n") == 1 and "has no fake GPUs" in done.stderr
    assert "--fake-gpus" in done.stderr
    assert Path(cluster3.directory).is_dir()
