"""`trainfleet push` through a capped sender link vs copying to each node in turn.

Usage (root): python bench/push.py [--size-mib 128] [--rate 100mbit] [--nodes 3,8]
The controller's link to the sandbox nodes is capped at RATE (tbf on both ends of its
veth), as a laptop's or a login host's uplink would be; the nodes' own links are not.
Both sides copy the same random file into each node's private /tmp, and every copy is
checked by sha256 from outside the nodes:
  trainfleet  `trainfleet push FILE /tmp/pushbench/data.bin` (a chain through the nodes);
  in turn     `rsync FILE NODE:/tmp/seqbench/data.bin` over ssh, one node after another.
Ratios are against size/RATE, the time the capped link needs to carry the file once.
The push time is the median of --repeat pushes into empty directories, each a whole
`trainfleet push` command (Python start, connections and checksums included).
Target: trainfleet within 1.3x of size/RATE at 3 and at 8 nodes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from trainfleet.agent.project import file_digest
from trainfleet.fleet import load_fleet
from trainfleet.sandbox import cluster as sb
from trainfleet.sandbox import faults
from trainfleet.transport.ssh import openssh_options


def subset(state: sb.SandboxState, count: int, folder: Path) -> Path:
    data = yaml.safe_load(Path(state.fleet_file).read_text())
    data["nodes"] = data["nodes"][:count]
    path = folder / f"fleet{count}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def node_copy(state: sb.SandboxState, node: str, relative: str) -> Path:
    return Path(state.directory) / "nodes" / node / "tmp" / relative


def clean(state: sb.SandboxState) -> None:
    for node in state.nodes:
        for folder in ("pushbench", "seqbench"):
            shutil.rmtree(node_copy(state, node.name, folder), ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--nodes", default="3,8")
    parser.add_argument("--name", default="pushb")
    parser.add_argument("--repeat", type=int, default=3, help="pushes per size (the median is shown)")
    args = parser.parse_args()
    counts = [int(c) for c in args.nodes.split(",")]
    rate_bits = float(args.rate[:-4]) * {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[args.rate[-4:]]
    size = args.size_mib << 20
    once = size * 8 / rate_bits
    state = sb.up(max(counts), name=args.name, slots=1)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "data.bin"
            with source.open("wb") as handle:
                for _ in range(args.size_mib):
                    handle.write(os.urandom(1 << 20))
            digest = file_digest(str(source))
            faults.inject(state.name, faults.CONTROLLER, faults.FaultKind.CAP, rate=args.rate)
            for count in counts:
                fleet_file = subset(state, count, Path(folder))
                fleet = load_fleet(fleet_file)
                times = []
                for _ in range(args.repeat):
                    clean(state)
                    started = time.perf_counter()
                    done = subprocess.run([sys.executable, "-m", "trainfleet", "push", "-f", str(fleet_file),
                                           str(source), "/tmp/pushbench/data.bin"], capture_output=True, text=True)
                    times.append(time.perf_counter() - started)
                    if done.returncode != 0:
                        raise SystemExit(f"push failed: {done.stderr[-2000:]}")
                pushed = statistics.median(times)
                started = time.perf_counter()
                for node in fleet.nodes:
                    subprocess.run(["ssh", *openssh_options(fleet, node), node.host, "mkdir -p /tmp/seqbench"],
                                   check=True)
                    subprocess.run(["rsync", "-e", "ssh " + " ".join(openssh_options(fleet, node)), str(source),
                                    f"{node.host}:/tmp/seqbench/data.bin"], check=True)
                in_turn = time.perf_counter() - started
                equal = all(file_digest(str(node_copy(state, n.name, f"{d}/data.bin"))) == digest
                            for n in fleet.nodes for d in ("pushbench", "seqbench"))
                rows.append((count, pushed, in_turn, equal))
            clean(state)
    finally:
        sb.down(args.name, missing_ok=True)
    print(f"{args.size_mib} MiB through the controller's link capped at {args.rate} "
          f"(size/rate = {once:.1f} s); seconds, and ratio to size/rate")
    print(f"{'nodes':>5} {'trainfleet push':>16} {'ratio':>6} {'rsync in turn':>14} {'ratio':>6} {'sha256 equal':>13}")
    for count, pushed, in_turn, equal in rows:
        print(f"{count:>5} {pushed:>16.1f} {pushed / once:>6.2f} {in_turn:>14.1f} {in_turn / once:>6.2f} "
              f"{'yes' if equal else 'NO':>13}")
    worst = max(pushed / once for _, pushed, _, _ in rows)
    print(f"target: push within 1.3x of size/rate: {'meets' if worst <= 1.3 else 'MISSES'} (worst {worst:.2f}x)")


if __name__ == "__main__":
    main()
