"""The agent's loop: one request per stdin line, each answered on stdout, many at once.

Each request runs in a thread of its own, so a long one (a launch being followed, a
listener held) does not hold up the others. The agent ends when stdin closes: the
controller is done, or gone.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import sys
import threading
import traceback
from typing import Any, Dict

from .protocol import Empty, SweepReply, request_from_wire, to_wire

_write_lock = threading.Lock()


def send(message: Dict[str, Any]) -> None:
    text = json.dumps(message) + "\n"
    with _write_lock:
        sys.stdout.write(text)
        sys.stdout.flush()


def _handler(request: Any, emit: Any) -> Any:
    """The function answering `request`, as its class names it (its module imported only
    when first asked for: the agent starts on every node for every command, and most
    commands need two or three of its modules)."""
    module_name, function = request.handler.rsplit(".", 1)
    module = importlib.import_module("." + module_name, __package__)
    answer = getattr(module, function)
    return (lambda r: answer(r, emit)) if request.streams else answer


def sweep(request: Any) -> SweepReply:
    from . import procs
    from .records import node_dir, read_errors, remove_secrets

    left = procs.end_job(request.job_id, request.grace) if request.kill else procs.job_processes(request.job_id)
    errors = []
    if request.workdir:
        errors = read_errors(node_dir(request.workdir, request.job_id))
    if request.kill:
        remove_secrets(request.job_id)
    return SweepReply(left=left, errors=errors)


def release(request: Any) -> Empty:
    from . import probes

    probes.release(request.handle)
    return Empty()


def handle(message: Dict[str, Any]) -> None:
    ident = message.get("id")

    def emit(event: Any) -> None:
        send({"id": ident, "event": to_wire(event)})

    try:
        request = request_from_wire(message)
        reply = _handler(request, emit)(request)
        send({"id": ident, "reply": to_wire(reply)})
    except Exception as exc:
        send({"id": ident, "error": "%s: %s" % (type(exc).__name__, exc), "trace": traceback.format_exc()})


def serve(resident: str = "", keep: float = 0.0) -> None:
    """Answer requests until stdin ends. With `resident` (a key from the controller), leave
    a resident agent behind for the next command first (see resident.py), and say where."""
    from . import PENDING

    ready: Dict[str, Any] = {"ready": True}  # the controller's timeouts count from here, not the shell's start
    if resident:
        from . import resident as kept

        try:
            ready.update(kept.start(resident, keep, serve))  # (passed in: resident.py imports nothing of main)
        except Exception:  # the command goes on without one (and the next starts its agent as this one did)
            pass
    send(ready)
    for line in itertools.chain(list(PENDING), sys.stdin):
        if not line.strip():
            continue
        threading.Thread(target=handle, args=(json.loads(line),), daemon=True).start()
    # The controller is done. Leave without the interpreter's shutdown: a handler thread
    # that has just sent its reply may still hold stdout's buffer lock, and finalization
    # then waits for it for seconds before aborting (every command paid 2 s, now and then).
    # Under the write lock no thread is inside stdout; a handler still at work is
    # abandoned as a daemon thread would be.
    with _write_lock:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
