"""Jobs that outlive their client: detach, status, logs, stop, the fleet's lock, lost
nodes (killed for real: every process of the node's PID namespace, or its links cut),
continuing on the survivors, and hangs."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Sandboxes
from helpers import EXAMPLE, job_processes_on, losses, node_tmp, tf, tf_start, wait_for_line
from trainfleet.sandbox import cluster as sb
from trainfleet.sandbox import faults


@pytest.fixture(scope="module")
def durable(sandboxes: Sandboxes) -> Iterator[sb.SandboxState]:
    """Three nodes of this module's own: tests here kill and cut nodes (and bring them back)."""
    state = sandboxes.make(3, slots=2)
    yield state
    sandboxes.remove(state)


@pytest.fixture
def fleet(durable: sb.SandboxState) -> Iterator[Path]:
    yield Path(durable.fleet_file)
    faults.clear(durable.name)  # a killed node's sshd comes back, a cut link goes up
    tf("uncordon", "-f", durable.fleet_file, "node[0-2]")  # a node lost by a test is back for the next


def detach(fleet: Path, workdir: Path, *args: str) -> str:
    started = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--detach", *args, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    job_id = started.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"tf-\d{8}-\d{6}-[0-9a-f]{4}", job_id), started.stdout
    return job_id


def job_state(fleet: Path, job_id: str) -> dict:
    listed = tf("status", "-f", str(fleet), job_id, "--json", timeout=60)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)[0]


def ranks_running(state: sb.SandboxState, nodes: list[str]) -> list[str]:
    """The job's python processes on these nodes, seen from outside."""
    return [f"{n.name}: {p}" for n in state.nodes if n.name in nodes for p in job_processes_on(n)
            if p.split()[1].startswith(("python", "pt_elastic", "torchrun"))]


def lock_holder(state: sb.SandboxState) -> str | None:
    path = node_tmp(state, "node0") / "trainfleet" / ".trainfleet" / "lock"
    return path.read_text().split()[0] if path.exists() else None


def test_detached_job_outlives_its_client_and_logs_follow_reattaches(fleet: Path, durable: sb.SandboxState,
                                                                     workdir: Path) -> None:
    started = time.monotonic()
    job_id = detach(fleet, workdir, "ranks.py", "--tick", "--seconds", "14")
    # The client has exited (tf() waited for it); the job runs on with every rank started.
    assert time.monotonic() - started < 60
    running = job_state(fleet, job_id)
    assert running["state"] == "running" and sorted(running["nodes"]) == ["node0", "node1", "node2"]
    assert lock_holder(durable) == job_id

    deadline = time.monotonic() + 10  # the first tick comes a second after the first all-reduce
    while True:
        table = tf("top", "-f", str(fleet), "--once", timeout=60)
        assert table.returncode == 0, table.stderr
        if re.search(r"node0 .* rank 0: tick \d", table.stdout) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for node in ("node0", "node1", "node2"):
        assert re.search(rf"{node} .*{job_id}", table.stdout), table.stdout
    assert re.search(r"node0 .* rank 0: tick \d", table.stdout), table.stdout  # node0's last line

    followed = tf("logs", "-f", str(fleet), job_id, "--follow", timeout=120)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    lines = followed.stdout.splitlines()
    # From the start (the first all-reduce on every rank) to the end, merged as [node:rank].
    assert len([l for l in lines if re.match(r"^\[node\d:\d\] rank \d of 6 on node\d", l)]) == 6, followed.stdout
    ticks = [int(m.group(1)) for m in (re.match(r"^\[node0:0\] tick (\d+)$", l) for l in lines) if m]
    assert len(ticks) >= 10 and ticks == sorted(ticks), followed.stdout
    assert f"job {job_id} ended: succeeded" in followed.stderr

    ended = job_state(fleet, job_id)
    assert ended["state"] == "succeeded" and {n["exit_code"] for n in ended["nodes"].values()} == {0}
    assert lock_holder(durable) is None  # released when the job ended
    # Only node1's rank lines, and from any machine with the fleet file: the record is on the nodes.
    one = tf("logs", "-f", str(fleet), job_id, "--node", "node1", "--rank", "3", timeout=60)
    assert one.returncode == 0 and one.stdout.splitlines() == ["[node1:3] rank 3 of 6 on node1 pid "
                                                               + one.stdout.split(" pid ")[1].splitlines()[0]]


def test_a_second_run_is_refused_and_stop_ends_only_that_job(fleet: Path, durable: sb.SandboxState,
                                                            workdir: Path) -> None:
    job_id = detach(fleet, workdir, "ranks.py", "--forever")
    # A user's own process on node1 whose command line looks like the job's.
    bystander = tf("exec", "-f", str(fleet), "-n", "node1", "--",
                   "setsid bash -c 'exec -a \"python ranks.py --forever\" sleep 600' </dev/null >/dev/null 2>&1 & "
                   "echo $!", timeout=60)
    assert bystander.returncode == 0, bystander.stderr
    pid = int(bystander.stdout.split()[-1])
    try:
        second = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "ranks.py", timeout=120)
        assert second.returncode != 0
        assert (f"error: job {job_id} is running on this fleet" in second.stderr
                and f"`trainfleet stop {job_id}`" in second.stderr), second.stderr
        assert "Traceback" not in second.stderr and "synced" not in second.stderr  # refused before any copy

        stopped = tf("stop", "-f", str(fleet), job_id, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"job {job_id}: stopped on node[0-2]; nothing of it is left running" in stopped.stdout
        assert ranks_running(durable, ["node0", "node1", "node2"]) == []
        assert job_state(fleet, job_id)["state"] == "stopped"
        assert tf("exec", "-f", str(fleet), "-n", "node1", "--", f"kill -0 {pid}").returncode == 0, \
            "stop killed a process that is not the job's"
        assert lock_holder(durable) is None
        after = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "ranks.py", timeout=180)
        assert after.returncode == 0, after.stdout + after.stderr
    finally:
        tf("exec", "-f", str(fleet), "-n", "node1", "--", f"kill {pid}")


@pytest.mark.parametrize("fault", ["kill", "cut"])
def test_a_lost_node_ends_a_detached_job_on_the_others_within_seconds(fleet: Path, durable: sb.SandboxState,
                                                                      workdir: Path, fault: str) -> None:
    # A killed node's supervisor closes its connection: a fact, taken at once. A cut node is
    # only silent, which a blip is too: it counts after --loss-timeout (short here).
    job_id = detach(fleet, workdir, "--loss-timeout", "4", "ranks.py", "--forever")
    assert len(ranks_running(durable, ["node0", "node1"])) >= 4
    injected = time.time()
    faults.inject(durable.name, "node2", faults.FaultKind(fault))
    deadline = time.monotonic() + 20
    while ranks_running(durable, ["node0", "node1"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    gone_after = time.time() - injected
    assert ranks_running(durable, ["node0", "node1"]) == []
    assert gone_after < 10, f"the survivors ran on for {gone_after:.1f}s"
    record = job_state(fleet, job_id)
    assert record["state"] == "failed" and record["lost"] == ["node2"], record
    assert record["root_cause"]["summary"].startswith("node2 was lost"), record
    for node in ("node0", "node1"):
        assert record["nodes"][node]["ended"] - injected < 10, record
    listed = tf("status", "-f", str(fleet), timeout=60)
    assert re.search(rf"^{job_id}  failed .* lost node2", listed.stdout, re.MULTILINE), listed.stdout
    assert lock_holder(durable) is None


def test_a_five_second_blip_kills_no_healthy_job(fleet: Path, durable: sb.SandboxState, workdir: Path) -> None:
    """A switch flap or a saturated link: node2 silent for 5 s, then back. The job goes on
    (the default --loss-timeout is 15 s) and ends as it would have."""
    job_id = detach(fleet, workdir, "ranks.py", "--tick", "--seconds", "25")
    time.sleep(3)
    faults.inject(durable.name, "node2", faults.FaultKind.CUT)
    time.sleep(5)
    faults.clear(durable.name, "node2")
    deadline = time.monotonic() + 120
    while job_state(fleet, job_id)["state"] in ("starting", "running") and time.monotonic() < deadline:
        time.sleep(1)
    record = job_state(fleet, job_id)
    assert record["state"] == "succeeded" and not record.get("lost"), (record.get("root_cause"), record.get("lost"),
                                                                        record.get("nodes"))


def test_with_min_nodes_training_resumes_on_the_survivors(fleet: Path, durable: sb.SandboxState) -> None:
    run = tf_start("run", "-f", str(fleet), "--sync-dir", str(EXAMPLE), "--min-nodes", "2", "--max-restarts", "3",
                   "train.py", "--steps", "300", "--checkpoint-dir", "checkpoints", "--checkpoint-every", "10",
                   "--resume")
    seen = wait_for_line(run, r"^\[node0:0\] step 40 ", timeout=240)
    killed = time.monotonic()
    faults.inject(durable.name, "node2", faults.FaultKind.KILL)
    seen += wait_for_line(run, r"resumed from checkpoints/ckpt.pt at step \d+ on 4 rank", timeout=120)
    resumed_after = time.monotonic() - killed
    out, err = run.communicate(timeout=600)
    output = "".join(seen) + out
    assert run.returncode == 0, output[-3000:] + err[-3000:]
    assert "node2 was lost; the job goes on without it (--min-nodes 2)" in err, err
    assert re.search(r"^\[node0:0\] step 300 loss ", output, re.MULTILINE), output[-3000:]
    assert losses(output)[-1] < losses(output)[0] - 0.4
    assert resumed_after < 60, resumed_after


def test_a_spare_takes_a_lost_nodes_place_and_the_job_resumes_at_full_size(fleet: Path,
                                                                           durable: sb.SandboxState) -> None:
    """node2 waits in torchrun's rendezvous; node1 is killed; its place is node2's from the
    next round, and the script resumes from its checkpoint on 4 ranks, as many as before."""
    run = tf_start("run", "-f", str(fleet), "--sync-dir", str(EXAMPLE), "--spares", "1", "--max-restarts", "3",
                   "train.py", "--steps", "300", "--checkpoint-dir", "spare-checkpoints", "--checkpoint-every", "10",
                   "--resume")
    seen = wait_for_line(run, r"^\[node0:0\] step 40 ", timeout=240)
    assert not any(line.startswith("[node2:") for line in seen)  # the spare ran nothing yet
    killed = time.monotonic()
    faults.inject(durable.name, "node1", faults.FaultKind.KILL)
    seen += wait_for_line(run, r"resumed from spare-checkpoints/ckpt.pt at step \d+ on 4 rank", timeout=120)
    resumed_after = time.monotonic() - killed
    out, err = run.communicate(timeout=600)
    output = "".join(seen) + out
    assert run.returncode == 0, output[-3000:] + err[-3000:]
    assert ("node1 was lost; its ranks restart, and a spare (node2) takes its place in torchrun's next rendezvous"
            in err), err
    assert "spare node2 took its place" in err and "node1 is cordoned" in err, err
    assert re.search(r"^\[node0:0\] step 300 loss ", output, re.MULTILINE), output[-3000:]
    assert resumed_after < 30, resumed_after
    job_id = re.search(r"job (tf-\S+):", err).group(1)  # type: ignore[union-attr]
    record = job_state(fleet, job_id)
    assert record["state"] == "succeeded" and record["spares"] == {"node2": "joined"}, record
    [restart] = record["restarts"]
    assert restart["lost"] == "node1" and restart["nodes"] == ["node0", "node2"], restart
    assert restart["resumed"] is not None and 0 < restart["resumed"] - restart["at"] < 30, restart
    shown = tf("status", "-f", str(fleet), job_id).stdout
    assert re.search(r"restart 1 at \d\d:\d\d:\d\d: node1 was lost \(.*\); went on with node\[0,2\]; ranks back "
                     r"[\d.]+ s later", shown), shown
    # node1 stays out of the next job until a person lets it back in.
    dry = tf("run", "-f", str(fleet), "--dry-run", "train.py")
    assert "[node1]" not in dry.stdout and "leaving out node1: cordoned" in dry.stderr, dry.stderr
    assert ranks_running(durable, ["node0", "node2"]) == []


def test_node0_lost_the_rendezvous_moves_and_a_spare_keeps_the_job_at_full_size(fleet: Path,
                                                                                durable: sb.SandboxState) -> None:
    """node0 hosts torchrun's store and the supervisors' mesh; killed, node1 hosts both
    anew, every other node's launcher starts again there, and the spare fills the place.
    The checkpoints are on a file system every node sees (here /dev/shm), as resuming on
    another node needs."""
    shared = Path("/dev/shm") / f"tf-test-ckpt-{time.time_ns()}"
    try:
        run = tf_start("run", "-f", str(fleet), "--sync-dir", str(EXAMPLE), "--spares", "1", "--max-restarts", "3",
                       "train.py", "--steps", "300", "--checkpoint-dir", str(shared), "--checkpoint-every", "10",
                       "--resume")
        seen = wait_for_line(run, r"^\[node0:0\] step 40 ", timeout=240)
        killed = time.monotonic()
        faults.inject(durable.name, "node0", faults.FaultKind.KILL)
        seen += wait_for_line(run, rf"resumed from {shared}/ckpt.pt at step [1-9]\d* on 4 rank", timeout=120)
        resumed_after = time.monotonic() - killed
        out, err = run.communicate(timeout=600)
        output = "".join(seen) + out
        assert run.returncode == 0, output[-3000:] + err[-3000:]
        assert ("node0 was lost; the rendezvous moves to node1; its ranks restart, and a spare (node2) takes its "
                "place" in err), err
        assert re.search(r"^\[node1:0\] step 300 loss ", output, re.MULTILINE), output[-3000:]
        assert resumed_after < 30, resumed_after
        job_id = re.search(r"job (tf-\S+):", err).group(1)  # type: ignore[union-attr]
        record = job_state(fleet, job_id)
        assert record["state"] == "succeeded" and record["spares"] == {"node2": "joined"}, record
        [restart] = record["restarts"]
        assert restart["lost"] == "node0" and restart["nodes"] == ["node1", "node2"], restart
        assert ranks_running(durable, ["node1", "node2"]) == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_spare_that_is_not_needed_stands_down_and_one_lost_while_waiting_costs_nothing(
        fleet: Path, durable: sb.SandboxState, workdir: Path) -> None:
    run = tf_start("run", "-f", str(fleet), "--sync-dir", str(EXAMPLE), "--spares", "1", "--max-restarts", "1",
                   "train.py", "--steps", "120", "--checkpoint-dir", "idle-checkpoints", "--checkpoint-every", "10")
    seen = wait_for_line(run, r"^\[node0:0\] step 40 ", timeout=240)
    faults.inject(durable.name, "node2", faults.FaultKind.KILL)
    out, err = run.communicate(timeout=600)
    output = "".join(seen) + out
    assert run.returncode == 0, output[-3000:] + err[-3000:]
    assert "node2 was lost; it was a spare waiting for a place: the job goes on as it was" in err, err
    assert "resumed from" not in output and re.search(r"^\[node0:0\] step 120 loss ", output, re.MULTILINE)
    job_id = re.search(r"job (tf-\S+):", err).group(1)  # type: ignore[union-attr]
    assert job_state(fleet, job_id)["restarts"] == []
    faults.clear(durable.name)
    assert "node2 is cordoned" in err
    tf("uncordon", "-f", str(fleet), "node2", check=True)
    # With every node up, a spare never needed ends with the job: succeeded, nothing left.
    quiet = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--spares", "1", "--max-restarts", "1",
               "ranks.py", timeout=240)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    job_id = re.search(r"job (tf-\S+):", quiet.stderr).group(1)  # type: ignore[union-attr]
    record = job_state(fleet, job_id)
    assert record["spares"] == {"node2": "not needed"}, record
    assert {n["state"] for n in record["nodes"].values()} == {"succeeded"}, record
    assert re.search(r"  exit 0$", tf("status", "-f", str(fleet), job_id).stdout, re.MULTILINE)
    assert ranks_running(durable, ["node0", "node1", "node2"]) == []


RESTARTING = ('echo "start $TRAINFLEET_RESTART_COUNT on $TRAINFLEET_NODE"; '
              'if [ "$NODE_RANK" = 1 ] && [ "$TRAINFLEET_RESTART_COUNT" -lt "$FAILURES" ]; then sleep 2; '
              'echo failing; exit 3; fi; sleep 6; echo "done $TRAINFLEET_RESTART_COUNT on $TRAINFLEET_NODE"')


def test_a_launcher_without_restarts_of_its_own_is_started_again_whole(fleet: Path, workdir: Path) -> None:
    """--max-restarts for a launcher that has none (here `command`; DeepSpeed, Accelerate,
    mpirun and head alike): node1's part fails, every node's part starts again, told which
    start it is; with the restarts spent, the failure ends the job as any failure does."""
    healed = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--launcher", "command", "--max-restarts", "2",
                "--env", "FAILURES=1", "--", RESTARTING, timeout=180)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    for node in ("node0", "node1", "node2"):
        assert f"[{node}] start 0 on {node}" in healed.stdout and f"[{node}] done 1 on {node}" in healed.stdout
        assert f"[{node}] [trainfleet] the whole job starts again on every node (restart 1)" in healed.stdout
    assert "done 0" not in healed.stdout and "start 2" not in healed.stdout
    job_id = re.search(r"job (tf-\S+):", healed.stderr).group(1)  # type: ignore[union-attr]
    shown = tf("status", "-f", str(fleet), job_id).stdout
    assert re.search(r"restart 1 at \d\d:\d\d:\d\d: node1's part of the job failed \(exit status 3\) \(restart 1 of "
                     r"2\); went on with node\[0-2\]; ranks back [\d.]+ s later", shown), shown
    spent = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--launcher", "command", "--max-restarts", "1",
               "--env", "FAILURES=9", "--", RESTARTING, timeout=180)
    assert spent.returncode == 3, spent.stdout + spent.stderr
    assert "start 1 on node1" in spent.stdout and "start 2" not in spent.stdout
    assert "failed: node node1 failed first: exited with status 3" in spent.stderr, spent.stderr


def test_a_deepspeed_job_that_loses_a_node_starts_again_with_a_spare_in_its_place(
        fleet: Path, durable: sb.SandboxState, workdir: Path) -> None:
    """DeepSpeed cannot go on without a node: its job was planned ahead without each one.
    node1 is killed; with no controller needed, every node's supervisor starts its part
    of the plan without node1, node2 (the spare) in its place, and the script resumes
    from its checkpoint on as many ranks as before."""
    shared = Path("/dev/shm") / f"tf-test-ds-{time.time_ns()}.pt"
    try:
        run = tf_start("run", "-f", str(fleet), "--sync-dir", str(workdir), "--launcher", "deepspeed", "--spares", "1",
                       "--max-restarts", "1", "ds_train.py", "--deepspeed", "--deepspeed_config", "ds.json",
                       "--steps", "60", "--sleep", "0.5", "--checkpoint", str(shared))
        seen = wait_for_line(run, r"^\[node0:0\] step 8 world 4", timeout=300)
        assert not any(line.startswith("[node2") for line in seen)  # the spare ran nothing yet
        killed = time.monotonic()
        faults.inject(durable.name, "node1", faults.FaultKind.KILL)
        seen += wait_for_line(run, r"^\[node0:0\] resumed at step (9|[1-9]\d) on 4 ranks", timeout=180)
        resumed_after = time.monotonic() - killed
        out, err = run.communicate(timeout=600)
        output = "".join(seen) + out
        assert run.returncode == 0, output[-3000:] + err[-3000:]
        assert ("node1 was lost; the job starts again without it on node[0,2], a spare (node2) in its place, 4 "
                "process(es)" in err), err
        assert re.search(r"^\[node2:\d\] rank \d local_rank_arg \d env RANK=[23] .* WORLD_SIZE=4 ", output,
                         re.MULTILINE), output[-3000:]
        assert re.search(r"^\[node0:0\] step 59 world 4", output, re.MULTILINE), output[-3000:]
        assert "spare node2 took its place" in err and "node1 is cordoned" in err, err
        job_id = re.search(r"job (tf-\S+):", err).group(1)  # type: ignore[union-attr]
        record = job_state(fleet, job_id)
        assert record["state"] == "succeeded" and record["spares"] == {"node2": "joined"}, record
        [restart] = record["restarts"]
        assert restart["lost"] == "node1" and restart["nodes"] == ["node0", "node2"], restart
        assert ranks_running(durable, ["node0", "node2"]) == []
        print(f"deepspeed, node1 killed, a spare in its place: resumed {resumed_after:.1f} s after the kill")
    finally:
        shared.unlink(missing_ok=True)


def test_an_accelerate_job_that_loses_node0_moves_and_goes_on_with_the_nodes_left(
        fleet: Path, durable: sb.SandboxState, workdir: Path) -> None:
    """node0 holds Accelerate's rendezvous and the supervisors' mesh; killed, node1's
    supervisor coordinates, and the job starts again on node1 and node2 with the master
    there: 4 processes where there were 6, from the checkpoint."""
    shared = Path("/dev/shm") / f"tf-test-acc-{time.time_ns()}.pt"
    try:
        run = tf_start("run", "-f", str(fleet), "--sync-dir", str(workdir), "--launcher", "accelerate",
                       "--max-restarts", "1", "acc_train.py", "--steps", "60", "--sleep", "0.5",
                       "--checkpoint", str(shared))
        seen = wait_for_line(run, r"^\[node0:0\] step 8 world 6", timeout=300)
        killed = time.monotonic()
        faults.inject(durable.name, "node0", faults.FaultKind.KILL)
        seen += wait_for_line(run, r"^\[node1:0\] resumed at step (9|[1-9]\d) on 4 ranks", timeout=180)
        resumed_after = time.monotonic() - killed
        out, err = run.communicate(timeout=600)
        output = "".join(seen) + out
        assert run.returncode == 0, output[-3000:] + err[-3000:]
        assert ("node0 was lost; the job's supervisors meet again on node1; the job starts again without it on "
                "node[1-2], 4 process(es)" in err), err
        assert re.search(r"^\[node1:0\] step 59 world 4", output, re.MULTILINE), output[-3000:]
        job_id = re.search(r"job (tf-\S+):", err).group(1)  # type: ignore[union-attr]
        record = job_state(fleet, job_id)
        assert record["state"] == "succeeded", record
        [restart] = record["restarts"]
        assert restart["lost"] == "node0" and restart["nodes"] == ["node1", "node2"], restart
        assert ranks_running(durable, ["node1", "node2"]) == []
        print(f"accelerate, node0 killed, no spare: resumed {resumed_after:.1f} s after the kill")
    finally:
        shared.unlink(missing_ok=True)


@pytest.mark.parametrize("dump", ["py-spy", "faulthandler"])
def test_a_rank_that_blocks_forever_gets_its_stack_shown_and_the_job_ends(fleet: Path, durable: sb.SandboxState,
                                                                        workdir: Path, dump: str) -> None:
    # py-spy is in the fleet's environment (the test extras); the fallback is asked for by name.
    chosen = ["--env", "TRAINFLEET_STACK_DUMP=faulthandler"] if dump == "faulthandler" else []
    # 15 s: six ranks importing torch on two cores are silent for 7 s or more before their
    # first line, which a shorter timeout takes for a hang at init (as it should).
    started = time.monotonic()
    hung = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "--hang-timeout", "15", *chosen, "ranks.py",
              "--block-rank", "3", timeout=180)
    assert hung.returncode == 1, hung.stdout + hung.stderr
    assert time.monotonic() - started < 90
    # Every rank's stack on screen; the rank that blocks is in the function it blocks in.
    frame = (r"^\[node1:3\]     block_forever \(ranks.py:\d+\)$" if dump == "py-spy" else
             r'^\[node1:3\]   File "ranks.py", line \d+ in block_forever$')
    assert re.search(frame, hung.stdout, re.MULTILINE), hung.stdout[-4000:]
    header = "py-spy dump of pid" if dump == "py-spy" else "Current thread"
    for rank in range(6):
        assert f":{rank}] {header}" in hung.stdout, hung.stdout[-4000:]
    assert "rankwrap.py" not in hung.stdout  # trainfleet's own frames stay in the log
    assert "failed: hung: no rank wrote anything for 15s" in hung.stderr, hung.stderr
    assert re.search(r"node1: rank 2 in all_reduce \(ranks.py:\d+\); rank 3 in block_forever \(ranks.py:\d+\)",
                     hung.stderr), hung.stderr
    assert ranks_running(durable, ["node0", "node1", "node2"]) == []


def test_logs_follow_sends_a_long_history_whole(fleet: Path, durable: sb.SandboxState) -> None:
    """Re-attaching to a job that has printed 100,000 lines: all of them, in order (they
    once went as one message of megabytes, which the client dropped)."""
    from helpers import JOBS

    job_id = detach(fleet, JOBS, "chatty.py", "--burst", "100000")
    until_ended = time.monotonic() + 120
    while job_state(fleet, job_id)["state"] == "running" and time.monotonic() < until_ended:
        time.sleep(1)
    followed = tf("logs", "-f", str(fleet), job_id, "--follow", timeout=120)
    assert followed.returncode == 0, followed.stderr[-2000:]
    steps = [int(m) for m in re.findall(r"^\[node0:0\] step (\d+) ", followed.stdout, re.MULTILINE)]
    assert steps == list(range(100000))


def test_status_of_an_unknown_job_is_one_line(fleet: Path) -> None:
    missing = tf("logs", "-f", str(fleet), "tf-20000101-000000-abcd", timeout=60)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[0].startswith("trainfleet: error: no job tf-20000101-000000-abcd")
    bad = tf("logs", "-f", str(fleet), "x", "--since", "yesterday", timeout=60)
    assert bad.returncode == 2 and "--since 'yesterday' is not understood" in bad.stderr


def test_the_lock_of_a_job_whose_node_zero_died_is_recovered(fleet: Path, durable: sb.SandboxState,
                                                             workdir: Path) -> None:
    job_id = detach(fleet, workdir, "ranks.py", "--forever")
    faults.inject(durable.name, "node0", faults.FaultKind.KILL)
    faults.clear(durable.name, "node0")  # the machine comes back: its /tmp (and the lock in it) survive
    assert lock_holder(durable) == job_id
    deadline = time.monotonic() + 20
    while ranks_running(durable, ["node1", "node2"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ranks_running(durable, ["node1", "node2"]) == []  # the coordinator's loss ended them
    again = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "ranks.py", timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert job_state(fleet, job_id)["state"] in ("lost", "failed")


def test_two_runs_over_the_same_nodes_in_either_order_cannot_both_start(fleet: Path, durable: sb.SandboxState,
                                                                      workdir: Path) -> None:
    """`-n node0,node1` and `-n node1,node0` name the same nodes: whichever comes second is
    refused, though each has a different node 0."""
    job_id = detach(fleet, workdir, "-n", "node1,node0", "ranks.py", "--forever")
    try:
        second = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "-n", "node0,node1", "ranks.py", timeout=120)
        assert second.returncode != 0 and f"job {job_id} is running on this fleet" in second.stderr, second.stderr
        third = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "-n", "node0", "ranks.py", timeout=120)
        assert third.returncode != 0 and f"job {job_id} is running on this fleet" in third.stderr, third.stderr
        apart = tf("run", "-f", str(fleet), "--sync-dir", str(workdir), "-n", "node2", "ranks.py", timeout=120)
        assert apart.returncode == 0, apart.stderr[-2000:]  # a node of its own: no conflict
    finally:
        tf("stop", "-f", str(fleet), job_id, timeout=120)
