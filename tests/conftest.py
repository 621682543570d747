"""Fixtures: one factory for sandbox clusters (real namespaces, real sshd), shared by
the cluster tier. Unit tests need none of it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import JOBS, unique_name
from trainfleet.sandbox import cluster as sb


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/cluster/ and tests/runbooks/ builds or uses a sandbox: it is `slow`."""
    for item in items:
        if {"cluster", "runbooks"} & set(Path(str(item.fspath)).parts):
            item.add_marker(pytest.mark.slow)


def sandbox_ready() -> str | None:
    """Why a sandbox cannot be made here, or None."""
    try:
        sb.check_prerequisites()
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        return str(exc)
    return None


def require_sandbox() -> None:
    """Skip where a sandbox cannot be made; in CI a missing prerequisite fails instead."""
    reason = sandbox_ready()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to build the sandbox: {reason}")
    pytest.skip(reason)


class Sandboxes:
    """Makes sandboxes and removes every one it made, also after a failure."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[str] = []
        self.count = 0

    def make(self, nodes: int, *, slots: int = 2, **options: object) -> sb.SandboxState:
        require_sandbox()
        self.count += 1
        name = unique_name(f"t{self.count}")
        out = self.root / name / "fleet.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        state = sb.up(nodes, name=name, out=out, slots=slots, **options)  # type: ignore[arg-type]
        self.made.append(name)
        return state

    def remove(self, state: sb.SandboxState) -> None:
        sb.down(state.name, missing_ok=True)
        self.made.remove(state.name)

    def remove_all(self) -> None:
        for name in list(self.made):
            sb.down(name, missing_ok=True)
        self.made.clear()


@pytest.fixture(scope="session")
def sandboxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandboxes]:
    factory = Sandboxes(tmp_path_factory.mktemp("sandboxes"))
    try:
        yield factory
    finally:
        factory.remove_all()


@pytest.fixture
def fresh(sandboxes: Sandboxes) -> Iterator[Sandboxes]:
    """For tests that change nodes (keys, firewalls, faults that outlive them): sandboxes of
    their own, removed when the test ends."""
    before = set(sandboxes.made)
    yield sandboxes
    for name in [n for n in sandboxes.made if n not in before]:
        sb.down(name, missing_ok=True)
        sandboxes.made.remove(name)


@pytest.fixture(scope="session")
def cluster3(sandboxes: Sandboxes) -> sb.SandboxState:
    """The session's shared 3-node sandbox: tests may run jobs on it, but leave it as they found it."""
    return sandboxes.make(3, slots=2)


@pytest.fixture(scope="session")
def fleet3(cluster3: sb.SandboxState) -> Path:
    return Path(cluster3.fleet_file)


@pytest.fixture(scope="session")
def fleet2(cluster3: sb.SandboxState, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first two nodes of the shared sandbox, as a fleet file of their own."""
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
