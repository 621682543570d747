"""Every launcher the runbooks use, with the real packages, across sandbox nodes (gloo on
the CPU): DeepSpeed's per-node launcher, accelerate, a plain command, DeepSpeed's own
pdsh runner started on node 0 (`head`), Open MPI's mpirun, and a job inside a podman container."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import Sandboxes
from helpers import job_processes_on, tf, tf_start, tf_training, wait_for_line
from trainfleet.sandbox import cluster as sb

DS = ("ds_train.py", "--deepspeed", "--deepspeed_config", "ds.json")
RANK_ENV = re.compile(r"^\[(node\d):(\d)\] rank (\d) local_rank_arg (\d) env RANK=(\d) LOCAL_RANK=(\d) WORLD_SIZE=(\d) "
                      r"LOCAL_SIZE=(\d) CROSS_RANK=(\d) CROSS_SIZE=(\d) MASTER_ADDR=(\S+) MASTER_PORT=(\d+) loss",
                      re.MULTILINE)


def check_deepspeed_ranks(stdout: str, cluster: sb.SandboxState) -> None:
    found = sorted(RANK_ENV.findall(stdout))
    assert len(found) == 4, stdout[-3000:]
    for node, marked, rank, arg, env_rank, local, world, local_size, cross, cross_size, master, _ in found:
        node_index = int(node[-1])
        assert marked == rank == env_rank and int(rank) // 2 == node_index
        assert arg == local == str(int(rank) % 2) and (world, local_size, cross_size) == ("4", "2", "2")
        assert cross == str(node_index) and master == cluster.nodes[0].address


def test_deepspeed_launcher_gives_every_rank_deepspeeds_variables(fleet2: Path, cluster3: sb.SandboxState,
                                                                  workdir: Path) -> None:
    done = tf_training("run", "-f", str(fleet2), "--sync-dir", str(workdir), "--launcher", "deepspeed", *DS,
                       timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    check_deepspeed_ranks(done.stdout, cluster3)
    some = tf_training("run", "-f", str(fleet2), "--no-sync", "--sync-dir", str(workdir), "--launcher", "deepspeed",
                       "--include", "node0:1@node1:0", *DS, timeout=300)
    assert some.returncode == 0, some.stderr[-3000:]
    assert sorted(re.findall(r"^\[(node\d:\d)\] rank \d local_rank_arg (\d) .* WORLD_SIZE=2 ", some.stdout,
                             re.MULTILINE)) == [("node0:0", "0"), ("node1:1", "0")]


def test_a_failing_rank_is_named_whatever_the_launcher(fleet2: Path, workdir: Path) -> None:
    tf("sync", "-f", str(fleet2), str(workdir), check=True)
    for launcher, job in (("deepspeed", DS), ("accelerate", ("acc_train.py",))):
        done = tf("run", "-f", str(fleet2), "--no-sync", "--sync-dir", str(workdir), "--launcher", launcher, *job,
                  "--fail-rank", "3", timeout=300)
        assert done.returncode == 1, (launcher, done.stderr[-3000:])
        assert ("rank 3 on node1 failed first: ValueError: deliberate failure in rank 3 (exit code 1)"
                in done.stderr), (launcher, done.stderr[-3000:])
        assert done.stderr.count("Traceback (most recent call last)") == 1, launcher


def test_accelerate_counts_processes_across_nodes_on_the_cpu(fleet2: Path, workdir: Path) -> None:
    done = tf_training("run", "-f", str(fleet2), "--sync-dir", str(workdir), "--launcher", "accelerate",
                       "acc_train.py", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on the CPU (no GPU on the nodes)" in done.stderr
    found = sorted(re.findall(r"^\[(node\d):(\d)\] rank (\d) of 4 local (\d) device cpu\S* distributed "
                              r"DistributedType.MULTI_CPU", done.stdout, re.MULTILINE))
    assert [(n, r) for n, r, _, _ in found] == [("node0", "0"), ("node0", "1"), ("node1", "2"), ("node1", "3")]
    assert all(marked == rank for _, marked, rank, _ in found)


def test_a_command_finds_its_peers_in_the_environment(fleet2: Path, cluster3: sb.SandboxState, workdir: Path) -> None:
    probe = 'echo "node=$NODE_RANK/$NNODES nproc=$NPROC_PER_NODE master=$MASTER_ADDR:$MASTER_PORT world=$TRAINFLEET_WORLD_SIZE"'
    done = tf("run", "-f", str(fleet2), "--sync-dir", str(workdir), "--launcher", "command", probe)
    assert done.returncode == 0, done.stderr
    master = cluster3.nodes[0].address
    assert sorted(done.stdout.splitlines()) == [
        f"[node0] node=0/2 nproc=2 master={master}:29500 world=4", f"[node1] node=1/2 nproc=2 master={master}:29500 world=4"]
    failed = tf("run", "-f", str(fleet2), "--no-sync", "--sync-dir", str(workdir), "--launcher", "command",
                '[ "$NODE_RANK" = 0 ] || { echo "no data on this node" >&2; exit 4; }')
    assert failed.returncode == 4
    assert "node node1 failed first: exited with status 4 (exit code 4)" in failed.stderr
    assert "  | no data on this node" in failed.stderr


def test_head_starts_deepspeeds_own_runner_which_trains_everywhere_and_stops_everywhere(fresh: Sandboxes,
                                                                                          workdir: Path) -> None:
    state = fresh.make(2, slots=2)
    fleet = state.fleet_file
    refused = tf("run", "-f", fleet, "--sync-dir", str(workdir), "--launcher", "head", "true")
    assert refused.returncode == 1 and "node0 cannot ssh to node[0-1] by name" in refused.stderr
    assert "fix: run `trainfleet ssh setup`" in refused.stderr
    tf("ssh", "setup", "-f", fleet, "--yes", check=True)
    runner = "deepspeed --hostfile $TRAINFLEET_HOSTFILE " + " ".join(DS)
    # (a rank that aborts in torch's teardown after training is run again: not this test's subject)
    done = tf_training("run", "-f", fleet, "--sync-dir", str(workdir), "--launcher", "head", "--hostfile-path",
                       "/tmp/job/hostfile", runner, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    check_deepspeed_ranks(done.stdout, state)  # node1's ranks, relayed by pdsh, are attributed to node1
    for node in state.nodes:  # the hostfile, where the tool expects it, on every node
        assert (Path(state.directory) / "nodes" / node.name / "tmp" / "job" / "hostfile").read_text() == \
            "node0 slots=2\nnode1 slots=2\n"
    failed = tf("run", "-f", fleet, "--no-sync", "--sync-dir", str(workdir), "--launcher", "head",
                runner + " --fail-rank 2", timeout=300)
    assert failed.returncode != 0
    assert "rank 2 on node1 failed first: ValueError: deliberate failure in rank 2" in failed.stderr, failed.stderr
    forever = tf_start("run", "-f", fleet, "--no-sync", "--sync-dir", str(workdir), "--launcher", "head",
                       "deepspeed --no_local_rank --hostfile $TRAINFLEET_HOSTFILE ranks.py --forever")
    wait_for_line(forever, r"\[node1:3\] rank 3 of 4", timeout=120)
    assert job_processes_on(state.nodes[1])  # processes the runner started over pdsh
    forever.send_signal(signal.SIGINT)
    _, stderr = forever.communicate(timeout=60)
    assert forever.returncode == 130 and "nothing left running" in stderr, stderr
    assert [job_processes_on(n) for n in state.nodes] == [[], []]


MPI_RANK = re.compile(r"^\[(node\d):(\d)\] rank (\d) env WORLD_SIZE=(\d) cwd ", re.MULTILINE)


def test_mpirun_runs_an_unchanged_torch_script_on_every_node(fresh: Sandboxes, workdir: Path) -> None:
    """Open MPI's mpirun on node 0 starts all 4 ranks over SSH; each gets torch's variables
    from Open MPI's, its lines are shown as its own node's, the rank that failed first is
    named, and Ctrl-C leaves nothing on any node."""
    state = fresh.make(2, slots=2)
    fleet = state.fleet_file
    tf("ssh", "setup", "-f", fleet, "--yes", check=True)
    done = tf_training("run", "-f", fleet, "--sync-dir", str(workdir), "--launcher", "mpirun", "ranks.py",
                       "--print-env", "WORLD_SIZE", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = sorted(MPI_RANK.findall(done.stdout))
    assert found == [("node0", "0", "0", "4"), ("node0", "1", "1", "4"), ("node1", "2", "2", "4"),
                     ("node1", "3", "3", "4")], done.stdout[-3000:]
    for rank, node in ((0, "node0"), (3, "node1")):  # TRAINFLEET_NODE from each node's own variables
        assert f"rank {rank} of 4 on {node} pid" in done.stdout
    failed = tf("run", "-f", fleet, "--no-sync", "--sync-dir", str(workdir), "--launcher", "mpirun", "ranks.py",
                "--fail-rank", "2", timeout=300)
    assert failed.returncode != 0
    assert "rank 2 on node1 failed first: RuntimeError: deliberate failure in rank 2" in failed.stderr, failed.stderr
    assert [job_processes_on(n) for n in state.nodes] == [[], []]
    forever = tf_start("run", "-f", fleet, "--no-sync", "--sync-dir", str(workdir), "--launcher", "mpirun",
                       "ranks.py", "--forever")
    wait_for_line(forever, r"\[node1:3\] rank 3 of 4", timeout=120)
    assert job_processes_on(state.nodes[1])  # ranks Open MPI started on node1
    # Open MPI's daemon on node1 carries the job id, so stopping the job there ends it too.
    tagged = tf("exec", "-f", fleet, "-n", "node1", "--",
                "for p in $(pgrep -x orted); do tr '\\0' '\\n' < /proc/$p/environ | grep '^TRAINFLEET_JOB_ID='; done",
                check=True)
    assert "TRAINFLEET_JOB_ID=tf-" in tagged.stdout, tagged.stdout
    forever.send_signal(signal.SIGINT)
    _, stderr = forever.communicate(timeout=60)
    assert forever.returncode == 130 and "nothing left running" in stderr, stderr
    assert [job_processes_on(n) for n in state.nodes] == [[], []]
    orted = tf("exec", "-f", fleet, "--", "pgrep -x orted || true", check=True)
    assert orted.stdout.strip() == "", orted.stdout


def podman_options() -> dict[str, object]:
    return {"engine": "podman",
            "engine_options": ["--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"],
            # podman lowers its own process limit to 32768 first; the container asks for no more than that.
            "options": ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"],
            "rootfs": "/tmp/rootfs"}


def test_a_job_inside_a_container_on_every_node(fresh: Sandboxes, workdir: Path) -> None:
    """Images cannot be pulled here (no registry): each node runs from a root file system
    (an overlay of its own /), which podman supports as well as images."""
    if subprocess.run(["which", "podman", "runc"], capture_output=True).returncode != 0:
        pytest.skip("podman and runc are not installed (apt-get install podman runc); the rendered docker and "
                    "podman commands are golden-tested in tests/unit/test_launchers.py")
    state = fresh.make(2, slots=2)
    data = yaml.safe_load(Path(state.fleet_file).read_text())
    data["container"] = {**podman_options(), "python": data["python"]}
    fleet = Path(state.fleet_file).with_name("container.yaml")
    fleet.write_text(yaml.safe_dump(data))
    overlay = ("mkdir -p /tmp/ov/upper /tmp/ov/work /tmp/rootfs && mount -t overlay overlay "
               "-o lowerdir=/,upperdir=/tmp/ov/upper,workdir=/tmp/ov/work /tmp/rootfs")
    tf("exec", "-f", str(fleet), "--", overlay, check=True)
    probe = tf("exec", "-f", str(fleet), "-n", "node0", "--",
               "podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs run --rm --network=host "
               "--ulimit nofile=20000:20000 --ulimit nproc=32768:32768 --rootfs /tmp/rootfs true")
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run a container on this machine ({probe.stderr.strip().splitlines()[-1]}); the "
                    f"rendered commands are golden-tested in tests/unit/test_launchers.py")
    done = tf_training("run", "-f", str(fleet), "--sync-dir", str(workdir), "ranks.py", "--print-env",
                       "TRAINFLEET_JOB_ID", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in /tmp/rootfs" in done.stderr
    ranks = re.findall(r"^\[(node\d):(\d)\] rank \2 of 4 on \1 pid (\d+) sum 4$", done.stdout, re.MULTILINE)
    assert len(ranks) == 4 and all(int(pid) < 50 for _, _, pid in ranks)  # pids of the container's own namespace
    job = re.search(r"job (tf-\S+):", done.stderr).group(1)  # type: ignore[union-attr]
    assert done.stdout.count(f"env TRAINFLEET_JOB_ID={job} ") == 4
    listed = subprocess.run(["podman", "--storage-driver", "vfs", "ps", "-a", "--format", "{{.Names}}"],
                            capture_output=True, text=True).stdout
    assert job not in listed  # the containers went with the job
    forever = tf_start("run", "-f", str(fleet), "--no-sync", "--sync-dir", str(workdir), "ranks.py", "--forever")
    wait_for_line(forever, r"rank 3 of 4", timeout=120)
    forever.send_signal(signal.SIGINT)
    _, stderr = forever.communicate(timeout=90)
    assert forever.returncode == 130 and "nothing left running" in stderr, stderr
    time.sleep(1)
    assert [job_processes_on(n) for n in state.nodes] == [[], []]
    assert "tf-" not in subprocess.run(["podman", "--storage-driver", "vfs", "ps", "-a", "--format", "{{.Names}}"],
                                       capture_output=True, text=True).stdout
