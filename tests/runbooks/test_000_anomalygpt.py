"""Runbook 000 (AnomalyGPT on 2 nodes: Docker + DeepSpeed + pdsh, sshd on port 2222, ufw),
as docs/runbooks/000-anomalygpt-docker-deepspeed.md shows it: the fleet imported from the runbook's
hostfile and ~/.ssh/config aliases, `ssh setup` instead of root passwords and copied keys,
`firewall apply` instead of `ufw disable`, doctor naming a full container data root before
"No space left on device", and the DeepSpeed job inside a Docker container on every node
(a real dockerd in each node: `sandbox up --docker`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Sandboxes
from helpers import job_processes_on
from runbook import Session, trained
from trainfleet.sandbox import docker


def test_anomalygpt_in_containers_with_deepspeed(fresh: Sandboxes, tmp_path: Path) -> None:
    if subprocess.run(["which", "dockerd", "debootstrap", "ufw"], capture_output=True).returncode != 0:
        pytest.fail("docker.io, debootstrap and ufw are needed (`bash scripts/install.sh --tests` installs them)")
    state = fresh.make(2, slots=2, ssh_port=2222, docker=True)
    for node in state.nodes:  # the runbook's nodes: ufw on, only SSH allowed in (in each node's own /etc)
        subprocess.run(["nsenter", "-t", str(node.sshd_pid), "-a", "sh", "-c",
                        "ufw allow 2222/tcp && ufw --force enable"], check=True, capture_output=True)
    user = Session("000-anomalygpt-docker-deepspeed", tmp_path / "anomalygpt")
    key = state.directory + "/id_ed25519"
    # What the user already has: the runbook's ~/.ssh/config aliases and its hostfile.
    (user.project / "ssh_config").write_text("".join(
        f"Host {alias}\n    HostName {node.address}\n    User root\n    IdentityFile {key}\n    Port 2222\n\n"
        for alias, node in zip(("my-89", "my-91"), state.nodes)))
    (user.project / "hostfile").write_text("my-89 slots=2\nmy-91 slots=2\n")

    imported = user("import", "hostfile", "hostfile", "--ssh-config", "ssh_config")
    assert "wrote fleet.yaml with 2 node(s), 4 slot(s)" in imported.stdout
    nodes = user.fleet()["nodes"]
    assert [(n["name"], n["host"], n["port"]) for n in nodes] == [("my-89", state.nodes[0].address, 2222),
                                                                  ("my-91", state.nodes[1].address, 2222)]
    # The user's edits: where the job's files go and which Python runs it (see the page), and
    # the container every node runs the job in (the sandbox's image, this Python mounted in it).
    user.edit_fleet(workdir="/tmp/trainfleet", python=sys.executable,
                    ssh={"known_hosts": str(user.project / "known_hosts")}, container=docker.container_options())
    trusted = user("ssh", "setup", "--yes")
    assert "my-89" in trusted.stdout + trusted.stderr and "SHA256:" in trusted.stdout + trusted.stderr

    blocked = user("doctor", expect=1)
    assert "firewall apply" in blocked.stdout, blocked.stdout
    applied = user("firewall", "apply")
    assert re.search(r"my-89: ufw: \d+ rule\(s\) added", applied.stdout), applied.stdout
    status = subprocess.run(["nsenter", "-t", str(state.nodes[0].sshd_pid), "-a", "ufw", "status"],
                            capture_output=True, text=True).stdout
    assert status.startswith("Status: active")  # opened, never disabled

    data_root = docker.node_dir(state.directory, state.nodes[1].name) / "data"  # what my-91's dockerd uses
    user("sandbox", "fault", "fill-disk", "my-91", "--docker-data-root")
    full = user("doctor", expect=1, env={"COLUMNS": "400"})  # wide enough that no table cell wraps
    assert re.search(rf"disk +│ FAIL +│ my-91 +│ Docker data-root {data_root}: only 0 MiB free +│ free space, or put "
                     rf"the Docker data-root on a bigger disk .* else they fail with `No space left on device`",
                     full.stdout), full.stdout
    user("sandbox", "fault", "clear", "my-91")
    user("doctor")

    done = user("run", "--launcher", "deepspeed", "train.py", "--deepspeed_config", "configs/zero2.json", "--steps",
                "20", timeout=400)
    assert f"in {docker.IMAGE}" in done.stderr, done.stderr
    trained(done.stdout, 20)
    assert "[my-89:0] deepspeed: ZeRO stage 2, world 4" in done.stdout
    ranks = re.findall(r"^\[(my-\d\d):(\d)\] rank \2 of 4 on \1 interface eth0 nccl eth0$", done.stdout, re.MULTILINE)
    assert sorted(r for _, r in ranks) == ["0", "1", "2", "3"], done.stdout[-3000:]
    assert [job_processes_on(n) for n in state.nodes] == [[], []]
    for node in state.nodes:  # the containers went with the job
        listed = subprocess.run(["docker", "-H", docker.docker_host(state.directory, node.name), "ps", "-a",
                                 "--format", "{{.Names}}"], capture_output=True, text=True)
        assert listed.returncode == 0 and listed.stdout.strip() == "", listed
    user.check_page()
