"""Mistakes on the command line: one line, the fix, a non-zero exit, and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import tf


def test_an_option_run_does_not_know_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    done = tf("run", "-f", str(tmp_path / "none.yaml"), "--nproc", "2", "train.py")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "run has no option --nproc" in done.stderr and "did you mean --nproc-per-node?" in done.stderr
    # exec passes unknown options to the command, but not before it: `--node` would run on every node.
    stray = tf("exec", "-f", str(tmp_path / "none.yaml"), "--node", "gpu1", "--", "rm", "-rf", "scratch")
    assert stray.returncode == 2 and stray.stderr.count("\n") == 1 and "Traceback" not in stray.stderr
    assert "exec has no option --node" in stray.stderr and "did you mean --nodes?" in stray.stderr


def test_bad_env_and_node_sets(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("nodes:\n  - {host: 203.0.113.1, name: gpu0}\n  - {host: 203.0.113.2, name: gpu1}\n")
    bad_env = tf("run", "-f", str(fleet), "--dry-run", "--env", "NOEQUALS", "train.py")
    assert bad_env.returncode == 2 and "expected NAME=VALUE" in bad_env.stderr
    env = tf("run", "-f", str(fleet), "--dry-run", "--env", "WANDB_PROJECT=x y", "train.py")
    assert env.returncode == 0 and "WANDB_PROJECT='x y'" in env.stdout
    bad_set = tf("exec", "-f", str(fleet), "-n", "gpu[0-1", "--", "true")
    assert bad_set.returncode == 2 and "unbalanced brackets" in bad_set.stderr and "Traceback" not in bad_set.stderr
    unknown = tf("exec", "-f", str(fleet), "-n", "gpu[0-2]", "--", "true")
    assert unknown.returncode == 2 and "no node named 'gpu2'" in unknown.stderr


def test_export_needs_no_ssh_key(tmp_path: Path) -> None:
    """A fleet whose key file is not on this machine still exports (sbatch uses no SSH);
    what does use SSH still names the missing file."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("ssh: {identity_file: /nonexistent/id_ed25519}\nnodes:\n  - {host: 203.0.113.1}\n"
                     "  - {host: 203.0.113.2}\n")
    exported = tf("export", "slurm", "-f", str(fleet), "train.py")
    assert exported.returncode == 0 and "#SBATCH --nodes=2" in exported.stdout, exported.stderr
    assert "#SBATCH --gpus-per-node" not in exported.stdout and "no GPUs requested" in exported.stderr
    gpus = tf("export", "slurm", "-f", str(fleet), "--gpus-per-node", "8", "--exclusive", "train.py")
    assert "#SBATCH --gpus-per-node=8" in gpus.stdout and "#SBATCH --exclusive" in gpus.stdout
    ran = tf("exec", "-f", str(fleet), "--", "true")
    assert ran.returncode == 2 and "key file /nonexistent/id_ed25519 does not exist" in ran.stderr


def test_run_dry_run_and_export_take_the_same_job_options(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("nodes:\n  - {host: 203.0.113.1, name: gpu0}\n  - {host: 203.0.113.2, name: gpu1}\n")
    same = ["--launcher", "deepspeed", "--launcher-arg=--no_python", "--env", "A=1", "--job-id", "same-job"]
    planned = tf("run", "-f", str(fleet), "--dry-run", *same, "--include", "gpu0:0", "train.py", "--lr", "3")
    assert planned.returncode == 0, planned.stderr
    assert "deepspeed on 1 node(s)" in planned.stdout and "--no_python" in planned.stdout
    exported = tf("export", "slurm", "-f", str(fleet), *same, "train.py", "--lr", "3")
    assert exported.returncode == 0, exported.stderr
    assert "--no_python" in exported.stdout and "--lr 3" in exported.stdout and "same-job" in exported.stdout
    # A launcher option export cannot honour is its launcher's word, not click's "no such option".
    chosen = tf("export", "slurm", "-f", str(fleet), *same, "--include", "gpu0:0", "train.py")
    assert chosen.returncode == 2 and "--include/--exclude choose the fleet's nodes; Slurm chooses them" in \
        chosen.stderr, chosen.stderr
    # And they refuse alike: an option of another launcher.
    for command in (["run", "--dry-run"], ["export", "slurm"]):
        wrong = tf(*command, "-f", str(fleet), "--include", "gpu0:0", "train.py")
        assert wrong.returncode == 2 and "--include is an option of --launcher deepspeed" in wrong.stderr, wrong.stderr


def test_an_unknown_launcher_in_the_fleet_file_names_the_file_and_field(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("launcher: torchrnu\nnodes:\n  - {host: 203.0.113.1}\n")
    for command, script in ((["check"], []), (["run", "--dry-run"], ["train.py"]), (["export", "slurm"], ["train.py"])):
        done = tf(*command, "-f", str(fleet), *script)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"{fleet}: launcher: unknown launcher 'torchrnu'; fix: use one of: torchrun" in done.stderr


def test_a_cordoned_node_is_left_out_of_run_until_uncordoned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's record of the fleet (what a lost node writes), through the real CLI;
    `-n` still reaches a cordoned node by name."""
    from trainfleet.fleet import load_fleet
    from trainfleet.fleet.state import cordon

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("nodes:\n  - {host: 203.0.113.1, name: gpu0}\n  - {host: 203.0.113.2, name: gpu1}\n"
                     "  - {host: 203.0.113.3, name: gpu2}\n")
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "TRAINFLEET_NO_CACHE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cordon(load_fleet(fleet), {"gpu1": "gpu1 was lost (its connection closed)"}, "tf-job1") == ["gpu1"]
    assert cordon(load_fleet(fleet), {"gpu1": "again"}, "tf-job2") == []  # already
    dry = tf("run", "-f", str(fleet), "--dry-run", "train.py", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "[gpu1]" not in dry.stdout and "on 2 node(s)" in dry.stdout
    assert ("leaving out gpu1: cordoned (gpu1 was lost (its connection closed); job tf-job1, " in dry.stderr
            and "`trainfleet uncordon gpu1` lets it back in" in dry.stderr), dry.stderr
    named = tf("run", "-f", str(fleet), "--dry-run", "-n", "gpu0,gpu1", "train.py", env=env)
    assert "[gpu1]" in named.stdout and "leaving out" not in named.stderr
    assert "cordoned (gpu1 was lost (its connection closed), job tf-job1)" in tf("check", "-f", str(fleet),
                                                                                 env=env).stdout
    assert tf("uncordon", "-f", str(fleet), "gpu1", env=env).stdout == "uncordoned: gpu1\n"
    assert tf("uncordon", "-f", str(fleet), "gpu1", env=env).stdout == "not cordoned: gpu1\n"
    back = tf("run", "-f", str(fleet), "--dry-run", "train.py", env=env)
    assert "[gpu1]" in back.stdout and "leaving out" not in back.stderr
    # An old job's record of the loss does not cordon the node again once a person let it back in.
    assert cordon(load_fleet(fleet), {"gpu1": "lost"}, "tf-job1", at=1.0) == []
    everything = tf("cordon", "-f", str(fleet), "gpu[0-2]", env=env)
    assert everything.returncode == 2 and "that leaves no node to run on" in everything.stderr
    assert tf("cordon", "-f", str(fleet), "gpu2", env=env).stdout == "cordoned: gpu2\n"
    assert "leaving out gpu2: cordoned (by hand; " in tf("run", "-f", str(fleet), "--dry-run", "t.py", env=env).stderr
