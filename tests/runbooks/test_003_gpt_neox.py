"""Runbook 003 (GPT-NeoX on 2 Lambda nodes: deepy.py reading /job/hostfile, fused kernels
built on each node, NFS from the head node), as docs/runbooks/003-gpt-neox-head-node-nfs.md shows
it: a deepy.py-like entry script that builds DeepSpeed's runner command from the hostfile
trainfleet writes, started on the head node with `--launcher head` and training on every
node; `setup:` compiles the "kernels" once per node; a directory of node 0 shared with the
others holds the checkpoints."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from conftest import Sandboxes
from helpers import job_processes_on, node_tmp
from runbook import Session, trained


def test_gpt_neox_deepy_from_the_head_node(fresh: Sandboxes, tmp_path: Path) -> None:
    state = fresh.make(2, slots=2)
    user = Session("003-gpt-neox-head-node-nfs", tmp_path / "gpt-neox")
    shutil.copy(state.fleet_file, user.project / "fleet.yaml")
    user.edit_fleet(setup={"commands": ["mkdir -p build",
                                        "cc -O2 -shared -fPIC -o build/fused_kernels.so csrc/fused_kernels.c"]},
                    storage=[{"type": "shared-dir", "mount": "/tmp/shared"}])
    (user.project / "configs" / "local_setup.json").write_text(json.dumps(
        {"hostfile": "/tmp/job/hostfile", "save": "/tmp/shared/checkpoints"}))

    user("ssh", "setup", "--yes")
    mounted = user("mount")
    assert "mounted on node1; served by node0" in mounted.stdout + mounted.stderr, mounted.stderr
    built = user("setup")
    assert "succeeded on node[0-1]" in built.stderr
    assert "already done on node[0-1]" in user("setup").stderr
    for node in ("node0", "node1"):  # built on each node, in its own copy of the project
        assert list((node_tmp(state, node) / "trainfleet").glob("gpt-neox-*/build/fused_kernels.so"))

    done = user("run", "--launcher", "head", "--hostfile-path", "/tmp/job/hostfile", "python", "deepy.py",
                "train.py", "configs/neox.json", "configs/local_setup.json", timeout=400)
    assert "[node0] deepy: 2 host(s) in /tmp/job/hostfile: node0 node1" in done.stdout, done.stdout[-3000:]
    trained(done.stdout, 20)
    assert "[node0:0] deepspeed: ZeRO stage 2, world 4" in done.stdout
    kernels = re.findall(r"^\[(node\d):(\d)\] rank \2 fused kernels from build/fused_kernels.so: 3.0$", done.stdout,
                         re.MULTILINE)
    assert sorted(kernels) == [("node0", "0"), ("node0", "1"), ("node1", "2"), ("node1", "3")], done.stdout[-3000:]
    assert "[node0:0] saved /tmp/shared/checkpoints/step-20.pt" in done.stdout
    seen = user("exec", "-n", "node1", "--", "ls", "/tmp/shared/checkpoints")
    assert seen.stdout.strip() == "node1: step-20.pt"
    assert (node_tmp(state, "node0") / "shared" / "checkpoints" / "step-20.pt").is_file()  # on node 0's disk
    assert not (node_tmp(state, "node1") / "shared" / "checkpoints").exists()  # node 1 sees it through the mount
    user("umount")
    assert [job_processes_on(n) for n in state.nodes] == [[], []]  # no rank left, nor the sshfs of the mount
    user.check_page()
