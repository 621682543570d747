"""Doctor wall time on clean 2, 8 and 32 sandbox nodes (target: under 5 s at 32, and no
false alarm: a clean sandbox must pass).

Usage (root): python bench/doctor.py [--repeat 3] [--sizes 2,8,32]
The baseline in the same run is a plain `trainfleet exec -- true` on the same nodes: the
cost of connecting to every node once, which doctor pays once too.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--sizes", default="2,8,32")
    args = parser.parse_args()
    rows = []
    for count in (int(s) for s in args.sizes.split(",")):
        name = f"doc{count}"
        state = sb.up(count, name=name, slots=1)
        try:
            tf = [sys.executable, "-m", "trainfleet"]
            doctor, alarms = [], []
            for _ in range(args.repeat):
                doctor.append(wall([*tf, "doctor", "-f", state.fleet_file, "--json"], ok_codes=(0, 1)))
                report = json.loads(subprocess.run([*tf, "doctor", "-f", state.fleet_file, "--json"],
                                                   capture_output=True, text=True).stdout)
                alarms += [f"{f['verdict']} {f['check']} {f['nodes']}: {f['summary']}" for f in report["findings"]
                           if f["verdict"] in ("FAIL", "warn") and f["check"] != "gpus"]
            fanout = [wall([*tf, "exec", "-f", state.fleet_file, "--", "true"]) for _ in range(args.repeat)]
        finally:
            sb.down(name, missing_ok=True)
        rows.append((count, statistics.median(doctor), min(doctor), statistics.median(fanout), alarms))
    print("doctor on clean sandboxes (no GPU: the `gpus` warning is expected and not counted)")
    print(f"{'nodes':>5} {'doctor median s':>16} {'min s':>6} {'exec true s':>12} {'ratio':>6} {'false alarms':>13}")
    for count, median, best, fanout, alarms in rows:
        print(f"{count:>5} {median:>16.2f} {best:>6.2f} {fanout:>12.2f} {median / fanout:>6.2f} {len(alarms):>13}")
        for alarm in alarms:
            print(f"      {alarm}")
    largest = rows[-1]
    verdict = "meets" if largest[1] < 5 and not largest[4] else "MISSES"
    print(f"target doctor < 5 s at {largest[0]} nodes with no false alarm: {verdict} "
          f"({largest[1]:.2f} s, {len(largest[4])} false alarm(s))")


if __name__ == "__main__":
    main()
