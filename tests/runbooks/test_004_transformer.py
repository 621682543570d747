"""Runbook 004 (a transformer on 8 Paperspace nodes: torchrun c10d, s3fs, a CIFS network
drive, W&B), as docs/runbooks/004-transformer-c10d-s3fs-cifs.md shows it: c10d rendezvous with no
/etc/hosts, the bucket and (rendered, and refused naming the kernel where it lacks CIFS)
the network drive from `storage:`, checkpoints written to the bucket, and a second `run`
on the same fleet refused so they are never overwritten."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import boto3

from conftest import Sandboxes
from helpers import node_tmp, s3_server, text_files_holding
from runbook import Session, trained

KEY_ID = "AKIATRANSFORMER00004"
SECRET = "transformer-s3-secret-51c0ffee"
CIFS = {"type": "cifs", "source": "//198.18.99.5/training", "mount": "/tmp/network-drive", "username": "paperspace"}


def kernel_has(name: str) -> bool:
    return any(line.split()[-1] == name for line in Path("/proc/filesystems").read_text().splitlines() if line.strip())


def test_transformer_on_eight_nodes_with_c10d_s3_and_a_network_drive(fresh: Sandboxes, tmp_path: Path) -> None:
    state = fresh.make(8, slots=1)
    hosts_before = Path("/etc/hosts").read_bytes()
    with s3_server(state.controller_address, "transformer", KEY_ID, SECRET) as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID,
                          aws_secret_access_key=SECRET)
        s3.put_object(Bucket="transformer", Key="data/opus_books.txt", Body=b"a sentence\n" * 1000)
        user = Session("004-transformer-c10d-s3fs-cifs", tmp_path / "transformer",
                       env={"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                            "CIFS_PASSWORD": "drive-password-0004", "WANDB_API_KEY": "wandb-0004-key"})
        shutil.copy(state.fleet_file, user.project / "fleet.yaml")
        s3_entry = {"type": "s3", "bucket": "transformer", "mount": "/tmp/my_s3_mount", "endpoint": endpoint}
        user.edit_fleet(secrets=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CIFS_PASSWORD", "WANDB_API_KEY"],
                        storage=[s3_entry, CIFS])

        rendered = user("mount", "--dry-run")
        assert rendered.stdout.count("s3fs transformer /tmp/my_s3_mount -o url=") == 8, rendered.stdout
        assert rendered.stdout.count("mount -t cifs //198.18.99.5/training /tmp/network-drive -o "
                                     "username=paperspace") == 8, rendered.stdout
        assert "drive-password-0004" not in rendered.stdout and "<secret CIFS_PASSWORD>" in rendered.stdout
        refused = user("mount", expect=1, timeout=120)
        error = [line for line in refused.stderr.splitlines() if line.startswith("trainfleet: error:")]
        assert len(error) == 1 and "cannot mount cifs //198.18.99.5/training" in error[0], refused.stderr
        if not kernel_has("cifs"):
            assert ("cannot mount cifs //198.18.99.5/training on node[0-7]: this node's kernel has no cifs file system "
                    "(not in /proc/filesystems); fix: load it on those nodes (`sudo modprobe cifs`") in error[0], error
        # Without a CIFS-capable kernel (and drive), the checkpoints go to the bucket instead.
        user.edit_fleet(storage=[s3_entry])
        assert "already mounted on node[0-7]" in user("mount").stderr
        started = user("run", "--detach", "--job-id", "transformer-1", "train.py", "--steps", "40", "--step-time",
                       "0.25", "--data", "/tmp/my_s3_mount/data/opus_books.txt", "--save-dir",
                       "/tmp/my_s3_mount/weights", timeout=300)
        assert started.stdout.strip().splitlines()[-1] == "transformer-1"
        # "Make sure to not run it on both, otherwise they will overwrite each other's checkpoints."
        second = user("run", "train.py", "--save-dir", "/tmp/my_s3_mount/weights", expect=1)
        assert ("trainfleet: error: job transformer-1 is running on this fleet; a second job would share its nodes "
                "(and overwrite its checkpoints); fix: `trainfleet stop transformer-1` first, or pass --concurrent "
                "to run beside it") in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        followed = user("logs", "--follow", "transformer-1", timeout=300)
        assert "job transformer-1 ended: succeeded" in followed.stderr
        trained(followed.stdout, 40)
        assert sorted(re.findall(r"^\[(node\d):\d\] rank \d of 8 on \1 interface eth0 nccl eth0$", followed.stdout,
                                 re.MULTILINE)) == [f"node{i}" for i in range(8)]
        assert "[node0:0] saved /tmp/my_s3_mount/weights/step-40.pt" in followed.stdout
        seen = user("exec", "-n", "node7", "--", "ls", "/tmp/my_s3_mount/weights")
        assert seen.stdout.strip() == "node7: step-40.pt"
        assert s3.head_object(Bucket="transformer", Key="weights/step-40.pt")["ContentLength"] > 0
        user("umount")
    assert text_files_holding(SECRET, [user.project, *(node_tmp(state, n.name) for n in state.nodes)]) == []
    assert Path("/etc/hosts").read_bytes() == hosts_before
    user.check_page()
