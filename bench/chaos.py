"""A fault campaign: faults injected at random moments into attached and detached jobs on a
3-node sandbox, and what trainfleet made of each.

Usage (root): python bench/chaos.py [--rounds 4] [--seed 1] [--kinds all]
Every kind of fault, --rounds times each (40 faults by default), into a job of
tests/jobs/ranks.py (3 nodes x 2 ranks, gloo) that carries a secret and prints it; each a
few random seconds after the ranks started:
  rank-crash     a rank raises                  rank-kill   a rank is SIGKILLed
  node-kill      every process of node2 dies    cut         node2's links go down (--loss-timeout 5)
  blip           node2's links down for 5 s     hang        a rank blocks (--hang-timeout 6)
  full-disk      node1's workdir full at launch stdout      the client's reader closes (`| head`)
  client-kill    the attached client SIGKILLed  flood       junk and idle connections on node 0's mesh port
Per fault: seconds from the fault to a clean end (the last node's final state), or for a
blip to the job's own end; whether the cause `status` names is the right one (its kind,
and the node where it applies); the job's processes left on any node; fault-made mounts
left; files on any node holding the secret's value. Target: every cause right, nothing
left, no healthy job killed (blips and floods end `succeeded`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from trainfleet.sandbox import cluster as sb
from trainfleet.sandbox import faults

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "tests" / "jobs"
KINDS = ("rank-crash", "rank-kill", "node-kill", "cut", "blip", "hang", "full-disk", "stdout", "client-kill",
         "flood")
SECRET = "TF_CHAOS_TOKEN"


@dataclass
class Row:
    index: int
    kind: str
    mode: str
    seconds: float | None
    state: str
    cause: str
    right: bool
    left: int
    mounts: int
    leaks: int


def tf(*args: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainfleet", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def job_processes(state: sb.SandboxState) -> list[str]:
    return [f"{node.name}:{process}" for node in state.nodes for process in sb.job_processes(node)]


def wait_ranks(state: sb.SandboxState, count: int, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for p in job_processes(state) if p.endswith(" python") or " python3" in p) >= count:
            return True
        time.sleep(0.2)
    return False


def job_view(fleet: Path, job_id: str, env: dict[str, str]) -> dict[str, object] | None:
    shown = tf("status", "-f", str(fleet), job_id, "--json", timeout=60, env=env)
    try:
        return json.loads(shown.stdout)[0]  # type: ignore[no-any-return]
    except (ValueError, IndexError):
        return None


def wait_end(fleet: Path, job_id: str, env: dict[str, str], timeout: float = 180) -> dict[str, object] | None:
    deadline = time.monotonic() + timeout
    view = None
    while time.monotonic() < deadline:
        view = job_view(fleet, job_id, env)
        if view and view["state"] not in ("starting", "running"):
            return view
        time.sleep(0.3)
    return view


def ended_at(view: dict[str, object]) -> float:
    return max((n.get("ended") or 0.0) for n in view["nodes"].values())  # type: ignore[union-attr]


def leaks(state: sb.SandboxState, value: str) -> int:
    found = 0
    places = [Path(state.directory) / "nodes" / n.name / "tmp" for n in state.nodes] + [Path("/dev/shm")]
    for root in places:
        for path in root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and value.encode() in path.read_bytes():
                    found += 1
            except OSError:
                continue
    return found


def fault_mounts(state: sb.SandboxState) -> int:
    found = 0
    for node in state.nodes:
        if node.sshd_pid:
            table = subprocess.run(["nsenter", "-t", str(node.sshd_pid), "-m", "cat", "/proc/self/mountinfo"],
                                   capture_output=True, text=True).stdout
            found += table.count("trainfleet-fault")
    return found


def flood(address: str, port: int, seconds: float = 6.0) -> None:
    """Idle connections, junk and forged hellos at one port of a sandbox node, bounded."""
    held = []
    deadline = time.monotonic() + seconds
    try:
        for _ in range(200):
            held.append(socket.create_connection((address, port), timeout=3))
        index = 0
        while time.monotonic() < deadline and index < 60:
            sock = socket.create_connection((address, port), timeout=3)
            try:
                sock.sendall([b"\x00" * (1 << 20), b'["junk"]\n' * 10, b'{"hello": "node1", "token": "x"}\n'][index % 3])
            except OSError:
                pass
            sock.close()
            index += 1
    finally:
        for sock in held:
            sock.close()


def mesh_port(state: sb.SandboxState) -> int | None:
    node = state.nodes[0]
    listing = subprocess.run(["nsenter", "-t", str(node.sshd_pid), "-n", "ss", "-ltnpH"], capture_output=True,
                             text=True).stdout
    for line in listing.splitlines():
        found = re.search(rf"\s{re.escape(node.address)}:(\d+)\s.*pid=(\d+)", line)
        if found:
            cmdline = subprocess.run(["nsenter", "-t", str(node.sshd_pid), "-p", "-m", "cat",
                                      f"/proc/{found.group(2)}/cmdline"], capture_output=True).stdout
            if b"job_supervisor" in cmdline:
                return int(found.group(1))
    return None


def expected(kind: str, view: dict[str, object] | None) -> tuple[bool, str]:
    """(the cause is right, what was named)."""
    if view is None:
        return False, "no record"
    root = view.get("root_cause") or {}
    summary = str(root.get("summary", "") if isinstance(root, dict) else "") or str(view.get("reason", ""))
    state = view["state"]
    checks = {
        "rank-crash": state == "failed" and "rank 4 on node2" in summary and "RuntimeError" in summary,
        "rank-kill": state == "failed" and "rank 4 on node2" in summary and "SIGKILL" in summary,
        "node-kill": state == "failed" and summary.startswith("node2 was lost"),
        "cut": state == "failed" and summary.startswith("node2 was lost") and "heartbeat" in summary,
        "blip": state == "succeeded",
        "hang": state == "failed" and "hung" in summary,
        # A client is a view: its output closed or the client killed, the job trains on to its end.
        "stdout": state == "succeeded",
        "client-kill": state == "succeeded",
        "flood": state == "succeeded",
    }
    return checks[kind], (summary or state)[:70]


def trial(index: int, kind: str, detached: bool, state: sb.SandboxState, fleet: Path, project: Path,
          value: str, rng: random.Random) -> Row:
    env = {**os.environ, SECRET: value}
    job_id = f"chaos-{index}"
    run = ["run", "-f", str(fleet), "--no-sync", "--sync-dir", str(project), "--job-id", job_id,
           "--log-dir", f"/tmp/chaos-logs/{job_id}"]
    script = ["ranks.py", "--seconds", "25", "--tick", "--print-env", SECRET]  # the secret, printed (redacted)
    options: list[str] = []
    after = rng.uniform(1.0, 5.0)  # the ranks' own faults come at their moment, seconds after they began
    if kind == "rank-crash":
        script += ["--fail-rank", "4", "--after", f"{after:.1f}"]
    elif kind == "rank-kill":
        script += ["--kill-rank", "4", "--after", f"{after:.1f}"]
    elif kind == "hang":
        script += ["--block-rank", "3", "--after", f"{after:.1f}"]
        options = ["--hang-timeout", "6"]
    elif kind == "cut":
        options = ["--loss-timeout", "5"]
    mode = "detached" if detached else "attached"
    if kind == "full-disk":
        faults.inject(state.name, "node1", faults.FaultKind.FILL_DISK)
        started = time.monotonic()
        done = tf(*run, *script, env=env)
        seconds = time.monotonic() - started
        right = done.returncode != 0 and "node1" in done.stderr and "space" in done.stderr.lower() \
            and "Traceback" not in done.stderr
        faults.clear(state.name)
        named = (done.stderr.strip().splitlines() or ["(nothing)"])[-1][:70]
        time.sleep(1)
        return Row(index, kind, "refused", seconds, "refused" if done.returncode else "ran", named, right,
                   len(job_processes(state)), fault_mounts(state), leaks(state, value))
    client = None
    if kind == "stdout":
        mode = "attached"
        command = " ".join(shlex.quote(w) for w in [sys.executable, "-m", "trainfleet", *run, *script])
        client = subprocess.Popen(["bash", "-c", command + " | head -n 8"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env, stdin=subprocess.DEVNULL)
    elif detached and kind != "client-kill":
        started_job = tf(*run, "--detach", *options, *script, env=env)
        if started_job.returncode != 0:
            return Row(index, kind, mode, None, "not started", started_job.stderr.strip()[-70:], False,
                       len(job_processes(state)), fault_mounts(state), leaks(state, value))
    else:
        mode = "attached"
        client = subprocess.Popen([sys.executable, "-m", "trainfleet", *run, *options, *script],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                  stdin=subprocess.DEVNULL)
    if not wait_ranks(state, 6):
        return Row(index, kind, mode, None, "no ranks", "", False, len(job_processes(state)), 0, 0)
    injected = time.time()
    if kind in ("rank-crash", "rank-kill", "hang"):
        injected += after
    else:
        time.sleep(after)
        injected = time.time()
    if kind == "node-kill":
        faults.inject(state.name, "node2", faults.FaultKind.KILL)
    elif kind == "cut":
        faults.inject(state.name, "node2", faults.FaultKind.CUT)
    elif kind == "blip":
        faults.inject(state.name, "node2", faults.FaultKind.CUT)
        time.sleep(5)
        faults.clear(state.name, "node2")
    elif kind == "client-kill" and client is not None:
        client.send_signal(signal.SIGKILL)
    elif kind == "flood":
        port = mesh_port(state)
        if port:
            flood(state.nodes[0].address, port)
    view = wait_end(fleet, job_id, env)
    if client is not None:
        try:
            client.wait(60)
        except subprocess.TimeoutExpired:
            client.kill()
    faults.clear(state.name)
    if kind in ("node-kill", "cut"):  # the lost node's sshd is back; wait for its leftovers to be swept
        tf("stop", "-f", str(fleet), job_id, timeout=60, env=env)
    deadline = time.monotonic() + 20
    while job_processes(state) and time.monotonic() < deadline:
        time.sleep(0.5)
    right, named = expected(kind, view)
    seconds = (ended_at(view) - injected) if view and view["state"] not in ("starting", "running") else None
    return Row(index, kind, mode, seconds, str(view["state"]) if view else "?", named, right,
               len(job_processes(state)), fault_mounts(state), leaks(state, value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", default="all")
    parser.add_argument("--name", default="chaos")
    args = parser.parse_args()
    kinds = KINDS if args.kinds == "all" else tuple(args.kinds.split(","))
    rng = random.Random(args.seed)
    plan = [(kind, round_ % 2 == 1) for round_ in range(args.rounds) for kind in kinds]
    rng.shuffle(plan)
    value = f"chaos-{secrets.token_hex(12)}"
    state = sb.up(3, name=args.name, slots=2)
    rows = []
    work = Path("/tmp/chaos-work")
    try:
        project = work / "project"
        project.mkdir(parents=True, exist_ok=True)
        for source in JOBS.iterdir():
            if source.is_file():
                (project / source.name).write_bytes(source.read_bytes())
        data = yaml.safe_load(Path(state.fleet_file).read_text())
        data["secrets"] = [SECRET]
        fleet = work / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(data, sort_keys=False))
        subprocess.run([sys.executable, "-m", "trainfleet", "sync", "-f", str(fleet), str(project)], check=True,
                       capture_output=True)
        for index, (kind, detached) in enumerate(plan):
            row = trial(index, kind, detached, state, fleet, project, value, rng)
            rows.append(row)
            print(f"{row.index:3} {row.kind:11} {row.mode:8} {shown(row.seconds):>6} {row.state:9} "
                  f"{'right' if row.right else 'WRONG'}  left={row.left} mounts={row.mounts} leaks={row.leaks}  "
                  f"{row.cause}", flush=True)
    finally:
        sb.down(args.name, missing_ok=True)
    print(f"\nfault campaign: {len(rows)} faults on 3 sandbox nodes x 2 ranks (seed {args.seed})")
    print(f"{'kind':11} {'n':>3} {'right':>6} {'clean end s (median, max)':>27} {'left':>5} {'mounts':>7} {'leaks':>6}")
    for kind in kinds:
        mine = [r for r in rows if r.kind == kind]
        times = sorted(r.seconds for r in mine if r.seconds is not None)
        median = times[len(times) // 2] if times else None
        print(f"{kind:11} {len(mine):3} {sum(r.right for r in mine):6} "
              f"{shown(median):>17} {shown(times[-1] if times else None):>9} {sum(r.left for r in mine):5} "
              f"{sum(r.mounts for r in mine):7} {sum(r.leaks for r in mine):6}")
    healthy_killed = sum(1 for r in rows if r.kind in ("blip", "flood") and r.state != "succeeded")
    print(f"total: {sum(r.right for r in rows)}/{len(rows)} causes right; processes left {sum(r.left for r in rows)}; "
          f"mounts left {sum(r.mounts for r in rows)}; secret in node files {sum(r.leaks for r in rows)}; "
          f"healthy jobs killed {healthy_killed}")


def shown(seconds: float | None) -> str:
    return f"{seconds:.1f}" if seconds is not None else "-"


if __name__ == "__main__":
    main()
