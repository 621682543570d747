"""The controller's link lost during an attached job: what the job and the client go through.

Usage (root): python bench/link.py [--seconds 130] [--outage 90] [--at 12] [--node node1]
Three sandbox nodes x 1 process run tests/jobs/ranks.py (rank 0 prints `tick N` once a
second for --seconds), attached (`trainfleet run`, default keepalives: 15 s x 4). The
baseline is the same job in the same process with no outage. Then --at seconds in, the
controller's SSH to --node is dropped (both ways, the training network untouched) for
--outage seconds. Reported: each run's wall time and exit status, the ticks received
(each must come once, in order), how long after the cut the client said it had lost
contact, and how long after the link came back it was back in contact.
Targets: the job finishes with exit 0, every tick once, and the outage costs no training
time (wall time within a few seconds of the baseline's).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from trainfleet.sandbox import cluster as sb
from trainfleet.sandbox import faults

REPO = Path(__file__).resolve().parents[1]


def run(fleet: str, project: Path, seconds: float) -> tuple[subprocess.Popen[str], float]:
    client = subprocess.Popen([sys.executable, "-m", "trainfleet", "run", "-f", fleet, "--sync-dir", str(project),
                               "ranks.py", "--tick", "--seconds", str(seconds)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    return client, time.monotonic()


def outcome(client: subprocess.Popen[str], began: float, seconds: float) -> dict[str, object]:
    out, err = client.communicate(timeout=seconds + 900)
    ticks = [int(n) for n in re.findall(r"^\[node0:0\] tick (\d+)$", out, re.MULTILINE)]
    return {"wall": time.monotonic() - began, "code": client.returncode, "ticks": ticks, "stderr": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=130.0)
    parser.add_argument("--outage", type=float, default=90.0)
    parser.add_argument("--at", type=float, default=12.0)
    parser.add_argument("--node", default="node1")
    parser.add_argument("--name", default="link")
    args = parser.parse_args()
    state = sb.up(3, name=args.name, slots=1)
    project = Path(tempfile.mkdtemp(prefix="bench-link-"))
    shutil.copytree(REPO / "tests" / "jobs", project, dirs_exist_ok=True)
    try:
        client, began = run(state.fleet_file, project, args.seconds)
        baseline = outcome(client, began, args.seconds)
        client, began = run(state.fleet_file, project, args.seconds)
        moments: dict[str, float] = {}

        def cut() -> None:
            time.sleep(args.at)
            faults.inject(state.name, args.node, faults.FaultKind.CONTROLLER_LINK, mode="drop")
            moments["cut"] = time.time()
            time.sleep(args.outage)
            faults.clear(state.name, args.node)
            moments["back"] = time.time()

        cutter = threading.Thread(target=cut)
        cutter.start()
        lost = outcome(client, began, args.seconds)
        cutter.join()
    finally:
        sb.down(args.name, missing_ok=True)
        shutil.rmtree(project, ignore_errors=True)

    def said(pattern: str) -> float | None:
        found = re.search(pattern + r" at (\d\d):(\d\d):(\d\d)", str(lost["stderr"]))
        if not found:
            return None
        clock = time.localtime(moments["cut"])
        then = time.mktime(clock[:3] + tuple(int(g) for g in found.groups()) + clock[6:])  # type: ignore[arg-type]
        return then

    expected = list(range(1, int(args.seconds) + 1))
    noticed, returned = said(r"lost contact with \w+ \(SSH\)"), said(r"back in contact with \w+")
    print(f"attached job on 3 sandbox nodes, {args.seconds:.0f} one-second ticks; {args.node}'s SSH to the "
          f"controller dropped {args.at:.0f} s in, for {args.outage:.0f} s")
    print(f"{'run':22} {'wall s':>8} {'exit':>5} {'ticks':>6} {'each once, in order':>20}")
    for label, result in (("baseline (no outage)", baseline), ("link lost", lost)):
        ticks = result["ticks"]
        print(f"{label:22} {result['wall']:8.1f} {result['code']:5} {len(ticks):6} "  # type: ignore[arg-type]
              f"{str(ticks == expected):>20}")
    print(f"wall time with the outage / without: {lost['wall'] / baseline['wall']:.2f}x")  # type: ignore[operator]
    if noticed is not None:
        print(f"client said it lost contact {noticed - moments['cut']:.0f} s after the cut (keepalives: 15 s x 4)")
    if returned is not None:
        print(f"back in contact {max(0.0, returned - int(moments['back'])):.0f} s after the link came back "
              f"(to the second)")


if __name__ == "__main__":
    main()
