"""Reachability tests: hold listeners, try connections, measure throughput."""

from __future__ import annotations

import errno
import socket
import threading
import time
from typing import Dict, List, Optional

from .protocol import Attempt, Bound, ConnectReply, ConnectRequest, ListenReply, ListenRequest, Target

_listeners: Dict[int, List[socket.socket]] = {}
_lock = threading.Lock()
_next_handle = [1]


PROBE_LIMIT = 64 << 20
"""The most a throughput test may send (doctor sends 8 MiB): anything claiming more is junk."""
PROBE_IDLE = 10.0
PROBE_PENDING = 64


def _serve(conn: socket.socket) -> None:
    # A bare connect closes at once; a throughput test sends an 8-byte length, then
    # that many bytes, and waits for one byte back once they have all arrived. Anyone
    # may connect (that is what is tested), so what they may send is bounded.
    try:
        conn.settimeout(PROBE_IDLE)
        header = b""
        while len(header) < 8:
            chunk = conn.recv(8 - len(header))
            if not chunk:
                return
            header += chunk
        remaining = int.from_bytes(header, "big")
        if remaining > PROBE_LIMIT:
            return
        while remaining > 0:
            chunk = conn.recv(min(remaining, 1 << 20))
            if not chunk:
                return
            remaining -= len(chunk)
        conn.sendall(b"k")
    except OSError:
        pass
    finally:
        conn.close()


def _accept_all(server: socket.socket) -> None:
    slots = threading.BoundedSemaphore(PROBE_PENDING)

    def serve(conn: socket.socket) -> None:
        try:
            _serve(conn)
        finally:
            slots.release()

    while True:
        try:
            conn, _ = server.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED):
                time.sleep(0.1)
                continue
            return  # released
        if not slots.acquire(blocking=False):
            conn.close()
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def listen(request: ListenRequest) -> ListenReply:
    address = request.address or "0.0.0.0"
    bound = []
    sockets = []
    for port in request.ports:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((address, int(port)))
            server.listen(128)
        except OSError as exc:
            bound.append(Bound(wanted=port, error=exc.strerror))
            server.close()
            continue
        bound.append(Bound(wanted=port, port=server.getsockname()[1]))
        sockets.append(server)
        threading.Thread(target=_accept_all, args=(server,), daemon=True).start()
    with _lock:
        handle = _next_handle[0]
        _next_handle[0] += 1
        _listeners[handle] = sockets
    timer = threading.Timer(request.max_seconds, release, args=(handle,))
    timer.daemon = True
    timer.start()
    return ListenReply(handle=handle, bound=bound)


def release(handle: int) -> None:
    with _lock:
        sockets = _listeners.pop(handle, [])
    for server in sockets:
        try:
            server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        server.close()


def try_connect(target: Target, timeout: float) -> Attempt:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    started = time.monotonic()
    try:
        probe.connect((target.address, int(target.port)))
        attempt = Attempt(target=target, result="ok", ms=round((time.monotonic() - started) * 1000, 2))
        if target.bytes:
            block = b"\0" * (1 << 20)
            began = time.monotonic()
            probe.settimeout(max(timeout, 10.0))
            probe.sendall(int(target.bytes).to_bytes(8, "big"))
            left = int(target.bytes)
            while left > 0:
                left -= probe.send(block[:min(left, len(block))])
            if probe.recv(1) != b"k":
                return Attempt(target=target, result="error", error="throughput test was cut short")
            attempt.mbit_s = round(target.bytes * 8 / (time.monotonic() - began) / 1e6, 1)
        return attempt
    except socket.timeout:
        return Attempt(target=target, result="timeout")
    except ConnectionRefusedError:
        return Attempt(target=target, result="refused")
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return Attempt(target=target, result="unreachable", error=exc.strerror)
        return Attempt(target=target, result="error", error=exc.strerror)
    finally:
        probe.close()


def connect(request: ConnectRequest) -> ConnectReply:
    attempts: List[Optional[Attempt]] = [None] * len(request.targets)

    def attempt(index: int) -> None:
        attempts[index] = try_connect(request.targets[index], request.timeout)

    if request.sequential:
        for index in range(len(request.targets)):
            attempt(index)
    else:
        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(request.targets))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    resolved: Dict[str, Optional[str]] = {}

    def resolve(name: str) -> None:
        try:
            resolved[name] = socket.gethostbyname(name)
        except OSError:
            resolved[name] = None

    lookups = [threading.Thread(target=resolve, args=(name,), daemon=True) for name in request.resolve]
    for lookup in lookups:
        lookup.start()
    for lookup in lookups:
        lookup.join(3.0)  # a resolver that hangs is itself the answer: not resolvable in time
    for name in request.resolve:
        resolved.setdefault(name, None)
    return ConnectReply(attempts=[a for a in attempts if a is not None], resolved=resolved)
