"""The README's quick start, its commands verbatim and in its order, on sandbox nodes that
start bare: no job Python, no pinned keys of this fleet, no trust between them. The fleet
file is the README's, with the sandbox's machines in place of the example's. After `clean`
the nodes hold nothing of trainfleet's; the user's code and checkpoints stay."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import REPO, tf, torch_exit_abort
from trainfleet.ops.clean import trust_tag
from trainfleet.fleet.load import load_fleet

README = (REPO / "README.md").read_text()
RANK_PYTHON = os.environ.get("TRAINFLEET_TEST_RANK_PYTHON", sys.executable)
VENV = "/tmp/tf-quick-venv"  # (each sandbox node's own /tmp)
WORKDIR = "/tmp/tf-quick"

TRAIN = """\
import argparse, os
import torch, torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
epochs = parser.parse_args().epochs
dist.init_process_group("gloo")
weights = torch.zeros(4)
for epoch in range(epochs):
    grad = torch.ones(4) * (dist.get_rank() + 1)
    dist.all_reduce(grad)
    weights -= 0.01 * grad
    print(f"epoch {epoch} weight {weights[0].item():.4f}", flush=True)
if dist.get_rank() == 0:
    os.makedirs("checkpoints", exist_ok=True)
    torch.save({"weights": weights, "epochs": epochs}, "checkpoints/last.pt")
dist.destroy_process_group()
"""


def block_after(marker: str, language: str) -> str:
    """The first ```language block after the line holding `marker`."""
    tail = README[README.index(marker):]
    found = re.search(rf"```{language}\n(.*?)```", tail, re.DOTALL)
    assert found, f"README lost the {language} block after {marker!r}"
    return found.group(1)


def quick_start() -> list[str]:
    commands = [line.split("#", 1)[0].strip() for line in block_after("from your project's directory", "bash")
                .splitlines()]
    return [c for c in commands if c]


def readme_fleet(sandbox_fleet: Path) -> dict:  # type: ignore[type-arg]
    """The README's fleet file, with the sandbox's machines and keys. Its `setup:` makes the
    venv as written; `pip install torch` becomes a .pth file naming this suite's packages
    (no network here, and the same torch)."""
    data = yaml.safe_load(block_after("A fleet file for four Ubuntu machines", "yaml"))
    sandbox = yaml.safe_load(sandbox_fleet.read_text())
    assert data["python"] == "~/venv/bin/python" and "python3 -m venv ~/venv" in data["setup"][0]
    # The nodes' Python: this suite's (with torch), also when the controller runs on another
    # Python without torch (tests/cluster/test_pythons.py runs this test so).
    packages, minor = subprocess.run(
        [RANK_PYTHON, "-c", "import site, sys; print(site.getsitepackages()[0]); print('python%d.%d' % "
                            "sys.version_info[:2])"], capture_output=True, text=True, check=True).stdout.split()
    data.update(workdir=WORKDIR, python=f"{VENV}/bin/python", ssh=sandbox["ssh"], nodes=sandbox["nodes"],
                setup=[f"{RANK_PYTHON} -m venv {VENV} && echo {packages} > {VENV}/lib/{minor}/site-packages/suite.pth"])
    return data


def test_the_readme_quick_start_from_bare_nodes_to_pull_and_clean(fleet2: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(TRAIN)
    (project / "requirements.txt").write_text("")
    commands = quick_start()
    assert [shlex.split(c)[1] for c in commands] == ["init", "check", "ssh", "doctor", "setup", "run", "run", "pull",
                                                     "clean"], commands
    tf("exec", "-f", str(fleet2), "--", f"rm -rf {VENV} {WORKDIR}", check=True)
    try:
        said = {}
        for command in commands:
            argv = shlex.split(command)[1:]
            if argv[0] == "ssh":
                argv.append("--yes")  # (the user answers "y" at its prompt; a test has no terminal)
            for _ in range(3):
                done = tf(*argv, cwd=project, timeout=300)
                if not torch_exit_abort(done):
                    break
            said[command] = done
            if argv[0] == "init":
                assert done.returncode == 0 and "trainfleet ssh setup" in done.stdout, done.stderr
                (project / "fleet.yaml").write_text(yaml.safe_dump(readme_fleet(fleet2), sort_keys=False))
            elif argv[0] == "check":
                assert done.returncode == 0, done.stderr
                assert "next: `trainfleet ssh setup`" not in done.stdout  # the sandbox's keys are pinned
            elif argv[0] == "doctor":
                # Bare nodes: it names the missing Python and the command that makes it, once.
                assert done.returncode == 1, done.stdout + done.stderr
                assert f"`{VENV}/bin/python` was not found" in done.stdout and "trainfleet setup" in done.stdout
            else:
                assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
        assert "[node0:0] epoch 0 weight" in said["trainfleet run -n node0 train.py --epochs 1"].stdout
        ten = said["trainfleet run train.py --epochs 10"].stdout
        assert "[node1:3] epoch 9 weight" in ten, ten
        checkpoint = project / "trainfleet-runs" / "pulled" / "checkpoints" / "last.pt"
        assert checkpoint.is_file()
        assert "would remove" in said["trainfleet clean --dry-run"].stdout
        # The README's last step without --dry-run: nothing of trainfleet's is left on the nodes.
        tag = trust_tag(load_fleet(project / "fleet.yaml"))
        state = Path(load_fleet(project / "fleet.yaml").ssh.state_dir)
        cleaned = tf("clean", cwd=project)
        assert cleaned.returncode == 0, cleaned.stderr
        # (The sandbox's nodes share this machine's home: their agent cache is seen from here,
        # before the next command's agents make it again.)
        assert not (Path.home() / ".cache" / "trainfleet" / "agent").exists() and not state.exists()
        left = tf("exec", "-f", str(fleet2), "--", f"ls -a ~/.ssh {WORKDIR}; "
                                                     f"grep -c {tag} ~/.ssh/authorized_keys").stdout
        assert tag and f"trainfleet_{tag}" not in left and ".trainfleet" not in left, left
        assert sorted(re.findall(r"node\d: \d+$", left, re.MULTILINE)) == ["node0: 0", "node1: 0"], left
        # What stays is the user's: the project on the nodes (its code, the checkpoint), and here.
        assert "kept /tmp/tf-quick/project-" in cleaned.stdout and checkpoint.is_file()
    finally:
        tf("exec", "-f", str(fleet2), "--", f"rm -rf {VENV} {WORKDIR}")
