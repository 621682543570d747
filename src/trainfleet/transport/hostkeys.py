"""Keys: the fleet's key pair made, nodes' host keys read and compared with pinned ones.

What `ssh setup` needs of the SSH library, kept beside the connections that use it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from trainfleet.fleet.model import Fleet, Node
from trainfleet.transport.ssh import NodeUnreachable, connect, known_hosts_files


@dataclass(frozen=True)
class ScannedKey:
    key_type: str
    key_data: str
    fingerprint: str
    status: str
    """'pinned' (already trusted), 'new', or 'changed'."""
    pinned: tuple[str, ...] = ()
    """The fingerprints the known_hosts files hold for the host (the old ones, when changed)."""


class ScanFailed(Exception):
    """A node's host key could not be read (the message says why)."""


def new_key_pair(comment: str) -> tuple[bytes, bytes]:
    """An ed25519 key pair: (private key in OpenSSH format, public key line)."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key.export_private_key(), key.export_public_key()


async def _scan(node: Node, fleet: Fleet) -> Any:
    import asyncssh

    tunnel = None
    if node.jump is not None:
        jump = Node(**{**node.__dict__, "host": node.jump.host, "port": node.jump.port,
                       "user": node.jump.user or node.user, "jump": None})
        tunnel = await connect(jump, fleet.ssh)
    try:
        return await asyncio.wait_for(
            asyncssh.get_server_host_key(node.host, node.port, tunnel=tunnel or (), config=()),
            fleet.ssh.connect_timeout)
    finally:
        if tunnel is not None:
            tunnel.close()


async def scan_host_keys(fleet: Fleet) -> dict[str, ScannedKey | ScanFailed]:
    """Every node's host key, and whether the fleet's known_hosts files already pin it."""
    import asyncssh

    files = known_hosts_files(fleet.ssh)
    trusted = asyncssh.read_known_hosts(files) if files else None

    async def one(node: Node) -> ScannedKey | ScanFailed:
        try:
            key = await _scan(node, fleet)
        except (OSError, asyncio.TimeoutError, asyncssh.Error, NodeUnreachable) as exc:
            return ScanFailed(str(exc))
        status, pinned = "new", ()
        if trusted is not None:
            host_keys = trusted.match(node.host, "", node.port)[0]
            if host_keys:
                status = "pinned" if key.public_data in {k.public_data for k in host_keys} else "changed"
                pinned = tuple(k.get_fingerprint("sha256") for k in host_keys)
        line = key.export_public_key().decode().split()
        return ScannedKey(line[0], line[1], key.get_fingerprint("sha256"), status, pinned)

    found = await asyncio.gather(*(one(n) for n in fleet.nodes))
    return {node.name: key for node, key in zip(fleet.nodes, found)}


def forget_host_key(files: list[str], host: str, port: int) -> list[str]:
    """The host's lines taken out of each known_hosts file (hashed ones too, as OpenSSH's
    own `ssh-keygen -R` does it); the files that held one."""
    import subprocess

    name = host if port == 22 else f"[{host}]:{port}"
    changed = []
    for path in files:
        done = subprocess.run(["ssh-keygen", "-R", name, "-f", path], capture_output=True, text=True)
        if done.returncode == 0 and "updated" in done.stdout + done.stderr:
            changed.append(path)
    return changed


def pinned_keys(known_hosts_text: str) -> object:
    """known_hosts lines as the session takes them (`FleetSession.open(known_hosts=...)`)."""
    import asyncssh

    return asyncssh.import_known_hosts(known_hosts_text)
