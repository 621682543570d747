"""GPU health on a sandbox whose nodes have GPUs that answer like real ones
(`sandbox up --fake-gpus`): each fault `sandbox fault gpu` injects is named by doctor on
the right node and GPU, with the fix; cleared, the GPUs pass."""

from __future__ import annotations

import json
import re
import time
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
                           ("node0", ["--gpu", "1", "--pcie-width", "4", "--slowdown", "hw_power_brake_slowdown"]),
                           ("node1", ["--gpu", "0", "--nvlink-down", "3"])):
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
        assert any("GPU 0 " in s and "NVLink link(s) 3 of its 18 are down" in s for s in by[("FAIL", "node1")]), found
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


GPU_JOB = """\
import os, time
log = "/tmp/.trainfleet-fake-gpus/kern.log"
print("ready", flush=True)
for _ in range(900):
    if os.environ.get("NODE_RANK") == "1" and "Xid" in open(log).read():
        raise RuntimeError("CUDA error: unspecified launch failure")
    time.sleep(0.1)
"""


def test_a_job_that_dies_after_a_hardware_xid_names_the_gpu(gpus: sb.SandboxState, tmp_path: Path) -> None:
    project = tmp_path / "gpujob"
    project.mkdir()
    (project / "job.py").write_text(GPU_JOB)
    fleet = gpus.fleet_file
    started = tf("run", "-f", fleet, "--launcher", "command", "--detach", "--sync-dir", str(project), "job.py",
                 timeout=120)
    assert started.returncode == 0, started.stderr
    job = started.stdout.strip().splitlines()[-1]
    try:
        for _ in range(100):
            if "ready" in tf("logs", "-f", fleet, job).stdout:
                break
            time.sleep(0.2)
        tf("sandbox", "fault", "gpu", "node1", "--gpu", "1", "--xid", "79", "-f", fleet, check=True)
        for _ in range(150):
            shown = tf("status", "-f", fleet, job)
            if "running" not in shown.stdout.splitlines()[0]:
                break
            time.sleep(0.2)
        text = shown.stdout
        assert "failed" in text.splitlines()[0], text
        assert re.search(r"node1 GPU 1 \(GPU-[0-9a-f-]+, bus 0000:28:00\): Xid 79, fallen off the bus at "
                         r"\d\d:\d\d:\d\d", text), text
        assert "trainfleet cordon node1" in text and "CUDA error" not in text.splitlines()[1], text
    finally:
        tf("stop", "-f", fleet, job, timeout=60)
        tf("sandbox", "fault", "clear", "-f", fleet, check=True)


NCCL_JOB = '''
import os, sys, time
if os.environ["RANK"] == "1":  # NCCL's first word of a failing InfiniBand link, as NCCL prints it (fd 2)
    os.write(2, (sys.argv[1] + "\\n").encode())
time.sleep(1.5)
raise RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error (run with NCCL_DEBUG=INFO "
                   "for details), NCCL version 2.21.5")
'''


def test_nccls_first_warning_is_the_root_cause_not_every_ranks_error(gpus: sb.SandboxState, tmp_path: Path) -> None:
    """Every rank fails with an NCCL error that names no culprit; one rank printed NCCL's
    warning naming the transport and the peer first: the node supervisor keeps that line
    (NCCL_DEBUG=WARN is set for the job), and the root cause is it."""
    project = tmp_path / "nccljob"
    project.mkdir()
    (project / "job.py").write_text(NCCL_JOB)
    line = (Path(__file__).resolve().parents[1] / "captures" / "nccl-ib-failure.log").read_text().splitlines()[0]
    done = tf("run", "-f", gpus.fleet_file, "--nproc-per-node", "1", "--sync-dir", str(project), "job.py", line,
              timeout=240)
    assert done.returncode == 1, done.stderr[-3000:]
    assert ("rank 1 on node1 failed first: NCCL WARN NET/IB : Got completion from peer 10.0.0.12<51234> with "
            "status=12" in done.stderr), done.stderr[-3000:]
    assert "over NET/IB, peer 10.0.0.12); fix: `trainfleet doctor` on node1 and on the node at 10.0.0.12" in done.stderr
    assert re.search(r"other ranks failed after it: NCCL system error", done.stderr), done.stderr[-3000:]
    job = re.search(r"job (tf-\S+):", done.stderr).group(1)  # type: ignore[union-attr]
    shown = tf("status", "-f", gpus.fleet_file, job).stdout
    assert "NCCL WARN NET/IB" in shown, shown
