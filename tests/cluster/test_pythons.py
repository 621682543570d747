"""The controller on every Python from 3.10 to 3.13 that this machine has (Ubuntu 22.04's
is 3.10): installed into a fresh venv as a user would (`pip install -e .`), it passes the
unit tests and runs a 2-node job on a sandbox. The nodes keep this suite's Python (with
torch): the controller never imports torch."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Sandboxes
from helpers import EXIT_ABORT, JOBS, REPO

VENVS = REPO / ".venv-pythons"
"""Kept between runs (git ignores it): a second run only checks the install."""
WANTED = ("3.10", "3.11", "3.12", "3.13")


def other_pythons() -> dict[str, str]:
    """minor version -> interpreter, for each wanted version other than the running one."""
    found: dict[str, str] = {}
    for minor in WANTED:
        if minor == f"{sys.version_info.major}.{sys.version_info.minor}":
            continue
        candidates = sorted(glob.glob(str(Path.home() / f".pyenv/versions/{minor}.*/bin/python"))) + \
            [p for p in (shutil.which(f"python{minor}"),) if p]
        for candidate in candidates:
            probe = subprocess.run([candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                                   capture_output=True, text=True)
            if probe.returncode == 0 and probe.stdout.strip() == minor:
                found[minor] = candidate
                break
    return found


PYTHONS = other_pythons()


def controller(minor: str) -> Path:
    """A venv of that Python with trainfleet and what the unit tests use (not torch)."""
    venv = VENVS / minor
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([PYTHONS[minor], "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", f"{REPO}[plot,ui]", "pytest",
                           "pytest-timeout", "kubeflow-training"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"pip install under Python {minor} failed:\n{done.stderr[-3000:]}"
    return python


@pytest.fixture(scope="module")
def pythons() -> dict[str, str]:
    if not PYTHONS:
        if os.environ.get("CI"):
            pytest.fail(f"CI checks the controller on Python {', '.join(WANTED)}, and found none but this one")
        pytest.skip("no other Python 3.10-3.13 on this machine")
    return PYTHONS


@pytest.mark.parametrize("minor", [m for m in WANTED if m in PYTHONS] or ["none"])
def test_the_controller_passes_the_unit_tests_and_runs_a_job_on_python(
        minor: str, pythons: dict[str, str], sandboxes: Sandboxes, tmp_path: Path) -> None:
    python = controller(minor)
    env = {**os.environ, "TRAINFLEET_TEST_RANK_PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    unit = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"], cwd=REPO,
                          capture_output=True, text=True, timeout=900, env=env)
    assert unit.returncode == 0 and " passed" in unit.stdout, f"Python {minor}:\n{unit.stdout[-4000:]}"
    state = sandboxes.make(2, slots=1)  # its fleet's `python:` is this suite's, on the nodes
    try:
        project = tmp_path / "project"
        shutil.copytree(JOBS, project)
        for _ in range(2):  # once more after torch 2.13's exit abort, which is not this test's subject
            ran = subprocess.run([str(python), "-m", "trainfleet", "run", "-f", state.fleet_file, "--sync-dir",
                                  str(project), "ranks.py"], capture_output=True, text=True, timeout=300, env=env,
                                 stdin=subprocess.DEVNULL)
            if EXIT_ABORT not in ran.stdout + ran.stderr:
                break
        lines = re.findall(r"^\[(node\d):(\d)\] rank \2 of 2 on \1 ", ran.stdout, re.MULTILINE)
        assert ran.returncode == 0 and sorted(lines) == [("node0", "0"), ("node1", "1")], \
            f"Python {minor}:\n{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}"
        doctor = subprocess.run([str(python), "-m", "trainfleet", "doctor", "-f", state.fleet_file], env=env,
                                capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert "Traceback" not in doctor.stderr + doctor.stdout and "node[0-1]" in doctor.stdout, doctor.stdout
    finally:
        sandboxes.remove(state)
    # Ubuntu 22.04's and 24.04's Python: the README's quick start, from bare nodes to clean. Its
    # nodes make their venv from this suite's Python (with torch), which a sandbox made from
    # the other Python shows them only where it is outside /tmp (the nodes' /tmp is their own).
    if minor in ("3.10", "3.12") and not os.path.realpath(sys.prefix).startswith("/tmp/"):
        quick = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "600",
                                "tests/cluster/test_quick_start.py"], cwd=REPO, capture_output=True, text=True,
                               timeout=900, env=env, stdin=subprocess.DEVNULL)
        assert quick.returncode == 0 and "1 passed" in quick.stdout, f"Python {minor}:\n{quick.stdout[-4000:]}"
