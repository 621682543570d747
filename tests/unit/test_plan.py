"""Launch planning is pure: the same fleet, job and facts always render the same commands."""

from __future__ import annotations

from pathlib import Path

import pytest

import re

from helpers import PLAN_FLEET as FLEET
from helpers import check_golden, tf
from trainfleet.ops.sync import project_for
from trainfleet.errors import UsageError
from trainfleet.fleet.schema import fleet_from_data
from trainfleet.job.spec import JobSpec
from trainfleet.job.placement import LaunchFacts
from trainfleet.launchers import plan_job

def plan_torchrun(fleet, job, facts):  # type: ignore[no-untyped-def]
    return plan_job(fleet, job, facts, fleet.workdir)


def two_node_plan():  # type: ignore[no-untyped-def]
    fleet = fleet_from_data(FLEET, "fleet.yaml")
    job = JobSpec(entrypoint="train.py", args=("--steps", "100", "--name", "two words"), job_id="tf-golden")
    return plan_torchrun(fleet, job, LaunchFacts(rdzv_port=29555, interfaces={"gpu1": "enp6s0"}))


def test_plan_golden() -> None:
    check_golden("plan_two_nodes.txt", two_node_plan().render())


def test_rendezvous_settings_per_node() -> None:
    plan = two_node_plan()
    head, other = plan.nodes
    assert plan.rendezvous == "c10d rendezvous at 10.0.0.10:29555" and plan.world_size == 6
    assert "--rdzv-conf=is_host=true" in head.argv and "--rdzv-conf=is_host=false" in other.argv
    assert "--local-addr=10.0.0.10" in head.argv and "--local-addr=10.0.0.11" in other.argv
    assert all("--rdzv-endpoint=10.0.0.10:29555" in n.argv for n in plan.nodes)
    assert ("--nnodes=2", "--nproc-per-node=2") == (other.argv[3], other.argv[4])
    # c10d ignores --node-rank (and says so on every run): it is not passed.
    assert not any(a.startswith("--node-rank") for n in plan.nodes for a in n.argv)
    # Each rank runs the user's script under the rank wrapper, named right after it (as `ps` shows).
    assert other.argv[-6:-4] == ("~/job/.trainfleet/jobs/tf-golden/rankwrap.py", "train.py") and other.cwd == "~/job"
    # The fleet file names gpu0's interface; gpu1's came from probing the node.
    assert dict(head.env)["NCCL_SOCKET_IFNAME"] == "ens5" and dict(other.env)["GLOO_SOCKET_IFNAME"] == "enp6s0"
    assert dict(other.env)["NCCL_DEBUG"] == "WARN"
    assert other.argv[-4:] == ("--steps", "100", "--name", "two words")


def test_nproc_override_and_module_entrypoint() -> None:
    fleet = fleet_from_data(FLEET, "fleet.yaml")
    plan = plan_torchrun(fleet, JobSpec(entrypoint="pkg.train", module=True, nproc_per_node=1, job_id="j1"),
                         LaunchFacts())
    assert plan.world_size == 2
    assert plan.nodes[0].argv[-2:] == ("-m", "pkg.train")
    assert plan.rendezvous.endswith("10.0.0.10:29500")


@pytest.mark.parametrize("job", [JobSpec(entrypoint="x.py", job_id="bad id"),
                                 JobSpec(entrypoint="x.py", job_id="j", nproc_per_node=0),
                                 JobSpec(entrypoint="x.py", job_id="j", env={"A B": "1"})])
def test_bad_jobs_are_refused(job: JobSpec) -> None:
    with pytest.raises(UsageError):
        plan_torchrun(fleet_from_data(FLEET, "fleet.yaml"), job, LaunchFacts())


def test_dry_run_cli_prints_the_plan_and_contacts_nobody(tmp_path: Path) -> None:
    import yaml

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(FLEET))
    project = tmp_path / "my project"
    project.mkdir()
    completed = tf("run", "-f", str(fleet), "--dry-run", "--job-id", "tf-golden", "--port", "29555",
                   "--sync-dir", str(project), "train.py", "--steps", "100", "--name", "two words")
    assert completed.returncode == 0, completed.stderr
    # The job runs in the project's own directory: its name, then a hash of where it is here.
    name = project_for(project).name
    assert re.fullmatch(r"my_project-[0-9a-f]{8}", name) and f"cd ~/job/{name} && " in completed.stdout
    # The rendezvous id: the job id and 64 random bits, new for every run.
    [rendezvous] = re.findall(r"--rdzv-id=(\S+)", completed.stdout)[:1]
    assert re.fullmatch(r"tf-golden-[0-9a-f]{16}", rendezvous), rendezvous
    again = tf("run", "-f", str(fleet), "--dry-run", "--job-id", "tf-golden", "train.py").stdout
    assert rendezvous not in again
    # gpu1 has no interface in the file and nobody was asked, so none is set for it.
    check_golden("dry_run_cli.txt", completed.stdout.replace(name, "PROJECT").replace(rendezvous, "tf-golden"))
    as_json = tf("run", "-f", str(fleet), "--dry-run", "--json", "--job-id", "j2", "train.py")
    assert '"world_size": 6' in as_json.stdout
