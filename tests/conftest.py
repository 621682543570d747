"""Shared fixtures: a real sandbox cluster per test session, and the CLI as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainfleet import sandbox as sb

REPO = Path(__file__).resolve().parents[1]
JOBS = Path(__file__).resolve().parent / "jobs"
# Processes that belong to the sandbox itself rather than to any job.
SANDBOX_INFRA = {"unshare", "sshd"}


def tf(*args: str, timeout: float = 120, cwd: Path | None = None, env: dict[str, str] | None = None,
       check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real `trainfleet` command line."""
    completed = subprocess.run([sys.executable, "-m", "trainfleet", *args], capture_output=True, text=True,
                               timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})
    if check and completed.returncode != 0:
        raise AssertionError(f"trainfleet {' '.join(args)} failed ({completed.returncode}):\n"
                             f"{completed.stdout}\n{completed.stderr}")
    return completed


def sandbox_ready() -> str | None:
    """Why a sandbox cannot be made here, or None. In CI a missing prerequisite fails instead."""
    try:
        sb.check_prerequisites()
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        return str(exc)
    return None


def require_sandbox() -> None:
    reason = sandbox_ready()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to build the sandbox: {reason}")
    pytest.skip(reason)


def unique_name(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 100000:x}"[:10]


alive = sb.running  # a zombie waiting for its parent to reap it is not running


def job_processes_on(node: sb.SandboxNode) -> list[str]:
    """`pid comm` of every process in the node's namespace that is not sandbox infrastructure."""
    out = subprocess.run(["ip", "netns", "pids", node.namespace], capture_output=True, text=True).stdout
    found = []
    for pid in out.split():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm not in SANDBOX_INFRA:
            found.append(f"{pid} {comm}")
    return found


@pytest.fixture(scope="session")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sb.SandboxState]:
    """One 3-node sandbox for the whole session, removed at the end even after failures."""
    require_sandbox()
    name = unique_name("t")
    out = tmp_path_factory.mktemp("cluster3") / "fleet.yaml"
    state = sb.up(3, name=name, out=out, slots=2)
    try:
        yield state
    finally:
        sb.down(name, missing_ok=True)


@pytest.fixture(scope="session")
def fleet3(cluster3: sb.SandboxState) -> Path:
    return Path(cluster3.fleet_file)


@pytest.fixture(scope="session")
def fleet2(cluster3: sb.SandboxState, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first two nodes of the session's sandbox, as a fleet file of their own."""
    import yaml

    data = yaml.safe_load(Path(cluster3.fleet_file).read_text())
    data["nodes"] = data["nodes"][:2]
    path = tmp_path_factory.mktemp("fleet2") / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A job directory with the test jobs in it, as a user's project would be."""
    target = tmp_path / "project"
    shutil.copytree(JOBS, target)
    return target
