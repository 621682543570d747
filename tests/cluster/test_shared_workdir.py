"""A workdir that every node sees as one directory (an NFS home; here the sandbox's shared
home): jobs run, each node's records stay apart, doctor says so."""

from __future__ import annotations

import json
import re
import secrets
import shutil
from pathlib import Path

import yaml

from helpers import tf
from trainfleet.sandbox import cluster as sb

DS = ("ds_train.py", "--deepspeed", "--deepspeed_config", "ds.json")


def test_jobs_run_in_a_workdir_every_node_shares(fleet2: Path, cluster3: sb.SandboxState, workdir: Path,
                                                tmp_path: Path) -> None:
    name = f"tf-shared-{secrets.token_hex(4)}"
    shared = Path.home() / name
    data = yaml.safe_load(fleet2.read_text())
    data["workdir"] = f"~/{name}"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        done = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--log-dir", str(tmp_path / "a"), "ranks.py",
                  timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(re.findall(r"rank \d of 4 on node\d", done.stdout)) == 4
        # DeepSpeed's per-node launcher, as in the report that found this: both nodes' records in one directory.
        ds = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--log-dir", str(tmp_path / "b"),
                "--launcher", "deepspeed", *DS, timeout=400)
        assert ds.returncode == 0, ds.stderr[-3000:]
        assert "was lost" not in ds.stderr
        job_id = re.search(r"job (tf-\S+):", ds.stderr).group(1)  # type: ignore[union-attr]
        records = sorted(p.parent.name for p in (shared / ".trainfleet" / "jobs" / job_id / "nodes").glob("*/state.json"))
        assert len(records) == 2, records  # one per node, side by side
        shown = tf("status", "-f", str(fleet), job_id, "--json", check=True)
        view = json.loads(shown.stdout)[0]
        assert view["state"] == "succeeded" and sorted(view["nodes"]) == ["node0", "node1"], view
        report = json.loads(tf("doctor", "-f", str(fleet), "--json", timeout=120).stdout)
        noted = [f for f in report["findings"] if f["check"] == "workdir"]
        assert noted and noted[0]["nodes"] == ["node0", "node1"] and "one shared directory" in noted[0]["summary"]
    finally:
        shutil.rmtree(shared, ignore_errors=True)
