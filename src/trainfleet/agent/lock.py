"""The fleet's lock on node 0: one job per fleet at a time (unless a job asks to run beside others)."""

from __future__ import annotations

import os
from typing import Tuple

from . import procs
from .protocol import LockReply, LockRequest
from .records import TERMINAL, read_state, supervisor_alive, write_atomically

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


def lock(request: LockRequest) -> LockReply:
    """One job per fleet at a time (unless a job asks to run beside others)."""
    path = lock_path(request.workdir)
    if request.release:
        release_lock(request.workdir, request.job_id)
        return LockReply(ok=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(_holder_text(request.job_id))
        return LockReply(ok=True)
    except FileExistsError:
        pass
    holder, launching = _read_holder(path)
    state = read_state(request.workdir, holder) if holder else None
    running = state is not None and state.state not in TERMINAL and supervisor_alive(request.workdir, holder)
    starting = state is None and launching
    if holder and holder != request.job_id and (running or starting):
        return LockReply(ok=False, holder=holder, holder_state=state.state if state else "starting")
    write_atomically(path, _holder_text(request.job_id))  # the holder has ended (or died): the fleet is free
    return LockReply(ok=True)


def release_lock(workdir: str, job_id: str) -> None:
    path = lock_path(workdir)
    if _read_holder(path)[0] == job_id:
        try:
            os.unlink(path)
        except OSError:
            pass
