"""Mounts on this node: what is mounted where, making and removing them, and probing
them with small files, every step with a time limit.

The mount helpers run from this agent, so their mounts land in this node's mount
namespace (the sandbox's nodes each have one) and their daemons (sshfs, s3fs) outlive
the agent. A helper's secrets reach it only through its environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Dict, List, Optional

from .protocol import MountStatus, MountItem, MountResult, ProbeReply, ProbeRequest, StorageReply, StorageRequest
from .rankwrap import redact, secret_fragments

STEP_TIMEOUT = 60.0


def _unescape(path: str) -> str:
    # mountinfo writes a space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def mounted() -> Dict[str, str]:
    """Mount point -> file system type, from this process's mount namespace."""
    found = {}
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                fields = line.split()
                if "-" not in fields:
                    continue
                found[_unescape(fields[4])] = fields[fields.index("-") + 1]
    except OSError:
        pass
    return found


def _kernel_has(name: str) -> bool:
    try:
        with open("/proc/filesystems") as handle:
            return any(line.split()[-1] == name for line in handle if line.strip())
    except OSError:
        return False


def _path(path: str) -> str:
    return os.path.expanduser(path) if path.startswith("~") else path


def _state(item: MountItem, table: Dict[str, str]) -> bool:
    path = _path(item.mount)
    if item.role == "server":
        return os.path.isdir(path)
    return table.get(os.path.realpath(path), table.get(path)) in item.fstypes


def _missing(item: MountItem) -> Optional[str]:
    for name in item.requires:
        if name == "fuse" and not os.path.exists("/dev/fuse"):
            return "this node has no /dev/fuse (FUSE), which %s needs" % item.commands[-1][0]
        if name != "fuse" and not _kernel_has(name):
            return "this node's kernel has no %s file system (not in /proc/filesystems)" % name
    for command in item.commands:
        if command[0] not in ("mkdir", "ln", "sh") and shutil.which(command[0]) is None:
            return "%s is not installed on this node" % command[0]
    return None


def _run(commands: List[List[str]], env: Dict[str, str]) -> Optional[str]:
    for command in commands:
        argv = [_path(a) for a in command]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env=env, timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return "`%s` did not finish in %.0fs" % (" ".join(command[:2]), STEP_TIMEOUT)
        except OSError as exc:
            return "`%s`: %s" % (command[0], exc.strerror or exc)
        if done.returncode != 0:
            tail = done.stdout.decode(errors="replace").strip().splitlines()[-5:]
            return "`%s` exited %d: %s" % (" ".join(command[:2]), done.returncode, " | ".join(tail) or "no output")
    return None


def storage(request: StorageRequest) -> StorageReply:
    results = []
    for item in request.items:
        table = mounted()
        there = _state(item, table)
        if request.action == "status":
            results.append(MountResult(mount=item.mount, state=MountStatus.MOUNTED if there else MountStatus.ABSENT))
            continue
        if request.action == "mount":
            if there:
                results.append(MountResult(mount=item.mount, state=MountStatus.ALREADY))
                continue
            problem = _missing(item)
            if problem is None:
                env = dict(os.environ)
                env.update({variable: request.secrets.get(secret, "") for variable, secret in item.env.items()})
                problem = _run(item.commands, env)
                if problem:  # a helper may echo what it was given
                    problem = redact(problem, secret_fragments(request.secrets.values()))
            if problem is None and not _state(item, mounted()):
                problem = "the commands succeeded but %s is not mounted" % item.mount
            results.append(MountResult(mount=item.mount, state=MountStatus.FAILED if problem else MountStatus.MOUNTED,
                                       detail=problem or ""))
            continue
        if not there and item.role == "client":
            results.append(MountResult(mount=item.mount, state=MountStatus.ABSENT))
            continue
        if item.role == "server" and not item.undo:  # a served directory stays, with its files
            results.append(MountResult(mount=item.mount, state=MountStatus.MOUNTED if there else MountStatus.ABSENT))
            continue
        problem = _run(item.undo, dict(os.environ))
        if problem is None and item.role == "client" and _state(item, mounted()):
            problem = "%s is still mounted" % item.mount
        results.append(MountResult(mount=item.mount, state=MountStatus.FAILED if problem else MountStatus.UNMOUNTED, detail=problem or ""))
    return StorageReply(results=results)


def _limited(action, timeout: float) -> Optional[str]:  # type: ignore[no-untyped-def]
    """Run `action` in a thread; its error, or a timeout (the thread is left to a hung mount)."""
    outcome: List[Optional[str]] = []

    def work() -> None:
        try:
            action()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or str(exc))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return "no answer in %.0fs (a hung mount?)" % timeout
    return outcome[0]


def probe(request: ProbeRequest) -> ProbeReply:
    errors: Dict[str, str] = {}
    read: Dict[str, Optional[str]] = {}

    def write(path: str, text: str) -> None:
        with open(path, "w") as handle:  # written in place: object stores (s3fs) upload it on close
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    for path, text in request.write.items():
        error = _limited(lambda: write(_path(path), text), request.timeout)
        if error:
            errors[path] = error
    for path in request.read:
        def take(path: str = path) -> None:
            try:
                with open(_path(path)) as handle:
                    read[path] = handle.read()
            except FileNotFoundError:
                read[path] = None

        error = _limited(take, request.timeout)
        if error:
            errors[path] = error
    for path in request.remove:
        def drop(path: str = path) -> None:
            try:
                os.unlink(_path(path))
            except FileNotFoundError:
                pass

        error = _limited(drop, request.timeout)
        if error:
            errors[path] = error
    return ProbeReply(read=read, errors=errors)
