"""A job's supervisor on a node: its own process, in a session of its own, that outlives
the SSH channel that started it (see job_requests.launch).

It starts the launcher (torchrun, deepspeed, ...) with the environment the plan gives
(rank_environment: the node fills in only what the plan names and only it knows), writes
every output line, time-stamped and with secrets redacted, to the job's log, keeps the
job's state in `state.json`, meets the job's other supervisors over the mesh, and when
the job ends, fails or is stopped it ends every process carrying the job's id. Only a
person ends a job: when the agent that started an attached job goes away (the controller
died, or its link did), that is recorded and the job goes on, unless the job was started
with `--tether`, which ends it once no controller or viewer has been back for that long.

Job directory: see records.py; this node's records under it, in nodes/<node key>/, with
state.json, output.log, errors/ (the rank wrapper's first-exception records) and supervisor.pid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from typing import IO, Any, Dict, List, Optional

from . import nccl, procs
from .lock import release_lock
from .protocol import (NODE_KEY_VARIABLE, RESTART_VARIABLE, EnvFile, JobState, JobStatus, LaunchRequest, NcclLine,
                       Proc, Restart)
from .rankwrap import RANK_LINE, node_key, rank_mark, redact, secret_fragments
from .records import (FULL, LOG_NAME, job_dir, log_lines, log_paths, overflow_dir, read_errors, remove_secrets,
                      settle_overflow, viewer_seen, write_record, write_secrets, write_state)


def write_env_file(directory: str, cwd: str, spec: EnvFile, extra: Dict[str, str]) -> str:
    """The user's own files of this kind (home, then the working directory, as the runner
    reads them), then ours; the path of the file written."""
    lines = []
    for folder in (os.path.expanduser("~"), cwd):
        for name in spec.merge:
            try:
                with open(os.path.join(folder, name)) as handle:
                    lines += [line.rstrip("\n") for line in handle if "=" in line]
            except OSError:
                pass
    lines += ["%s=%s" % item for item in sorted(dict(spec.values, **extra).items())]
    path = os.path.join(directory, spec.name)
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


SESSION_VARIABLES = ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "XDG_SESSION_ID")
"""The login session's own variables: a job outlives the session that started it (and a
resident agent serves later sessions with the first one's), so it inherits none of them."""


def rank_environment(request: LaunchRequest, inherited: Dict[str, str]) -> Dict[str, str]:
    """What the plan says (as --dry-run shows it), over the node's own environment. The
    node only fills in what the plan names and only it knows: secrets' values, its key
    (kept inside a container, whose own would differ), its home for a leading ~/ (in
    values as in argv: a shell would expand both), and what PATH and PYTHONPATH held."""
    env = {k: v for k, v in inherited.items() if k not in SESSION_VARIABLES}
    env.update((k, os.path.expanduser(v) if v.startswith("~/") else v) for k, v in request.env.items())
    for name in request.filled:
        env[name] = node_key() if name == NODE_KEY_VARIABLE else request.secrets.get(name, "")
    for variable, folders in (("PATH", request.path), ("PYTHONPATH", request.python_path)):
        if folders:
            env[variable] = os.pathsep.join([os.path.expanduser(p) for p in folders] + [env.get(variable, "")]).rstrip(
                os.pathsep)
    return env


def signal_name(code: int) -> Optional[str]:
    if code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return "signal %d" % -code


MESH_GRACE = 2.0
NO_SPACE = b"No space left on device"
NCCL_KEPT = 5
"""Lines of NCCL's own about a failure kept per node (the first: what came after follows from it)."""
SETTLE_AFTER = 3.0
FULL_BELOW = 1 << 20
"""Bytes free under which a disk counts as full (a job that failed then failed of it)."""


def disk_is_full(path: str) -> bool:
    try:
        found = os.statvfs(path)
    except OSError:
        return False
    return found.f_bavail * found.f_frsize < FULL_BELOW


STOP_NOTICE_WAIT = 1.0
"""Seconds a part that failed waits for a stop that may be on its way (see _record_end)."""
WAIT_SAMPLE_EVERY = 5.0
"""Seconds between two looks at where each rank is (the straggler's evidence)."""
GPU_WATCH_WAIT = 10.0
"""Seconds a failed part waits for the look at its GPUs taken at launch (nvidia-smi, the kernel log)."""


def _duration(seconds: float) -> str:
    return "%d min" % round(seconds / 60) if seconds >= 120 else "%d s" % round(seconds)


class Supervisor:
    def __init__(self, request: LaunchRequest, directory: str, tether: Optional[int]) -> None:
        self.request = request
        self.directory = directory
        """This node's records of the job."""
        self.shared = job_dir(request.workdir, request.job_id)
        """The job's directory: what every node has (the rank wrapper, the sitecustomize)."""
        self.tether = tether
        self.stop = threading.Event()
        self.reason = ""
        self.hidden = [v.encode() for v in secret_fragments(request.secrets.values())]
        self.state = JobState(job_id=request.job_id, node=request.env.get("TRAINFLEET_NODE", ""), state=JobStatus.STARTING,
                              started=time.time(), supervisor_pid=os.getpid(), argv=list(request.argv),
                              cwd=request.cwd, detached=request.detach, nproc=request.nproc,
                              launcher=request.launcher, wrapped=request.wrapped, rank_nodes=request.rank_nodes)
        self.last_output = time.time()
        self.ended = False
        self.ended_by_mesh = False
        self.stopped_by = ""
        """Why a person (or trainfleet's own teardown) stopped the job, once any node heard it:
        every part that ends after it is `stopped`, whatever order the signals arrive in."""
        self.peer: Optional[Any] = None
        self.no_space: Optional[float] = None
        """When a process of the job first said ENOSPC (the time a full disk is dated by)."""
        self.gpu_watch: Optional[Any] = None
        """The node's GPUs as the job found them (gpu_health.Watch), to name a GPU fault later."""
        self.gpu_watching: Optional[threading.Thread] = None
        self.guard = threading.Lock()
        self.log: Optional[IO[str]] = None
        self.log_guard = threading.Lock()
        mesh = request.mesh
        self.spare = mesh is not None and mesh.node in mesh.spares
        self.released = threading.Event()
        """Set on a spare when its launcher may start (the others' ranks run)."""
        self.ran = False
        """Ranks of the job have run on this node."""
        self.child: Optional["subprocess.Popen[bytes]"] = None
        self.pump: Optional[threading.Thread] = None
        self.env: Dict[str, str] = {}
        self.launch_guard = threading.RLock()
        """Held while the launcher is started or swapped (a failover starts it again)."""
        self.failed_over = False
        self.moved = threading.Event()
        """Set once a failover has started this node's part again with the moved rendezvous."""
        self.generation = 0
        """Whole-job restarts so far (the mesh's count, as this node heard it)."""
        self.restart_answer = threading.Event()
        self.part_done = False

    # ---- what the mesh asks of this node (see mesh.Node) ----------------------------------
    def stop_job(self, reason: str, lost: Optional[str] = None) -> None:
        if lost:
            self.note_lost(lost)
        self.ended_by_mesh = True
        self._request_stop(reason)

    def note_stopped(self, reason: str) -> None:
        """The job is being stopped (heard over the mesh from the node the stop reached)."""
        if not self.stopped_by:
            self.stopped_by = reason
        self._request_stop(reason)

    def note_lost(self, node: str) -> None:
        with self.guard:
            if node not in self.state.lost:
                self.state.lost.append(node)
                write_state(self.directory, self.state)

    def note_restart(self, lost: str, cause: str, nodes: List[str]) -> None:
        with self.guard:
            self.state.restarts.append(Restart(at=time.time(), lost=lost, cause=cause, nodes=list(nodes)))
            write_state(self.directory, self.state)

    def has_ranks(self) -> bool:
        if not self.ran:
            self.ran = bool(procs.rank_processes(self.request.job_id))
        return self.ran

    def release_spare(self) -> None:
        self.released.set()

    def stand_down(self) -> None:
        """The job ended without needing this spare."""
        if self.spare and not self.has_ranks():
            self._request_stop("not needed: the job ended without losing a node")

    def restart_ranks(self, lost: str) -> None:
        """End this node's ranks (not the launcher): torchrun's agent restarts them, and
        its rendezvous goes on without the lost node (a spare joins in its place). Node 0
        records when its ranks run again."""
        def end() -> None:
            ranks = procs.rank_processes(self.request.job_id)
            for pid, _ in ranks:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            time.sleep(3)
            for pid, _ in ranks:
                if procs.alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            if not self.state.restarts:
                return
            old = set(pid for pid, _ in ranks)
            while not self.stop.wait(0.5):
                if any(pid not in old for pid, _ in procs.rank_processes(self.request.job_id)):
                    with self.guard:
                        self.state.restarts[-1].resumed = time.time()
                        write_state(self.directory, self.state)
                    return

        self.note_lost(lost)
        threading.Thread(target=end, daemon=True).start()

    def dump_stacks(self) -> None:
        """Every rank's stack into the log: py-spy's where the node has it (it also sees a
        rank stuck in C code without its cooperation), else faulthandler's, which the
        rank wrapper installs on STACK_SIGNAL."""
        from . import stacks
        from .rankwrap import STACK_SIGNAL

        since = time.time()
        spy = None if self.request.env.get("TRAINFLEET_STACK_DUMP") == "faulthandler" else stacks.find_py_spy(
            self.request.path)
        for pid, rank in procs.rank_processes(self.request.job_id):
            lines = stacks.py_spy_dump(spy, pid) if spy else None
            if lines is not None:
                self.write_lines([rank_mark(rank) + line for line in lines])
                continue
            try:
                os.kill(pid, STACK_SIGNAL)
            except OSError:
                pass
        time.sleep(2)
        lines = [text for path in log_paths(self.directory) for moment, text in log_lines(path) if moment >= since]
        with self.guard:
            self.state.hang = stacks.summarize(lines)
            write_state(self.directory, self.state)

    def write_lines(self, lines: List[str]) -> None:
        """Lines of the supervisor's own into the job's log, between the ranks' lines."""
        with self.log_guard:
            if self.log is None:
                return
            moment = time.time()
            self._log("".join("%.3f %s\n" % (moment, self._clean(line.encode())) for line in lines))

    def _log(self, text: str) -> None:
        """Into the job's log (under log_guard). A full disk does not end the supervisor:
        the log goes on in memory from that moment (follow reads both), which the log and
        the job's state say; anything else that fails here is a bug, and raises."""
        assert self.log is not None
        try:
            self.log.write(text)
            self.log.flush()
            return
        except OSError as exc:
            held = overflow_dir(self.directory, make=True) if exc.errno in FULL else None
            if held is None or self.state.disk_full is not None:
                raise
        try:
            self.log.close()
        except OSError:
            pass  # (its buffer cannot reach the disk either)
        self.log = open(os.path.join(held, LOG_NAME), "a")
        full = time.time()
        where = os.path.expanduser(self.request.workdir)
        self.log.write("%.3f [trainfleet] no space left on device in %s at %s: this node's log goes on in memory "
                       "(%s) from here\n%s" % (full, where, time.strftime("%H:%M:%S", time.localtime(full)), held, text))
        self.log.flush()
        with self.guard:
            self.state.disk_full, self.state.disk_full_path = full, where
            write_state(self.directory, self.state)

    def _clean(self, line: bytes) -> str:
        line = redact(line, self.hidden)
        if b"\r" in line:  # a progress bar redrawn in place: keep what it showed last
            line = line.rstrip(b"\r").rsplit(b"\r", 1)[-1]
        return line.decode("utf-8", "replace")

    def _pump(self, stream) -> None:  # type: ignore[no-untyped-def]
        for raw in iter(stream.readline, b""):
            self.last_output = time.time()
            if self.no_space is None and NO_SPACE in raw:
                self.no_space = self.last_output
            line = self._clean(raw.rstrip(b"\n"))
            if len(self.state.nccl) < NCCL_KEPT and any(marker in raw for marker in nccl.MARKERS):
                self._note_nccl(self.last_output, line)
            with self.log_guard:
                self._log("%.3f %s\n" % (self.last_output, line))

    def _note_nccl(self, moment: float, text: str) -> None:
        """A line in which NCCL says what failed: kept (the first few) for the root cause."""
        said = nccl.problem(text)
        if said is None:
            return
        marked = RANK_LINE.match(text)
        rank = int(marked.group(1)) if marked else None
        with self.guard:
            self.state.nccl.append(NcclLine(at=moment, rank=rank, text=said))
            write_state(self.directory, self.state)

    def _watch_tether(self) -> None:
        """The controller's link closing (its laptop asleep, its Wi-Fi gone, the client
        killed) is recorded and the job goes on: only a person ends a job. With `--tether`
        it ends once no controller or viewer has been back for that long."""
        try:
            while os.read(self.tether, 1024):  # type: ignore[arg-type]
                pass
        except OSError:
            pass
        gone = time.time()
        with self.guard:
            self.state.controller_gone = gone
            write_state(self.directory, self.state)
        bound = self.request.tether
        if bound <= 0:
            return
        while not self.stop.wait(1.0):
            seen = max(gone, viewer_seen(self.directory))
            if time.time() - seen >= bound:
                self._request_stop("ended: the controller was gone for %s (--tether)" % _duration(bound))
                return

    def _request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.reason = reason
            self.stop.set()

    def _on_signal(self, signum: int, frame: object) -> None:
        reason = "stopped"
        try:
            with open(os.path.join(self.directory, "stop")) as handle:
                reason = handle.read().strip() or reason
        except OSError:
            pass
        if not self.stopped_by:
            self.stopped_by = reason
            if self.peer is not None:  # the others hear it before their ranks see these end
                threading.Thread(target=self.peer.announce_stop, args=(reason,), daemon=True).start()
        self._request_stop(reason)

    def run(self, ready: int) -> None:
        """Start the job, supervise it to its end, record how it ended. `ready` hears once
        whether it started (the launcher's pid, or why not)."""
        request = self.request
        env = self.env = self._environment()
        write_state(self.directory, self.state)
        if request.secrets_file:
            try:
                write_secrets(request.job_id, self.state.node, request.secrets)
            except OSError as exc:
                self._failed_to_start(ready, 1, "cannot write the job's secrets file in /dev/shm (a container reads "
                                                "them there): %s" % (exc.strerror or exc))
                return
        try:
            self.peer = self._meet()
        except OSError as exc:
            self._failed_to_start(ready, 1, "the job's supervisors cannot meet: port %d on %s: %s" % (
                request.mesh.port, request.mesh.coordinator, exc.strerror or exc))  # type: ignore[union-attr]
            return
        # Before any process of the job exists: its first line has a place to go.
        self.log = open(os.path.join(self.directory, LOG_NAME), "a")
        if self.spare:
            # Part of the job from now on (stopped with it, seen by `status`), with no process yet.
            self.state.state, self.state.spare = JobStatus.RUNNING, "waiting"
            write_state(self.directory, self.state)
            os.write(ready, (json.dumps({"spare": True}) + "\n").encode())
            os.close(ready)
            ready = -1
            self._watch(self.peer)
            while not self.released.wait(0.2):
                if self.stop.is_set():
                    self._record_idle_spare(self.peer)
                    return
        self.gpu_watching = threading.Thread(target=self._watch_gpus, daemon=True)
        self.gpu_watching.start()  # beside the launch: the job never waits for it
        try:
            with self.launch_guard:
                self._start_launcher()
        except OSError as exc:
            self._failed_to_start(ready, 127, "cannot start %s: %s" % (request.argv[0], exc.strerror or exc))
            return
        if ready >= 0:
            os.write(ready, (json.dumps({"pid": self.state.launcher_pid}) + "\n").encode())
            os.close(ready)
            self._watch(self.peer)
        threading.Thread(target=self._sample_waits, daemon=True).start()
        while not self.stop.is_set():
            with self.launch_guard:
                code = self.child.poll()  # type: ignore[union-attr]
            if code is not None:
                if code == 0 or not (self._await_failover() or self._await_restart(code)):
                    break
            self.stop.wait(0.2)
        self.part_done = True
        code, left = self._end(self.child, env)  # type: ignore[arg-type]
        assert self.pump is not None
        self.pump.join(10)
        self._close_log()
        self._record_end(code, left, self.peer)

    def _environment(self) -> Dict[str, str]:
        request = self.request
        env = rank_environment(request, dict(os.environ))
        if request.env_file is not None:
            env[request.env_file.variable] = write_env_file(self.directory, os.path.expanduser(request.cwd),
                                                            request.env_file, {})
        return env

    def _take_replan(self, key: str, generation: int) -> bool:
        """This node's part of the plan made without the nodes of `key` becomes its part
        (argv and variables), told which start it is; False where it has none there."""
        part = self.request.replans.get(key)
        if part is None:
            return False
        self.request.argv, self.request.env = list(part.argv), dict(part.env)
        self.env = self._environment()
        self.env[RESTART_VARIABLE] = str(generation)
        with self.guard:
            self.state.argv = list(part.argv)
        return True

    def _sample_waits(self) -> None:
        """Every WAIT_SAMPLE_EVERY seconds, each rank's stack without pausing it (py-spy
        --nonblocking): inside a collective or not. About 30 ms of py-spy per rank each
        time, off the ranks' own CPU time; nothing where the node has no py-spy."""
        from . import stacks

        if self.request.env.get("TRAINFLEET_STACK_DUMP") == "faulthandler":
            return
        spy = stacks.find_py_spy(self.request.path)
        if spy is None:
            return
        while not self.stop.wait(WAIT_SAMPLE_EVERY) and not self.part_done:
            counts = {}
            for pid, rank in procs.rank_processes(self.request.job_id):
                lines = stacks.py_spy_dump(spy, pid, nonblocking=True)
                inside = stacks.waiting(lines[1:]) if lines else None
                if inside is not None:
                    counts[str(rank)] = inside
            if not counts:
                continue
            with self.guard:
                if self.part_done:
                    return
                for rank, inside in counts.items():
                    samples, waits = self.state.waits.get(rank, [0, 0])
                    self.state.waits[rank] = [samples + 1, waits + int(inside)]
                write_state(self.directory, self.state)

    def _watch_gpus(self) -> None:
        try:
            from .gpu_health import Watch

            self.gpu_watch = Watch()  # (inactive on a node without nvidia-smi)
        except Exception:  # the job never fails for trainfleet's look at its GPUs
            self.gpu_watch = None

    def _start_launcher(self) -> None:
        """The launcher (under launch_guard), its output into the log."""
        request = self.request
        cwd = os.path.expanduser(request.cwd)
        # A leading ~/ names the node's home, as it would typed into a shell.
        argv = [os.path.expanduser(a) if a.startswith("~/") else a for a in request.argv]
        os.makedirs(cwd, exist_ok=True)
        child = subprocess.Popen(argv, cwd=cwd, env=self.env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.child = child
        with self.guard:
            self.state.state, self.state.launcher_pid = JobStatus.RUNNING, child.pid
            write_state(self.directory, self.state)
        self.pump = threading.Thread(target=self._pump, args=(child.stdout,), daemon=True)
        self.pump.start()

    def fail_over(self, head: str, cause: str) -> bool:
        """Node 0 (the rendezvous's store, the mesh's coordinator) was lost: the mesh meets
        again on the successor, and this node's launcher starts again with the rendezvous
        there. False where the job cannot go on without node 0 (it then ends)."""
        mesh = self.request.mesh
        if mesh is None or not mesh.successor or self.failed_over:
            return False
        if self.stop.is_set() or self.ended:
            return False
        lost = sorted(set(self.state.lost) | {head})
        key = ",".join(lost)
        if mesh.replans:
            nodes = mesh.replans.get(key)
            if nodes is None or self.generation >= mesh.restarts:
                return False
        elif not self.request.failover:
            return False
        self.failed_over = True
        from .mesh import Coordinator, Member

        order = [mesh.successor] + [n for n in mesh.nodes if n not in (head, mesh.successor)]
        moved = dataclasses.replace(mesh, coordinator=mesh.successor_address, port=mesh.successor_port, nodes=order)
        self.note_lost(head)
        if mesh.replans:
            self.generation += 1
            self.write_lines(["[trainfleet] %s; the job's supervisors meet again on %s, and the job starts again "
                              "without %s on %s (restart %d)" % (cause, mesh.successor, " and ".join(lost),
                                                                 ", ".join(nodes), self.generation)])
        else:
            self.write_lines(["[trainfleet] %s; the rendezvous moves to %s, and this node's launcher starts again "
                              "there" % (cause, mesh.successor)])
        try:
            peer = Coordinator(moved, self) if mesh.node == mesh.successor else Member(moved, self)  # type: ignore[arg-type]
        except OSError as exc:
            self.stop_job("%s, and the job cannot move to %s: port %d: %s" % (cause, mesh.successor,
                                                                             mesh.successor_port, exc))
            return True
        if isinstance(peer, Coordinator):
            peer.lost = list(lost)
            if mesh.replans:
                peer.generation, peer.current = self.generation, list(nodes)
                self.note_restart(head, "%s (restart %d of %d)" % (cause, self.generation, mesh.restarts), nodes)
            else:
                peer.spares_released = True  # a spare starts at once: the survivors' next round is its place
                self.note_restart(head, cause, order)
        self.request.mesh = moved
        self.peer = peer
        if mesh.replans:
            part = self._take_replan(key, self.generation)
        else:
            self.request.argv, part = list(self.request.failover), True
        peer.start()
        if self.spare and not self.released.is_set():
            if part:
                self.released.set()  # it starts with the moved rendezvous (run() reads argv after this)
        elif part:
            self._relaunch()
        self.moved.set()
        return True

    def _relaunch(self) -> None:
        with self.launch_guard:
            old = self.child
            if old is None:
                return
            try:
                os.killpg(old.pid, signal.SIGTERM)
            except OSError:
                pass
            procs.end_job(self.request.job_id, 3.0)
            try:
                old.wait(5)
            except subprocess.TimeoutExpired:
                pass
            if self.stop.is_set():
                return
            try:
                self._start_launcher()
            except OSError as exc:
                self.stop_job("cannot start %s again: %s" % (self.request.argv[0], exc.strerror or exc))

    def _await_restart(self, code: int) -> bool:
        """The launcher failed: with whole-job restarts left, the coordinator starts every
        node's part again (True once this node's has); False when it says no."""
        mesh = self.request.mesh
        if mesh is None or not mesh.restarts or self.peer is None or self.stop.is_set():
            return False
        asked = self.generation
        self.restart_answer.clear()
        how = "exit status %d" % code if code >= 0 else signal_name(code)
        self.peer.request_restart(mesh.node, "%s's part of the job failed (%s)" % (mesh.node, how), asked)
        self.restart_answer.wait(mesh.loss_timeout + 10)
        return self.generation > asked and not self.stop.is_set()

    def relaunch(self, generation: int, without: str = "") -> None:
        """From the mesh: this node's part starts again (every node's does), told which start
        it is; with `without`, its part of the plan made without those lost nodes (a spare
        that waited starts it, one not chosen goes on waiting)."""
        with self.guard:
            if generation <= self.generation or self.part_done or self.stop.is_set():
                return
            self.generation = generation
        if without:
            mesh = self.request.mesh
            nodes = mesh.replans.get(without, []) if mesh is not None else []
            if not self._take_replan(without, generation):
                return
            self.write_lines(["[trainfleet] %s lost: the job starts again without it on %s (restart %d)" % (
                " and ".join(without.split(",")), ", ".join(nodes), generation)])
            if self.spare and not self.released.is_set():
                self.released.set()  # (run() starts the launcher)
                self.restart_answer.set()
                return
        else:
            self.env[RESTART_VARIABLE] = str(generation)
            self.write_lines(["[trainfleet] the whole job starts again on every node (restart %d)" % generation])
        self._relaunch()
        with self.guard:
            if self.state.restarts and self.state.restarts[-1].resumed is None:
                self.state.restarts[-1].resumed = time.time()  # (node 0's record: its part runs again)
                write_state(self.directory, self.state)
        self.restart_answer.set()

    def restart_refused(self, generation: int) -> None:
        self.restart_answer.set()

    def _await_failover(self) -> bool:
        """The launcher failed: True if that is node 0's loss, which the failover answers
        by starting it again (it has, or does within the loss timeout); False when node 0
        is still there (its heartbeats go on), or the job cannot move."""
        mesh = self.request.mesh
        if self.moved.is_set():
            with self.launch_guard:
                return self.child is not None and self.child.poll() is None
        if mesh is None or not mesh.successor or not (self.request.failover or mesh.replans) or \
                mesh.node == mesh.nodes[0]:
            return False
        exited = time.time()
        deadline = exited + mesh.loss_timeout + 2
        while time.time() < deadline and not self.moved.is_set() and not self.stop.is_set():
            if getattr(self.peer, "heard", 0.0) > exited + 1.5 and not self.failed_over:
                return False
            time.sleep(0.2)
        return self.moved.is_set()

    def _close_log(self) -> None:
        with self.log_guard:
            assert self.log is not None
            self.log.close()
            self.log = None

    def _meet(self) -> Optional[Any]:
        """The mesh with the job's other supervisors, before any rank exists: no path
        leaves ranks unsupervised."""
        mesh = self.request.mesh
        if mesh is None:
            return None
        from .mesh import Coordinator, Member

        return Coordinator(mesh, self) if mesh.node == mesh.nodes[0] else Member(mesh, self)  # type: ignore[arg-type]

    def _failed_to_start(self, ready: int, code: int, reason: str) -> None:
        self.state.state, self.state.exit_code, self.state.ended = JobStatus.FAILED, code, time.time()
        self.state.reason = reason
        write_state(self.directory, self.state)
        if ready >= 0:
            os.write(ready, (json.dumps({"error": reason}) + "\n").encode())
        else:  # a spare that could not take its place: it is no longer there
            self._close_log()
            self._finish(self.peer)

    def _watch(self, peer: Optional[Any]) -> None:
        """Signals, the tether, the job's log, and the mesh: all that can end the job from here on."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        if self.tether is not None:
            threading.Thread(target=self._watch_tether, daemon=True).start()
        if peer is not None:
            peer.start()

    def _record_idle_spare(self, peer: Optional[Any]) -> None:
        """A spare whose launcher never started: the job ended without it."""
        with self.guard:
            self.state.ended, self.state.exit_code = time.time(), 0
            self.state.spare = "not needed"
            if self.stopped_by:
                self.state.state, self.state.reason = JobStatus.STOPPED, self.stopped_by
            else:
                self.state.state, self.state.reason = JobStatus.SUCCEEDED, self.reason
            write_state(self.directory, self.state)
        self._close_log()
        self._finish(peer)

    def _end(self, child: "subprocess.Popen[bytes]", env: Dict[str, str]) -> "tuple[int, List[Proc]]":
        """The launcher ended, or the job must: SIGTERM, a grace period, the plan's
        `after` commands, then whatever the job left anywhere on the node. Returns the
        launcher's exit status and what would not end."""
        request = self.request
        grace = request.grace
        if child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except OSError:
                pass
            procs.signal_job(request.job_id, signal.SIGTERM)
            # Ended by the mesh, the job is broken already (a lost node, a hang): its launcher
            # cannot leave cleanly (torchrun waits for a store it cannot reach), so no long wait.
            grace = min(request.grace, MESH_GRACE) if self.ended_by_mesh else request.grace
            deadline = time.monotonic() + grace
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        for command in request.after:
            try:
                subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=60, env=env)
            except (OSError, subprocess.SubprocessError):
                pass
        # Whatever the job left behind (workers in sessions of their own, daemons) goes too.
        left = procs.end_job(request.job_id, 0.2 if self.ended_by_mesh else min(grace, 3.0))
        return child.wait(), left

    def _record_end(self, code: int, left: "List[Proc]", peer: Optional[Any]) -> None:
        request = self.request
        where = os.path.expanduser(request.workdir)
        if code != 0 and self.state.disk_full is None and disk_is_full(where):
            # The ranks' failures follow from it: the disk is what `status` must name.
            self.state.disk_full, self.state.disk_full_path = self.no_space or time.time(), where
        if code != 0 and self.gpu_watching is not None:
            self.gpu_watching.join(GPU_WATCH_WAIT)
            try:  # a GPU that failed under the ranks is what `status` must name, not their exits
                if self.gpu_watch is not None:
                    self.state.gpu_faults = self.gpu_watch.hardware_faults()
            except Exception:
                pass
        if code != 0 and peer is not None and not self.stop.is_set():
            # A stop reaching another node first ends the ranks here too (their peers went)
            # before its word does: a part that failed just then waits a moment for it.
            self.stop.wait(STOP_NOTICE_WAIT)
        self.state.ended = time.time()
        self.state.exit_code = code if code >= 0 else 128 - code
        self.state.signal = signal_name(code)
        self.state.left = left
        self.state.errors = read_errors(self.directory)
        remove_secrets(request.job_id)
        with self.guard:
            # (a re-planned job's spare runs whatever it was given: ranks or not, it took a place)
            took = self.spare and (self.has_ranks() or (self.released.is_set() and
                                                         bool(request.mesh and request.mesh.replans)))
            if self.spare:
                self.state.spare = "joined" if took else "not needed"
            if self.stopped_by:
                self.state.state, self.state.reason = JobStatus.STOPPED, self.stopped_by
            elif self.spare and not took:
                # Waiting in the rendezvous, it ends when the job does (torchrun's agent even
                # fails as it leaves a closed rendezvous): nothing of the job failed here.
                self.state.state, self.state.reason = JobStatus.SUCCEEDED, self.reason or "not needed"
                self.state.exit_code = self.state.signal = None  # what ended it was the job's end
            elif self.stop.is_set():
                # Ended by the mesh: a lost node, a hang or another node's failure, not a user's stop.
                self.state.state = JobStatus.FAILED if self.ended_by_mesh else JobStatus.STOPPED
                self.state.reason = self.reason
            else:
                self.state.state = JobStatus.SUCCEEDED if code == 0 else JobStatus.FAILED
            write_state(self.directory, self.state)
        if self.state.disk_full is not None:
            time.sleep(SETTLE_AFTER)  # followers read the end of the log in memory first
            settle_overflow(self.directory)
        self._finish(peer)

    def _finish(self, peer: Optional[Any]) -> None:
        request = self.request
        if peer is not None:
            peer.finish(self.state.state)
        if request.holds_lock:
            release_lock(request.workdir, request.job_id)
        self.ended = True
        if peer is not None and hasattr(peer, "close"):
            peer.close()


def supervise_main(request: LaunchRequest, directory: str, tether: Optional[int], ready: int) -> None:
    """Entry of the supervisor process (started by `launch`)."""
    write_record(directory, "supervisor.pid", "%d %d" % (os.getpid(), procs.start_time(os.getpid()) or 0))
    Supervisor(request, directory, tether).run(ready)
