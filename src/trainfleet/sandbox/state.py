"""What the sandbox records of itself: its nodes, its state file under the sandbox root,
and the one rule for a sandbox's name (a directory that `down` removes as root)."""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from trainfleet.agent.files import write_atomically
from trainfleet.errors import SandboxError, UsageError

SANDBOX_ROOT_ENV = "TRAINFLEET_SANDBOX_ROOT"


DEFAULT_ROOT = "/var/lib/trainfleet/sandbox"


NAME_RE = re.compile(r"[a-z][a-z0-9]{0,9}")


STATE_FILE = "state.json"


@dataclass(frozen=True)
class SandboxNode:
    name: str
    namespace: str
    hostname: str
    address: str
    private_address: str | None
    private_interface: str | None
    sshd_pid: int | None
    home: str

    @property
    def training_address(self) -> str:
        return self.private_address or self.address

    @property
    def training_interface(self) -> str:
        return self.private_interface or "eth0"


@dataclass(frozen=True)
class SandboxState:
    name: str
    directory: str
    bridge_namespace: str
    host_interface: str
    controller_address: str
    subnet: str
    private_subnet: str | None
    fleet_file: str
    nodes: tuple[SandboxNode, ...]
    ssh_port: int = 22
    slurm_conf: str = ""
    """Its Slurm's slurm.conf (set SLURM_CONF to it), when made with `--slurm`."""
    docker: bool = False
    """Every node runs a dockerd of its own (`--docker`)."""

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["nodes"] = [asdict(n) for n in self.nodes]
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SandboxState:
        nodes = tuple(SandboxNode(**n) for n in data["nodes"])  # type: ignore[arg-type, union-attr]
        fields = {k: v for k, v in data.items() if k != "nodes"}
        return cls(nodes=nodes, **fields)  # type: ignore[arg-type]


def key_comment(name: str) -> str:
    """The comment of the key pair `up` makes in the sandbox's directory: a mark of its own."""
    return f"trainfleet-sandbox-{name}"


def made_by_up(directory: Path, name: str) -> bool:
    """The directory is sandbox `name`'s: it holds the state file `up` writes right after
    making it, or (the state file lost in a crash) the key pair `up` makes next."""
    if (directory / STATE_FILE).is_file():
        return True
    try:
        return (directory / "id_ed25519.pub").read_text().split()[-1] == key_comment(name)
    except (OSError, IndexError):
        return False


def sandbox_root() -> Path:
    return Path(os.environ.get(SANDBOX_ROOT_ENV, DEFAULT_ROOT))


def check_name(name: str) -> str:
    """The one rule for a sandbox name, for every command that takes one: it becomes a
    directory under the sandbox root (removed as root by `down`) and part of namespace and
    link names, so nothing but a short plain word is accepted (no `/`, `..` or newline)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsageError(f"sandbox name {name!r} is not usable",
                         fix="use 1 to 10 lowercase letters and digits, starting with a letter")
    return name


def directory_of(name: str) -> Path:
    """The sandbox's own directory: a direct child of the sandbox root, never anything else."""
    root = sandbox_root().resolve()
    directory = (root / check_name(name)).resolve()
    if directory.parent != root:
        raise SandboxError(f"sandbox {name!r}: {directory} is not a directory directly under {root}",
                           fix=f"remove the link at {root / name} by hand, then try again")
    return directory


@contextmanager
def root_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def all_states(root: Path) -> list[SandboxState]:
    states = []
    for path in sorted(root.glob(f"*/{STATE_FILE}")):
        try:
            states.append(SandboxState.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return states


def save(state: SandboxState) -> None:
    write_atomically(Path(state.directory) / STATE_FILE, json.dumps(state.to_json(), indent=2))


def load_state(name: str) -> SandboxState:
    path = directory_of(name) / STATE_FILE
    try:
        return SandboxState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SandboxError(f"no sandbox named {name!r}", fix="`trainfleet sandbox up --nodes N`") from None


def list_states() -> list[SandboxState]:
    return all_states(sandbox_root())


def replace_nodes(state: SandboxState, nodes: list[SandboxNode]) -> SandboxState:
    return SandboxState(**{**{k: v for k, v in asdict(state).items() if k != "nodes"}, "nodes": tuple(nodes)})
