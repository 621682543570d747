"""`trainfleet exec` against real sshd: fan-out, exit codes, and SSH failures named per node."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import yaml

from helpers import tf
from trainfleet.sandbox import cluster as sb



def variant(fleet: Path, tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(fleet.read_text())
    change(data)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_exec_runs_everywhere_with_prefixes(fleet3: Path, cluster3: sb.SandboxState) -> None:
    completed = tf("exec", "-f", str(fleet3), "--", "echo out-$(hostname); echo err >&2")
    assert completed.returncode == 0, completed.stderr
    assert sorted(completed.stdout.splitlines()) == [f"node{i}: out-{cluster3.name}-node{i}" for i in range(3)]
    assert sorted(completed.stderr.splitlines()) == ["node0: err", "node1: err", "node2: err"]


def test_exec_json_and_exit_code_of_a_failing_node(fleet3: Path, cluster3: sb.SandboxState) -> None:
    command = f'test "$(hostname)" != {cluster3.name}-node1 || exit 7'
    completed = tf("exec", "-f", str(fleet3), "--json", "--", command)
    assert completed.returncode == 7
    report = json.loads(completed.stdout)
    assert report["ok"] is False
    assert {n["node"]: n["exit_status"] for n in report["nodes"]} == {"node0": 0, "node1": 7, "node2": 0}
    plain = tf("exec", "-f", str(fleet3), "--", command)
    assert plain.returncode == 7 and "node1: exit status 7" in plain.stderr


def test_exec_on_a_subset(fleet3: Path) -> None:
    completed = tf("exec", "-f", str(fleet3), "-n", "node2,node0", "--", "true", "--json")
    assert completed.returncode == 0
    unknown = tf("exec", "-f", str(fleet3), "-n", "node9", "--", "true")
    assert unknown.returncode == 2 and "no node named 'node9'" in unknown.stderr


def test_unreachable_node_is_named(fleet3: Path, tmp_path: Path) -> None:
    def add_dead_node(data: dict) -> None:  # type: ignore[type-arg]
        data["nodes"].append({"name": "ghost", "host": data["nodes"][0]["host"], "port": 2})

    completed = tf("exec", "-f", str(variant(fleet3, tmp_path, add_dead_node)), "--", "true")
    assert completed.returncode == 255
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainfleet: ghost: connection refused at")


def test_changed_and_unknown_host_keys_are_refused(fleet3: Path, cluster3: sb.SandboxState, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    impostor = (tmp_path / "impostor.pub").read_text().split()
    lines = (Path(cluster3.directory) / "known_hosts").read_text().splitlines()
    node1 = cluster3.nodes[1].address
    lines = [f"{node1} {impostor[0]} {impostor[1]}" if line.startswith(node1 + " ") else line
             for line in lines if not line.startswith(cluster3.nodes[2].address + " ")]
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(lines) + "\n")
    fleet = variant(fleet3, tmp_path, lambda d: d["ssh"].update(known_hosts=str(known)))
    completed = tf("exec", "-f", str(fleet), "--json", "--", "echo reached")
    report = {n["node"]: n for n in json.loads(completed.stdout)["nodes"]}
    assert completed.returncode == 255
    assert report["node0"]["ok"] and report["node0"]["stdout"] == "reached\n"
    assert "does not match" in report["node1"]["error"] and report["node1"]["stdout"] == ""
    assert "is not in" in report["node2"]["error"]


def test_wrong_key_is_an_authentication_failure(fleet3: Path, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    fleet = variant(fleet3, tmp_path, lambda d: d["ssh"].update(identity_file=str(tmp_path / "stranger")))
    completed = tf("exec", "-f", str(fleet), "-n", "node0", "--", "true")
    assert completed.returncode == 255
    assert "node0: authentication failed as 'root'" in completed.stderr


def test_timeout_ends_the_remote_command_tree(fleet3: Path, cluster3: sb.SandboxState) -> None:
    from helpers import job_processes_on

    completed = tf("exec", "-f", str(fleet3), "--timeout", "1", "--", "sleep 61 & sleep 62")
    assert completed.returncode == 255
    assert "node[0-2]: `sleep 61 & sleep 62` timed out after 1s" in completed.stderr
    time.sleep(0.5)
    assert [job_processes_on(n) for n in cluster3.nodes] == [[], [], []]


def test_ctrl_c_ends_the_remote_command_tree(fleet3: Path, cluster3: sb.SandboxState) -> None:
    import signal
    import sys

    from helpers import job_processes_on, wait_until_no_job_processes

    process = subprocess.Popen([sys.executable, "-m", "trainfleet", "exec", "-f", str(fleet3), "--",
                                "echo started; sleep 63"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert [process.stdout.readline() for _ in range(3)]  # every node has started
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert process.returncode == 130
    wait_until_no_job_processes(cluster3, timeout=10)  # the nodes end their part once the channel closes
    assert [job_processes_on(n) for n in cluster3.nodes] == [[], [], []]


def test_a_command_that_daemonizes_exits_zero_and_lives_on_beside_a_job(fleet3: Path, workdir: Path) -> None:
    """`setsid nohup CMD &` leaves a process of its own, in a session of its own: exec says the
    command exited 0 (it did), and the process is not ended with the command, even while a
    detached job runs on the nodes."""
    started = tf("run", "-f", str(fleet3), "--sync-dir", str(workdir), "--detach", "ranks.py", "--seconds", "30",
                 timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    job_id = started.stdout.strip().splitlines()[-1]
    try:
        for _ in range(3):
            done = tf("exec", "-f", str(fleet3), "-n", "node0", "--",
                      "setsid nohup bash -c 'exec -a tf-daemon-4243 sleep 600' >/dev/null 2>&1 </dev/null &")
            assert done.returncode == 0 and "exit status" not in done.stderr, done.stderr
        time.sleep(1)
        counted = tf("exec", "-f", str(fleet3), "-n", "node0", "--", "pgrep -c -f '^tf-daemon-4243'", check=True)
        assert counted.stdout.strip() == "node0: 3", counted.stdout
    finally:
        tf("exec", "-f", str(fleet3), "-n", "node0", "--", "pkill -f '^tf-daemon-4243'; true")
        tf("stop", "-f", str(fleet3), job_id, timeout=120)
