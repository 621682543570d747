"""The agent's loop: one request per stdin line, each answered on stdout, many at once.

Each request runs in a thread of its own, so a long one (a launch being followed, a
listener held) does not hold up the others. The agent ends when stdin closes: the
controller is done, or gone.
"""

from __future__ import annotations

import json
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


def _handler(op: str, emit: Any) -> Any:
    """The function answering `op` (its module imported only when first asked for: the
    agent starts on every node for every command, and most commands need two or three)."""
    if op == "facts":
        from . import facts
        return facts.gather
    if op in ("listen", "connect"):
        from . import probes
        return probes.listen if op == "listen" else probes.connect
    if op in ("launch", "stop", "prepare", "write", "lock", "jobs", "follow"):
        from . import jobs
        return {"launch": lambda r: jobs.launch(r, emit), "stop": jobs.stop, "prepare": jobs.prepare,
                "write": jobs.write, "lock": jobs.lock, "jobs": jobs.jobs,
                "follow": lambda r: jobs.follow_request(r, emit)}[op]
    if op == "top":
        from . import top
        return top.top
    if op in ("trust", "untrust", "ssh_matrix"):
        from . import trust
        return getattr(trust, op)
    if op == "manifest":
        from . import project
        return project.write_manifest
    if op in ("push_have", "push"):
        from . import push
        return push.have if op == "push_have" else lambda r: push.receive(r, emit)
    if op in ("storage", "probe"):
        from . import storage
        return storage.storage if op == "storage" else storage.probe
    if op == "firewall":
        from . import firewall
        return firewall.firewall
    return {"sweep": sweep, "release": release}[op]


def sweep(request: Any) -> SweepReply:
    from . import jobs, procs

    left = procs.end_job(request.job_id, request.grace) if request.kill else procs.job_processes(request.job_id)
    errors = []
    if request.workdir:
        errors = jobs.read_errors(jobs.job_dir(request.workdir, request.job_id))
    if request.kill:
        jobs.remove_secrets(request.job_id)
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
        reply = _handler(request.op, emit)(request)
        send({"id": ident, "reply": to_wire(reply)})
    except Exception as exc:
        send({"id": ident, "error": "%s: %s" % (type(exc).__name__, exc), "trace": traceback.format_exc()})


def serve() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        threading.Thread(target=handle, args=(json.loads(line),), daemon=True).start()
