"""Seconds from losing a node to training again, for launchers that cannot go on without a
node by themselves (DeepSpeed, Accelerate): trainfleet's plan made ahead against the same
job without a restart policy (what happened before: the job ends).

Usage (root): python bench/replan.py [--launchers deepspeed,accelerate] [--victims node1,node0]
Three sandbox nodes x 2 processes; node2 is a spare (`--spares 1 --max-restarts 1`). The
job is tests/jobs' ds_train.py or acc_train.py (gloo on the CPU, half a second a step),
which saves its weights and step every step to /dev/shm (every sandbox node sees it) and
resumes from them. Once step 8 is printed, the victim is killed (every process of the
node: its kernel closes its connections). Reported: seconds until the first step after
the job resumed at full size (4 ranks, the spare in the lost node's place); and for the
baseline (no --max-restarts), seconds until the client said the job ended.
Target: under 30 s to training again, node 0 included.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from failover import Lines, reset  # (a run's output line by line, with when each came; nodes as after boot)
from trainfleet.sandbox import cluster as sb
from trainfleet.sandbox import faults

REPO = Path(__file__).resolve().parents[1]

JOBS = REPO / "tests" / "jobs"
SCRIPTS = {"deepspeed": ["ds_train.py", "--deepspeed", "--deepspeed_config", "ds.json"],
           "accelerate": ["acc_train.py"]}


def once(state: sb.SandboxState, launcher: str, victim: str, restarts: bool, cap: float) -> float | None:
    checkpoint = f"/dev/shm/replan-bench-{time.time_ns()}.pt"
    policy = ["--spares", "1", "--max-restarts", "1"] if restarts else ["-n", "node[0-1]"]
    process = subprocess.Popen([sys.executable, "-m", "trainfleet", "run", "-f", state.fleet_file, "--no-sync",
                                "--sync-dir", str(JOBS), "--launcher", launcher, *policy, *SCRIPTS[launcher],
                                "--steps", "100000", "--sleep", "0.5", "--checkpoint", checkpoint],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    watch = Lines(process)
    try:
        if watch.wait_for(r"step 8 world 4", timeout=400) is None:
            raise SystemExit(f"{launcher}: never reached step 8:\n" + "\n".join(l for _, l in watch.seen[-30:]))
        lost = time.monotonic()
        faults.inject(state.name, victim, faults.FaultKind.KILL)
        if not restarts:
            ended = watch.wait_for(r"trainfleet: job \S+ (failed|ended)", timeout=cap, after=lost)
            return None if ended is None else ended - lost
        resumed = watch.wait_for(r"resumed at step \d+ on 4 ranks", timeout=cap, after=lost)
        if resumed is None:
            return None
        stepped = watch.wait_for(r"step \d+ world 4", timeout=cap, after=resumed)
        return None if stepped is None else stepped - lost
    finally:
        process.kill()
        process.wait()
        reset(state)  # every node as after boot, none cordoned
        Path(checkpoint).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launchers", default="deepspeed,accelerate")
    parser.add_argument("--victims", default="node1,node0")
    parser.add_argument("--cap", type=float, default=120.0)
    parser.add_argument("--name", default="replan")
    args = parser.parse_args()
    state = sb.up(3, name=args.name, slots=2)
    rows = []
    try:
        subprocess.run([sys.executable, "-m", "trainfleet", "sync", "-f", state.fleet_file, str(JOBS)], check=True,
                       capture_output=True)
        for launcher in args.launchers.split(","):
            for victim in args.victims.split(","):
                again = once(state, launcher, victim, True, args.cap)
                ended = once(state, launcher, victim, False, args.cap)
                rows.append((launcher, victim, again, ended))
    finally:
        sb.down(args.name, missing_ok=True)
    shown = (lambda s: f"{s:.1f}" if s is not None else f"> {args.cap:.0f}")
    print("a lost node, 3 sandbox nodes x 2 processes (node2 a spare), killed after step 8; seconds")
    print(f"{'launcher':11} {'lost':6} {'trainfleet: training again':>27} {'before (no restarts): ended':>28}")
    for launcher, victim, again, ended in rows:
        print(f"{launcher:11} {victim:6} {shown(again):>27} {shown(ended):>28}")
    met = all(r[2] is not None and r[2] < 30 for r in rows)
    print(f"target: training again in under 30 s, node 0 included: {'meets' if met else 'MISSES'}")


if __name__ == "__main__":
    main()
