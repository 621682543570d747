"""`container: {engine: docker}` with a real Docker (`sandbox up --docker`): a dockerd in
every node, the ranks in its containers, and nothing left when the job ends however it ends."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import Sandboxes
from helpers import REPO, job_processes_on, text_files_holding, tf, tf_start, wait_for_line
from trainfleet.sandbox import cluster as sb
from trainfleet.sandbox import docker

DS_RANK = re.compile(r"^\[(node\d):(\d)\] rank \2 local_rank_arg \d env RANK=\2 LOCAL_RANK=\d WORLD_SIZE=4 ", re.MULTILINE)
RANK = re.compile(r"^\[(node\d):(\d)\] rank \2 of 4 on \1 pid (\d+) sum 4$", re.MULTILINE)


@pytest.fixture(scope="module")
def docker_sandbox(sandboxes: Sandboxes) -> Iterator[sb.SandboxState]:
    if not shutil.which("dockerd", path="/usr/sbin:/usr/bin") and not os.environ.get("CI"):
        pytest.skip("no docker.io (`bash scripts/install.sh --tests` installs it)")
    state = sandboxes.make(2, slots=2, docker=True)
    tf("ssh", "setup", "-f", state.fleet_file, "--yes", check=True)
    yield state
    sandboxes.remove(state)


def containers(state: sb.SandboxState) -> list[list[str]]:
    """Every container, running or not, in each node's daemon."""
    return [subprocess.run(["docker", "-H", docker.docker_host(state.directory, n.name), "ps", "-a", "--format",
                            "{{.Names}}"], capture_output=True, text=True, check=True).stdout.split()
            for n in state.nodes]


def left_behind(state: sb.SandboxState) -> tuple[list[list[str]], list[list[str]]]:
    time.sleep(0.5)
    return containers(state), [[p for p in job_processes_on(n) if "containerd-shim" not in p] for n in state.nodes]


def test_the_example_and_a_deepspeed_job_train_in_containers_on_every_node(docker_sandbox: sb.SandboxState,
                                                                           workdir: Path, tmp_path: Path) -> None:
    fleet = docker_sandbox.fleet_file
    example = tf("run", "-f", fleet, "--sync-dir", str(REPO / "examples" / "charlm"), "train.py", "--steps", "30",
                 timeout=300)
    assert example.returncode == 0, example.stderr[-3000:]
    assert f"in {docker.IMAGE}" in example.stderr and re.search(r"step +30 .*loss", example.stdout), example.stdout
    assert left_behind(docker_sandbox) == ([[], []], [[], []])
    done = tf("run", "-f", fleet, "--sync-dir", str(workdir), "--launcher", "deepspeed", "ds_train.py", "--deepspeed",
              "--deepspeed_config", "ds.json", timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(DS_RANK.findall(done.stdout)) == [("node0", "0"), ("node0", "1"), ("node1", "2"), ("node1", "3")]
    # Secrets reach the ranks by name: never in the engine's command line, which `ps` shows.
    data = yaml.safe_load(Path(fleet).read_text())
    secret_fleet = tmp_path / "secret.yaml"
    secret_fleet.write_text(yaml.safe_dump({**data, "secrets": ["TF_TEST_TOKEN"]}))
    value = "s3cr3t-" + os.urandom(6).hex()
    secret = tf_start("run", "-f", str(secret_fleet), "--no-sync", "--sync-dir", str(workdir), "secret.py", "6",
                      env={"TF_TEST_TOKEN": value})
    seen = wait_for_line(secret, r"^\[node1:\d\] holding", timeout=240)
    # While the ranks hold it, no engine keeps its value: not in a container's configuration
    # (what `-e NAME` would do), nor in any file of its data root.
    for node in docker_sandbox.nodes:
        host = docker.docker_host(docker_sandbox.directory, node.name)
        running = subprocess.run(["docker", "-H", host, "ps", "-q"], capture_output=True, text=True).stdout.split()
        assert running, node.name
        inspected = subprocess.run(["docker", "-H", host, "inspect", *running], capture_output=True, text=True)
        assert inspected.returncode == 0 and value not in inspected.stdout, node.name
        assert text_files_holding(value, [docker.node_dir(docker_sandbox.directory, node.name) / "data"]) == []
    out, err = secret.communicate(timeout=300)
    stdout = "".join(seen) + out
    assert secret.returncode == 0 and stdout.count("secret is *** (argv clean)") == 4, err[-2000:]
    assert value not in stdout + err
    job_id = re.search(r"job (tf-\S+):", err).group(1)  # type: ignore[union-attr]
    assert not list(Path("/dev/shm").glob(f"trainfleet-{job_id}-*"))  # taken back when the job ended
    assert left_behind(docker_sandbox) == ([[], []], [[], []])


def test_a_failure_and_ctrl_c_leave_no_container_and_no_process(docker_sandbox: sb.SandboxState,
                                                                workdir: Path) -> None:
    fleet = docker_sandbox.fleet_file
    failed = tf("run", "-f", fleet, "--sync-dir", str(workdir), "ranks.py", "--fail-rank", "3", timeout=300)
    assert failed.returncode == 1 and "rank 3 on node1 failed first" in failed.stderr, failed.stderr[-3000:]
    assert left_behind(docker_sandbox) == ([[], []], [[], []])
    forever = tf_start("run", "-f", fleet, "--no-sync", "--sync-dir", str(workdir), "ranks.py", "--forever")
    seen = wait_for_line(forever, r"\[node1:3\] rank 3 of 4", timeout=120)
    assert all(int(pid) < 50 for *_, pid in RANK.findall("\n".join(seen)))  # the containers' own pid namespaces
    assert all(names and names[0].startswith("tf-") for names in containers(docker_sandbox))
    forever.send_signal(signal.SIGINT)
    _, stderr = forever.communicate(timeout=90)
    assert forever.returncode == 130 and "nothing left running" in stderr, stderr
    assert left_behind(docker_sandbox) == ([[], []], [[], []])


def test_doctor_reports_each_nodes_docker_data_root(docker_sandbox: sb.SandboxState) -> None:
    """Each node's own daemon's data root, which only the running daemon knows (it is on
    dockerd's command line, in no daemon.json)."""
    report = tf("doctor", "-f", docker_sandbox.fleet_file, "--json", timeout=120)
    disks = {tuple(f["nodes"]): f["summary"] for f in json.loads(report.stdout)["findings"] if f["check"] == "disk"}
    for node in docker_sandbox.nodes:
        root = docker.node_dir(docker_sandbox.directory, node.name) / "data"
        assert disks.get((node.name,)) == f"at least 10 GiB free in the workdir and in the Docker data-root {root}", \
            disks


def test_an_image_that_cannot_be_pulled_is_named_with_what_docker_said(docker_sandbox: sb.SandboxState,
                                                                       workdir: Path, tmp_path: Path) -> None:
    """The container check's failure carries each node's command, exit and docker's own stderr."""
    data = yaml.safe_load(Path(docker_sandbox.fleet_file).read_text())
    data["container"]["image"] = "trainfleet-missing-image:1"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(data))
    failed = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "ranks.py", timeout=300)
    assert failed.returncode != 0
    lines = failed.stderr.splitlines()
    assert any("trainfleet-missing-image:1 is not on every node and could not be pulled" in line
               for line in lines), failed.stderr
    assert any(line.startswith("  node[0-1]: `") and "pull trainfleet-missing-image:1` exited with status" in line
               for line in lines), failed.stderr
    said = [line for line in lines if line.startswith("    | ")]
    assert said and any("trainfleet-missing-image" in line or "rror" in line for line in said), failed.stderr
