"""The fleet as plain frozen values: which machines, how to reach them, where jobs run.

Nothing here reads files or touches the network; `fleet.load` builds these values from
a fleet file, and every other part of trainfleet only reads them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from trainfleet.errors import SpecError

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
    spare: bool = False
    """Held back from torchrun jobs until a node is lost, then it takes that node's place."""

    @property
    def ssh_target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SSHSettings:
    known_hosts: str
    connect_timeout: float
    fanout: int
    keep_agent: float = 600.0
    """Seconds each node keeps a resident agent after a command, for the next one to reach
    without a login shell (0: none; see agent/resident.py)."""
    keepalive: float = 15.0
    """Seconds between SSH keepalives; a link that misses 4 in a row counts as closed
    (OpenSSH's ServerAliveInterval and ServerAliveCountMax)."""
    reconnect_timeout: float = 600.0
    """Seconds an attached client keeps trying to get back to a node whose link closed
    before it leaves (the job goes on); `run --reconnect-timeout` overrides it."""
    state_dir: str = ""
    """Where `trainfleet ssh setup` keeps this fleet's key, pinned host keys and ssh_config:
    outside the project tree, so that no `git add .` or rsync ever picks the key up."""

    @property
    def fleet_key(self) -> str:
        return os.path.join(self.state_dir, "id_ed25519") if self.state_dir else ""

    @property
    def controller_key(self) -> str:
        """The key this controller logs in with after `ssh setup`: never copied to a node
        (the fleet key, which every node holds, is accepted from the fleet's own addresses only)."""
        return os.path.join(self.state_dir, "id_ed25519_controller") if self.state_dir else ""

    @property
    def fleet_known_hosts(self) -> str:
        return os.path.join(self.state_dir, "known_hosts") if self.state_dir else ""

    @property
    def ssh_config(self) -> str:
        return os.path.join(self.state_dir, "ssh_config") if self.state_dir else ""


@dataclass(frozen=True)
class Setup:
    """Shell commands that prepare each node for the project (run in its directory)."""

    commands: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    """Project files whose content decides whether setup must run again (requirements.txt);
    files the commands name are found without being listed."""


@dataclass(frozen=True)
class Container:
    """Run jobs and setup inside a container on every node."""

    image: str = ""
    engine: str = "docker"
    options: tuple[str, ...] = ()
    """Extra `run` options (`--shm-size=32g`, `--ulimit ...`)."""
    engine_options: tuple[str, ...] = ()
    """Options of the engine itself, before `run` (podman's `--storage-driver vfs`)."""
    rootfs: str = ""
    """podman: an exploded root file system to run from, instead of an image."""
    python: str = "python"
    """The Python inside the container."""


@dataclass(frozen=True)
class Storage:
    """A file system mounted at the same path on every node (`storage:` in the fleet file)."""

    type: str
    """shared-dir (a directory of one node over sshfs), nfs, s3 (s3fs) or cifs."""
    mount: str
    source: str = ""
    """shared-dir: the directory on the serving node (default: `mount`); nfs: the exported
    path; cifs: //server/share; s3: a prefix in the bucket (optional)."""
    node: str = ""
    """shared-dir and nfs: the node that serves it (default: node 0)."""
    server: str = ""
    """nfs: a server outside the fleet, instead of a node."""
    bucket: str = ""
    endpoint: str = ""
    """s3: the URL of an S3-compatible server (default: AWS)."""
    region: str = ""
    username: str = ""
    """cifs: the user; the password comes from the secret `password_secret`."""
    password_secret: str = "CIFS_PASSWORD"
    options: tuple[str, ...] = ()
    """Extra mount options (`-o` values)."""


@dataclass(frozen=True)
class Fleet:
    nodes: tuple[Node, ...]
    workdir: str
    python: str
    env: Mapping[str, str]
    ssh: SSHSettings
    secrets: tuple[str, ...] = ()
    """Names of environment variables whose values are asked for at run time, never stored."""
    sync_exclude: tuple[str, ...] = ()
    """rsync patterns never copied to the nodes, besides .gitignore's."""
    setup: Setup = Setup()
    launcher: str = "torchrun"
    """The project's launcher when `run` names none."""
    container: Container | None = None
    storage: tuple[Storage, ...] = ()
    firewall: str = "open"
    """"closed": `run` closes the job's ports to everyone but the fleet first (`firewall apply`)."""
    source: str = field(default="<memory>", compare=False)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise SpecError(f"{self.source}: no node named {name!r} (nodes: {known})")

    def select(self, names: list[str] | None) -> tuple[Node, ...]:
        """The named nodes in fleet order (all when no names are given)."""
        if not names:
            return self.nodes
        wanted = {self.node(name).name for name in names}
        return tuple(n for n in self.nodes if n.name in wanted)

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def subset(self, nodes: tuple[Node, ...]) -> Fleet:
        """The same fleet on fewer nodes (the first of them is node 0 of the job); a
        directory another node serves must stay with its server."""
        if nodes == self.nodes:
            return self
        names = {n.name for n in nodes}
        storage = tuple(replace(s, node=s.node or self.head.name) if s.type in ("shared-dir", "nfs") and not s.server
                        else s for s in self.storage)
        for entry in storage:
            if entry.type in ("shared-dir", "nfs") and not entry.server and entry.node not in names:
                raise SpecError(f"{self.source}: storage {entry.mount} is served by {entry.node}, which is not "
                                f"among the chosen nodes", fix=f"add {entry.node} to -n")
        return replace(self, nodes=nodes, storage=storage)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fleet:
        nodes = tuple(Node(**{**n, "jump": Jump(**n["jump"]) if n["jump"] else None}) for n in data["nodes"])
        setup = data.get("setup") or {}
        return cls(nodes=nodes, workdir=data["workdir"], python=data["python"], env=dict(data["env"]),
                   ssh=SSHSettings(**data["ssh"]), secrets=tuple(data["secrets"]),
                   sync_exclude=tuple(data.get("sync_exclude", ())),
                   setup=Setup(commands=tuple(setup.get("commands", ())), files=tuple(setup.get("files", ()))),
                   launcher=data.get("launcher", cls.launcher),
                   container=Container(**{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in data["container"].items()}) if data.get("container") else None,
                   storage=tuple(Storage(**{**entry, "options": tuple(entry.get("options", ()))})
                                 for entry in data.get("storage", ())),
                   firewall=data.get("firewall", "open"), source=data["source"])
