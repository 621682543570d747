"""Every launcher's per-node commands, golden; the exports for Slurm and Kubernetes."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from helpers import check_golden
from trainfleet.plans.containers import containerize
from trainfleet.errors import UsageError
from trainfleet.export.kubernetes import render_pytorchjob
from trainfleet.export.slurm import NODE_PRELUDE as SLURM_PRELUDE
from trainfleet.export.slurm import node_script, render_sbatch
from trainfleet.fleet.schema import fleet_from_data
from trainfleet.job.spec import JobSpec
from trainfleet.job.placement import LaunchFacts
from trainfleet.launchers import launcher_names, plan_job
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
    return plan_job(spec, JobSpec(entrypoint=entry, args=args, job_id="tf-golden", launcher=launcher,
                                  options=job), FACTS, "~/job/proj").render()


@pytest.mark.parametrize("launcher", ["deepspeed", "accelerate", "command", "head", "mpirun"])
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
    assert world_info(fleet, replace(job, options={"include": "gpu0:1@gpu1"})) == {"gpu0": [1], "gpu1": [0, 1]}
    assert world_info(fleet, replace(job, options={"exclude": "gpu1"})) == {"gpu0": [0, 1]}
    assert world_info(fleet, replace(job, options={"exclude": "gpu0:0"})) == {"gpu0": [1], "gpu1": [0, 1]}
    for bad, words in [({"include": "gpu7"}, "no node named 'gpu7'"), ({"include": "gpu0:5"}, "gpu0 has no slot 5"),
                       ({"include": "gpu0", "exclude": "gpu1"}, "cannot be used together"),
                       ({"exclude": "gpu0@gpu1"}, "leave no slot")]:
        with pytest.raises(UsageError, match=words):
            world_info(fleet, replace(job, options=bad))
    one = plan("deepspeed", include="gpu1:0")
    assert "gpu0" not in one.split("\n", 1)[1] and "1 process(es)" in one and "--node_rank=0" in one
    assert "--master_addr=10.0.0.11" in one and "master at 10.0.0.11:29555" in one  # rank 0 is on gpu1 now


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
    head = plan("head", "python deepy.py train.py", (), **{"hostfile-path": "/job/hostfile"})
    assert head.count("[gpu0] node_rank=0") == 1 and "[gpu1] node_rank" not in head  # node 0 alone runs it
    assert "TRAINFLEET_HOSTFILE=/job/hostfile" in head and "[gpu1] prepared:" in head and "writes /job/hostfile" in head


def test_mpirun_starts_every_rank_from_node_0_with_torchs_variables_from_open_mpis() -> None:
    planned = plan_job(fleet_from_data(FLEET, "fleet.yaml"), JobSpec(entrypoint="train.py", args=("--lr", "1"),
                                                                     job_id="j", launcher="mpirun"), FACTS, "~/job/p")
    (launch,) = planned.nodes
    argv = list(launch.argv)
    assert argv[:7] == ["mpirun", "--hostfile", "~/job/.trainfleet/jobs/j/hostfile", "-np", "4", "-npernode", "2"]
    exported = {argv[i + 1] for i, word in enumerate(argv) if word == "-x"}
    assert {"MASTER_ADDR", "MASTER_PORT", "TRAINFLEET_JOB_ID", "TRAINFLEET_JOB_DIR", "PYTHONPATH"} <= exported
    assert not exported & {"GLOO_SOCKET_IFNAME", "TRAINFLEET_NODE", "NODE_RANK", "WANDB_API_KEY"}  # per node, or secret
    script = argv[argv.index("sh") + 2]
    assert "RANK=$OMPI_COMM_WORLD_RANK" in script and "LOCAL_RANK=$OMPI_COMM_WORLD_LOCAL_RANK" in script
    assert argv[argv.index("sh") + 3:] == ["/opt/venv/bin/python", "train.py", "--lr", "1"]
    assert planned.rank_nodes == ("gpu0", "gpu0", "gpu1", "gpu1") and planned.needs_node_ssh
    assert [p.write for p in planned.prepare] == [(("~/job/.trainfleet/jobs/j/hostfile",
                                                    "gpu0 slots=2\ngpu1 slots=2\n"),)] * 2
    with pytest.raises(UsageError, match="cannot be exported to Slurm"):
        render_sbatch(fleet_from_data(FLEET, "fleet.yaml"), JobSpec(entrypoint="x.py", job_id="j", launcher="mpirun"))


def test_a_container_wraps_each_nodes_command_and_passes_variables_by_name() -> None:
    spec = fleet_from_data({**FLEET, "container": {"image": "nvcr.io/nvidia/pytorch:24.05-py3",
                                                   "options": ["--shm-size=16g"]}}, "fleet.yaml")
    job = JobSpec(entrypoint="train.py", job_id="tf-golden")
    planned = plan_job(spec, job, FACTS, "~/job/proj")
    wrapped = containerize(planned, spec, FACTS.homes, {"gpu0": 8, "gpu1": 0})
    check_golden("plan_torchrun_docker.txt", wrapped.render())
    head = wrapped.nodes[0].argv
    assert head[:8] == ("docker", "run", "--rm", "--name=tf-tf-golden-gpu0", "--network=host", "--ipc=host",
                        "--log-driver=none", "--gpus=all")
    assert "--gpus=all" not in wrapped.nodes[1].argv  # gpu1 has none
    # A secret goes neither by value nor by name (the engine would keep its value on its disk):
    # the node's in-memory file is mounted, and the container's Python puts it in the environment.
    assert ("-e", "WANDB_API_KEY") not in zip(head, head[1:]) and not any("WANDB_API_KEY" in w for w in head)
    shm = "/dev/shm/trainfleet-tf-golden-gpu0-secrets"
    assert ("-v", f"{shm}:{shm}:ro") in zip(head, head[1:]) and wrapped.nodes[0].secrets_file
    inner = head[head.index("nvcr.io/nvidia/pytorch:24.05-py3") + 1:]
    assert inner[:2] == ("python", "-c") and inner[3:5] == (shm, "python")
    assert ("-e", "TRAINFLEET_NODE") in zip(head, head[1:])
    assert ("-v", "/home/u/job/proj:/home/u/job/proj") in zip(head, head[1:])
    assert wrapped.nodes[0].after == (("docker", "rm", "-f", "tf-tf-golden-gpu0"),)
    with pytest.raises(UsageError, match="outside any container"):
        containerize(plan_job(spec, JobSpec(entrypoint="x", job_id="j", launcher="head"), FACTS, "~/job"), spec,
                     FACTS.homes, {})


def test_sbatch_golden_and_valid_bash(tmp_path: Path) -> None:
    fleet = fleet_from_data(FLEET, "fleet.yaml")
    for launcher in EXPORTABLE:
        text = render_sbatch(fleet, JobSpec(entrypoint="train.py", args=("--lr", "3e-4"), job_id="tf-golden",
                                            launcher=launcher))
        script = tmp_path / f"{launcher}.sbatch"
        script.write_text(text)
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        assert "#SBATCH --nodes=2" in text and 'TF_HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST"' in text
        assert "WANDB_API_KEY" in text and "WANDB_API_KEY=" not in text.replace('"${WANDB_API_KEY:?', "")
        if launcher == "torchrun":
            check_golden("export_torchrun.sbatch", text)


def exportable(launcher: str) -> bool:
    """A scheduler can start it on each node (head's and mpirun's runners reach the nodes themselves)."""
    try:
        node_script(fleet_from_data(FLEET, "fleet.yaml"), JobSpec(entrypoint="x.py", job_id="j", launcher=launcher))
    except UsageError as refused:
        assert "cannot be exported to Slurm" in str(refused)
        return False
    return True


EXPORTABLE = [name for name in launcher_names() if exportable(name)]
assert {"torchrun", "deepspeed", "accelerate", "command"} <= set(EXPORTABLE)


def run_on_node(command: str, variables: dict[str, str], shell: str = "bash",
                path: str = "/opt/venv/bin:") -> tuple[str, dict[str, str], list[str]]:
    """Runs an exported node command in a real shell with the scheduler's variables set and
    `cd` and `env` recording what they were given: (cwd, environment, argv) as the node's
    launcher would start with."""
    recorder = ('cd() { TF_CWD="$1"; }\n'
                'env() { python3 -c \'import json, sys; print(json.dumps(sys.argv[1:]))\' "$TF_CWD" "$@"; }\n')
    done = subprocess.run([shell, "-c", recorder + command], env={**variables, "PATH": os.environ["PATH"]},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cwd, *words = json.loads(done.stdout)
    split = next(i for i, w in enumerate(words) if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w))
    env = dict(w.split("=", 1) for w in words[:split])
    assert env.pop("PATH", "").startswith(path)
    return cwd, env, words[split:]


def dry_run_node(launch) -> tuple[str, dict[str, str], list[str]]:  # type: ignore[no-untyped-def]
    """A dry-run node's command without what only trainfleet's own runs have: the rank
    wrapper, and the job's id and directory that its node supervisors use."""
    env = {k: v for k, v in launch.env if k not in ("TRAINFLEET_JOB_ID", "TRAINFLEET_JOB_DIR")}
    return launch.cwd, env, [w for w in launch.argv if not w.endswith("/rankwrap.py")]


@pytest.mark.parametrize("launcher", EXPORTABLE)
def test_export_slurm_runs_what_the_dry_run_plans_on_every_node(launcher: str) -> None:
    """The sbatch script's command, expanded on each node with Slurm's variables, is the
    dry-run's command for that node: one plan, two renderings."""
    fleet = fleet_from_data(FLEET, "fleet.yaml")
    job = JobSpec(entrypoint="train.py", args=("--lr", "3e-4", "two words"), job_id="tf-golden", launcher=launcher)
    # Nodes without a GPU (as this machine, where the exported GPU check runs, is one).
    facts = LaunchFacts(rdzv_port=29555, interfaces={"gpu0": "ens5", "gpu1": "enp6s0"}, gpus={"gpu0": 0, "gpu1": 0})
    planned = plan_job(fleet, job, facts, "~/job/proj")
    script = node_script(fleet, job)
    assert script.startswith(SLURM_PRELUDE)
    assert f"bash -c {shlex.quote(script)}" in render_sbatch(fleet, job)
    for launch in planned.nodes:
        node = fleet.node(launch.node)
        variables = {"SLURMD_NODENAME": node.name, "SLURM_NODEID": str(launch.node_rank), "TF_LOCAL_ADDR": node.address,
                     "TF_IFACE": facts.interfaces[node.name], "TF_IS_HOST": "true" if launch.node_rank == 0 else "false",
                     "MASTER_ADDR": fleet.head.address, "MASTER_PORT": "29555", "SLURM_SUBMIT_DIR": "~/job/proj"}
        assert run_on_node(script[len(SLURM_PRELUDE):], variables) == dry_run_node(launch)


@pytest.mark.parametrize("launcher", EXPORTABLE)
def test_export_k8s_runs_what_the_dry_run_plans_in_every_pod(launcher: str, tmp_path: Path) -> None:
    """Each pod's command, run by sh with the training operator's variables, is the dry-run's
    command for that node, except what Kubernetes decides: the image's Python and PATH, the
    pod's working directory, and no interface name (a pod has one network)."""
    fleet = fleet_from_data(FLEET, "fleet.yaml")
    job = JobSpec(entrypoint="train.py", args=("--lr", "3e-4"), job_id="tf-golden", launcher=launcher)
    planned = plan_job(fleet, job, LaunchFacts(rdzv_port=29555, gpus={"gpu0": 0, "gpu1": 0}), "~/job/proj")
    manifest = render_pytorchjob(fleet, job, "img:1")
    for launch in planned.nodes:
        kind = "Master" if launch.node_rank == 0 else "Worker"
        pod = manifest["spec"]["pytorchReplicaSpecs"][kind]["template"]["spec"]["containers"][0]
        shell, dash_c, command = pod["command"]
        node = fleet.node(launch.node)
        variables = {"HOSTNAME": node.name, "RANK": str(launch.node_rank), "POD_IP": node.address,
                     "MASTER_ADDR": fleet.head.address, "MASTER_PORT": "29555"}
        cwd, env, argv = run_on_node(command.replace("cd \"${PWD}\"", f"cd {tmp_path}"), variables, shell=shell,
                                     path="")
        _, planned_env, planned_argv = dry_run_node(launch)
        if planned_argv[0] == "/opt/venv/bin/python":  # the nodes' Python; the image has its own
            assert argv[0] == "python"
            argv[0] = planned_argv[0]
        interface = {k: planned_env.pop(k) for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
        assert (dash_c, cwd, interface) == ("-c", str(tmp_path), {"GLOO_SOCKET_IFNAME": "ens5" if launch.node_rank == 0
                                                                  else "enp6s0", "NCCL_SOCKET_IFNAME": interface[
                                                                      "GLOO_SOCKET_IFNAME"]})
        assert env == planned_env and argv == planned_argv


def assert_pytorchjob_schema(manifest: dict[str, object]) -> None:
    """The manifest read through Kubeflow's own PyTorchJob model (the training operator's
    SDK: its types, required fields and the Kubernetes pod types under them) and written
    back is the same document: nothing unknown (a misspelt key would be dropped), nothing
    missing (a required field raises), every value of its schema's type."""
    from kubeflow.training import ApiClient

    document = yaml.safe_load(yaml.safe_dump(manifest))
    client = ApiClient()
    model = client._ApiClient__deserialize(document, "KubeflowOrgV1PyTorchJob")  # type: ignore[attr-defined]
    assert client.sanitize_for_serialization(model) == document


def test_the_pytorchjob_schema_check_catches_mistakes() -> None:
    fleet = fleet_from_data(FLEET, "fleet.yaml")
    manifest = render_pytorchjob(fleet, JobSpec(entrypoint="train.py", job_id="j"), "img:1")
    misspelt = copy.deepcopy(manifest)
    misspelt["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "x"
    with pytest.raises(AssertionError):
        assert_pytorchjob_schema(misspelt)
    no_policy = copy.deepcopy(manifest)
    del no_policy["spec"]["runPolicy"]
    with pytest.raises(ValueError, match="run_policy"):
        assert_pytorchjob_schema(no_policy)


def test_pytorchjob_parses_with_master_and_workers() -> None:
    fleet = fleet_from_data({**FLEET, "nodes": FLEET["nodes"] + [{"name": "gpu2", "host": "203.0.113.12", "slots": 2}],
                             "container": {"image": "img:1", "python": "python3"}}, "fleet.yaml")
    manifest = render_pytorchjob(fleet, JobSpec(entrypoint="train.py", args=("--steps", "10"), job_id="tf-golden"),
                                 "nvcr.io/nvidia/pytorch:24.05-py3", gpus_per_node=2)
    parsed = yaml.safe_load(yaml.safe_dump(manifest))
    replicas = parsed["spec"]["pytorchReplicaSpecs"]
    assert parsed["kind"] == "PyTorchJob" and parsed["apiVersion"] == "kubeflow.org/v1"
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["sh", "-c"]
    assert " python3 -m torch.distributed.run --nnodes=3 --nproc-per-node=2 " in container["command"][2]
    assert {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "tf-golden-secrets",
                                                                     "key": "WANDB_API_KEY"}}} in container["env"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in container["env"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"  # a quantity: a string
    cpu_only = render_pytorchjob(fleet, JobSpec(entrypoint="train.py", job_id="j"), "img:1")
    for job in (manifest, cpu_only):
        assert_pytorchjob_schema(job)
    assert "resources" not in cpu_only["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    with pytest.raises(UsageError, match="needs an image"):
        render_pytorchjob(fleet, JobSpec(entrypoint="train.py", job_id="j"), "")
    with pytest.raises(UsageError, match="cannot be exported to Kubernetes"):
        render_pytorchjob(fleet, JobSpec(entrypoint="x", job_id="j", launcher="head"), "img:1")


def test_head_refuses_a_secret_deepspeeds_runner_would_put_in_its_command_line() -> None:
    spec = fleet_from_data({**FLEET, "secrets": ["NCCL_IB_KEY", "WANDB_API_KEY"]}, "fleet.yaml")
    with pytest.raises(UsageError, match=r"secret NCCL_IB_KEY would be copied by DeepSpeed's runner into its pdsh "
                                         r"command line"):
        plan_job(spec, JobSpec(entrypoint="deepspeed --hostfile h x.py", job_id="j", launcher="head"), FACTS, "~/p")
    plan_job(spec, JobSpec(entrypoint="x.py", job_id="j", launcher="torchrun"), FACTS, "~/p")  # others keep it in env


def test_a_python_script_as_the_command_runs_under_the_fleets_python() -> None:
    spec = fleet_from_data(FLEET, "fleet.yaml")
    for launcher in ("command", "head"):
        alone = plan_job(spec, JobSpec(entrypoint="deepy.py", args=("train.py", "c.yml"), job_id="j", launcher=launcher),
                         FACTS, "~/p")
        assert alone.nodes[0].argv == ("/opt/venv/bin/python", "deepy.py", "train.py", "c.yml")
        line = plan_job(spec, JobSpec(entrypoint="deepy.py train.py c.yml", job_id="j", launcher=launcher), FACTS,
                        "~/p")
        assert line.nodes[0].argv == ("sh", "-c", "/opt/venv/bin/python deepy.py train.py c.yml")
    other = plan_job(spec, JobSpec(entrypoint="bash run.sh", job_id="j", launcher="command"), FACTS, "~/p")
    assert other.nodes[0].argv == ("sh", "-c", "bash run.sh")


SPARE_FLEET = {**FLEET, "nodes": [*FLEET["nodes"],  # type: ignore[list-item]
                                  {"name": "gpu2", "host": "203.0.113.12", "address": "10.0.0.12", "slots": 2}]}


def spare_plan(fleet: dict, **options: object) -> "object":  # type: ignore[type-arg]
    spec = fleet_from_data(fleet, "fleet.yaml")
    return plan_job(spec, JobSpec(entrypoint="train.py", job_id="tf-golden", max_restarts=3, options=options),
                    LaunchFacts(rdzv_port=29555), "~/job/proj")


def test_a_spare_waits_outside_the_world_and_the_job_needs_all_its_nodes() -> None:
    marked = copy.deepcopy(SPARE_FLEET)
    marked["nodes"][2]["spare"] = True  # type: ignore[index]
    for launch_plan in (spare_plan(SPARE_FLEET, spares=1), spare_plan(marked)):
        assert launch_plan.spares == ("gpu2",) and launch_plan.world_size == 4  # type: ignore[attr-defined]
        assert launch_plan.min_nodes == 2  # type: ignore[attr-defined]
        text = launch_plan.render()  # type: ignore[attr-defined]
        assert "[gpu2] spare (joins once a node is lost) nproc=2" in text, text
        # Every agent, the spare's too, in one elastic rendezvous of exactly 2 nodes: the
        # spare's agent waits in torchrun's redundancy list.
        launches = text.split("\n[")
        assert all(part.count("--nnodes=2:2 ") == (1 if i == 1 else 2) for i, part in enumerate(launches[1:], 1)), text
        assert "is_host=false,keep_alive" in text.split("[gpu2]")[1]
        # Should gpu0 (and its store) be lost, the rendezvous moves to gpu1, the spare's too.
        assert launch_plan.successor == "gpu1"  # type: ignore[attr-defined]
        assert "if gpu0 is lost:" not in launches[1]
        for part, host in ((launches[2], "true"), (launches[3], "false")):
            moved = part.split("if gpu0 is lost: ")[1]
            assert "--rdzv-endpoint=10.0.0.11:29555 " in moved and f"--rdzv-conf=is_host={host},keep_alive" in moved


def test_spares_are_refused_where_they_cannot_work() -> None:
    marked = copy.deepcopy(SPARE_FLEET)
    marked["nodes"][2]["spare"] = True  # type: ignore[index]
    spec = fleet_from_data(marked, "fleet.yaml")
    cases = [
        (lambda: plan_job(spec, JobSpec(entrypoint="t.py", job_id="j"), FACTS, "~/p"), "needs --max-restarts N"),
        (lambda: plan_job(spec, JobSpec(entrypoint="t.py", job_id="j", launcher="mpirun", max_restarts=1), FACTS,
                          "~/p"), "gpu2: a spare (`spare: true`) cannot take a lost node's place in a job of --launcher "
                                  "mpirun"),
        (lambda: plan_job(spec, JobSpec(entrypoint="t.py", job_id="j", launcher="deepspeed"), FACTS, "~/p"),
         "a spare (gpu2) joins the job when it restarts: it needs --max-restarts N"),
        (lambda: spare_plan(SPARE_FLEET, spares=3), "--spares 3 leaves no node to train on"),
        (lambda: spare_plan(SPARE_FLEET, spares=-1), "--spares cannot be negative"),
    ]
    for attempt, words in cases:
        with pytest.raises(UsageError, match=re.escape(words)):
            attempt()
    first = copy.deepcopy(SPARE_FLEET)
    first["nodes"][0]["spare"] = True  # type: ignore[index]
    from trainfleet.errors import SpecError
    with pytest.raises(SpecError, match=re.escape("fleet.yaml: nodes[0].spare: node 0 (gpu0) hosts the job's "
                                                  "rendezvous and cannot be a spare")):
        fleet_from_data(first, "fleet.yaml")


def test_a_launcher_without_restarts_of_its_own_is_restarted_whole_by_the_nodes() -> None:
    spec = fleet_from_data(FLEET, "fleet.yaml")
    for launcher in ("deepspeed", "accelerate", "command", "mpirun"):
        plan_made = plan_job(spec, JobSpec(entrypoint="train.py", job_id="j", launcher=launcher, max_restarts=2),
                             FACTS, "~/p")
        assert plan_made.restarts == 2, launcher
        assert all(dict(n.env)["TRAINFLEET_RESTART_COUNT"] == "0" for n in plan_made.nodes), launcher
        assert "# when a part fails, every node's part starts again, up to 2 time(s)" in plan_made.render()
    torchrun = plan_job(spec, JobSpec(entrypoint="train.py", job_id="j", max_restarts=2), FACTS, "~/p")
    assert torchrun.restarts == 0 and "TRAINFLEET_RESTART_COUNT" not in torchrun.render()  # it restarts itself
    assert "--max-restarts=2" in torchrun.render()


def replan(launcher: str, max_restarts: int, **options: object) -> "object":
    spec = fleet_from_data(SPARE_FLEET, "fleet.yaml")
    return plan_job(spec, JobSpec(entrypoint="train.py", job_id="tf-golden", launcher=launcher,
                                  max_restarts=max_restarts, options=options),
                    LaunchFacts(rdzv_port=29555, successor_ports=(29601, 29602)), "~/job/proj")


def test_a_job_without_elastic_restarts_is_planned_ahead_for_each_loss_it_can_survive() -> None:
    """DeepSpeed on three nodes, one a spare, two restarts: a plan for each lost node and
    each pair; a spare takes the lost node's place, ranked last; without node 0 the
    master moves to the next node, on the port asked for there."""
    launch_plan = replan("deepspeed", 2, spares=1)
    check_golden("plan_deepspeed_replans.txt", launch_plan.render())  # type: ignore[attr-defined]
    plans = {r.key: r for r in launch_plan.replans}  # type: ignore[attr-defined]
    # (without gpu0 and gpu1 both, the job's mesh would have to move twice: it ends)
    assert sorted(plans) == ["gpu0", "gpu0,gpu2", "gpu1", "gpu1,gpu2", "gpu2"], sorted(plans)
    assert [n.node for n in plans["gpu1"].nodes] == ["gpu0", "gpu2"] and plans["gpu1"].world_size == 4
    moved = plans["gpu0"].nodes
    assert [n.node for n in moved] == ["gpu1", "gpu2"] and "--master_addr=10.0.0.11" in moved[0].argv
    assert "--master_port=29601" in moved[1].argv and "--node_rank=1" in moved[1].argv
    assert [n.node for n in plans["gpu1,gpu2"].nodes] == ["gpu0"] and plans["gpu1,gpu2"].world_size == 2
    assert "gpu0,gpu1,gpu2" not in plans  # (nothing is left to train on)
    assert launch_plan.spares == ("gpu2",) and launch_plan.successor == "gpu1"  # type: ignore[attr-defined]
    spare = launch_plan.nodes[-1]  # type: ignore[attr-defined]
    assert spare.node == "gpu2" and spare.spare and "--node_rank=1" in spare.argv
    for node in (*launch_plan.nodes, *(n for r in launch_plan.replans for n in r.nodes)):  # type: ignore[attr-defined]
        assert dict(node.env)["TRAINFLEET_RESTART_COUNT"] == "0"
    # Accelerate and command count the nodes and processes again too; one restart plans one loss.
    accelerate = {r.key: r for r in replan("accelerate", 1).replans}  # type: ignore[attr-defined]
    assert sorted(accelerate) == ["gpu0", "gpu1", "gpu2"]
    assert "--num_machines=2" in accelerate["gpu2"].nodes[0].argv and "--num_processes=4" in accelerate["gpu2"].nodes[
        0].argv
    command = {r.key: r for r in replan("command", 1).replans}  # type: ignore[attr-defined]
    assert dict(command["gpu0"].nodes[1].env)["NODE_RANK"] == "1" and dict(command["gpu0"].nodes[0].env)[
        "MASTER_ADDR"] == "10.0.0.11"
    # Launchers that restart by themselves, or whose runner starts every node, plan nothing ahead.
    assert replan("torchrun", 1).replans == () and replan("mpirun", 1).replans == ()  # type: ignore[attr-defined]
    assert replan("deepspeed", 0).replans == ()  # type: ignore[attr-defined]
