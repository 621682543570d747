"""The controller's link is trainfleet's, not the job's: when the laptop's SSH to a node goes
(its Wi-Fi, a VPN), the job trains on; an attached client says so once, reconnects, and
catches up from the node's log without losing or repeating a line; a client that cannot
get back leaves with its own exit code and the commands that follow or stop the job."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import Sandboxes
from helpers import tf, wait_for_line
from trainfleet.sandbox import cluster as sb
from trainfleet.supervise.supervisor import LINK_LOST_EXIT


@pytest.fixture(scope="module")
def linked(sandboxes: Sandboxes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sb.SandboxState, Path]]:
    """3 nodes whose fleet notices a silent link in about 8 s (keepalives every 2 s)."""
    state = sandboxes.make(3, slots=1)
    data = yaml.safe_load(Path(state.fleet_file).read_text())
    data["ssh"]["keepalive"] = 2
    fleet = tmp_path_factory.mktemp("linked") / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(data, sort_keys=False))
    yield state, fleet
    sandboxes.remove(state)


def cut(state: sb.SandboxState, node: str) -> None:
    tf("sandbox", "fault", "controller-link", node, "--mode", "drop", "--name", state.name, check=True)


def mend(state: sb.SandboxState, node: str) -> None:
    tf("sandbox", "fault", "clear", node, "--name", state.name, check=True)


def start(fleet: Path, workdir: Path, job_id: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "trainfleet", "run", "-f", str(fleet), "--sync-dir", str(workdir),
                             "--job-id", job_id, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def test_a_lost_link_to_node_0_loses_no_line_and_the_job_finishes(linked: tuple[sb.SandboxState, Path],
                                                                   workdir: Path) -> None:
    """Node 0's rank prints a line a second; its link is gone for 25 s (noticed after about
    8): every line comes once, in order, and the exit status is the job's."""
    state, fleet = linked
    client = start(fleet, workdir, "tf-link-0", "ranks.py", "--tick", "--seconds", "40")
    try:
        assert client.stdout is not None
        wait_for_line(client, r"tick 3$", timeout=120)
        cut(state, "node0")
        time.sleep(25)
    finally:
        mend(state, "node0")
    out, err = client.communicate(timeout=180)
    assert client.returncode == 0, err[-3000:]
    ticks = [int(n) for n in re.findall(r"^\[node0:0\] tick (\d+)$", out, re.MULTILINE)]
    assert ticks == list(range(4, 41)), ticks  # (1-3 were read by wait_for_line)
    assert re.search(r"lost contact with node0 \(SSH\) at \d\d:\d\d:\d\d; the job goes on; reconnecting", err), err
    assert "back in contact with node0" in err and "finished on every node" in err, err
    assert "Traceback" not in err and "failed" not in err, err
    shown = tf("status", "-f", str(fleet), "tf-link-0", check=True).stdout
    assert "succeeded" in shown, shown


def test_a_client_that_cannot_get_back_leaves_and_the_job_goes_on(linked: tuple[sb.SandboxState, Path],
                                                                   workdir: Path) -> None:
    state, fleet = linked
    client = start(fleet, workdir, "tf-link-gone", "--reconnect-timeout", "4", "ranks.py", "--tick", "--seconds", "45")
    try:
        wait_for_line(client, r"tick 2$", timeout=120)
        cut(state, "node1")
        out, err = client.communicate(timeout=120)
        assert client.returncode == LINK_LOST_EXIT, err[-3000:]
        assert re.search(r"lost contact with node1 \(since \d\d:\d\d:\d\d\) and could not get back; job tf-link-gone "
                         r"goes on: `trainfleet logs tf-link-gone --follow` follows it, `trainfleet stop tf-link-gone` "
                         r"stops it", err), err
        assert "pids" not in err and "failed" not in err and "Traceback" not in err, err
        running = tf("status", "-f", str(fleet), "tf-link-gone")  # (node1 answers nobody now)
        assert "running" in running.stdout, running.stdout + running.stderr
    finally:
        mend(state, "node1")
    followed = tf("logs", "-f", str(fleet), "tf-link-gone", "--follow", timeout=180)
    assert followed.returncode == 0 and "tick 45" in followed.stdout, followed.stderr
    shown = tf("status", "-f", str(fleet), "tf-link-gone", check=True).stdout
    assert "succeeded" in shown, shown


def test_a_stop_that_reaches_one_node_is_a_stop_on_every_node(linked: tuple[sb.SandboxState, Path], workdir: Path,
                                                             tmp_path: Path) -> None:
    """A person's stop reaches node 0 only (the others' links are cut): node 0's supervisor
    tells the others over the mesh, and every part is recorded `stopped` with the person's
    reason, never `failed` because its peers went first."""
    import json

    from helpers import job_processes_on

    state, fleet = linked
    started = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--detach", "--job-id", "tf-stop-relay",
                 "ranks.py", "--forever", timeout=180)
    assert started.returncode == 0, started.stderr
    head_only = tmp_path / "head.yaml"
    data = yaml.safe_load(fleet.read_text())
    data["nodes"] = data["nodes"][:1]
    head_only.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        for node in ("node1", "node2"):
            cut(state, node)
        stopped = tf("stop", "-f", str(head_only), "tf-stop-relay", timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        deadline = time.monotonic() + 30
        while any(job_processes_on(n) for n in state.nodes) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [job_processes_on(n) for n in state.nodes] == [[], [], []]
    finally:
        for node in ("node1", "node2"):
            mend(state, node)
    shown = json.loads(tf("status", "-f", str(fleet), "tf-stop-relay", "--json", check=True).stdout)[0]
    assert shown["state"] == "stopped", shown
    assert {n: s["state"] for n, s in shown["nodes"].items()} == {"node0": "stopped", "node1": "stopped",
                                                                   "node2": "stopped"}, shown
    assert not shown.get("root_cause"), shown
