"""Runbook 001 (LLaVA on 4 Paperspace nodes: torchrun + ZeRO-2, an S3 bucket, W&B), as
docs/runbooks/001-llava-torchrun-s3-wandb.md shows it: the bucket mounted from `secrets:` with no
key in any file or argv, `setup:` once per node, the job detached and followed, W&B's key
on every rank and in no log, and no /etc/hosts edit anywhere."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import boto3

from conftest import Sandboxes
from helpers import node_tmp, s3_server, text_files_holding
from runbook import Session, trained

KEY_ID = "AKIALLAVARUNBOOK0001"
SECRET = "llava-s3-secret-9d2f0c7e1b"
WANDB = "wandb-key-0f8e7d6c5b4a39281706"


def test_llava_on_four_nodes_with_s3_and_wandb(fresh: Sandboxes, tmp_path: Path) -> None:
    state = fresh.make(4, slots=1)
    hosts_before = Path("/etc/hosts").read_bytes()
    with s3_server(state.controller_address, "llava-data", KEY_ID, SECRET) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID,
                     aws_secret_access_key=SECRET).put_object(Bucket="llava-data", Key="train.json",
                                                              Body=b'{"conversations": []}\n' * 100)
        # The user's shell has the keys (exported, or typed when asked); nothing else does.
        user = Session("001-llava-torchrun-s3-wandb", tmp_path / "llava",
                       env={"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "WANDB_API_KEY": WANDB})
        shutil.copy(state.fleet_file, user.project / "fleet.yaml")
        user.edit_fleet(setup={"commands": ["python -m pip install -r requirements.txt"]},
                        secrets=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"],
                        storage=[{"type": "s3", "bucket": "llava-data", "mount": "/tmp/training-data",
                                  "endpoint": endpoint}])

        mounted = user("mount")
        assert "mounted on node[0-3]" in mounted.stdout + mounted.stderr
        listed = user("exec", "--", "ls", "/tmp/training-data")
        assert listed.stdout.count(": train.json") == 4, listed.stdout
        first = user("setup", timeout=300)
        assert "succeeded on node[0-3]" in first.stderr
        again = user("setup")
        assert "already done on node[0-3]" in again.stderr
        user("doctor")
        started = user("run", "--detach", "--job-id", "llava-zero2", "train.py", "--deepspeed", "configs/zero2.json",
                       "--data", "/tmp/training-data/train.json", "--steps", "20", timeout=300)
        assert started.stdout.strip().splitlines()[-1] == "llava-zero2"
        followed = user("logs", "--follow", "llava-zero2", timeout=300)
        assert "job llava-zero2 ended: succeeded" in followed.stderr
        trained(followed.stdout, 20)
        assert "[node0:0] deepspeed: ZeRO stage 2, world 4" in followed.stdout
        assert len(re.findall(r"^\[node(\d):\1\] rank \1 read 2200 bytes of /tmp/training-data/train.json$",
                              followed.stdout, re.MULTILINE)) == 4
        digest = hashlib.sha256(WANDB.encode()).hexdigest()[:12]
        assert len(re.findall(rf"^\[node(\d):\1\] rank \1 wandb key sha256 {digest}$", followed.stdout,
                              re.MULTILINE)) == 4, followed.stdout[-3000:]
        # The mount process and every other process on the nodes hold no key in their argv.
        argv = user("exec", "--", "ps", "-eww", "-o", "args")
        assert "s3fs" in argv.stdout and SECRET not in argv.stdout and KEY_ID not in argv.stdout
        user("umount")
    # No key in any file: the project (logs included), the nodes' private /tmp, the caches.
    roots = [user.project, Path.home() / ".cache", *(node_tmp(state, n.name) for n in state.nodes)]
    for value in (SECRET, WANDB):
        assert text_files_holding(value, roots) == []
    assert Path("/etc/hosts").read_bytes() == hosts_before  # and no alias was needed: c10d rendezvous by address
    user.check_page()
