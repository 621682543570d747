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

from . import facts, firewall, jobs, probes, trust
from .protocol import Empty, SweepReply, request_from_wire, to_wire

_write_lock = threading.Lock()


def send(message: Dict[str, Any]) -> None:
    text = json.dumps(message) + "\n"
    with _write_lock:
        sys.stdout.write(text)
        sys.stdout.flush()


def sweep(request: Any) -> SweepReply:
    from . import procs

    if request.kill:
        return SweepReply(left=procs.end_job(request.job_id, request.grace))
    return SweepReply(left=procs.job_processes(request.job_id))


def release(request: Any) -> Empty:
    probes.release(request.handle)
    return Empty()


def handle(message: Dict[str, Any]) -> None:
    ident = message.get("id")

    def emit(event: Any) -> None:
        send({"id": ident, "event": to_wire(event)})

    try:
        request = request_from_wire(message)
        handlers = {
            "facts": facts.gather, "listen": probes.listen, "release": release, "connect": probes.connect,
            "launch": lambda r: jobs.launch(r, emit), "stop": jobs.stop, "sweep": sweep, "trust": trust.trust,
            "untrust": trust.untrust, "ssh_matrix": trust.ssh_matrix, "firewall": firewall.firewall,
        }
        reply = handlers[request.op](request)
        send({"id": ident, "reply": to_wire(reply)})
    except Exception as exc:
        send({"id": ident, "error": "%s: %s" % (type(exc).__name__, exc), "trace": traceback.format_exc()})


def serve() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        threading.Thread(target=handle, args=(json.loads(line),), daemon=True).start()
