"""A node's lock: one job on a node at a time (unless a job asks to run beside others).

Every look at the lock and every change to it happens under an flock on a guard file
beside it: two clients that find the same stale lock cannot both take it over, and a
release cannot remove a lock that another job took a moment before. The kernel drops
the flock when its holder dies, so a guard never goes stale.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Iterator, Tuple

from . import procs
from .protocol import JobStatus, LockReply, LockRequest
from .files import write_atomically
from .records import read_state, supervisor_alive


def lock_path(workdir: str) -> str:
    return os.path.join(os.path.expanduser(workdir), ".trainfleet", "lock")


def _holder_text(job_id: str) -> str:
    # The agent taking the lock serves the launching client until the job's supervisor
    # runs: while it lives, a holder with no job record yet is still on its way.
    return "%s %d %d\n" % (job_id, os.getpid(), procs.start_time(os.getpid()) or 0)


def _read_holder(path: str) -> Tuple[str, bool]:
    """The holding job's id, and whether the agent that took the lock still runs."""
    try:
        with open(path) as handle:
            fields = handle.read().split()
    except OSError:
        return "", False
    if len(fields) != 3:
        return (fields[0] if fields else ""), False
    return fields[0], procs.alive(int(fields[1]), int(fields[2]))


@contextmanager
def _guarded(workdir: str) -> Iterator[None]:
    path = lock_path(workdir) + ".guard"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lock(request: LockRequest) -> LockReply:
    """One job per fleet at a time (unless a job asks to run beside others)."""
    if request.release:
        release_lock(request.workdir, request.job_id)
        return LockReply(ok=True)
    with _guarded(request.workdir):
        return _take(request)


def _take(request: LockRequest) -> LockReply:
    path = lock_path(request.workdir)
    holder, launching = _read_holder(path)
    if not holder:
        write_atomically(path, _holder_text(request.job_id), 0o600)
        return LockReply(ok=True)
    state = read_state(request.workdir, holder) if holder else None
    running = state is not None and not state.state.ended and supervisor_alive(request.workdir, holder)
    starting = state is None and launching
    if holder and holder != request.job_id and (running or starting):
        return LockReply(ok=False, holder=holder, holder_state=state.state if state else JobStatus.STARTING)
    write_atomically(path, _holder_text(request.job_id), 0o600)  # the holder has ended (or died): the fleet is free
    return LockReply(ok=True)


def release_lock(workdir: str, job_id: str) -> None:
    """Only `job_id`'s lock: another job's (taken since) stays."""
    path = lock_path(workdir)
    with _guarded(workdir):
        if _read_holder(path)[0] == job_id:
            try:
                os.unlink(path)
            except OSError:
                pass
