"""Scale: sync, run, exec and doctor from one controller to 16, 64 and 128 sandbox nodes, with
pdsh beside them in the same run.

Usage (root): python bench/scale.py [--sizes 16,64,128] [--repeat 3] [--plot scale.png]
              [--cap 20mbit]
For each size: a fresh sandbox; per command the median wall time, the controller's CPU
seconds (the command and every process it started) and the bytes the controller sent
(counted on its end of the sandbox link), for the first run and a repeated one. First
runs go in the table's order on a fresh sandbox: exec finds nothing on the nodes, doctor
sends the agent and leaves a resident agent on each node, sync and run find those (but
no project yet). The memory of each node's sshd and resident agent is measured at the end. pdsh -R ssh `true` is the baseline. With
--cap, the controller's link is capped (tc tbf) to show what a laptop's uplink costs a
repeated doctor. The sandbox is always removed, also on failure.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainfleet.fleet import load_fleet
from trainfleet.sandbox import cluster as sb
from trainfleet.sandbox import faults
from trainfleet.transport.ssh import openssh_options

TRAINFLEET = [sys.executable, "-m", "trainfleet"]
FAILURES: list[str] = []


def measure(argv: list[str], state: sb.SandboxState, env: dict[str, str] | None = None,
            cwd: str | None = None) -> tuple[float, float, int]:
    """(wall seconds, controller CPU seconds, bytes sent to the nodes) of one command."""
    link = Path(f"/sys/class/net/{state.host_interface}/statistics/tx_bytes")
    sent = int(link.read_text())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:  # reported, not fatal: the other commands and sizes still say something
        FAILURES.append(f"{state.name}: {' '.join(argv[3:5])} exited {done.returncode}: "
                        f"{(done.stdout + done.stderr).strip().splitlines()[-1:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, cpu, int(link.read_text()) - sent


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return total / 1024


def memory(state: sb.SandboxState) -> dict[str, float]:
    """Median MiB per node: the sshd listening (idle), and the resident agent (idle, between commands)."""
    sshd, resident = [], []
    for node in state.nodes:
        named: dict[str, list[int]] = {}
        for pid in sb.namespace_pids(node.namespace):
            try:
                named.setdefault(Path(f"/proc/{pid}/comm").read_text().strip(), []).append(pid)
            except OSError:
                pass
        sshd.append(rss_mib(named.get("sshd", [])))
        resident.append(rss_mib(named.get("tf-agent", [])))
    return {"sshd MiB": statistics.median(sshd), "resident agent MiB": statistics.median(resident)}


def one_size(nodes: int, repeat: int, cap: str | None) -> dict[str, dict[str, float]]:
    name = f"scale{nodes}"
    sb.down(name, missing_ok=True)
    started = time.perf_counter()
    state = sb.up(nodes, name=name, slots=1)
    built = time.perf_counter() - started
    project = Path(tempfile.mkdtemp(prefix="tf-scale-"))
    (project / "job.py").write_text("print('hello from the job')\n")
    try:
        fleet_file = state.fleet_file
        fleet = load_fleet(Path(fleet_file))
        options = openssh_options(fleet, fleet.head)
        ssh_args = [o for o in options if o not in ("-p", "22", "-l", fleet.head.user)]
        pdsh_env = {**os.environ, "PDSH_SSH_ARGS": " ".join(ssh_args + ["-l%u", "%h"])}
        hosts = ",".join(n.host for n in fleet.nodes)
        fanout = str(min(nodes, 64))
        commands = {
            "pdsh true": (["pdsh", "-R", "ssh", "-f", fanout, "-w", hosts, "true"], pdsh_env),
            "exec true": ([*TRAINFLEET, "exec", "-f", fleet_file, "--", "true"], None),
            "doctor": ([*TRAINFLEET, "doctor", "-f", fleet_file], None),
            "sync": ([*TRAINFLEET, "sync", "-f", fleet_file, str(project)], None),
            "run command": ([*TRAINFLEET, "run", "-f", fleet_file, "--no-sync", "--sync-dir", str(project),
                             "--launcher", "command", "true"], None),
        }
        results: dict[str, dict[str, float]] = {}
        for label, (argv, env) in commands.items():  # first: nothing on the nodes yet
            wall, cpu, sent = measure(argv, state, env, cwd=str(project))
            results[label] = {"first s": wall, "first KB/node": sent / nodes / 1024}
        samples: dict[str, list[tuple[float, float, int]]] = {label: [] for label in commands}
        for _ in range(repeat):  # interleaved: drift on the machine hits every command alike
            (project / "job.py").write_text(f"print('hello {time.time()}')\n")  # a change for sync to carry
            for label, (argv, env) in commands.items():
                samples[label].append(measure(argv, state, env, cwd=str(project)))
        for label, values in samples.items():
            results[label].update({"s": statistics.median(v[0] for v in values),
                                   "CPU s": statistics.median(v[1] for v in values),
                                   "KB/node": statistics.median(v[2] for v in values) / nodes / 1024})
        if cap:
            faults.inject(name, faults.CONTROLLER, faults.FaultKind.CAP, rate=cap)
            try:
                capped = [measure(commands["doctor"][0], state)[0] for _ in range(repeat)]
            finally:
                faults.clear(name, faults.CONTROLLER)
            results["doctor"][f"s, link {cap}"] = statistics.median(capped)
        results["sandbox up"] = {"s": built}
        results["memory"] = memory(state)
        return results
    finally:
        shutil.rmtree(project, ignore_errors=True)
        sb.down(name, missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,64,128")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cap", help="also time a repeated doctor with the controller's link capped (e.g. 20mbit)")
    parser.add_argument("--plot", type=Path, help="draw seconds against nodes per command (.png or .svg)")
    args = parser.parse_args()
    if shutil.which("pdsh") is None:
        raise SystemExit("pdsh is not installed (apt-get install pdsh)")
    sizes = [int(s) for s in args.sizes.split(",")]
    table: dict[int, dict[str, dict[str, float]]] = {}
    for nodes in sizes:
        table[nodes] = one_size(nodes, args.repeat, args.cap)
        print(f"{nodes} nodes done: {table[nodes]}", file=sys.stderr, flush=True)
    print(f"{os.cpu_count()} CPU(s) run the controller and every node; medians of {args.repeat} repeated runs; "
          "first = each command's first run on a fresh sandbox")
    print(f"{'nodes':>5} {'command':12} {'s':>7} {'vs pdsh':>8} {'CPU s':>7} {'KB/node':>8} {'first s':>8} "
          f"{'first KB/node':>13}")
    for nodes, results in table.items():
        base = results["pdsh true"]["s"]
        for label, row in results.items():
            if label == "sandbox up":
                print(f"{nodes:>5} {label:12} {row['s']:7.1f}")
                continue
            if label == "memory":
                print(f"{nodes:>5} memory per node: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
                continue
            print(f"{nodes:>5} {label:12} {row['s']:7.2f} {row['s'] / base:7.2f}x {row['CPU s']:7.2f} "
                  f"{row['KB/node']:8.1f} {row['first s']:8.2f} {row['first KB/node']:13.1f}"
                  + "".join(f"  ({k}: {v:.2f})" for k, v in row.items() if k.startswith("s, link")))
    for failure in FAILURES:
        print(f"FAILED {failure}")
    if args.plot:
        from trainfleet.cli.plots import _pyplot

        plt = _pyplot()
        figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
        for label in ("pdsh true", "exec true", "doctor", "sync", "run command"):
            axes.plot(sizes, [table[n][label]["s"] for n in sizes], marker="o", label=label)
        axes.set_xlabel("nodes")
        axes.set_ylabel("seconds (median, repeated run)")
        axes.set_title(f"trainfleet from one controller, {os.cpu_count()} CPUs for everything")
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
