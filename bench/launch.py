"""Launch overhead: `trainfleet run --no-sync` vs the same launcher started by hand.

Usage (root): python bench/launch.py [--nodes 2] [--repeat 7] [--launchers torchrun,deepspeed,accelerate]
The baseline is what a user types on rented machines: one `ssh NODE <launcher> ...` per
node, all at once, with the settings that work there (torchrun: is_host on node 0 only,
--local-addr, the c10d endpoint on node 0; DeepSpeed's per-node launcher with the
world info and node rank; accelerate with its machine rank and CPU mode), the node's
interface in GLOO_SOCKET_IFNAME. Both run the same tiny job (init, one all-reduce,
exit), interleaved so that drift on the machine hits both alike. Also counts the SSH
connections each node's sshd accepted during one `trainfleet run`.
Target (torchrun): overhead <= 0.5 s at 2 nodes, one connection per node.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainfleet.fleet import load_fleet
from trainfleet.ops.sync import project_for
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
    if " finished on every node" not in done.stderr:
        raise SystemExit(f"{argv[:4]} did not finish: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def hand_command(launcher: str, fleet, rank: int, job_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    node, head, count = fleet.nodes[rank], fleet.head, len(fleet.nodes)
    if launcher == "torchrun":
        return [fleet.python, "-m", "torch.distributed.run", f"--nnodes={count}", "--nproc-per-node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint={head.address}:29400", f"--rdzv-id={job_id}",
                f"--rdzv-conf=is_host={'true' if rank == 0 else 'false'}", f"--local-addr={node.address}",
                "bench_job.py"]
    if launcher == "deepspeed":
        world = base64.urlsafe_b64encode(json.dumps({n.name: [0] for n in fleet.nodes}).encode()).decode()
        return [fleet.python, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world}",
                f"--node_rank={rank}", f"--master_addr={head.address}", "--master_port=29400", "bench_job.py"]
    return ["env", "ACCELERATE_USE_CPU=1", fleet.python, "-m", "accelerate.commands.launch", "--multi_gpu",
            f"--num_machines={count}", f"--machine_rank={rank}", f"--main_process_ip={head.address}",
            "--main_process_port=29400", f"--num_processes={count}", "--rdzv_backend=static",
            "--mixed_precision=no", "--dynamo_backend=no", "--num_cpu_threads_per_process=1", "bench_job.py"]


def by_hand(fleet_file: Path, project: str, launcher: str, job_id: str) -> float:
    """One ssh per node, all at once, each starting the launcher as a user would by hand."""
    fleet = load_fleet(fleet_file)
    started = time.perf_counter()
    processes = []
    for rank, node in enumerate(fleet.nodes):
        command = hand_command(launcher, fleet, rank, job_id)
        remote = f"cd {fleet.workdir}/{project} && GLOO_SOCKET_IFNAME={node.interface} {shlex.join(command)}"
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
    parser.add_argument("--launchers", default="torchrun,deepspeed,accelerate")
    args = parser.parse_args()
    state = sb.up(args.nodes, name=args.name, slots=1)
    rows = []
    try:
        fleet_file = Path(state.fleet_file)
        with tempfile.TemporaryDirectory() as folder:
            project = Path(folder) / "benchproject"
            project.mkdir()
            (project / "bench_job.py").write_text(JOB)
            subprocess.run([sys.executable, "-m", "trainfleet", "sync", "-f", str(fleet_file), str(project)],
                           check=True, capture_output=True)
            remote = project_for(project).name
            for launcher in args.launchers.split(","):
                tf = [sys.executable, "-m", "trainfleet", "run", "-f", str(fleet_file), "--no-sync", "--sync-dir",
                      str(project), "--launcher", launcher, "--nproc-per-node", "1", "--log-dir", tempfile.mkdtemp(),
                      "bench_job.py"]
                timed(tf), by_hand(fleet_file, remote, launcher, "warm")  # warm caches (DeepSpeed's ops), unmeasured
                before = logins(state)
                timed(tf)
                per_node = {n: logins(state)[n] - before[n] for n in before}
                hand, ours = [], []
                for index in range(args.repeat):
                    hand.append(by_hand(fleet_file, remote, launcher, f"hand{index}"))
                    ours.append(timed(tf))
                rows.append((launcher, statistics.median(hand), statistics.median(ours), min(hand), min(ours),
                             per_node))
    finally:
        sb.down(args.name, missing_ok=True)
    print(f"launch of a 1-all-reduce job on {args.nodes} sandbox nodes x 1 process, {args.repeat} runs each "
          f"(medians; the baseline is the same launcher started by hand over parallel ssh)")
    print(f"{'launcher':11} {'by hand s':>10} {'trainfleet s':>13} {'overhead s':>11} {'connections/node':>17}")
    for launcher, hand_s, ours_s, _, _, per_node in rows:
        print(f"{launcher:11} {hand_s:10.3f} {ours_s:13.3f} {ours_s - hand_s:11.3f} {max(per_node.values()):>17}")
    for launcher, hand_s, ours_s, _, _, per_node in rows:
        if launcher == "torchrun":
            overhead = ours_s - hand_s
            one = all(count == 1 for count in per_node.values())
            print(f"target overhead <= 0.5 s: {'meets' if overhead <= 0.5 else 'MISSES'} ({overhead:.2f} s); "
                  f"one connection per node: {'meets' if one else 'MISSES'}")


if __name__ == "__main__":
    main()
