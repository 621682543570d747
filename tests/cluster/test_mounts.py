"""`storage:` on a real sandbox: a shared directory of node 0 over sshfs, an S3 bucket
(moto's S3 server on the controller, started here) through s3fs, both mounted in each
node's own mount namespace and proven on node-private paths; NFS and CIFS where the
kernel has them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import Sandboxes
from helpers import node_tmp, text_files_holding, tf
from helpers import s3_server as s3
from trainfleet.sandbox import cluster as sb

KEY_ID = "AKIATRAINFLEETTEST01"
SECRET = "s3cr3t-value-that-must-not-leak-7f3a9"
KEYS = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}


@pytest.fixture(scope="module")
def stored(sandboxes: Sandboxes) -> Iterator[sb.SandboxState]:
    state = sandboxes.make(3, slots=1)
    trusted = tf("ssh", "setup", "-f", state.fleet_file, "--yes", timeout=120)  # shared-dir: nodes reach node 0 by name
    assert trusted.returncode == 0, trusted.stderr
    yield state
    sandboxes.remove(state)


@pytest.fixture(scope="module")
def s3_server(stored: sb.SandboxState) -> Iterator[str]:
    """moto's S3 server on the controller's sandbox address, with one bucket."""
    with s3(stored.controller_address, "datasets", KEY_ID, SECRET) as endpoint:
        yield endpoint


def fleet_with(state: sb.SandboxState, tmp_path: Path, storage: list[dict], secrets: list[str]) -> Path:
    data = yaml.safe_load(Path(state.fleet_file).read_text())
    data["storage"] = storage
    data["secrets"] = secrets
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def on(fleet: Path, node: str, command: str) -> subprocess.CompletedProcess[str]:
    return tf("exec", "-f", str(fleet), "-n", node, "--", command, timeout=60)


def mounts_on(fleet: Path) -> str:
    return tf("exec", "-f", str(fleet), "--", "grep -c fuse /proc/self/mountinfo || true", timeout=60).stdout


def secret_in_argv(state: sb.SandboxState) -> list[str]:
    found = []
    for node in state.nodes:
        for pid in sb.namespace_pids(node.namespace):
            try:
                if SECRET.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(f"{node.name}:{pid}")
            except OSError:
                continue
    return found


def secret_in_files(state: sb.SandboxState) -> list[str]:
    roots = [Path(state.directory) / "nodes", Path.home() / ".cache", Path.home() / ".passwd-s3fs",
             Path("/etc/passwd-s3fs")]
    return text_files_holding(SECRET, roots, exclude_dirs=("s3",))


def test_shared_dir_and_s3_are_mounted_seen_everywhere_checked_and_removed(stored: sb.SandboxState, s3_server: str,
                                                                         tmp_path: Path) -> None:
    fleet = fleet_with(stored, tmp_path, [
        {"type": "shared-dir", "mount": "/tmp/shared"},
        {"type": "s3", "bucket": "datasets", "endpoint": s3_server, "mount": "/tmp/s3"},
    ], ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
    mounted = tf("mount", "-f", str(fleet), env=KEYS, timeout=120)
    assert mounted.returncode == 0, mounted.stderr
    assert "shared-dir node0:/tmp/shared at /tmp/shared: mounted on node[1-2]; served by node0" in mounted.stderr
    assert f"s3 bucket datasets at {s3_server} at /tmp/s3: mounted on node[0-2]" in mounted.stderr

    # shared-dir: written on node2, it is in node 0's own /tmp, and read on node1.
    assert on(fleet, "node2", "echo from-node2 > /tmp/shared/note.txt").returncode == 0
    assert (node_tmp(stored, "node0") / "shared" / "note.txt").read_text() == "from-node2\n"
    assert on(fleet, "node1", "cat /tmp/shared/note.txt").stdout.strip() == "node1: from-node2"
    # s3: written on node1, it lands in the bucket and is read on node0 and node2.
    assert on(fleet, "node1", "echo from-node1 > /tmp/s3/hello.txt").returncode == 0
    import boto3

    bucket = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id=KEY_ID,
                          aws_secret_access_key=SECRET)
    assert bucket.get_object(Bucket="datasets", Key="hello.txt")["Body"].read() == b"from-node1\n"
    for node in ("node0", "node2"):
        assert on(fleet, node, "cat /tmp/s3/hello.txt").stdout.strip() == f"{node}: from-node1"
    # The keys reached s3fs by environment only.
    assert secret_in_argv(stored) == []
    assert secret_in_files(stored) == []

    again = tf("mount", "-f", str(fleet), env=KEYS, timeout=120)
    assert again.returncode == 0 and "already mounted on node[0-2]" in again.stderr, again.stderr

    doctor = tf("doctor", "-f", str(fleet), "--json", env=KEYS, timeout=120)
    import json

    findings = [f for f in json.loads(doctor.stdout)["findings"] if f["check"] == "storage"]
    assert {(f["verdict"], f["summary"].split(":")[0]) for f in findings} >= {("ok", "shared-dir node0"),
                                                                                ("ok", "s3 bucket datasets at http")}
    # A mount that went away is named by doctor.
    assert on(fleet, "node2", "fusermount3 -u /tmp/s3").returncode == 0
    doctor = tf("doctor", "-f", str(fleet), "--json", timeout=120)
    broken = [f for f in json.loads(doctor.stdout)["findings"] if f["check"] == "storage" and f["verdict"] == "FAIL"]
    assert [(f["nodes"], f["summary"]) for f in broken] == [
        (["node2"], f"s3 bucket datasets at {s3_server} at /tmp/s3 is not mounted")], broken
    assert doctor.returncode == 1

    removed = tf("umount", "-f", str(fleet), timeout=120)
    assert removed.returncode == 0, removed.stderr
    assert "unmounted on node[0-1]; not mounted on node2" in removed.stderr, removed.stderr
    assert [line.split()[-1] for line in mounts_on(fleet).splitlines()] == ["0", "0", "0"]
    # What was written stays where it lives: node 0's directory, the bucket.
    assert (node_tmp(stored, "node0") / "shared" / "note.txt").exists()
    assert len(bucket.list_objects(Bucket="datasets").get("Contents", [])) == 1


def test_run_mounts_what_is_missing_before_the_job(stored: sb.SandboxState, tmp_path: Path, workdir: Path) -> None:
    fleet = fleet_with(stored, tmp_path, [{"type": "shared-dir", "mount": "/tmp/ckpt"}], [])
    (node_tmp(stored, "node0") / "ckpt").mkdir(exist_ok=True)
    (node_tmp(stored, "node0") / "ckpt" / "from-node0.txt").write_text("node0's checkpoint\n")
    run = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--launcher", "command", "--",
             "cat /tmp/ckpt/from-node0.txt", timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "shared-dir node0:/tmp/ckpt at /tmp/ckpt: mounted on node[1-2]; served by node0" in run.stderr
    for node in ("node0", "node1", "node2"):
        assert f"[{node}] node0's checkpoint" in run.stdout, run.stdout
    assert tf("umount", "-f", str(fleet), timeout=120).returncode == 0


def _kernel_has(name: str) -> bool:
    return any(line.split()[-1] == name for line in Path("/proc/filesystems").read_text().splitlines() if line.strip())


@pytest.mark.parametrize("kind", ["nfs", "cifs"])
def test_nfs_and_cifs_fail_named_with_nothing_left(stored: sb.SandboxState, tmp_path: Path, kind: str) -> None:
    """No NFS or CIFS server runs in the sandbox, so the mount fails on any kernel: it must
    fail as one line naming the node and the cause (on a kernel without the file system,
    that it is missing), with no traceback, and leave no mount behind. The commands a
    working server would get are golden-tested in tests/unit/test_storage.py."""
    entry = ({"type": "nfs", "source": "/tmp/export", "mount": "/tmp/nfs"} if kind == "nfs" else
             {"type": "cifs", "source": "//198.18.0.1/share", "mount": "/tmp/cifs", "username": "trainer"})
    fleet = fleet_with(stored, tmp_path, [entry], ["CIFS_PASSWORD"] if kind == "cifs" else [])
    needed = "nfsd" if kind == "nfs" else "cifs"
    mounted = tf("mount", "-f", str(fleet), env={"CIFS_PASSWORD": "pw-not-used"}, timeout=120)
    assert mounted.returncode == 1 and "Traceback" not in mounted.stderr
    error = [line for line in mounted.stderr.splitlines() if line.startswith("trainfleet: error:")]
    assert len(error) == 1 and "cannot mount " in error[0] and " on node" in error[0], mounted.stderr
    if not _kernel_has(needed):
        assert f"this node's kernel has no {needed} file system (not in /proc/filesystems)" in error[0]
    assert "pw-not-used" not in mounted.stderr + mounted.stdout
    left = tf("exec", "-f", str(fleet), "--", f"grep -c ' - {kind}' /proc/self/mountinfo || true", timeout=60)
    assert [line.split()[-1] for line in left.stdout.splitlines()] == ["0", "0", "0"], left.stdout
