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

It is kept only while it is sure to behave as a fresh one would, and only where nobody
else can take its place:
- its folder, and every folder from the home down to it, is the user's own, writable by
  nobody else and no symbolic link (else none is kept, and the login shell's agent says why);
- it makes a random secret, which the login shell's agent reports to the controller over
  SSH; the controller proves it is talking to that resident (challenge and answer, an
  HMAC of a fresh challenge) before it sends a request: a socket planted at its path
  receives nothing;
- it answers only the user (or root), by the kernel's peer credentials, before reading;
- its name is the agent's sha256, the fleet's Python and the node's address, so a
  changed agent or Python is a different one, and nodes that share a home never meet;
- it runs in the environment the login shell gave it, so when a start-up file or the
  Python itself changes it refuses, leaves, and the controller starts one afresh;
- it leaves after `idle` seconds with no command (or when another took its name).
"""

import hashlib
import hmac
import importlib
import json
import os
import select
import socket
import stat
import struct
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

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


def unsafe(folder: str) -> str:
    """Why a socket in `folder` could be another's ("" when it cannot): every folder from
    the home down is checked (made 0700 where missing), the last must be private."""
    home = os.path.expanduser("~")
    parts = os.path.relpath(folder, home).split(os.sep)
    path = home
    for index, part in enumerate([""] + parts):
        path = os.path.join(path, part) if part else path
        try:
            if part:
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    pass
            found = os.lstat(path)
        except OSError as exc:
            return "%s: %s" % (path, exc.strerror or exc)
        if stat.S_ISLNK(found.st_mode):
            return "%s is a symbolic link" % path
        if not stat.S_ISDIR(found.st_mode):
            return "%s is not a directory" % path
        if found.st_uid not in (os.getuid(), 0) or (part and found.st_uid != os.getuid()):
            return "%s is owned by uid %d" % (path, found.st_uid)
        if found.st_mode & 0o022:
            return "%s is writable by others (mode %o)" % (path, found.st_mode & 0o777)
        if index == len(parts) and found.st_mode & 0o077:
            return "%s is open to others (mode %o)" % (path, found.st_mode & 0o777)
    return ""


def proof(secret: str, challenge: str) -> str:
    """What the resident answers to a challenge: only one that knows the secret can."""
    return hmac.new(bytes.fromhex(secret), b"tf-resident:" + challenge.encode(), hashlib.sha256).hexdigest()


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


def start(key: str, idle: float, serve: Callable[[], None]) -> Dict[str, str]:
    """From the agent a login shell started: for its ready message, the path the controller
    reaches the resident at and its secret (a new one is started: one already there could
    be reached, but its secret is not known here), or why none is kept."""
    if idle <= 0 or not key.isalnum():
        return {}
    folder, path = socket_path(key)
    if len(path.encode()) > 100:  # sun_path holds 108 bytes
        return {}
    refused = unsafe(folder)
    if refused:
        return {"resident_refused": refused}
    secret = os.urandom(32).hex()
    bound, said = os.pipe()
    first = os.fork()
    if first:
        os.close(said)
        os.waitpid(first, 0)
        ready = select.select([bound], [], [], 5)[0] and os.read(bound, 1) == b"y"  # listening: the next
        os.close(bound)  # command, however soon, finds it
        return {"resident": path, "resident_secret": secret} if ready else {}
    try:  # detached from the command's session, and not a child of its agent
        os.close(bound)
        os.setsid()
        if os.fork() == 0:
            _resident(path, idle, said, serve, secret)
    finally:
        os._exit(0)


def _rename(name: bytes) -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass


def _resident(path: str, idle: float, said: int, serve: Callable[[], None], secret: str) -> None:
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
                _serve(conn, serve, secret)
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


def _answer_challenge(conn: socket.socket, secret: str) -> bool:
    """The controller's challenge (one short line), answered with the proof."""
    conn.settimeout(10)
    line = b""
    while not line.endswith(b"\n") and len(line) < 256:
        chunk = conn.recv(256 - len(line))
        if not chunk:
            return False
        line += chunk
    try:
        challenge = json.loads(line.decode())["challenge"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return False
    if not isinstance(challenge, str) or not 16 <= len(challenge) <= 128:
        return False
    conn.sendall((json.dumps({"proof": proof(secret, challenge)}) + "\n").encode())
    conn.settimeout(None)
    return True


def _serve(conn: socket.socket, serve: Callable[[], None], secret: str) -> None:
    """In the fork: the controller's challenge answered, the connection becomes stdin and
    stdout, and the agent's loop runs as in an agent a shell started (it ends the process
    when the controller is done)."""
    try:
        if not _answer_challenge(conn, secret):
            return
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
