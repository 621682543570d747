"""`trainfleet clean` on a node: exactly what trainfleet left here, and nothing of the
user's (a project's code and what the job wrote there stay unless asked for)."""

from __future__ import annotations

import os
import shutil
import stat
from typing import List

from .project import MANIFEST
from .protocol import CleanReply, CleanRequest, UntrustRequest
from .records import SECRETS_DIRECTORY
from .trust import _markers, _read, untrust

CACHE_ENTRIES = ("agent", "agents", "pushed.json")
"""Under ~/.cache/trainfleet: the agent's code, the resident agents' sockets (a resident
leaves within seconds of its socket going), push's record of what each node has."""


def _size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (size, unit))
        size /= 1024  # type: ignore[assignment]
    return ""


def _mine(path: str) -> bool:
    try:
        found = os.lstat(path)
    except OSError:
        return False
    return found.st_uid == os.getuid()


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _trust(tag: str) -> List[str]:
    """What `ssh setup` added for this fleet, as `untrust` would take it away."""
    ssh = os.path.join(os.path.expanduser("~"), ".ssh")
    found = [os.path.join(ssh, name) for name in ("trainfleet_%s" % tag, "trainfleet_%s.pub" % tag,
                                                   "trainfleet_%s_known_hosts" % tag, "trainfleet_%s.state" % tag)
             if os.path.exists(os.path.join(ssh, name))]
    if any(line.rstrip().endswith(" trainfleet:%s" % tag) for line in (_read(os.path.join(ssh, "authorized_keys"))
                                                                       or "").splitlines()):
        found.append("%s: the fleet key's line" % os.path.join(ssh, "authorized_keys"))
    begin, _ = _markers(tag)
    for path in (os.path.join(ssh, "config"), "/etc/hosts"):
        if begin in (_read(path) or ""):
            found.append("%s: the fleet's block" % path)
    return found


def clean(request: CleanRequest) -> CleanReply:
    home = os.path.expanduser("~")
    cache = os.path.join(home, ".cache", "trainfleet")
    workdir = os.path.expanduser(request.workdir)
    removed: List[str] = []
    kept: List[str] = []
    if request.tag:
        removed += _trust(request.tag)
    targets = [os.path.join(cache, name) for name in CACHE_ENTRIES]
    projects = []
    try:
        names = sorted(os.listdir(workdir))
    except OSError:
        names = []
    for name in names:
        folder = os.path.join(workdir, name)
        if name != ".trainfleet" and os.path.isfile(os.path.join(folder, MANIFEST)):
            projects.append(folder)  # a directory `sync` made (it holds sync's manifest)
    for folder in projects:
        if request.workdirs:
            targets.append(folder)
        else:  # (sync's notes in it stay too: they mark it as a project that --workdirs may remove)
            kept.append("%s (%s: your code and what the job wrote there; --workdirs removes it)"
                        % (folder, _human(_size(folder))))
    targets.append(os.path.join(workdir, ".trainfleet"))  # job records and logs
    shm = os.path.join(SECRETS_DIRECTORY, "trainfleet-%d" % os.getuid())  # records kept while a disk was full
    targets.append(shm)
    try:
        leftovers = [os.path.join(SECRETS_DIRECTORY, n) for n in os.listdir(SECRETS_DIRECTORY)
                     if n.startswith("trainfleet-") and n.endswith("-secrets")]
    except OSError:
        leftovers = []
    targets += [p for p in leftovers if _mine(p)]
    targets = [p for p in targets if os.path.lexists(p) and _mine(p)]
    removed += targets
    if request.dry_run:
        return CleanReply(removed=removed, kept=kept)
    if request.tag:
        untrust(UntrustRequest(tag=request.tag))
    for path in targets:
        _remove(path)
    for folder in (workdir if request.workdirs else "", cache):
        try:
            if folder and not os.listdir(folder) and stat.S_ISDIR(os.lstat(folder).st_mode):
                os.rmdir(folder)
                removed.append(folder)
        except OSError:
            pass
    return CleanReply(removed=removed, kept=kept)
