"""What naming the slow node costs the job, and how soon it is named.

Usage (root): python bench/straggler.py [--rounds 3] [--seconds 40]
Three sandbox nodes x 1 process run a synchronous gloo job (about 160 ms of matmuls, then
an all_reduce, per step). Baseline: the same job with the stack sampling off
(TRAINFLEET_STACK_DUMP=faulthandler, which the sampler honours), in the same sandbox,
rounds alternating. Printed: steps per second with the sampler on / off (the ratio is its
cost; target: under 1%), and the seconds from `run --detach` until `status` names node2
when it is held to 30% of one CPU (sandbox fault slow-cpu), and who it names with no cap.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainfleet.sandbox import cluster as sb

REPO = Path(__file__).resolve().parents[1]
JOB = re.search(r'JOB = """\\\n(.*?)"""', (REPO / "tests" / "cluster" / "test_straggler.py").read_text(),
                re.DOTALL).group(1)  # type: ignore[union-attr]


def tf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainfleet", *args], capture_output=True, text=True, timeout=300)


def start(fleet: str, project: Path, *extra: str) -> str:
    done = tf("run", "-f", fleet, "--detach", *extra, "--sync-dir", str(project), "job.py")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def steps(fleet: str, job: str) -> int:
    found = re.findall(r"\[node0:0\] step (\d+)", tf("logs", "-f", fleet, job).stdout)
    return int(found[-1]) if found else 0


def rate(fleet: str, project: Path, seconds: float, *extra: str) -> float:
    job = start(fleet, project, *extra)
    try:
        time.sleep(10)  # past the rendezvous and the first steps
        first, began = steps(fleet, job), time.monotonic()
        time.sleep(seconds)
        return (steps(fleet, job) - first) / (time.monotonic() - began)
    finally:
        tf("stop", "-f", fleet, job)


def named(fleet: str, project: Path, cap: float) -> tuple[float | None, str]:
    began = time.monotonic()
    job = start(fleet, project)
    said = ""
    try:
        while time.monotonic() - began < cap:
            said = next((line.strip() for line in tf("status", "-f", fleet, job).stdout.splitlines()
                         if "is the slowest" in line), "")
            if said:
                return time.monotonic() - began, said
            time.sleep(2)
        return None, ""
    finally:
        tf("stop", "-f", fleet, job)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=40)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tf-bench-straggler-"))
    project = work / "project"
    project.mkdir()
    (project / "job.py").write_text(JOB)
    state = sb.up(3, name="bstrag", out=work / "fleet.yaml", slots=1)
    fleet = state.fleet_file
    try:
        on, off = [], []
        for _ in range(options.rounds):
            on.append(rate(fleet, project, options.seconds))
            off.append(rate(fleet, project, options.seconds, "--env", "TRAINFLEET_STACK_DUMP=faulthandler"))
        print(f"steps/s with sampling {statistics.median(on):.2f}, without {statistics.median(off):.2f}: "
              f"ratio {statistics.median(on) / statistics.median(off):.3f} (rounds: on {on}, off {off})")
        tf("sandbox", "fault", "slow-cpu", "node2", "30%", "-f", fleet)
        seconds, said = named(fleet, project, 120)
        print(f"node2 at 30% of a CPU: named after {seconds:.0f} s: {said}" if seconds else
              "node2 at 30% of a CPU: not named within 120 s")
        tf("sandbox", "fault", "clear", "-f", fleet)
        seconds, said = named(fleet, project, 90)
        print(f"no cap: {'named ' + said if said else 'nobody named in 90 s'}")
    finally:
        sb.down("bstrag", missing_ok=True)


if __name__ == "__main__":
    main()
