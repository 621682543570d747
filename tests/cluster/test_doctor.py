"""Doctor against a real sandbox: clean it passes; each injected fault is named by node and cause."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import tf
from trainfleet.sandbox import cluster as sb



def doctor(fleet: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    completed = tf("doctor", "-f", str(fleet), "--json", timeout=60)
    return completed.returncode, json.loads(completed.stdout)


def failures(report: dict) -> list[dict]:  # type: ignore[type-arg]
    return [f for f in report["findings"] if f["verdict"] == "FAIL"]


@pytest.fixture
def faulty(cluster3: sb.SandboxState) -> Iterator[str]:
    """The sandbox's name; every fault is cleared afterwards, also when the test fails."""
    yield cluster3.name
    tf("sandbox", "fault", "clear", "--name", cluster3.name, check=True)


def test_clean_sandbox_passes(fleet3: Path) -> None:
    code, report = doctor(fleet3)
    assert code == 0 and report["ok"], failures(report)
    assert report["seconds"] < 10
    checks = {f["check"] for f in report["findings"] if f["verdict"] == "ok"}
    assert {"ssh", "shell", "network", "ports", "versions", "disk", "clock", "jobs", "bandwidth"} <= checks
    assert set(report["network"]) == {"node0", "node1", "node2"}
    # The ring doctor measured: each node to the next, the figures `--plot` draws.
    assert {(r["src"], r["dst"]) for r in report["ring"]} == {("node0", "node1"), ("node1", "node2"), ("node2", "node0")}
    assert all(r["gbit_s"] > 0 for r in report["ring"])


def test_doctor_plot_draws_the_ring_as_a_heatmap(fleet3: Path, tmp_path: Path) -> None:
    from matplotlib import image

    out = tmp_path / "ring.png"
    done = tf("doctor", "-f", str(fleet3), "--plot", str(out), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote {out}" in done.stderr
    pixels = image.imread(str(out))
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 400 and pixels.std() > 0.05  # drawn, not blank
    refused = tf("doctor", "-f", str(fleet3), "--plot", str(tmp_path / "ring.gif"), timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and ".gif" in refused.stderr


def test_table_output_names_node_cause_and_fix(fleet3: Path, faulty: str) -> None:
    tf("sandbox", "fault", "block-port", "node0", "29500", "--mode", "reject", "--name", faulty, check=True)
    completed = tf("doctor", "-f", str(fleet3), env={"COLUMNS": "300"})
    assert completed.returncode == 1
    row = next(line for line in completed.stdout.splitlines() if "FAIL" in line)
    assert "node0" in row and "REJECT" in row and "trainfleet firewall plan" in row
    assert "problems found" in completed.stdout


@pytest.mark.parametrize("fault, node, check, words", [
    (["block-port", "node0", "29500", "--mode", "drop"], "node0", "ports", ["rendezvous port 29500", "DROP"]),
    (["block-port", "node0", "29500", "--mode", "reject"], "node0", "ports", ["rendezvous port 29500", "REJECT"]),
    (["cap", "node1", "50mbit"], "node1", "bandwidth", ["Mbit/s"]),
    (["cut", "node2"], "node2", "ssh", ["no answer"]),
    (["fill-disk", "node1"], "node1", "disk", ["MiB free"]),
    (["kill", "node2"], "node2", "ssh", ["connection refused"]),
])
def test_each_fault_is_named(fleet3: Path, faulty: str, fault: list[str], node: str, check: str,
                             words: list[str]) -> None:
    tf("sandbox", "fault", *fault, "--name", faulty, check=True)
    code, report = doctor(fleet3)
    assert code == 1 and not report["ok"]
    named = [f for f in failures(report) if f["check"] == check and node in f["nodes"]]
    assert named, failures(report)
    assert all(word in named[0]["summary"] for word in words), named[0]
    # Only the faulty node is blamed.
    assert all(f["nodes"] == [node] for f in failures(report)), failures(report)


def test_latency_fault_is_named_or_refused_where_the_kernel_cannot_delay(fleet3: Path, faulty: str) -> None:
    """Where the kernel has netem, doctor names the slow node; where it has none (this
    machine's), the fault is refused in one line that says why, and nothing is left of it."""
    injected = tf("sandbox", "fault", "latency", "node1", "60ms", "--name", faulty)
    if injected.returncode != 0:
        lines = injected.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot add latency on node1" in lines[0] and "no netem qdisc" in lines[0], lines
        listed = tf("sandbox", "fault", "list", "--name", faulty, check=True)
        assert "latency" not in listed.stdout, listed.stdout
        qdiscs = tf("exec", "-f", str(fleet3), "-n", "node1", "--", "tc qdisc show", check=True).stdout
        assert "netem" not in qdiscs, qdiscs
        return
    code, report = doctor(fleet3)
    assert code == 1
    assert any(f["check"] == "latency" and f["nodes"] == ["node1"] for f in failures(report)), failures(report)


def test_stale_job_and_busy_port_are_found(fleet3: Path) -> None:
    """A process of an earlier job that holds the rendezvous port on node 0."""
    # SO_REUSEADDR, as torch's store sets it: earlier tests leave TIME_WAIT connections on 29500.
    holder = ("TRAINFLEET_JOB_ID=tf-old-job nohup python3 -c \"import socket,time; s=socket.socket(); "
              "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
              "s.bind(('0.0.0.0', 29500)); s.listen(); time.sleep(60)\" >/dev/null 2>&1 & echo $!; sleep 0.5; "
              "kill -0 $!")  # still alive: it holds the port
    pid = tf("exec", "-f", str(fleet3), "-n", "node0", "--", holder, check=True).stdout.split()[-1]
    try:
        code, report = doctor(fleet3)
        assert code == 1
        found = {f["check"]: f for f in failures(report)}
        assert found["jobs"]["summary"].startswith("processes of earlier job tf-old-job still run (pids ")
        assert found["jobs"]["nodes"] == ["node0"]
        assert found["jobs"]["remedy"] == f"end them: `trainfleet exec -n node0 -- kill {pid}`"
        assert "rendezvous port 29500 is in use by pid" in found["ports"]["summary"]
    finally:
        tf("exec", "-f", str(fleet3), "-n", "node0", "--", f"kill {pid}", check=True)


def test_python_missing_on_a_node(fleet3: Path, tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(fleet3.read_text())
    data["python"] = "python3.99"
    broken = tmp_path / "fleet.yaml"
    broken.write_text(yaml.safe_dump(data))
    code, report = doctor(broken)
    assert code == 1
    shell = [f for f in failures(report) if f["check"] == "shell"]
    assert shell and "`python3.99` was not found" in shell[0]["summary"] and len(shell[0]["nodes"]) == 3
    # A login shell finds the Python that is there: the remedy names it.
    assert "set `python: /" in shell[0]["remedy"]


def test_sandbox_fault_list_and_bad_input(cluster3: sb.SandboxState, faulty: str) -> None:
    tf("sandbox", "fault", "cap", "node0", "1gbit", "--name", faulty, check=True)
    listed = tf("sandbox", "fault", "list", "--name", faulty)
    assert "node0: cap (1gbit)" in listed.stdout
    again = tf("sandbox", "fault", "cap", "node0", "2gbit", "--name", faulty)
    assert again.returncode == 1 and "already has a cap fault" in again.stderr
    bad = tf("sandbox", "fault", "cap", "node9", "1gbit", "--name", faulty)
    assert bad.returncode == 2 and "has no node 'node9'" in bad.stderr
    rate = tf("sandbox", "fault", "cap", "node1", "fast", "--name", faulty)
    assert rate.returncode == 2 and "100mbit" in rate.stderr
    qdiscs = subprocess.run(["ip", "netns", "exec", cluster3.nodes[0].namespace, "tc", "qdisc", "show", "dev", "eth0"],
                            capture_output=True, text=True).stdout
    assert "tbf" in qdiscs


def test_a_full_disk_refuses_the_job_naming_the_node_and_the_fix(fleet3: Path, faulty: str, workdir: Path) -> None:
    """`run` on a node whose workdir is full: refused before anything starts, in one line
    with the node, the cause and what to do."""
    tf("sync", "-f", str(fleet3), str(workdir), check=True)
    tf("sandbox", "fault", "fill-disk", "node1", "--name", faulty, check=True)
    done = tf("run", "-f", str(fleet3), "--no-sync", "--sync-dir", str(workdir), "ranks.py", timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "node1" in done.stderr and "No space left on device" in done.stderr, done.stderr
    assert "fix: free space on node1 (the workdir is /tmp/trainfleet)" in done.stderr, done.stderr
