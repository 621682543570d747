"""Mistakes on the command line: one line, the fix, a non-zero exit, and no traceback."""

from __future__ import annotations

from pathlib import Path

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
