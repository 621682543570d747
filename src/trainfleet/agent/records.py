"""A job's records on a node: its directory, state, errors and output log.

Job directory: <workdir>/.trainfleet/jobs/<job id>/, with what every node shares (the
rank wrapper, trainfleet's sitecustomize, a runner's hostfile) and, under
nodes/<node key>/, each node's own records: state.json, output.log, errors/ (the rank
wrapper's first-exception records), supervisor.pid. A workdir that several machines
share (an NFS home) thus keeps every node's records apart. The controller imports
`job_path` from here too, so both sides name the same place.
"""

from __future__ import annotations

import errno
import json
import os
import stat
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


FULL = (errno.ENOSPC, errno.EDQUOT)
"""A full disk (or quota): records go on in memory (overflow_dir) instead of failing."""


def overflow_dir(directory: str, make: bool = False) -> Optional[str]:
    """Where this node's records of a job go while its disk is full: /dev/shm, in a 0700
    directory of this user's (one planted by another user, or a link, is never used)."""
    base = os.path.join(SECRETS_DIRECTORY, "trainfleet-%d" % os.getuid())
    try:
        if make:
            os.makedirs(base, 0o700, exist_ok=True)
        found = os.lstat(base)
    except OSError:
        return None
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        return None
    # (named by the whole path, not a hash: hashlib would load OpenSSL into every agent)
    path = os.path.join(base, os.path.abspath(directory).strip("/").replace("/", "%")[-200:])
    if make:
        try:
            os.makedirs(path, 0o700, exist_ok=True)
        except OSError:
            return None
    return path


def write_record(directory: str, name: str, text: str) -> None:
    """One of this node's records of a job (state.json, supervisor.pid): on disk; on a full
    disk, in memory (read_record prefers that copy while it exists)."""
    spare = overflow_dir(directory)
    try:
        write_atomically(os.path.join(directory, name), text)
    except OSError as exc:
        held = overflow_dir(directory, make=True) if exc.errno in FULL else None
        if held is None:
            raise
        write_atomically(os.path.join(held, name), text)
        return
    if spare is not None:  # on disk again: the copy in memory is history
        try:
            os.unlink(os.path.join(spare, name))
        except OSError:
            pass


def read_record(directory: str, name: str) -> Optional[str]:
    spare = overflow_dir(directory)
    for folder in ([spare] if spare else []) + [directory]:
        try:
            with open(os.path.join(folder, name)) as handle:
                return handle.read()
        except OSError:
            continue
    return None


def write_state(directory: str, state: JobState) -> None:
    write_record(directory, "state.json", json.dumps(to_wire(state)))


def read_state(workdir: str, job_id: str) -> Optional[JobState]:
    return read_state_at(node_dir(workdir, job_id))


def read_state_at(directory: str) -> Optional[JobState]:
    text = read_record(directory, "state.json")
    try:
        return decode(JobState, json.loads(text)) if text else None
    except (ValueError, TypeError):
        return None


def discard_overflow(directory: str) -> None:
    spare = overflow_dir(directory)
    if spare is not None and os.path.isdir(spare):
        for name in os.listdir(spare):
            try:
                os.unlink(os.path.join(spare, name))
            except OSError:
                pass
        try:
            os.rmdir(spare)
        except OSError:
            pass


def settle_overflow(directory: str) -> None:
    """The job has ended: where the disk has room again, its log in memory is appended to
    the one on disk and the memory freed (else it stays, and is read from there)."""
    spare = overflow_dir(directory)
    held = os.path.join(spare, LOG_NAME) if spare else ""
    if not held or not os.path.exists(held) or os.path.exists(os.path.join(spare, "state.json")) or \
            os.path.exists(os.path.join(spare, "supervisor.pid")):
        return  # (a state still in memory: the disk is full yet)
    try:
        with open(held, "rb") as source, open(os.path.join(directory, LOG_NAME), "ab") as target:
            while True:
                chunk = source.read(1 << 20)
                if not chunk:
                    break
                target.write(chunk)
    except OSError:
        return
    discard_overflow(directory)


def log_paths(directory: str) -> List[str]:
    """The job's log on this node: on disk, then (from when its disk filled) in memory."""
    spare = overflow_dir(directory)
    return [os.path.join(directory, LOG_NAME)] + ([os.path.join(spare, LOG_NAME)] if spare else [])


def supervisor_alive(workdir: str, job_id: str) -> bool:
    return supervisor_pid(node_dir(workdir, job_id)) is not None


def supervisor_pid(directory: str) -> Optional[int]:
    try:
        pid_text, started_text = (read_record(directory, "supervisor.pid") or "").split()
    except ValueError:
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


def write_secrets(job_id: str, node: str, secrets: Dict[str, str]) -> None:
    """The job's secrets into the node's in-memory file: a new file of our own (0600), never
    one that is there already (a link planted in /dev/shm)."""
    fd = os.open(secrets_path(job_id, node), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(secrets, handle)


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
