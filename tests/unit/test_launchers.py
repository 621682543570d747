"""Every launcher's per-node commands, golden; the exports for Slurm and Kubernetes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from test_plan import check_golden
from trainfleet.containers import containerize
from trainfleet.errors import UsageError
from trainfleet.export.kubernetes import render_pytorchjob
from trainfleet.export.slurm import render_sbatch
from trainfleet.fleet.schema import fleet_from_data
from trainfleet.job.spec import JobSpec
from trainfleet.launchers import LaunchFacts, get_launcher
from trainfleet.launchers.deepspeed import world_info

FLEET = {
    "workdir": "~/job",
    "python": "/opt/venv/bin/python",
    "env": {"NCCL_DEBUG": "WARN"},
    "secrets": ["WANDB_API_KEY"],
    "nodes": [
        {"name": "gpu0", "host": "203.0.113.10", "address": "10.0.0.10", "interface": "ens5", "slots": 2},
        {"name": "gpu1", "host": "203.0.113.11", "address": "10.0.0.11", "interface": "enp6s0", "slots": 2},
    ],
}
FACTS = LaunchFacts(rdzv_port=29555, gpus={"gpu0": 0, "gpu1": 0}, homes={"gpu0": "/home/u", "gpu1": "/home/u"})


def plan(launcher: str, entry: str = "train.py", args: tuple[str, ...] = ("--deepspeed", "ds.json"),
         fleet: dict | None = None, **job: object) -> str:  # type: ignore[type-arg]
    spec = fleet_from_data(fleet or FLEET, "fleet.yaml")
    return get_launcher(launcher).plan(spec, JobSpec(entrypoint=entry, args=args, job_id="tf-golden",
                                                     launcher=launcher, **job), FACTS, "~/job/proj").render()


@pytest.mark.parametrize("launcher", ["deepspeed", "accelerate", "command", "head"])
def test_launcher_plans_golden(launcher: str) -> None:
    entry = "deepspeed --hostfile $TRAINFLEET_HOSTFILE train.py" if launcher == "head" else "train.py"
    args = () if launcher == "head" else ("--deepspeed", "ds.json")
    check_golden(f"plan_{launcher}.txt", plan(launcher, entry, args))


def test_deepspeed_gives_every_node_the_world_and_its_rank() -> None:
    text = plan("deepspeed")
    assert text.count("--world_info=eyJncHUwIjogWzAsIDFdLCAiZ3B1MSI6IFswLCAxXX0=") == 2  # {"gpu0": [0, 1], "gpu1": [0, 1]}
    assert "--node_rank=0 --master_addr=10.0.0.10 --master_port=29555" in text and "--node_rank=1 " in text


def test_deepspeed_include_and_exclude_select_slots_as_deepspeed_does() -> None:
    fleet = fleet_from_data(FLEET, "fleet.yaml")
    job = JobSpec(entrypoint="x.py", job_id="j")
    assert world_info(fleet, JobSpec(**{**job.__dict__, "include": "gpu0:1@gpu1"})) == {"gpu0": [1], "gpu1": [0, 1]}
    assert world_info(fleet, JobSpec(**{**job.__dict__, "exclude": "gpu1"})) == {"gpu0": [0, 1]}
    assert world_info(fleet, JobSpec(**{**job.__dict__, "exclude": "gpu0:0"})) == {"gpu0": [1], "gpu1": [0, 1]}
    for bad, words in [({"include": "gpu7"}, "no node named 'gpu7'"), ({"include": "gpu0:5"}, "gpu0 has no slot 5"),
                       ({"include": "gpu0", "exclude": "gpu1"}, "cannot be used together"),
                       ({"exclude": "gpu0@gpu1"}, "leave no slot")]:
        with pytest.raises(UsageError, match=words):
            world_info(fleet, JobSpec(**{**job.__dict__, **bad}))
    one = plan("deepspeed", include="gpu1:0")
    assert "gpu0" not in one.split("\n", 1)[1] and "1 process(es)" in one and "--node_rank=0" in one


def test_accelerate_counts_processes_across_machines_and_uses_the_cpu_without_gpus() -> None:
    text = plan("accelerate")
    assert "--num_machines=2" in text and "--num_processes=4" in text and "--machine_rank=1" in text
    assert text.count("ACCELERATE_USE_CPU=1") == 2 and "on the CPU (no GPU on the nodes)" in text
    uneven = {**FLEET, "nodes": [FLEET["nodes"][0], {**FLEET["nodes"][1], "slots": 4}]}
    with pytest.raises(UsageError, match="same number of processes on every node"):
        plan("accelerate", fleet=uneven)


def test_command_and_head_get_the_rendezvous_in_their_environment() -> None:
    command = plan("command", "sh -c 'echo $NODE_RANK'", ())
    assert "NODE_RANK=1" in command and "MASTER_ADDR=10.0.0.10 MASTER_PORT=29555" in command
    head = plan("head", "python deepy.py train.py", (), hostfile_path="/job/hostfile")
    assert head.count("[gpu0] node_rank=0") == 1 and "[gpu1] node_rank" not in head  # node 0 alone runs it
    assert "TRAINFLEET_HOSTFILE=/job/hostfile" in head and "[gpu1] prepared:" in head and "writes /job/hostfile" in head


def test_a_container_wraps_each_nodes_command_and_passes_variables_by_name() -> None:
    spec = fleet_from_data({**FLEET, "container": {"image": "nvcr.io/nvidia/pytorch:24.05-py3",
                                                   "options": ["--shm-size=16g"]}}, "fleet.yaml")
    job = JobSpec(entrypoint="train.py", job_id="tf-golden")
    planned = get_launcher("torchrun").plan(spec, job, FACTS, "~/job/proj")
    wrapped = containerize(planned, spec, FACTS.homes, {"gpu0": 8, "gpu1": 0}, spec.secrets)
    check_golden("plan_torchrun_docker.txt", wrapped.render())
    head = wrapped.nodes[0].argv
    assert head[:7] == ("docker", "run", "--rm", "--name=tf-tf-golden-gpu0", "--network=host", "--ipc=host",
                        "--gpus=all")
    assert "--gpus=all" not in wrapped.nodes[1].argv  # gpu1 has none
    assert ("-e", "WANDB_API_KEY") in zip(head, head[1:]) and not any("WANDB_API_KEY=" in w for w in head)
    assert ("-v", "/home/u/job/proj:/home/u/job/proj") in zip(head, head[1:])
    assert wrapped.nodes[0].after == (("docker", "rm", "-f", "tf-tf-golden-gpu0"),)
    with pytest.raises(UsageError, match="outside any container"):
        containerize(get_launcher("head").plan(spec, JobSpec(entrypoint="x", job_id="j", launcher="head"), FACTS,
                                               "~/job"), spec, FACTS.homes, {}, ())


def test_sbatch_golden_and_valid_bash(tmp_path: Path) -> None:
    fleet = fleet_from_data(FLEET, "fleet.yaml")
    for launcher in ("torchrun", "deepspeed", "accelerate"):
        text = render_sbatch(fleet, JobSpec(entrypoint="train.py", args=("--lr", "3e-4"), job_id="tf-golden",
                                            launcher=launcher))
        script = tmp_path / f"{launcher}.sbatch"
        script.write_text(text)
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        assert "#SBATCH --nodes=2" in text and 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST"' in text
        assert "WANDB_API_KEY" in text and "WANDB_API_KEY=" not in text.replace('"${WANDB_API_KEY:?', "")
        if launcher == "torchrun":
            check_golden("export_torchrun.sbatch", text)


def test_pytorchjob_parses_with_master_and_workers() -> None:
    fleet = fleet_from_data({**FLEET, "nodes": FLEET["nodes"] + [{"name": "gpu2", "host": "203.0.113.12", "slots": 2}]},
                            "fleet.yaml")
    manifest = render_pytorchjob(fleet, JobSpec(entrypoint="train.py", args=("--steps", "10"), job_id="tf-golden"),
                                 "nvcr.io/nvidia/pytorch:24.05-py3")
    parsed = yaml.safe_load(yaml.safe_dump(manifest))
    replicas = parsed["spec"]["pytorchReplicaSpecs"]
    assert parsed["kind"] == "PyTorchJob" and parsed["apiVersion"] == "kubeflow.org/v1"
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["torchrun", "--nproc-per-node=2", "--max-restarts=0", "train.py", "--steps", "10"]
    assert {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "tf-golden-secrets",
                                                                     "key": "WANDB_API_KEY"}}} in container["env"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    with pytest.raises(UsageError, match="needs an image"):
        render_pytorchjob(fleet, JobSpec(entrypoint="train.py", job_id="j"), "")
