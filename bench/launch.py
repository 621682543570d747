"""Launch overhead: `trainfleet run --no-sync` vs the same torchrun commands started by hand.

Usage (root): python bench/launch.py [--nodes 2] [--repeat 7]
The baseline is what a user types on rented machines: one `ssh NODE torchrun ...` per
node, all at once, with the rendezvous settings that work there (is_host on node 0 only,
--local-addr, the c10d endpoint on node 0). Both run the same tiny job (init, one
all-reduce, exit), interleaved so that drift on the machine hits both alike. Also counts
the SSH connections each node's sshd accepted during one `trainfleet run`.
Target: overhead <= 0.5 s at 2 nodes, one connection per node.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainfleet.fleet import load_fleet
from trainfleet.sandbox import cluster as sb
from trainfleet.transport.ssh import openssh_options

JOB = """import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)
print("sum", int(t.item()), flush=True)
dist.destroy_process_group()
"""


def logins(state: sb.SandboxState) -> dict[str, int]:
    return {n.name: (Path(state.directory) / "nodes" / n.name / "sshd.log").read_text().count("Accepted publickey")
            for n in state.nodes}


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def by_hand(fleet_file: Path, job_id: str) -> float:
    """One ssh per node, all at once, each starting torchrun as a user would by hand."""
    fleet = load_fleet(fleet_file)
    head = fleet.head
    started = time.perf_counter()
    processes = []
    for rank, node in enumerate(fleet.nodes):
        torchrun = [fleet.python, "-m", "torch.distributed.run", f"--nnodes={len(fleet.nodes)}",
                    "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={head.address}:29400",
                    f"--rdzv-id={job_id}", f"--rdzv-conf=is_host={'true' if rank == 0 else 'false'}",
                    f"--local-addr={node.address}", "bench_job.py"]
        remote = f"cd {fleet.workdir} && GLOO_SOCKET_IFNAME={node.interface} {shlex.join(torchrun)}"
        processes.append(subprocess.Popen(["ssh", *openssh_options(fleet, node), node.host, remote],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"hand-started torchrun failed: {err[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--name", default="launch")
    args = parser.parse_args()
    state = sb.up(args.nodes, name=args.name, slots=1)
    samples: dict[str, list[float]] = {"torchrun by hand (parallel ssh)": [], "trainfleet run --no-sync": []}
    try:
        fleet_file = Path(state.fleet_file)
        with tempfile.TemporaryDirectory() as project:
            (Path(project) / "bench_job.py").write_text(JOB)
            subprocess.run([sys.executable, "-m", "trainfleet", "sync", "-f", str(fleet_file), project], check=True,
                           capture_output=True)
        tf = [sys.executable, "-m", "trainfleet", "run", "-f", str(fleet_file), "--no-sync", "--nproc-per-node", "1",
              "--log-dir", tempfile.mkdtemp(), "bench_job.py"]
        timed(tf), by_hand(fleet_file, "warm")  # first runs warm the page cache, unmeasured
        before = logins(state)
        timed(tf)
        per_node = {n: logins(state)[n] - before[n] for n in before}
        for index in range(args.repeat):
            samples["torchrun by hand (parallel ssh)"].append(by_hand(fleet_file, f"hand{index}"))
            samples["trainfleet run --no-sync"].append(timed(tf))
    finally:
        sb.down(args.name, missing_ok=True)
    base = statistics.median(samples["torchrun by hand (parallel ssh)"])
    print(f"launch of a 1-all-reduce job on {args.nodes} sandbox nodes x 1 process, {args.repeat} runs each")
    print(f"{'contender':34} {'median s':>9} {'min s':>7} {'overhead s':>11}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:34} {median:9.3f} {min(values):7.3f} {median - base:11.3f}")
    overhead = statistics.median(samples["trainfleet run --no-sync"]) - base
    print(f"SSH connections per node during one `trainfleet run --no-sync`: {per_node}")
    one = all(count == 1 for count in per_node.values())
    print(f"target overhead <= 0.5 s: {'meets' if overhead <= 0.5 else 'MISSES'} ({overhead:.2f} s); "
          f"one connection per node: {'meets' if one else 'MISSES'}")


if __name__ == "__main__":
    main()
