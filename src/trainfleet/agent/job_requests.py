"""The agent's requests about a job on this node: `prepare` (a node where another node's
runner will start processes), `launch` (start the job's supervisor, see job_supervisor.py,
and follow its log for the controller), `stop`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable, List

from . import procs
from .logs import follow
from .protocol import Empty, JobState, JobStatus, LaunchRequest, PrepareRequest, StopRequest, to_wire
from .records import discard_overflow, job_dir, node_dir, read_state_at, supervisor_pid, write_files, write_paths, write_secrets, write_state
from .secrets_keeper import start_keeper

SUPERVISOR_EXIT_WAIT = 30.0


def prepare(request: PrepareRequest) -> Empty:
    directory = node_dir(request.workdir, request.job_id)
    os.makedirs(os.path.join(directory, "errors"), mode=0o700, exist_ok=True)
    write_files(job_dir(request.workdir, request.job_id), request.files)
    with open(os.path.join(directory, "node.env"), "w") as handle:
        json.dump(request.env, handle)
    if request.secrets:
        write_secrets(request.job_id, request.env.get("TRAINFLEET_NODE", ""), request.secrets)
        start_keeper(request.job_id)
    write_paths(request.write)
    return Empty()


_tethers: List[int] = []
"""Write ends of attached jobs' tethers: they close when this agent process ends."""


_SUPERVISOR_ENTRY = (
    "import tfagent.job_supervisor as j, tfagent.protocol as p; a=json.loads(sys.stdin.readline()); sys.stdin.close()\n"
    "j.supervise_main(p.decode(p.LaunchRequest,a['request']),a['directory'],a['tether'],a['ready'])\n"
)


def launch(request: LaunchRequest, emit: Callable[[object], None]) -> JobState:
    from . import BOOTSTRAP, sources

    directory = node_dir(request.workdir, request.job_id)
    if os.path.exists(os.path.join(directory, "state.json")):
        raise ValueError("job id %s was already used on this node" % request.job_id)
    discard_overflow(directory)  # an earlier job's, at the same path, whose records are gone from the disk
    os.makedirs(os.path.join(directory, "errors"), mode=0o700, exist_ok=True)
    write_files(job_dir(request.workdir, request.job_id), request.files)
    ready_read, ready_write = os.pipe()
    keep = [ready_write]
    tether_read = None
    if not request.detach:
        tether_read, tether_write = os.pipe()
        keep.append(tether_read)
        _tethers.append(tether_write)
        os.set_inheritable(tether_write, False)
    log = open(os.path.join(directory, "supervisor.log"), "ab")
    boot = subprocess.Popen([sys.executable, "-c", BOOTSTRAP + _SUPERVISOR_ENTRY], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, pass_fds=keep)
    log.close()
    handoff = {"request": to_wire(request), "directory": directory, "tether": tether_read, "ready": ready_write}
    assert boot.stdin is not None
    boot.stdin.write((json.dumps(sources()) + "\n" + json.dumps(handoff) + "\n").encode())
    boot.stdin.close()
    for fd in keep:
        os.close(fd)
    with os.fdopen(ready_read, "rb") as ready:
        answer = ready.readline()
    started = json.loads(answer) if answer else {"error": "the node supervisor did not start (see %s)" %
                                                 os.path.join(directory, "supervisor.log")}
    if "error" in started:
        state = read_state_at(directory)
        if state is None:
            raise RuntimeError(started["error"])
        return state
    if request.detach:
        # A spare has no rank to wait for: it waits for a place in the job.
        spare = started.get("spare") and read_state_at(directory)
        return spare if spare else wait_for_ranks(directory, request)
    state = follow(directory, emit)
    # The supervisor outlives the final state by a moment (node 0's waits for the others'
    # parts to end, then frees the fleet's lock): the node is only done once it has gone.
    try:
        boot.wait(SUPERVISOR_EXIT_WAIT)
    except subprocess.TimeoutExpired:
        pass
    return state


def wait_for_ranks(directory: str, request: LaunchRequest, timeout: float = 900.0) -> JobState:
    """A detached launch answers once every rank of this node has started (or the job
    has ended, or its launcher starts no ranks of its own)."""
    deadline = time.monotonic() + timeout
    while True:
        state = read_state_at(directory)
        assert state is not None
        if state.state.ended or request.nproc == 0 or time.monotonic() > deadline:
            return state
        if len(procs.rank_processes(request.job_id)) >= request.nproc:
            return state
        time.sleep(0.2)


def stop(request: StopRequest) -> JobState:
    directory = node_dir(request.workdir, request.job_id)
    state = read_state_at(directory)
    if state is None:
        raise ValueError("no job %s on this node" % request.job_id)
    if state.state.ended:
        left = procs.end_job(request.job_id, 3.0)
        if left != state.left:
            state.left = left
            write_state(directory, state)
        return state
    supervisor = supervisor_pid(directory)
    if supervisor is not None:
        with open(os.path.join(directory, "stop"), "w") as handle:
            handle.write(request.reason)
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + request.grace + 15
        while time.monotonic() < deadline:
            state = read_state_at(directory)
            if state is not None and state.state.ended:
                return state
            time.sleep(0.1)
    state = read_state_at(directory) or state
    state.left = procs.end_job(request.job_id, 3.0)
    state.state, state.reason, state.ended = JobStatus.STOPPED, request.reason, time.time()
    write_state(directory, state)
    return state
