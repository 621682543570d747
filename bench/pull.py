"""`trainfleet pull` against rsync over ssh by hand, from the same node, same file.

Usage (root): python bench/pull.py [--size-mib 256] [--rate 200mbit] [--repeat 3]
One sandbox node holds a random file in its project directory (its private /tmp); the
controller's link to it is capped at RATE, as a laptop's downlink would be. Timed, as
whole commands (Python start, connections, checks included):
  trainfleet  `trainfleet pull ckpt/model.bin --to DIR`
  by hand     `rsync -a --partial -e "ssh OPTIONS" NODE:PATH DIR/` (the same pinned host keys)
first into an empty folder, then again with the file unchanged (nothing to carry), then
after a pull interrupted halfway with Ctrl-C (resumed: rsync's --partial keeps what arrived). Ratios are
trainfleet / by hand; every copy is checked by sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainfleet.fleet import load_fleet
from trainfleet.ops.sync import project_for
from trainfleet.sandbox import cluster as sb
from trainfleet.sandbox import faults
from trainfleet.transport.ssh import openssh_options


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {done.stderr.strip()}")
    return time.monotonic() - started


def cut_off(argv: list[str], after: float) -> None:
    """Start a copy and interrupt it partway, as Ctrl-C does (SIGINT to its process group)."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    time.sleep(after)
    os.killpg(process.pid, signal.SIGINT)
    process.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rate", default="200mbit")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tf-bench-pull-"))
    project = work / "project"
    project.mkdir()
    (project / "train.py").write_text("print('hi')\n")
    state = sb.up(1, name="bpull", out=work / "fleet.yaml", slots=1)
    try:
        fleet = load_fleet(Path(state.fleet_file))
        node = fleet.nodes[0]
        subprocess.run([sys.executable, "-m", "trainfleet", "sync", "-f", state.fleet_file, str(project)], check=True,
                       capture_output=True)
        remote_dir = Path(state.directory) / "nodes" / node.name / "tmp" / "trainfleet" / project_for(project).name
        (remote_dir / "ckpt").mkdir()
        source = remote_dir / "ckpt" / "model.bin"
        with open(source, "wb") as handle:
            handle.write(os.urandom(options.size_mib << 20))
        wanted = digest(source)
        faults.inject(state.name, faults.CONTROLLER, faults.FaultKind.CAP, rate=options.rate)
        ssh = "ssh " + " ".join(shlex.quote(o) for o in openssh_options(fleet, node))
        remote = f"{node.host}:/tmp/trainfleet/{project_for(project).name}/ckpt/model.bin"

        def ours(to: Path) -> list[str]:
            return [sys.executable, "-m", "trainfleet", "pull", "-f", state.fleet_file, "--sync-dir", str(project),
                    "--to", str(to), "ckpt/model.bin"]

        def theirs(to: Path) -> list[str]:
            to.mkdir(parents=True, exist_ok=True)
            return ["rsync", "-a", "--partial", "-e", ssh, remote, f"{to}/"]

        rows = {}
        for label, make, landed in (("trainfleet", ours, lambda to: to / "ckpt" / "model.bin"),
                                    ("by hand", theirs, lambda to: to / "model.bin")):
            first, again, resumed = [], [], []
            for round_ in range(options.repeat):
                to = work / f"{label.replace(' ', '')}-{round_}"
                first.append(timed(make(to)))
                assert digest(landed(to)) == wanted, label
                again.append(timed(make(to)))
                shutil.rmtree(to)
                cut_off(make(to), first[-1] / 2)
                resumed.append(timed(make(to)))
                assert digest(landed(to)) == wanted, label
                shutil.rmtree(to)
            rows[label] = [statistics.median(first), statistics.median(again), statistics.median(resumed)]
        print(f"pull of {options.size_mib} MiB from 1 node over a {options.rate} link; medians of {options.repeat}, "
              f"seconds (trainfleet / by hand)")
        for index, what in enumerate(("first", "unchanged", "resumed after a cut at half")):
            ours_s, theirs_s = rows["trainfleet"][index], rows["by hand"][index]
            print(f"  {what:28} {ours_s:6.2f} {theirs_s:6.2f}  ratio {ours_s / theirs_s:.2f}")
    finally:
        sb.down("bpull", missing_ok=True)


if __name__ == "__main__":
    main()
