"""SSH connections: host keys always verified, failures explained per node.

This is the only module that opens SSH connections (asyncssh for trainfleet itself,
the same settings rendered as OpenSSH options for rsync and pdsh). Host keys are always
checked against the fleet's known_hosts files; an unknown or changed key is refused.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shlex
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from trainfleet.fleet.model import Fleet, Node, SSHSettings

if TYPE_CHECKING:
    import asyncssh

KEEPALIVE_COUNT = 4
"""Keepalives missed in a row before a link counts as closed."""


class NodeUnreachable(Exception):
    """SSH to a node failed before any command ran; the message names cause and fix."""

    def __init__(self, node: Node, reason: str) -> None:
        super().__init__(f"{node.name} ({node.ssh_target}): {reason}")
        self.node = node
        self.reason = reason


def _host_in_known_hosts(paths: list[str], host: str, port: int) -> bool:
    wanted = host if port == 22 else f"[{host}]:{port}"
    for path in paths:
        try:
            with open(path) as handle:
                for line in handle:
                    fields = line.split()
                    if fields and fields[0] == "@cert-authority":
                        continue
                    if fields and not line.startswith("#") and any(
                            _hashed_match(name, wanted) if name.startswith("|1|") else name == wanted
                            for name in fields[0].split(",")):
                        return True
        except OSError:
            continue
    return False


def _hashed_match(entry: str, host: str) -> bool:
    """OpenSSH's HashKnownHosts form, `|1|salt|hash` (Ubuntu's default): HMAC-SHA1 of the name."""
    import base64
    import hashlib
    import hmac

    try:
        _, _, salt, digest = entry.split("|")
        mac = hmac.new(base64.b64decode(salt), host.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(base64.b64encode(mac).decode(), digest)
    except ValueError:
        return False


def host_pinned(paths: list[str], node: Node) -> bool:
    """Whether a node's host key is in one of these known_hosts files (by its host and port)."""
    return _host_in_known_hosts(paths, node.host, node.port)


def known_hosts_files(ssh: SSHSettings) -> list[str]:
    """The user's known_hosts and the fleet's pinned one, those that exist."""
    return [p for p in (ssh.known_hosts, ssh.fleet_known_hosts) if p and os.path.isfile(p)]


def _explain(node: Node, ssh: SSHSettings, exc: BaseException) -> str:
    import asyncssh

    target = f"{node.host}:{node.port}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        files = known_hosts_files(ssh)
        shown = " and ".join(files) or ssh.known_hosts
        if _host_in_known_hosts(files, node.host, node.port):
            return (f"host key of {target} does not match {shown}: refusing to connect "
                    f"(the machine was replaced, or someone is in the middle); fix: if the change is "
                    f"expected, `trainfleet ssh setup --repin {node.name}` shows the old and new "
                    f"fingerprints and pins the new one once you confirm it")
        return (f"host key of {target} is not in {shown}; fix: run `trainfleet ssh setup` to see its "
                f"fingerprint and pin it")
    if isinstance(exc, asyncssh.PermissionDenied):
        key = node.identity_file or "your default keys / agent"
        return (f"authentication failed as {node.user!r} with {key}; fix: install the public key in "
                f"{node.user}'s ~/.ssh/authorized_keys, or `trainfleet ssh setup --ask-password`")
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused at {target}; fix: start sshd there or correct `port:`"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return (f"no answer from {target} within {ssh.connect_timeout:g}s; fix: check the address, "
                f"that the machine is up, and firewalls on the path")
    if isinstance(exc, FileNotFoundError) and exc.filename == ssh.known_hosts:
        return (f"no known host keys: {ssh.known_hosts} does not exist and `trainfleet ssh setup` has not pinned "
                f"this fleet's; fix: run `trainfleet ssh setup` (it shows each node's fingerprint and pins it)")
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"file not found: {exc.filename}"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return (f"no route to {target} ({exc.strerror}); fix: check the address, that the machine is up, and "
                    f"that this machine's network (a VPN?) reaches it")
        if exc.errno == errno.ECONNRESET:
            return (f"{target} reset the connection before SSH began; fix: `ssh -v -p {node.port} "
                    f"{node.user}@{node.host}` shows who answers (fail2ban or a firewall on the path?)")
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {node.host!r} ({exc.strerror}); fix: correct `host:` (an address or a DNS name)"
        return (f"cannot reach {target}: {exc.strerror or exc}; fix: check the address, that the machine is up, "
                f"and firewalls on the path")
    if isinstance(exc, asyncssh.ConnectionLost):
        return (f"{target} accepted the connection, then closed it during SSH's handshake ({exc.reason}); fix: check "
                f"that `port:` is sshd's (not another service) and that sshd's MaxStartups, fail2ban or a cloud "
                f"firewall does not drop this machine; `ssh -v -p {node.port} {node.user}@{node.host}` shows where")
    if isinstance(exc, asyncssh.Error):
        return (f"the SSH server at {target} ended the connection: {exc.reason}; fix: `ssh -v -p {node.port} "
                f"{node.user}@{node.host}` shows the server's side of it")
    return f"{type(exc).__name__}: {exc}"


def client_keys(node: Node, ssh: SSHSettings) -> list[str] | None:
    """The node's key (or the usual defaults), then the controller key once `ssh setup` made one."""
    if node.identity_file:
        keys = [node.identity_file]
    else:
        keys = [p for p in (os.path.expanduser(f"~/.ssh/{name}") for name in ("id_ed25519", "id_ecdsa", "id_rsa"))
                if os.path.isfile(p)]
    # The controller's own key where `ssh setup` made one; the fleet key only where it did not (a
    # setup of an older trainfleet, whose nodes accept that key from anywhere).
    for key in (ssh.controller_key, ssh.fleet_key):
        if key and os.path.isfile(key):
            keys.append(key)
            break
    return keys or None


def start_tcp(nodes: Sequence[Node]) -> dict[str, socket.socket]:
    """Begin TCP connections to nodes (no jump host) before the SSH library is even loaded.

    Each sshd forks and re-executes itself on accept; starting that now lets the nodes
    do it while this process is still importing asyncssh (about 0.2 s). `connect`
    finishes the handshake on these sockets, and falls back to a fresh connection.
    """
    sockets: dict[str, socket.socket] = {}
    for node in nodes:
        if node.jump is not None:
            continue
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                node.host, node.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)[0]
        except (socket.gaierror, IndexError):
            continue  # a name to resolve: asyncssh does that itself
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        if sock.connect_ex(address) not in (0, errno.EINPROGRESS):
            sock.close()
            continue
        sockets[node.name] = sock
    return sockets


async def _connected(sock: socket.socket, timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    writable = loop.create_future()
    loop.add_writer(sock.fileno(), lambda: writable.done() or writable.set_result(None))
    try:
        await asyncio.wait_for(writable, timeout)
    finally:
        loop.remove_writer(sock.fileno())
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))
    return sock


ALGORITHMS = {
    # What OpenSSH 7.4 and later (every current distribution) agree on, post-quantum first:
    # asyncssh's own lists offer about 60 names more (old, and never chosen against these
    # servers), about 1 KB of every connection's first message; at 128 nodes that is
    # doctor's byte budget. A server that speaks none of these is refused by name.
    "kex_algs": ("mlkem768x25519-sha256", "sntrup761x25519-sha512@openssh.com", "curve25519-sha256",
                 "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256", "ecdh-sha2-nistp384",
                 "diffie-hellman-group16-sha512", "diffie-hellman-group14-sha256"),
    "encryption_algs": ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                        "aes128-ctr", "aes256-ctr"),
    "mac_algs": ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256",
                 "hmac-sha2-512"),
    "compression_algs": ("none",),
}


def algorithms() -> dict[str, list[str]]:
    """ALGORITHMS, less those this asyncssh cannot do (a post-quantum exchange needs liboqs)."""
    from asyncssh import compression, encryption, kex, mac

    able = {"kex_algs": kex.get_kex_algs(), "encryption_algs": encryption.get_encryption_algs(),
            "mac_algs": mac.get_mac_algs(), "compression_algs": compression.get_compression_algs()}
    return {option: [name for name in names if name.encode() in able[option]] for option, names in ALGORITHMS.items()}


HANDSHAKE_TIMEOUT = 60.0
"""Seconds from a TCP connection to a logged-in SSH session. `connect_timeout` is for
reaching the machine (as OpenSSH's ConnectTimeout); once its sshd has answered, a loaded
machine (or a laptop starting 128 handshakes) may take longer to finish."""


async def _tcp(node: Node, timeout: float) -> socket.socket:
    """A TCP connection to the node's sshd, within `timeout`."""
    loop = asyncio.get_running_loop()
    family, kind, proto, _, address = (await asyncio.wait_for(
        loop.getaddrinfo(node.host, node.port, type=socket.SOCK_STREAM), timeout))[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect(node: Node, ssh: SSHSettings, sock: socket.socket | None = None, *,
                  password: str | None = None, known_hosts: object = None) -> asyncssh.SSHClientConnection:
    """An authenticated connection, or NodeUnreachable with the cause and a fix.

    `password` is tried after the keys (it is never stored); `known_hosts` overrides the
    fleet's files (`ssh setup` passes the keys it has just pinned)."""
    import asyncssh

    tunnel = None
    try:
        if sock is not None:
            try:
                sock = await _connected(sock, ssh.connect_timeout)
            except OSError:
                sock.close()
                raise
        elif node.jump is None:
            sock = await _tcp(node, ssh.connect_timeout)
        if known_hosts is None:
            files = known_hosts_files(ssh)
            if not files:
                raise FileNotFoundError(2, "known_hosts file does not exist", ssh.known_hosts)
            known_hosts = asyncssh.read_known_hosts(files)
        common = {
            "known_hosts": known_hosts,
            "config": (),
            "connect_timeout": ssh.connect_timeout,
            "login_timeout": ssh.connect_timeout,
            "keepalive_interval": ssh.keepalive,
            "keepalive_count_max": KEEPALIVE_COUNT,
            "client_keys": client_keys(node, ssh),
            **algorithms(),
        }
        if password is not None:
            common["password"] = password
        if node.jump is not None:
            tunnel = await asyncssh.connect(node.jump.host, port=node.jump.port,
                                            username=node.jump.user or node.user, **common)
        if sock is not None:  # reached: the handshake and login get longer
            common["connect_timeout"] = common["login_timeout"] = max(HANDSHAKE_TIMEOUT, ssh.connect_timeout)
        try:
            return await asyncssh.connect(node.host, port=node.port, username=node.user,
                                          tunnel=tunnel, sock=sock, **common)
        except (asyncio.TimeoutError, TimeoutError):
            if sock is None:
                raise
            raise NodeUnreachable(node, f"{node.host}:{node.port} answered, but the SSH login did not finish within "
                                        f"{common['connect_timeout']:g}s; fix: check that sshd (not another "
                                        f"program) listens there and that the machine is not overloaded") from None
    except NodeUnreachable:
        if tunnel is not None:
            tunnel.close()
        raise
    except Exception as exc:
        if tunnel is not None:
            tunnel.close()
        raise NodeUnreachable(node, _explain(node, ssh, exc)) from None


def openssh_options(fleet: Fleet, node: Node) -> list[str]:
    """The same trust settings for OpenSSH-based tools (rsync, pdsh): keys checked, no prompts."""
    options = [
        "-p", str(node.port),
        "-l", node.user,
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={' '.join(known_hosts_files(fleet.ssh)) or fleet.ssh.known_hosts}",
        "-o", f"ConnectTimeout={max(1, int(fleet.ssh.connect_timeout))}",
    ]
    keys = client_keys(node, fleet.ssh) if node.identity_file else None
    for key in keys or []:
        options += ["-i", key]
    if keys:
        options += ["-o", "IdentitiesOnly=yes"]
    if node.jump is not None:
        jump_user = node.jump.user or node.user
        options += ["-J", f"{jump_user}@{node.jump.host}:{node.jump.port}"]
    return options


def openssh_command(fleet: Fleet, node: Node) -> str:
    return shlex.join(["ssh", *openssh_options(fleet, node)])
