"""The client's own output read by another program that stops early (`| head`, `| grep -q`):
the client ends at once, as a Unix tool does, and the job goes on, as when the terminal
goes away (unless it was started with --tether); a reader of `logs --follow` leaves it alone too."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from helpers import job_processes_on, tf
from trainfleet.sandbox import cluster as sb


def piped(args: list[str], reader: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    """`trainfleet ARGS | READER` in a shell, as a user types it; and how long it took."""
    command = " ".join(shlex.quote(w) for w in [sys.executable, "-m", "trainfleet", *args]) + " | " + reader
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return done, time.monotonic() - started


def wait_for_no_job(state: sb.SandboxState, nodes: int, seconds: float = 30) -> list[list[str]]:
    deadline = time.monotonic() + seconds
    while True:
        left = [job_processes_on(n) for n in state.nodes[:nodes]]
        if not any(left) or time.monotonic() > deadline:
            return left


def test_run_into_head_ends_the_client_at_once_and_the_job_goes_on(fleet2: Path, cluster3: sb.SandboxState,
                                                                   workdir: Path, tmp_path: Path) -> None:
    """The client is a view: its reader gone, it ends; only a person (or --tether) ends the job."""
    done, seconds = piped(["run", "-f", str(fleet2), "--sync-dir", str(workdir), "--job-id", "tf-head-closed",
                           "--log-dir", str(tmp_path / "logs"),
                           "ranks.py", "--tick", "--seconds", "120"], "head -n 3")
    assert done.stdout.count("\n") == 3 and "rank " in done.stdout, done.stdout + done.stderr
    assert seconds < 60, f"the client took {seconds:.0f}s to notice its reader had gone"
    assert ("output closed: job tf-head-closed goes on; `trainfleet logs tf-head-closed --follow` follows it, "
            "`trainfleet stop tf-head-closed` stops it") in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    try:
        time.sleep(3)
        shown = tf("status", "-f", str(fleet2), "tf-head-closed", check=True).stdout
        assert "running" in shown, shown
        assert all(job_processes_on(n) for n in cluster3.nodes[:2])
    finally:
        stopped = tf("stop", "-f", str(fleet2), "tf-head-closed", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_for_no_job(cluster3, 2) == [[], []]
    # With --tether, a job whose client (and every viewer) stays away that long ends, and says why.
    tethered, _ = piped(["run", "-f", str(fleet2), "--no-sync", "--sync-dir", str(workdir), "--job-id",
                         "tf-head-tether", "--tether", "3", "--log-dir", str(tmp_path / "logs2"),
                         "ranks.py", "--tick", "--seconds", "120"], "head -n 3")
    assert tethered.stdout.count("\n") == 3, tethered.stderr
    assert wait_for_no_job(cluster3, 2, seconds=40) == [[], []]
    shown = tf("status", "-f", str(fleet2), "tf-head-tether", check=True).stdout
    assert "stopped" in shown and "ended: the controller was gone for 3 s (--tether)" in shown, shown
    assert "still running" not in shown and "no final state" not in shown


def test_logs_follow_into_head_ends_and_leaves_the_job_running(fleet2: Path, cluster3: sb.SandboxState,
                                                              workdir: Path) -> None:
    started = tf("run", "-f", str(fleet2), "--sync-dir", str(workdir), "--detach", "--job-id", "tf-follow-head",
                 "ranks.py", "--tick", "--seconds", "120", timeout=180, check=True)
    assert started.stdout.strip().splitlines()[-1] == "tf-follow-head"
    try:
        done, seconds = piped(["logs", "-f", str(fleet2), "--follow"], "head -n 2")
        assert done.stdout.count("\n") == 2 and seconds < 30, (seconds, done.stdout, done.stderr)
        # No job id: the newest job, named on stderr.
        assert "job tf-follow-head (the newest" in done.stderr and "Traceback" not in done.stderr
        time.sleep(2)
        shown = tf("status", "-f", str(fleet2), "tf-follow-head", check=True).stdout
        assert "running" in shown, shown
        assert all(job_processes_on(n) for n in cluster3.nodes[:2])
    finally:
        tf("stop", "-f", str(fleet2), "tf-follow-head", timeout=120)
    assert wait_for_no_job(cluster3, 2) == [[], []]


def test_exec_into_grep_q_ends_at_once(fleet2: Path) -> None:
    done, seconds = piped(["exec", "-f", str(fleet2), "--", "for i in $(seq 1 200); do echo line $i; sleep 0.05; done"],
                          "grep -q 'line 3'")
    assert done.returncode == 0 and seconds < 8, (seconds, done.stderr)
