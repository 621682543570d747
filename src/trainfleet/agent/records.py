"""A job's records on a node: its directory, state, errors and output log.

Job directory: <workdir>/.trainfleet/jobs/<job id>/, with what every node shares (the
rank wrapper, trainfleet's sitecustomize, a runner's hostfile) and, under
nodes/<node key>/, each node's own records: state.json, output.log, errors/ (the rank
wrapper's first-exception records), supervisor.pid. A workdir that several machines
share (an NFS home) thus keeps every node's records apart. The controller imports
`job_path` from here too, so both sides name the same place.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

from . import procs
from .files import write_atomically
from .rankwrap import node_records
from .protocol import JobStatus, Empty, ErrorRecord, JobsReply, JobsRequest, JobState, WriteRequest, decode, to_wire

LOG_NAME = "output.log"
VIEWER_NAME = "viewer"
"""Touched while someone follows the job (an attached client, `logs --follow`, the dashboard)."""
VIEWER_MARK = 2.0
"""Seconds between a follower's touches."""


def job_path(workdir: str, job_id: str) -> str:
    """The job's directory as plans write it (a leading ~/ kept: each node's own home)."""
    return "%s/.trainfleet/jobs/%s" % (workdir.rstrip("/"), job_id)


def job_dir(workdir: str, job_id: str) -> str:
    """The job's directory on this node (what every node shares, where they share it)."""
    return os.path.expanduser(job_path(workdir, job_id))


def node_dir(workdir: str, job_id: str) -> str:
    """This node's own records of the job."""
    return node_records(job_dir(workdir, job_id))


def write_state(directory: str, state: JobState) -> None:
    write_atomically(os.path.join(directory, "state.json"), json.dumps(to_wire(state)))


def read_state(workdir: str, job_id: str) -> Optional[JobState]:
    return read_state_at(node_dir(workdir, job_id))


def read_state_at(directory: str) -> Optional[JobState]:
    try:
        with open(os.path.join(directory, "state.json")) as handle:
            return decode(JobState, json.load(handle))
    except (OSError, ValueError, TypeError):
        return None


def supervisor_alive(workdir: str, job_id: str) -> bool:
    return supervisor_pid(node_dir(workdir, job_id)) is not None


def supervisor_pid(directory: str) -> Optional[int]:
    try:
        with open(os.path.join(directory, "supervisor.pid")) as handle:
            pid_text, started_text = handle.read().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    return pid if procs.alive(pid, int(started_text)) else None


def read_errors(directory: str) -> List[ErrorRecord]:
    records = []
    folder = os.path.join(directory, "errors")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        try:
            with open(os.path.join(folder, name)) as handle:
                records.append(decode(ErrorRecord, json.load(handle)))
        except (OSError, ValueError, TypeError):
            continue
    return records


SECRETS_DIRECTORY = "/dev/shm"


def secrets_path(job_id: str, node: str) -> str:
    """In memory, never on disk; per node, as machines that share /dev/shm (the sandbox's)
    would otherwise share it."""
    return "%s/trainfleet-%s-%s-secrets" % (SECRETS_DIRECTORY, job_id, node)


def remove_secrets(job_id: str) -> None:
    """Every node's secrets file of the job (those this node can see)."""
    prefix = "trainfleet-%s-" % job_id
    try:
        names = [n for n in os.listdir(SECRETS_DIRECTORY) if n.startswith(prefix) and n.endswith("-secrets")]
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(SECRETS_DIRECTORY, name))
        except OSError:
            pass


AGENT_MODULE = "\0tfagent module "
"""A file's text that is this prefix and a module's name: the node writes its own copy of
that module of the agent (the controller need not send it with every launch)."""


def agent_module(name: str) -> str:
    return AGENT_MODULE + name


def write_files(directory: str, files: Dict[str, str]) -> None:
    """Atomically: nodes that share the directory write the same files at the same time."""
    for name, text in files.items():
        if text.startswith(AGENT_MODULE):
            from . import sources

            text = sources()[text[len(AGENT_MODULE):]]
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomically(path, text)


def write_paths(files: Dict[str, str]) -> None:
    for path, text in files.items():
        target = os.path.expanduser(path)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        write_atomically(target, text)


def write(request: WriteRequest) -> Empty:
    write_paths(request.files)
    return Empty()


def log_lines(path: str, tail: int = 0) -> List[Tuple[float, str]]:
    """The log's lines as (time, text); with `tail`, only those in its last `tail` bytes
    (what `top` and `status` look at: a long job's log is megabytes)."""
    found = []
    try:
        with open(path, "rb") as handle:
            if tail:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - tail))
                if size > tail:
                    handle.readline()  # most likely a part of a line
            for raw in handle:
                stamp, _, text = raw.decode("utf-8", "replace").rstrip("\n").partition(" ")
                try:
                    found.append((float(stamp), text))
                except ValueError:
                    continue
    except OSError:
        pass
    return found


TAIL = 64 << 10
"""Bytes of a job's log read for its latest metrics."""


def live_state(workdir: str, state: JobState) -> JobState:
    """A record that says running, of a job whose supervisor is gone, says lost."""
    if not state.state.ended and not supervisor_alive(workdir, state.job_id):
        state.state = JobStatus.LOST
        state.reason = state.reason or "its node supervisor is gone (the node restarted, or it was killed)"
    return state


def jobs(request: JobsRequest) -> JobsReply:
    return JobsReply(states=job_states(request.workdir, request.job_id))


def job_states(workdir: str, job_id: str = "") -> List[JobState]:
    """Every job's record on this node (or `job_id`'s), as it stands now, with the latest
    value of each metric its output carries."""
    from .metrics import latest_on_node

    states = list_states(workdir)
    chosen = [states[job_id]] if job_id in states else [] if job_id else list(states.values())
    for state in chosen:
        state.metrics = latest_on_node(log_lines(os.path.join(node_dir(workdir, state.job_id), LOG_NAME),
                                                 tail=TAIL))[0]
    return [live_state(workdir, s) for s in chosen]


def list_states(workdir: str) -> Dict[str, JobState]:
    root = os.path.join(os.path.expanduser(workdir), ".trainfleet", "jobs")
    found = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        state = read_state_at(node_records(os.path.join(root, name)))
        if state is not None:
            found[name] = state
    return found


def mark_viewer(directory: str) -> None:
    try:
        with open(os.path.join(directory, VIEWER_NAME), "a"):
            pass
        os.utime(os.path.join(directory, VIEWER_NAME))
    except OSError:
        pass  # (a full disk: the job goes on all the same)


def viewer_seen(directory: str) -> float:
    """When a follower last looked at the job here (0: never)."""
    try:
        return os.stat(os.path.join(directory, VIEWER_NAME)).st_mtime
    except OSError:
        return 0.0
