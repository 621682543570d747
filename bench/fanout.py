"""Fan-out: `trainfleet exec -- true` vs `pdsh -R ssh` vs a sequential ssh loop, on a 32-node sandbox.

Usage (root): python bench/fanout.py [--nodes 32] [--repeat 9]
Prints the median wall time of each and the ratios against pdsh measured in the same run.
The runs are interleaved so that drift on the machine hits every contender alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trainfleet.sandbox import cluster as sb
from trainfleet.fleet import load_fleet
from trainfleet.transport.session import FleetSession
from trainfleet.transport.ssh import openssh_options


CPU: dict[str, list[float]] = {}


def timed(argv: list[str], env: dict[str, str] | None = None, name: str = "") -> float:
    """Wall seconds; the CPU seconds the command used on this machine (the controller:
    the command and every process it started, ssh clients included) go to CPU[name]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {completed.stderr.strip()[-500:]}")
    if name:
        CPU.setdefault(name, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--name", default="fanout")
    args = parser.parse_args()
    if shutil.which("pdsh") is None:
        raise SystemExit("pdsh is not installed (apt-get install pdsh)")
    state = sb.up(args.nodes, name=args.name)
    try:
        fleet_file = Path(state.fleet_file)
        fleet = load_fleet(fleet_file)
        options = openssh_options(fleet, fleet.head)
        # pdsh substitutes %u and %h itself; drop the per-node port/user flags it adds.
        ssh_args = [o for o in options if o not in ("-p", "22", "-l", fleet.head.user)]
        pdsh_env = {**os.environ, "PDSH_SSH_ARGS": " ".join(ssh_args + ["-l%u", "%h"])}
        hosts = ",".join(n.host for n in fleet.nodes)
        trainfleet = [sys.executable, "-m", "trainfleet", "exec", "-f", str(fleet_file), "--", "true"]
        console = shutil.which("trainfleet")
        if console:
            trainfleet = [console, *trainfleet[3:]]
        pdsh = ["pdsh", "-R", "ssh", "-f", "32", "-w", hosts, "true"]
        loop = ["sh", "-c", "; ".join(f"ssh {' '.join(options)} {n.host} true || exit 1" for n in fleet.nodes)]

        async def in_process() -> float:
            started = time.perf_counter()
            async with await FleetSession.open(fleet, agents=False) as session:
                result = await session.run("true")
            if not result.ok:
                raise SystemExit(f"in-process fan-out failed: {result.grouped_failures()}")
            return time.perf_counter() - started

        samples: dict[str, list[float]] = {"trainfleet exec": [], "trainfleet (warm library)": [], "pdsh -R ssh": [],
                                           "ssh loop": []}
        timed(trainfleet), timed(pdsh, pdsh_env)  # warm caches once, unmeasured
        for _ in range(args.repeat):
            samples["pdsh -R ssh"].append(timed(pdsh, pdsh_env, "pdsh -R ssh"))
            samples["trainfleet exec"].append(timed(trainfleet, name="trainfleet exec"))
            samples["trainfleet (warm library)"].append(asyncio.run(in_process()))
        for _ in range(max(3, args.repeat // 3)):
            samples["ssh loop"].append(timed(loop, name="ssh loop"))
    finally:
        sb.down(args.name, missing_ok=True)

    base = statistics.median(samples["pdsh -R ssh"])
    print(f"fan-out of `true` to {args.nodes} sandbox nodes, {args.repeat} runs each (ssh loop: fewer), "
          f"{os.cpu_count()} CPU(s) shared by controller and nodes")
    cpu_base = statistics.median(CPU["pdsh -R ssh"])
    print(f"{'contender':28} {'median s':>9} {'min s':>7} {'vs pdsh':>8} {'controller CPU s':>17} {'vs pdsh':>8}")
    for name, values in samples.items():
        median = statistics.median(values)
        cpu = f"{statistics.median(CPU[name]):17.3f} {statistics.median(CPU[name]) / cpu_base:7.2f}x" \
            if name in CPU else f"{'(in this process)':>17}"
        print(f"{name:28} {median:9.3f} {min(values):7.3f} {median / base:7.2f}x {cpu}")
    print("(the nodes' own work - sshd, and the login shell each command starts, with its ~/.bashrc - is the "
          "same for every contender and shares this machine's cores; on real machines it runs in parallel)")
    ratio = statistics.median(samples["trainfleet exec"]) / base
    print(f"target `trainfleet exec` <= 0.7x pdsh: {'meets' if ratio <= 0.7 else 'MISSES'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
