"""The fleet: which machines, how to reach them, where jobs run on them.

`fleet.yaml` is validated by the pydantic models in `fleetfile.py` (unknown keys are
rejected with their path) and resolved into the plain frozen `Fleet` / `Node` values
here, which the rest of trainfleet reads. Nothing in this module touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainfleet.errors import SpecError

DEFAULT_FLEET_FILE = "fleet.yaml"
FLEET_ENV_VAR = "TRAINFLEET_FLEET"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Jump:
    """A bastion that SSH goes through first (OpenSSH's ProxyJump)."""

    host: str
    port: int = 22
    user: str | None = None

    @classmethod
    def parse(cls, text: str) -> Jump:
        user, _, hostport = text.rpartition("@")
        host, port = hostport, 22
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            if rest.startswith(":"):
                port = int(rest[1:])
        elif hostport.count(":") == 1:
            host, port_text = hostport.split(":")
            port = int(port_text)
        if not host:
            raise ValueError(f"jump host {text!r} has no host name")
        return cls(host=host, port=port, user=user or None)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}:{self.port}"


@dataclass(frozen=True)
class Node:
    """One machine, with every SSH setting resolved."""

    name: str
    host: str
    port: int
    user: str
    slots: int
    identity_file: str | None
    address: str
    interface: str | None
    jump: Jump | None

    @property
    def ssh_target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SSHSettings:
    known_hosts: str
    connect_timeout: float
    fanout: int
    fleet_dir: str = ""
    """Where `trainfleet ssh setup` keeps this fleet's key, pinned host keys and ssh_config."""

    @property
    def fleet_key(self) -> str:
        return os.path.join(self.fleet_dir, "id_ed25519") if self.fleet_dir else ""

    @property
    def fleet_known_hosts(self) -> str:
        return os.path.join(self.fleet_dir, "known_hosts") if self.fleet_dir else ""

    def known_hosts_files(self) -> list[str]:
        """The user's known_hosts and the fleet's pinned one, those that exist."""
        return [p for p in (self.known_hosts, self.fleet_known_hosts) if p and os.path.isfile(p)]


def fleet_dir_for(source: str) -> str:
    """`.trainfleet/<fleet file name>/ssh` beside the fleet file."""
    path = Path(source).absolute()
    return str(path.parent / ".trainfleet" / path.name / "ssh")


@dataclass(frozen=True)
class Fleet:
    nodes: tuple[Node, ...]
    workdir: str
    python: str
    env: Mapping[str, str]
    ssh: SSHSettings
    secrets: tuple[str, ...] = ()
    """Names of environment variables whose values are asked for at run time, never stored."""
    source: str = field(default="<memory>", compare=False)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise SpecError(f"{self.source}: no node named {name!r} (nodes: {known})")

    def select(self, names: list[str] | None) -> tuple[Node, ...]:
        if not names:
            return self.nodes
        return tuple(self.node(name) for name in names)

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Fleet:  # type: ignore[type-arg]
        nodes = tuple(Node(**{**n, "jump": Jump(**n["jump"]) if n["jump"] else None}) for n in data["nodes"])
        return cls(nodes=nodes, workdir=data["workdir"], python=data["python"], env=dict(data["env"]),
                   ssh=SSHSettings(**data["ssh"]), secrets=tuple(data["secrets"]), source=data["source"])


def fleet_path(option: str | None) -> Path:
    return Path(option or os.environ.get(FLEET_ENV_VAR) or DEFAULT_FLEET_FILE)


def _cache_file(path: Path, text: str) -> Path | None:
    """Where a fleet resolved from exactly this text, at this path, for this user is kept.

    Validation builds pydantic models, about 0.15 s per command; a content-addressed
    cache of the result makes repeated commands on an unchanged fleet file start faster.
    """
    if os.environ.get("TRAINFLEET_NO_CACHE"):
        return None
    from trainfleet import __version__

    root = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "trainfleet" / "fleets"
    identity = json.dumps([__version__, str(path.resolve()), os.path.expanduser("~"), _local_user(), text])
    return root / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.json"


def _cached(cache: Path | None) -> Fleet | None:
    if cache is None:
        return None
    try:
        fleet = Fleet.from_json(json.loads(cache.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # A key file deleted since: validate afresh, which names it.
    if any(n.identity_file and not os.path.isfile(n.identity_file) for n in fleet.nodes):
        return None
    return fleet


def _store(cache: Path | None, fleet: Fleet) -> None:
    if cache is None:
        return
    try:
        from trainfleet.files import write_atomically

        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cache, json.dumps(fleet.to_json()))
    except OSError:
        pass  # a read-only home only costs speed


def load_fleet(path: Path) -> Fleet:
    """Read a fleet file: YAML, or a DeepSpeed/MPI hostfile (`host slots=N` lines)."""
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{source}: fleet file not found",
                        fix="run `trainfleet init`, pass -f FILE, or set TRAINFLEET_FLEET") from None
    except OSError as exc:
        raise SpecError(f"{source}: cannot read fleet file: {exc.strerror}") from None
    cache = _cache_file(path, text)
    fleet = _cached(cache)
    if fleet is None:
        from trainfleet.fleetfile import parse_fleet_text

        fleet = parse_fleet_text(text, source, path.parent)
        _store(cache, fleet)
    return fleet


def _local_user() -> str:
    import getpass

    return getpass.getuser()
