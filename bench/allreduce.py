"""All-reduce efficiency against the link: `trainfleet bench net` busbw / iperf3 rate.

Usage (root): python bench/allreduce.py [--nodes 2] [--rate 1gbit]
Every sandbox link is capped at --rate with `sandbox fault cap`; iperf3 measures what one
link really carries in the same run, then busbw of all-reduce at 64 MiB and above is
divided by it. Target: >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from trainfleet.sandbox import cluster as sb
from trainfleet.sandbox.faults import FaultKind, inject


def iperf3_bps(server: sb.SandboxNode, client: sb.SandboxNode, seconds: int) -> float:
    daemon = subprocess.Popen(["ip", "netns", "exec", server.namespace, "iperf3", "-s", "-1", "-B", server.address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            probe = subprocess.run(["ip", "netns", "exec", client.namespace, "iperf3", "-c", server.address,
                                    "-t", str(seconds), "-J"], capture_output=True, text=True)
            try:
                return float(json.loads(probe.stdout)["end"]["sum_received"]["bits_per_second"])
            except (ValueError, KeyError):
                time.sleep(0.1)  # the server was not listening yet
        raise SystemExit(f"iperf3 failed: {probe.stderr or probe.stdout}")
    finally:
        daemon.kill()
        daemon.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rate", default="1gbit")
    parser.add_argument("--name", default="arbench")
    parser.add_argument("--max-size", default="256M")
    args = parser.parse_args()
    if shutil.which("iperf3") is None:
        raise SystemExit("iperf3 is not installed (apt-get install iperf3)")
    state = sb.up(args.nodes, name=args.name, slots=1)
    try:
        for node in state.nodes:
            inject(args.name, node.name, FaultKind.CAP, rate=args.rate)
        link = iperf3_bps(state.nodes[1], state.nodes[0], seconds=4)
        completed = subprocess.run(
            [sys.executable, "-m", "trainfleet", "bench", "net", "-f", state.fleet_file, "--min-size", "64M",
             "--max-size", args.max_size, "--p2p-size", "0", "--min-iters", "2", "--seconds-per-size", "0",
             "--json"], capture_output=True, text=True, cwd=Path(state.directory))
        if completed.returncode != 0:
            raise SystemExit(f"bench net failed:\n{completed.stderr[-3000:]}")
        result = json.loads(completed.stdout)
    finally:
        sb.down(args.name, missing_ok=True)

    print(f"all-reduce over {args.nodes} sandbox nodes x 1 rank, backend {result['backend']}, every link capped "
          f"at {args.rate}; iperf3 on one link in the same run: {link / 1e9:.3f} Gbit/s")
    print(f"{'size':>9} {'busbw Gbit/s':>13} {'link Gbit/s':>12} {'busbw/link':>11}")
    ratios = []
    for row in result["allreduce"]:
        ratio = row["busbw"] * 8 / link
        ratios.append(ratio)
        print(f"{row['bytes'] / 2**20:>6.0f}MiB {row['busbw'] * 8 / 1e9:>13.3f} {link / 1e9:>12.3f} {ratio:>11.2f}")
    verdict = "meets" if min(ratios) >= 0.8 else "MISSES"
    print(f"target busbw/link >= 0.8 at 64 MiB and above: {verdict} (lowest {min(ratios):.2f})")


if __name__ == "__main__":
    main()
