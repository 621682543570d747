"""Secrets reach the job's environment and nowhere else: not argv, not files, not the stream."""

from __future__ import annotations

import os
import re
import secrets as random
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import Sandboxes
from helpers import tf
from trainfleet.sandbox import cluster as sb


def with_secret(fleet: Path, tmp_path: Path) -> Path:
    data = yaml.safe_load(fleet.read_text())
    data["secrets"] = ["TF_TEST_TOKEN"]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def files_containing(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


def test_secret_travels_only_to_the_job(fleet2: Path, cluster3: sb.SandboxState, workdir: Path,
                                        tmp_path: Path) -> None:
    value = f"tok-{random.token_hex(12)}"
    fleet = with_secret(fleet2, tmp_path)
    logs = tmp_path / "logs"
    cache = tmp_path / "cache"
    env = {**os.environ, "TF_TEST_TOKEN": value, "XDG_CACHE_HOME": str(cache)}
    errors = open(tmp_path / "stderr", "w+")
    process = subprocess.Popen([sys.executable, "-m", "trainfleet", "run", "-f", str(fleet), "--sync-dir",
                                str(workdir), "--log-dir", str(logs), "secret.py", "4"],
                               stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "holding" in line:
            break
    # While the job runs: every process's argv on every node, read two ways.
    listing = tf("exec", "-f", str(fleet2), "--", "ps -eo args; cat /proc/[0-9]*/cmdline | tr '\\\\0' ' '")
    assert listing.returncode == 0 and "secret.py" in listing.stdout
    assert value not in listing.stdout
    out = process.stdout.read()  # (communicate() would skip what the line iterator buffered)
    process.wait(timeout=120)
    errors.seek(0)
    err = errors.read()
    stream = "".join(seen) + out
    assert process.returncode == 0, err[-2000:]
    assert stream.count("secret is *** (argv clean)") == 4 and value not in stream + err
    # No file of the nodes (their whole /tmp, the workdir in it) and none of trainfleet's own.
    for node in cluster3.nodes[:2]:
        assert files_containing(Path(cluster3.directory) / "nodes" / node.name / "tmp", value.encode()) == []
    assert files_containing(Path("/dev/shm"), value.encode()) == []
    assert files_containing(logs, value.encode()) == [] and (logs / "node0.log").is_file()
    assert files_containing(cache, value.encode()) == []
    # The job's own log on each node holds its output with the value redacted.
    job_id = re.search(r"job (tf-\S+):", err).group(1)  # type: ignore[union-attr]
    jobs = Path(cluster3.directory) / "nodes" / "node0" / "tmp" / "trainfleet" / ".trainfleet" / "jobs"
    node_log = next((jobs / job_id / "nodes").glob("*/output.log")).read_text()  # node0's own records
    assert "secret is *** (argv clean)" in node_log


def test_dry_run_never_shows_secret_values(fleet2: Path, tmp_path: Path) -> None:
    fleet = with_secret(fleet2, tmp_path)
    completed = tf("run", "-f", str(fleet), "--dry-run", "train.py", env={"TF_TEST_TOKEN": "visible-if-leaked"})
    assert completed.returncode == 0 and "visible-if-leaked" not in completed.stdout


def test_missing_secret_without_a_terminal_is_a_clear_error(fleet2: Path, tmp_path: Path) -> None:
    fleet = with_secret(fleet2, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "TF_TEST_TOKEN"}
    completed = subprocess.run([sys.executable, "-m", "trainfleet", "run", "-f", str(fleet), "--no-sync", "x.py"],
                               capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert completed.returncode == 2
    assert "secret TF_TEST_TOKEN has no value" in completed.stderr and "export TF_TEST_TOKEN" in completed.stderr


def test_a_multi_line_secret_is_redacted_line_by_line(fleet2: Path, workdir: Path, tmp_path: Path) -> None:
    """A key file as a secret: printed, it spans lines, and each of its lines is redacted."""
    first, second = f"-----{random.token_hex(8)}", f"key+{random.token_hex(16)}"
    fleet = with_secret(fleet2, tmp_path)
    done = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--log-dir", str(tmp_path / "logs"), "secret.py",
              "0", env={"TF_TEST_TOKEN": f"{first}\n{second}\n"}, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first not in done.stdout + done.stderr and second not in done.stdout + done.stderr
    assert done.stdout.count("secret is ***") == 4, done.stdout
    assert files_containing(tmp_path / "logs", second.encode()) == []


def test_head_secrets_leave_every_node_however_the_job_ends(fresh: Sandboxes, workdir: Path, tmp_path: Path) -> None:
    """`--launcher head` keeps each node's secrets in memory (/dev/shm) while the job runs
    there; after a detached job is stopped, nothing of them is left on any node."""
    state = fresh.make(2, slots=2)
    tf("ssh", "setup", "-f", state.fleet_file, "--yes", check=True)
    fleet = with_secret(Path(state.fleet_file), tmp_path)
    value = f"tok-{random.token_hex(12)}"
    runner = "deepspeed --no_local_rank --hostfile $TRAINFLEET_HOSTFILE secret.py 600"
    started = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--launcher", "head", "--detach", runner,
                 env={"TF_TEST_TOKEN": value}, timeout=300)
    assert started.returncode == 0, started.stderr[-2000:]
    job_id = started.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # every rank, on both nodes, has read its secret
        shown = tf("logs", "-f", str(fleet), job_id, env={"TF_TEST_TOKEN": value})
        if shown.stdout.count("holding") == 4:
            break
        time.sleep(1)
    assert shown.stdout.count("secret is *** (argv clean)") == 4 and value not in shown.stdout, shown.stdout
    held = [p for p in Path("/dev/shm").glob(f"trainfleet-{job_id}-*")]
    assert sorted(p.name for p in held) == [f"trainfleet-{job_id}-node0-secrets", f"trainfleet-{job_id}-node1-secrets"]
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in held)
    tf("stop", "-f", str(fleet), job_id, check=True, timeout=120)
    deadline = time.monotonic() + 30
    while list(Path("/dev/shm").glob(f"trainfleet-{job_id}-*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert files_containing(Path("/dev/shm"), value.encode()) == []


def test_dry_run_shows_every_variable_a_rank_gets(fleet2: Path, workdir: Path, tmp_path: Path) -> None:
    """The plan decides a rank's environment; a node only fills in the values it alone has.
    What --dry-run --json names is what each rank sees, value for value, and every variable
    trainfleet gives a rank is named there (the secret by name only)."""
    import json

    fleet = with_secret(fleet2, tmp_path)
    token = random.token_hex(8)
    env = {"TF_TEST_TOKEN": token}
    job_id = f"tf-env-{random.token_hex(3)}"
    common = ["-f", str(fleet), "--sync-dir", str(workdir), "--job-id", job_id, "--nproc-per-node", "1",
              "--env", "TF_EXTRA=~/extra"]
    dry = tf("run", *common, "--dry-run", "--json", "env_dump.py", env=env)
    assert dry.returncode == 0 and token not in dry.stdout, dry.stderr
    planned = {n["node"]: n for n in json.loads(dry.stdout)["nodes"]}
    ran = tf("run", *common, "env_dump.py", env=env, timeout=180)
    assert ran.returncode == 0, ran.stderr[-3000:]
    seen = {m.group(1): json.loads(m.group(2)) for m in re.finditer(r"^\[(node\d):\d+\] ENV (.*)$", ran.stdout, re.M)}
    assert sorted(seen) == sorted(planned) == ["node0", "node1"], ran.stdout[-3000:]
    home = os.path.expanduser("~")  # (the sandbox's nodes share this machine's home)
    for node, plan in planned.items():
        rank = seen[node]
        expected = {k: home + v[1:] if v.startswith("~/") else v for k, v in plan["env"].items()}
        assert {k: rank.get(k) for k in expected} == expected, node
        assert rank["TF_TEST_TOKEN"] == "***"  # there, and its value kept out of the stream
        assert plan["filled"] == ["TRAINFLEET_NODE_KEY", "TF_TEST_TOKEN"] and rank["TRAINFLEET_NODE_KEY"]
        assert rank["PATH"].split(":")[:len(plan["path"])] == plan["path"]
        assert not {"SSH_CONNECTION", "SSH_CLIENT", "XDG_SESSION_ID"} & set(rank)  # the session's, not the job's
        # Every variable of trainfleet's, and every secret, that the rank has is in the plan.
        ours = {k for k in rank if k.startswith("TRAINFLEET_") or k in ("TF_TEST_TOKEN", "TF_EXTRA",
                                                                         "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
        assert ours <= set(plan["env"]) | set(plan["filled"]), ours - set(plan["env"]) - set(plan["filled"])
