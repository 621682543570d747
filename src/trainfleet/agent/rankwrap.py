"""Runs one rank's entrypoint, unchanged, as `python script.py` or `python -m module` would.

The launcher (torchrun, DeepSpeed's per-node launcher, accelerate) starts this file with
the user's script (or `-m module`) as its first argument, so `ps` still shows the
script; the script gets the argv the launcher built (DeepSpeed's `--local_rank=N`,
which it puts first, included). Around it this adds three things, none of which needs
a change to the user's script:

1. Every line the rank writes to stdout or stderr (C++ warnings included) is prefixed
   with `[tf:rankN] `, whatever the launcher, so the supervisor can tell ranks apart. A
   small forked reader does the prefixing; it ends when the rank and its children have
   all closed the pipe, so nothing the rank wrote last is lost, even when it is killed.
2. The rank's first uncaught exception (or non-zero exit) is recorded, with the time it
   happened, in the job directory: the root cause of a failed job is the failure that
   came first, not the first rank whose launcher noticed (torchelastic's @record, for
   any script). Secret values are redacted from the record.
3. A finished rank leaves without the interpreter's final teardown (after waiting for
   its threads, running atexit handlers and flushing every open file): a process group
   that something still references (DDP's reducer keeps the gloo group alive past
   destroy_process_group) would otherwise be destroyed during C++ static teardown with
   its threads running, and the rank would abort with `terminate called without an
   active exception` after training had finished.
Stdlib only; Python 3.8 syntax.
"""

import json
import os
import re
import signal
import sys
import time
import traceback

RANK_TAG = "tf:rank"
"""The mark on every line a rank writes (`[tf:rankN] text`): defined here, where lines
are marked, and read from here by the node agent and the controller."""
RANK_LINE = re.compile(r"^\[" + RANK_TAG + r"(\d+)\] ?(.*)$")


def rank_mark(rank):
    return "[%s%d] " % (RANK_TAG, rank)


def node_key():
    """This machine, as a name for its records in a job directory that other machines may
    share (an NFS home): its machine id, hostname and network namespace (the sandbox's
    nodes share the first). The node supervisor passes its own in TRAINFLEET_NODE_KEY,
    which a container (another hostname, another machine id) keeps."""
    given = os.environ.get("TRAINFLEET_NODE_KEY")
    if given:
        return given
    import hashlib
    import socket

    parts = [socket.gethostname()]
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as handle:
                parts.append(handle.read().strip())
            break
        except OSError:
            continue
    try:
        parts.append(str(os.stat("/proc/self/ns/net").st_ino))
    except OSError:
        pass
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def node_records(job_directory):
    """Where this node keeps its own records of the job (state, output, failures)."""
    return os.path.join(job_directory, "nodes", node_key())

STACK_SIGNAL = getattr(signal, "SIGRTMIN", 34) + 3
"""Dumps every thread's stack (faulthandler) when the job hangs; a real-time signal,
which training code does not use for anything else (unlike SIGUSR1/2)."""


def stacks_on_signal():
    import faulthandler

    faulthandler.register(STACK_SIGNAL, all_threads=True, chain=False)


def _write_all(fd, data):
    while data:
        written = os.write(fd, data)
        data = data[written:]


def exit_signal(pid, timeout=1.0):
    """The signal that ended `pid`, read while it is a zombie its parent has not reaped
    yet: None if it exited, or is gone. A dying process closes its pipes before it becomes
    a zombie, so the reader that saw them close waits (briefly) for that state."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open("/proc/%d/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        if fields[0] == "Z" or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    if fields[0] != "Z" or len(fields) < 50:
        return None
    status = int(fields[49])
    if os.WIFSIGNALED(status):
        try:
            return signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            return "signal %d" % os.WTERMSIG(status)
    return None


def prefix_output(rank):
    rank_pid = os.getpid()
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        # The reader: ends at EOF, when the rank (and anything it started) is gone.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, STACK_SIGNAL):
            signal.signal(signum, signal.SIG_IGN)
        os.close(write_end)
        prefix = rank_mark(rank).encode()
        pending = b""
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except InterruptedError:
                continue
            if not chunk:
                break
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop()
            if lines:
                _write_all(1, b"".join(prefix + line + b"\n" for line in lines))
        if pending:
            _write_all(1, prefix + pending + b"\n")
        killed = exit_signal(rank_pid)
        if killed:
            record(rank, "signal", "killed by %s" % killed, "", 128 + getattr(signal, killed, 0))
        os._exit(0)
    os.close(read_end)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)


SECRET_LINE_MIN = 8
"""A multi-line secret (a key file) is also redacted line by line, each line this long or
longer: output is read and redacted a line at a time, where the whole never appears."""


def secret_fragments(values):
    """What to replace in output, longest first (a secret containing another goes whole)."""
    found = set()
    for value in values:
        if value:
            found.add(value)
            if "\n" in value:
                found.update(line.strip() for line in value.splitlines() if len(line.strip()) >= SECRET_LINE_MIN)
    return sorted(found, key=len, reverse=True)


def redact(text, fragments):
    """The one redaction: `text` (str, or bytes with bytes fragments) with every fragment
    (from secret_fragments) replaced by ***. The rank's output, its error records, the
    supervisor's log and mount helpers' messages all go through here."""
    mark = b"***" if isinstance(text, bytes) else "***"
    for value in fragments:
        text = text.replace(value, mark)
    return text


def _own_secrets():
    """This rank's secrets (their names are in its environment), as fragments."""
    names = [n for n in os.environ.get("TRAINFLEET_SECRET_NAMES", "").split(",") if n]
    return secret_fragments(os.environ.get(n, "") for n in names)


def record(rank, kind, summary, trace, exit_code):
    if not os.environ.get("TRAINFLEET_JOB_DIR"):
        return
    folder = os.path.join(node_records(os.environ["TRAINFLEET_JOB_DIR"]), "errors")
    if not os.path.isdir(folder):
        return
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    path = os.path.join(folder, "rank-%d-attempt-%d.json" % (rank, attempt))
    if os.path.exists(path):
        return
    hidden = _own_secrets()
    entry = {"rank": rank, "node": os.environ.get("TRAINFLEET_NODE", ""), "time": time.time(), "kind": kind,
             "summary": redact(summary, hidden)[:2000], "traceback": redact(trace, hidden)[-20000:], "exit_code": exit_code,
             "attempt": attempt}
    # Not agent/files.write_atomically: this module runs inside the user's ranks, written
    # beside sitecustomize as a loose file, and imports nothing of the agent.
    tmp = "%s.%s.tmp" % (path, os.urandom(6).hex())  # not the pid: nodes sharing a file system share pids
    try:
        with open(tmp, "w") as handle:
            json.dump(entry, handle)
        os.replace(tmp, path)
    except OSError:
        pass


def record_uncaught(rank):
    """For ranks started by someone else's runner (the sitecustomize form): uncaught
    exceptions, in any thread, are recorded before Python prints them."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        record(rank, "exception", "%s: %s" % (kind.__name__, value),
               "".join(traceback.format_exception(kind, value, tb)), 1)
        previous(kind, value, tb)

    sys.excepthook = hook
    import threading

    previous_thread = threading.excepthook

    def thread_hook(args):
        if args.exc_type is not SystemExit:
            record(rank, "exception", "%s: %s" % (args.exc_type.__name__, args.exc_value),
                   "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)), 1)
        previous_thread(args)

    threading.excepthook = thread_hook


def user_traceback(exc):
    """The traceback from the user's code down: this wrapper's and runpy's frames left out."""
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename == __file__ or
                              "runpy" in tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def leave(code):
    """Finish as the interpreter would (threads, atexit, buffers), minus C++ teardown."""
    import atexit
    import gc
    import io
    import threading

    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    # Text layers first: their flush feeds the binary buffers below them. `type()` and
    # concrete classes only: isinstance() would touch attributes of arbitrary objects.
    for kinds in ((io.TextIOWrapper,), (io.BufferedWriter, io.BufferedRandom)):
        for obj in gc.get_objects():
            if issubclass(type(obj), kinds):
                try:
                    if not obj.closed and obj.writable():
                        obj.flush()
                except (OSError, ValueError):
                    pass
    os._exit(code)


def split_argv(argv):
    """[wrapper, (--local_rank=N), entry | -m module, args...] -> (entry, is module, the
    argv the script would have had without the wrapper)."""
    launcher_first = []
    rest = list(argv[1:])
    while rest and rest[0].startswith("--local_rank="):
        launcher_first.append(rest.pop(0))
    as_module = bool(rest) and rest[0] == "-m"
    if as_module:
        rest.pop(0)
    if not rest:
        raise SystemExit("rankwrap: no script to run")
    entry = rest.pop(0)
    return entry, as_module, [entry] + launcher_first + rest


def main():
    rank = int(os.environ.get("RANK", "0"))
    entry, as_module, argv = split_argv(sys.argv)
    prefix_output(rank)
    stacks_on_signal()
    import runpy

    code = 0
    try:
        sys.argv = argv
        if as_module:
            sys.path[0] = os.getcwd()
            runpy.run_module(entry, run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = os.path.dirname(os.path.abspath(entry))
            runpy.run_path(entry, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            sys.stderr.write("%s\n" % exc.code)
            code = 1
        if code:
            record(rank, "exit", "exited with status %d" % code, "", code)
    except BaseException as exc:
        trace = user_traceback(exc)
        record(rank, "exception", "%s: %s" % (type(exc).__name__, exc), trace, 1)
        sys.stderr.write(trace)
        code = 1
    if "torch" in sys.modules:
        leave(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
