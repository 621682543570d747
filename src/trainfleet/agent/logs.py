"""A job's output log on a node, sent to the controller: as it grows, or all of it."""

from __future__ import annotations

import os
import time
from typing import Callable, List

from . import procs
from .protocol import JobStatus, FollowRequest, JobState, LostEvent, OutputEvent
from .records import (VIEWER_MARK, live_state, log_lines, log_paths, mark_viewer, node_dir, read_state_at,
                      supervisor_pid, write_state)

BATCH = 500
"""Lines per OutputEvent."""


def follow(directory: str, emit: Callable[[object], None], since: float = 0.0, poll: float = 0.05,
           skip: int = 0) -> JobState:
    """Send the job's output as it is written, until the job has ended and all of it is
    sent; the first `skip` lines are left out (the follower has them). The log is read on
    disk, then in memory from where the node's disk filled (log_paths). While it follows,
    the job has a viewer (see viewer_seen)."""
    paths = log_paths(directory)
    current, offset, partial = 0, 0, b""
    told: List[str] = []
    marked = 0.0
    while True:
        if time.monotonic() - marked > VIEWER_MARK:
            mark_viewer(directory)
            marked = time.monotonic()
        state = read_state_at(directory)
        done = state is not None and state.state.ended
        if state is not None and state.lost != told:
            told = list(state.lost)
            emit(LostEvent(lost=told, reason=state.reason))
        if not done and supervisor_pid(directory) is None and state is not None:
            # Killed outright (or the node rebooted): nobody will write the final state.
            state.state, state.reason, state.ended = JobStatus.LOST, "the node supervisor died", time.time()
            state.left = procs.end_job(state.job_id, 3.0)
            write_state(directory, state)
            done = True
        try:
            with open(paths[current], "rb") as handle:
                handle.seek(offset)
                chunk = handle.read(4 << 20)
        except OSError:
            chunk = b""
        offset += len(chunk)
        data = partial + chunk
        lines, _, partial = data.rpartition(b"\n")
        if lines:
            batch = []
            for raw in lines.split(b"\n"):
                stamp, _, text = raw.decode("utf-8", "replace").partition(" ")
                try:
                    moment = float(stamp)
                except ValueError:
                    continue
                if moment < since:
                    continue
                if skip:
                    skip -= 1
                    continue
                batch.append((moment, text))
            # In pieces: one message of a long history (megabytes) would be one line on the
            # agent's stdout longer than the controller reads whole, and would be lost.
            for start in range(0, len(batch), BATCH):
                emit(OutputEvent(lines=batch[start:start + BATCH]))
        if not chunk and current == 0:
            paths = log_paths(directory)  # (the place in memory exists from when the disk filled)
        if not chunk and current + 1 < len(paths) and os.path.exists(paths[current + 1]):
            current, offset, partial = current + 1, 0, b""  # the disk filled: the rest is in memory
            continue
        if done and not chunk:
            assert state is not None
            return state
        if not chunk:
            time.sleep(poll)


def follow_request(request: FollowRequest, emit: Callable[[object], None]) -> JobState:
    directory = node_dir(request.workdir, request.job_id)
    state = read_state_at(directory)
    if state is None:
        raise ValueError("no job %s on this node" % request.job_id)
    if request.follow:
        return follow(directory, emit, since=request.since, skip=request.skip)
    lines = [(moment, text) for path in log_paths(directory) for moment, text in log_lines(path)
             if moment >= request.since]
    for start in range(0, len(lines), BATCH):
        emit(OutputEvent(lines=lines[start:start + BATCH]))
    return live_state(request.workdir, state)
