"""Mounting the fleet file's `storage:` on every node: a pure plan, rendered as commands.

Per storage and node, what to run (argv lists, no shell), what undoes it, what the
mount looks like once made (its file system type in /proc/self/mountinfo) and which
secrets its helper needs in its environment. Secrets never appear in argv: s3fs reads
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and mount.cifs reads PASSWD from the
environment, which the node agent builds from values sent over the SSH channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trainfleet.fleet.model import Fleet, Node, Storage

SSHFS_OPTIONS = ("reconnect", "ServerAliveInterval=15", "ServerAliveCountMax=3", "BatchMode=yes",
                 "StrictHostKeyChecking=yes")
NFS_OPTIONS = ("vers=4.2", "hard", "timeo=600")
EXPORT_OPTIONS = "rw,sync,no_subtree_check,root_squash"
"""root_squash: root on a client (any node) writes as nobody, not as the server's root."""
FUSE_UNMOUNT = 'fusermount3 -u "$1" 2>/dev/null || fusermount -u "$1"'


@dataclass(frozen=True)
class MountStep:
    node: str
    mount: str
    """The path on this node (for the serving node of shared-dir and nfs: the served directory's path there)."""
    label: str
    """What it is, for messages: `shared-dir node0:/data`."""
    role: str
    """client: a mount is made here; server: this node serves the directory (nothing is mounted)."""
    fstypes: tuple[str, ...]
    """mountinfo types that mean "mounted" (clients)."""
    commands: tuple[tuple[str, ...], ...]
    undo: tuple[tuple[str, ...], ...]
    env: tuple[tuple[str, str], ...] = ()
    """(variable the helper reads, secret that holds its value)."""
    requires: tuple[str, ...] = ()
    """Kernel file systems it needs (as /proc/filesystems names them)."""


@dataclass(frozen=True)
class Visibility:
    """One storage, seen from every node: where it is mounted, and whether a file written
    through it on one node was read on the others."""

    storage: Storage
    label: str
    mounted: tuple[str, ...]
    absent: tuple[str, ...]
    writer: str | None
    unseen: Mapping[str, str] = field(default_factory=dict)
    """Nodes (with the mount) that did not read the file back, and what they saw."""
    error: str = ""


def serving_node(fleet: Fleet, storage: Storage) -> Node:
    return fleet.node(storage.node) if storage.node else fleet.head


def label(fleet: Fleet, storage: Storage) -> str:
    if storage.type == "shared-dir":
        return f"shared-dir {serving_node(fleet, storage).name}:{storage.source or storage.mount}"
    if storage.type == "nfs":
        return f"nfs {storage.server or serving_node(fleet, storage).name}:{storage.source}"
    if storage.type == "s3":
        return f"s3 bucket {storage.bucket}" + (f" at {storage.endpoint}" if storage.endpoint else "")
    return f"cifs {storage.source}"


def _options(base: tuple[str, ...], storage: Storage) -> str:
    return ",".join(base + storage.options)


def _remote_path(path: str) -> str:
    # sshfs resolves a relative remote path from the login's home: `~/data` is `data`.
    return path[2:] if path.startswith("~/") else path


def _serve(node: Node, storage: Storage, served: str, text: str, extra: tuple[tuple[str, ...], ...] = (),
           undo: tuple[tuple[str, ...], ...] = (), requires: tuple[str, ...] = ()) -> MountStep:
    """The serving node keeps the directory itself; its own `mount` path points at it."""
    commands: tuple[tuple[str, ...], ...] = (("mkdir", "-p", served),)
    if storage.mount != served:
        commands += (("ln", "-sfn", served, storage.mount),)
    return MountStep(node=node.name, mount=storage.mount, label=text, role="server", fstypes=(),
                     commands=commands + extra, undo=undo, requires=requires)


def plan_mounts(fleet: Fleet, nodes: tuple[Node, ...] | None = None,
                addresses: Mapping[str, str] | None = None) -> list[MountStep]:
    """Every storage's steps on `nodes` (default: all), servers before clients.
    `addresses`: the nodes' training addresses (NFS exports to them, clients mount from them)."""
    chosen = nodes if nodes is not None else fleet.nodes
    addresses = addresses or {n.name: n.address for n in fleet.nodes}
    steps: list[MountStep] = []
    for storage in fleet.storage:
        text = label(fleet, storage)
        for node in chosen:
            steps.append(_step(fleet, storage, node, text, addresses))
    return sorted(steps, key=lambda s: s.role != "server")


def _step(fleet: Fleet, storage: Storage, node: Node, text: str, addresses: Mapping[str, str]) -> MountStep:
    mount = storage.mount
    if storage.type == "shared-dir":
        server = serving_node(fleet, storage)
        served = storage.source or mount
        if node.name == server.name:
            return _serve(node, storage, served, text)
        return MountStep(node=node.name, mount=mount, label=text, role="client", fstypes=("fuse.sshfs",),
                         commands=(("mkdir", "-p", mount),
                                   ("sshfs", f"{server.name}:{_remote_path(served)}", mount, "-o",
                                    _options(SSHFS_OPTIONS, storage))),
                         undo=(("sh", "-c", FUSE_UNMOUNT, "sh", mount),), requires=("fuse",))
    if storage.type == "nfs":
        if not storage.server:
            server = serving_node(fleet, storage)
            clients = [n for n in fleet.nodes if n.name != server.name]
            if node.name == server.name:
                exports = tuple(("exportfs", "-o", EXPORT_OPTIONS, f"{addresses[c.name]}:{storage.source}")
                                for c in clients)
                unexports = tuple(("exportfs", "-u", f"{addresses[c.name]}:{storage.source}") for c in clients)
                return _serve(node, storage, storage.source, text, exports, unexports, requires=("nfsd",))
            host = addresses[server.name]
        else:
            host = storage.server
        return MountStep(node=node.name, mount=mount, label=text, role="client", fstypes=("nfs", "nfs4"),
                         commands=(("mkdir", "-p", mount),
                                   ("mount", "-t", "nfs", "-o", _options(NFS_OPTIONS, storage),
                                    f"{host}:{storage.source}", mount)),
                         undo=(("umount", mount),), requires=("nfs",))
    if storage.type == "s3":
        base: tuple[str, ...] = ()
        if storage.endpoint:
            base += (f"url={storage.endpoint}", "use_path_request_style")
        if storage.region:
            base += (f"endpoint={storage.region}",)
        bucket = storage.bucket + (f":/{storage.source.strip('/')}" if storage.source else "")
        return MountStep(node=node.name, mount=mount, label=text, role="client", fstypes=("fuse.s3fs",),
                         commands=(("mkdir", "-p", mount), ("s3fs", bucket, mount, "-o", _options(base, storage))),
                         undo=(("sh", "-c", FUSE_UNMOUNT, "sh", mount),),
                         env=(("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
                              ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")), requires=("fuse",))
    return MountStep(node=node.name, mount=mount, label=text, role="client", fstypes=("cifs", "smb3"),
                     commands=(("mkdir", "-p", mount),
                               ("mount", "-t", "cifs", storage.source, mount, "-o",
                                _options((f"username={storage.username}", "vers=3.0"), storage))),
                     undo=(("umount", mount),), env=(("PASSWD", storage.password_secret),), requires=("cifs",))


def render(steps: list[MountStep]) -> str:
    """The plan as a reader checks it (and `mount --dry-run` prints it): no secret values."""
    import shlex

    lines = []
    for step in steps:
        env = " ".join(f"{variable}=<secret {secret}>" for variable, secret in step.env)
        lines.append(f"# {step.node}: {step.label} at {step.mount} ({step.role})")
        lines += [(env + " " if env and command[0] not in ("mkdir", "ln") else "") + shlex.join(command)
                  for command in step.commands]
    return "\n".join(lines) + "\n"
