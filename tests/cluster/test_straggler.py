"""The slow node named while the job runs, with no change to the script: one sandbox node
held to 30% of a CPU (`sandbox fault slow-cpu`) is named by `status` within a minute; with
no node held back, nobody is."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from helpers import tf
from trainfleet.sandbox import cluster as sb

pytestmark = pytest.mark.slow

JOB = """\
import time, torch, torch.distributed as dist
torch.set_num_threads(1)
dist.init_process_group("gloo")
x, total = torch.randn(384, 384), torch.ones(1000)
for step in range(100000):
    for _ in range(200):  # about 160 ms at full speed: a step far longer than the quota's 100 ms period
        x = torch.tanh(x @ x)
    dist.all_reduce(total)
    if step % 20 == 0:
        print(f"step {step}", flush=True)
"""


def straggler_line(fleet: str, job: str) -> str:
    lines = tf("status", "-f", fleet, job).stdout.splitlines()
    return next((line.strip() for line in lines if "is the slowest" in line), "")


def run_for(fleet: str, project: Path, seconds: float, expect: str | None) -> tuple[str, str]:
    """What `status` said of the slow node ("" for nothing), and `top --once` then."""
    started = tf("run", "-f", fleet, "--detach", "--nproc-per-node", "1", "--sync-dir", str(project), "job.py",
                 timeout=120)
    assert started.returncode == 0, started.stderr
    job = started.stdout.strip().splitlines()[-1]
    said = ""
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            said = straggler_line(fleet, job)
            if expect is not None and said:
                break
            time.sleep(3)
        if expect is not None and not said:  # what the nodes saw, for the failure's message
            import json

            said = str({n: s["waits"] for n, s in json.loads(tf("status", "-f", fleet, job, "--json").stdout)[0][
                "nodes"].items()})
        table = tf("top", "-f", fleet, "--once", timeout=60).stdout
    finally:
        tf("stop", "-f", fleet, job, timeout=60)
    return said, table


def test_a_node_held_to_30_percent_of_a_cpu_is_named_and_nobody_otherwise(cluster3: sb.SandboxState,
                                                                          tmp_path: Path) -> None:
    data = yaml.safe_load(Path(cluster3.fleet_file).read_text())
    for node in data["nodes"]:
        node["slots"] = 1
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(data, sort_keys=False))
    project = tmp_path / "straggler"
    project.mkdir()
    (project / "job.py").write_text(JOB)
    tf("sandbox", "fault", "slow-cpu", "node2", "30%", "-f", str(fleet), check=True)
    try:
        started = time.monotonic()
        said, table = run_for(str(fleet), project, 90, expect="node2")
        assert said.startswith("node2 (rank 2) is the slowest: the others wait for it"), said
        assert re.search(r"tf-\S+: node2 \(rank 2\) is the slowest", table), table  # `top` says it too
        print(f"named after {time.monotonic() - started:.0f} s: {said}")
    finally:
        tf("sandbox", "fault", "clear", "node2", "-f", str(fleet), check=True)
    said, table = run_for(str(fleet), project, 60, expect=None)
    assert said == "" and "is the slowest" not in table, said + table


def test_doctor_deep_names_the_node_whose_cpu_is_held_down(cluster3: sb.SandboxState, tmp_path: Path) -> None:
    """No GPU here: `--deep` burns one CPU core per node at once, and the node held to 30%
    of a CPU sits far below the fleet's median; with no fault, nobody is named (two nodes
    then, one core each: three burns on this machine's two cores would not be equal)."""
    import json

    fleet = cluster3.fleet_file
    data = yaml.safe_load(Path(fleet).read_text())
    data["nodes"] = data["nodes"][:2]
    pair = tmp_path / "pair.yaml"
    pair.write_text(yaml.safe_dump(data, sort_keys=False))

    def deep_findings(which: str = fleet) -> list[dict]:  # type: ignore[type-arg]
        done = tf("doctor", "-f", which, "--deep", "--seconds", "4", "--json", timeout=240)
        return [f for f in json.loads(done.stdout)["findings"] if f["check"] == "deep"]

    tf("sandbox", "fault", "slow-cpu", "node2", "30%", "-f", fleet, check=True)
    try:
        held = deep_findings()
    finally:
        tf("sandbox", "fault", "clear", "node2", "-f", fleet, check=True)
    named = [f for f in held if f["verdict"] in ("warn", "FAIL")]
    assert [f["nodes"] for f in named] == [["node2"]], held
    assert re.match(r"cpu \(one CPU core\): matmul at [\d.]+ TFLOPS, \d+% below the fleet's median", named[0]["summary"])
    calm = deep_findings(str(pair))
    assert [f["verdict"] for f in calm] == ["info"], calm
