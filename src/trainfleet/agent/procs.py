"""Processes of trainfleet jobs on this node, found by the job id in their environment.

Every process a job starts inherits TRAINFLEET_JOB_ID, whatever session or process
group it moves to, so a job is found (and ended) exactly: never by a name pattern that
could hit another job or a user's own process.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Dict, Iterator, List, Optional, Tuple

from .protocol import Proc

JOB_VARIABLE = "TRAINFLEET_JOB_ID"


def _read(path: str, mode: str = "r") -> Optional[bytes]:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def cmdline(pid: int, limit: int = 200) -> str:
    raw = _read("/proc/%d/cmdline" % pid) or b""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:limit]


def is_zombie(pid: int) -> bool:
    stat = _read("/proc/%d/stat" % pid)
    if stat is None:
        return True
    try:
        return stat.rsplit(b")", 1)[1].split()[0] == b"Z"
    except IndexError:
        return True


def start_time(pid: int) -> Optional[int]:
    """Clock ticks since boot when `pid` started: with the pid, it names one process for good."""
    stat = _read("/proc/%d/stat" % pid)
    if stat is None:
        return None
    try:
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def alive(pid: Optional[int], started: Optional[int] = None) -> bool:
    if not pid or is_zombie(pid):
        return False
    return started is None or start_time(pid) == started


def job_of(pid: int) -> Optional[str]:
    environ = _read("/proc/%d/environ" % pid)
    if not environ:
        return None
    prefix = ("%s=" % JOB_VARIABLE).encode()
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def tagged_processes() -> Iterator[Tuple[str, int]]:
    """(job id, pid) of every live process that carries a trainfleet job id."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        job = job_of(pid)
        if job is not None and not is_zombie(pid):
            yield job, pid


def job_processes(job_id: str) -> List[Proc]:
    return [Proc(pid=pid, cmdline=cmdline(pid), job_id=job) for job, pid in tagged_processes() if job == job_id]


def all_jobs() -> Dict[str, List[Proc]]:
    found: Dict[str, List[Proc]] = {}
    for job, pid in tagged_processes():
        found.setdefault(job, []).append(Proc(pid=pid, cmdline=cmdline(pid, 120), job_id=job))
    return found


def signal_job(job_id: str, sig: int) -> None:
    for proc in job_processes(job_id):
        try:
            os.kill(proc.pid, sig)
        except OSError:
            pass


def wait_gone(job_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not job_processes(job_id):
            return True
        time.sleep(0.1)
    return not job_processes(job_id)


def end_job(job_id: str, grace: float) -> List[Proc]:
    """SIGTERM every process of the job, SIGKILL what is left after `grace`; returns
    what still runs after that (nothing, unless a process is stuck in the kernel)."""
    if job_processes(job_id):
        signal_job(job_id, signal.SIGTERM)
        if not wait_gone(job_id, grace):
            signal_job(job_id, signal.SIGKILL)
            wait_gone(job_id, 5.0)
    return job_processes(job_id)


def port_holder(port: int) -> Optional[Proc]:
    """Who listens on a TCP port (from /proc/net/tcp*), or None when nobody does.
    A holder whose pid cannot be read (another user's process) has pid 0."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        text = _read(table)
        if not text:
            continue
        for line in text.decode(errors="replace").splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir("/proc/%s/fd" % entry):
                target = os.readlink("/proc/%s/fd/%s" % (entry, fd))
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    pid = int(entry)
                    return Proc(pid=pid, cmdline=cmdline(pid, 120), job_id=job_of(pid))
        except OSError:
            continue
    return Proc(pid=0, cmdline="(another user's process)")


def _environ(pid: int) -> Dict[str, str]:
    raw = _read("/proc/%d/environ" % pid) or b""
    found = {}
    for item in raw.split(b"\0"):
        name, _, value = item.partition(b"=")
        if name in (b"RANK", JOB_VARIABLE.encode()):
            found[name.decode()] = value.decode(errors="replace")
    return found


def _parent(pid: int) -> Optional[int]:
    stat = _read("/proc/%d/stat" % pid)
    try:
        return int(stat.rsplit(b")", 1)[1].split()[1]) if stat else None
    except (IndexError, ValueError):
        return None


def rank_processes(job_id: str) -> List[Tuple[int, int]]:
    """(pid, rank) of each rank of the job on this node: the processes with RANK in their
    environment whose parent has none (not a rank's own children: its output reader,
    its data loaders)."""
    found = []
    for proc in job_processes(job_id):
        env = _environ(proc.pid)
        if "RANK" not in env:
            continue
        parent = _parent(proc.pid)
        if parent is not None and "RANK" in _environ(parent):
            continue
        try:
            found.append((proc.pid, int(env["RANK"])))
        except ValueError:
            continue
    return found
