"""Doctor wall time on 2, 4 and 8 sandbox nodes (target: under 5 s at 8).

Usage (root): python bench/doctor.py [--repeat 3]
The baseline in the same run is a plain `trainfleet exec -- true` on the same nodes:
the cost of one SSH round trip to every node, which doctor needs at least three of.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from trainfleet.sandbox import cluster as sb


def wall(argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> float:
    started = time.perf_counter()
    completed = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode not in ok_codes:
        raise SystemExit(f"{' '.join(argv[:4])} failed ({completed.returncode}): {completed.stdout[-2000:]}"
                         f"{completed.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="2,4,8")
    args = parser.parse_args()
    rows = []
    for count in (int(s) for s in args.sizes.split(",")):
        name = f"doc{count}"
        state = sb.up(count, name=name, slots=1)
        try:
            tf = [sys.executable, "-m", "trainfleet"]
            doctor = [wall([*tf, "doctor", "-f", state.fleet_file]) for _ in range(args.repeat)]
            fanout = [wall([*tf, "exec", "-f", state.fleet_file, "--", "true"]) for _ in range(args.repeat)]
        finally:
            sb.down(name, missing_ok=True)
        rows.append((count, statistics.median(doctor), min(doctor), statistics.median(fanout)))
    print(f"{'nodes':>5} {'doctor median s':>16} {'min s':>6} {'exec true s':>12} {'ratio':>6}")
    for count, median, best, fanout in rows:
        print(f"{count:>5} {median:>16.2f} {best:>6.2f} {fanout:>12.2f} {median / fanout:>6.2f}")
    at8 = [median for count, median, _, _ in rows if count == 8]
    if at8:
        print(f"target doctor < 5 s at 8 nodes: {'meets' if at8[0] < 5 else 'MISSES'} ({at8[0]:.2f} s)")


if __name__ == "__main__":
    main()
