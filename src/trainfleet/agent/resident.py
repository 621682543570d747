"""The resident agent: kept on a node after a command, so the next one needs no login shell.

Starting the agent costs a login shell and a Python on every node for every command. On
a loaded node most of that is the shell's start-up files (a `pyenv init` in ~/.bashrc is
about 175 processes), so the agent a login shell started leaves a copy of itself behind:
it listens on a unix socket in the user's ~/.cache/trainfleet/agents/ (0700, the socket
0600) and the controller's next command reaches it through its SSH connection (OpenSSH's
streamlocal forwarding: sshd connects as the user, no shell runs). Each connection is
served by a fork of it, exactly as the agent a shell starts serves its stdin, and that
fork exits when the controller is done: locks, listeners and threads of one command
never outlive it.

It is kept only while it is sure to behave as a fresh one would:
- it answers only the user (or root), by the kernel's peer credentials, before reading;
- its name is the agent's sha256, the fleet's Python and the node's address, so a
  changed agent or Python is a different one, and nodes that share a home never meet;
- it runs in the environment the login shell gave it, so when a start-up file or the
  Python itself changes it refuses, leaves, and the controller starts one afresh;
- it leaves after `idle` seconds with no command (or when another took its name).
"""

import importlib
import os
import select
import socket
import stat
import struct
import sys
import time
from typing import Any, Callable, List, Optional, Tuple

NAME = b"tf-agent"
"""What `ps` and /proc/PID/comm show for it (and for each fork serving a command)."""

START_FILES = ("~/.bashrc", "~/.bash_profile", "~/.bash_login", "~/.profile", "~/.zshenv", "~/.zprofile",
               "~/.zshrc", "~/.pam_environment", "/etc/profile", "/etc/profile.d", "/etc/bash.bashrc",
               "/etc/environment", "/etc/zsh/zshenv")

PRELOAD = ("main", "protocol", "records", "facts", "project", "probes", "procs")
"""Loaded once by the resident, so a fork serving a command finds them ready."""


def socket_path(key: str) -> Tuple[str, str]:
    folder = os.path.join(os.path.expanduser("~"), ".cache", "trainfleet", "agents")
    return folder, os.path.join(folder, key + ".sock")


def _private(folder: str) -> bool:
    """The folder is this user's own and nobody else's (made so if missing)."""
    try:
        os.makedirs(folder, 0o700, exist_ok=True)
        found = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and not found.st_mode & 0o077


def signature() -> List[Any]:
    """What the login shell's environment came from: each start-up file's identity, size
    and time (or its absence), and the Python's."""
    seen: List[Any] = []
    for name in START_FILES + (sys.executable,):
        try:
            found = os.stat(os.path.expanduser(name))
            seen.append((found.st_ino, found.st_size, found.st_mtime_ns))
        except OSError:
            seen.append(None)
    return seen


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(path)
        return probe.recv(64).startswith(b'{"ready"')  # a stale one closes instead, and leaves
    except OSError:
        return False
    finally:
        probe.close()


def start(key: str, idle: float, serve: Callable[[], None]) -> Optional[str]:
    """From the agent a login shell started: the path the controller reaches the resident
    at, starting one unless one answers there already; None where none can be kept."""
    if idle <= 0 or not key.isalnum():
        return None
    folder, path = socket_path(key)
    if len(path.encode()) > 100 or not _private(folder):  # sun_path holds 108 bytes
        return None
    if _answers(path):
        return path
    bound, said = os.pipe()
    first = os.fork()
    if first:
        os.close(said)
        os.waitpid(first, 0)
        ready = select.select([bound], [], [], 5)[0] and os.read(bound, 1) == b"y"  # listening: the next
        os.close(bound)  # command, however soon, finds it
        return path if ready else None
    try:  # detached from the command's session, and not a child of its agent
        os.close(bound)
        os.setsid()
        if os.fork() == 0:
            _resident(path, idle, said, serve)
    finally:
        os._exit(0)


def _rename(name: bytes) -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass


def _resident(path: str, idle: float, said: int, serve: Callable[[], None]) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.chdir(os.path.expanduser("~"))
    _rename(NAME)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    spare = "%s.%s" % (path, os.urandom(4).hex())
    umask = os.umask(0o177)
    try:
        listener.bind(spare)
    finally:
        os.umask(umask)
    listener.listen(128)
    os.replace(spare, path)  # another command's resident, if any, sees it lost its name and leaves
    mine = os.stat(path).st_ino
    os.write(said, b"y")
    os.close(said)
    began = signature()
    for module in PRELOAD:
        try:
            importlib.import_module("." + module, __package__)
        except Exception:
            pass
    listener.settimeout(2)
    serving: "set[int]" = set()
    last = time.monotonic()
    try:
        while True:
            _reap(serving)
            now = time.monotonic()
            if serving:
                last = now
            if now - last > idle or os.stat(path).st_ino != mine:
                return
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            if not _same_user(conn):
                conn.close()
                continue
            if signature() != began:  # the controller starts a fresh one through a login shell
                conn.close()
                return
            child = os.fork()
            if child == 0:
                listener.close()
                _serve(conn, serve)
            serving.add(child)
            conn.close()
            last = time.monotonic()
    except OSError:
        return
    finally:
        try:
            if os.stat(path).st_ino == mine:
                os.unlink(path)
        except OSError:
            pass


def _reap(serving: "set[int]") -> None:
    """Forget (and collect) the forks whose command has ended."""
    for pid in list(serving):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            serving.discard(pid)


def _same_user(conn: socket.socket) -> bool:
    """By the kernel's word (SO_PEERCRED), before a byte is read: this user, or root."""
    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return False
    return uid in (os.getuid(), 0)


def _serve(conn: socket.socket, serve: Callable[[], None]) -> None:
    """In the fork: the connection becomes stdin and stdout, and the agent's loop runs as
    in an agent a shell started (it ends the process when the controller is done)."""
    try:
        os.dup2(conn.fileno(), 0)
        os.dup2(conn.fileno(), 1)
        conn.close()
        sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        from . import PENDING

        del PENDING[:]
        serve()
    finally:
        os._exit(0)
