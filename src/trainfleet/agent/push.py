"""Taking a push: one stream of files passes through a chain of nodes, and each node
writes its own copy while it forwards the same bytes to the next (Kascade's pipeline),
so the sender's link carries every byte once, whatever the number of nodes.

The stream, after each side has proven the push's token (agent/handshake): per file a
JSON header line {"path", "size", "sha256", "offset"} and then its bytes from `offset`
on; a last {"end": true} line. A node writes into `.NAME.tfpart` beside the file and
renames it into place only when its sha256 is the one the controller sent this node
over SSH (never the one in the stream, which the node before could have changed), with
the source's permissions, so a cut-short push leaves a part to resume from and never a
wrong file. A next node that stops taking the stream is dropped (this
node goes on writing its own copy); an upstream that closes or stalls ends the stream
here, and the controller sends what is missing in another round.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import socket
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from .files import write_atomically
from .handshake import accept_loop, client_handshake
from .project import file_digest
from .protocol import PushFile, PushHaveReply, PushHaveRequest, PushProgress, PushReply, PushRequest

CHUNK = 1 << 20
CACHE = os.path.join("~", ".cache", "trainfleet", "pushed.json")
"""Path -> [size, mtime_ns, sha256] of files this node verified, so that a file already
there is recognised without reading it again."""

_listeners: Dict[int, socket.socket] = {}
_lock = threading.Lock()
_next = [1]


def _target(root: str, path: str) -> str:
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError("refusing a pushed path outside the destination: %r" % path)
    return os.path.join(os.path.expanduser(root), *parts)


def _part(final: str) -> str:
    folder, name = os.path.split(final)
    return os.path.join(folder, ".%s.tfpart" % name)


def _load_cache() -> Dict[str, List[object]]:
    try:
        with open(os.path.expanduser(CACHE)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _key(path: str) -> str:
    # Homes are often shared between machines (NFS): the same path names a file on each.
    return "%s:%s" % (socket.gethostname(), path)


def _remember(entries: Dict[str, Tuple[int, int, str]]) -> None:
    """Best effort: without the cache a file is only read again."""
    if not entries:
        return
    with _lock:
        try:
            cache = _load_cache()
            cache.update({_key(path): list(value) for path, value in entries.items()})
            path = os.path.expanduser(CACHE)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomically(path, json.dumps(cache), durable=False)
        except OSError:
            pass


def _whole(final: str, wanted: PushFile, cache: Dict[str, List[object]], verified: Dict[str, Tuple[int, int, str]]
           ) -> bool:
    try:
        stat = os.stat(final)
    except OSError:
        return False
    if stat.st_size != wanted.size:
        return False
    known = cache.get(_key(final))
    if known and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
        return known[2] == wanted.sha256
    digest = file_digest(final)
    verified[final] = (stat.st_size, stat.st_mtime_ns, digest)
    return digest == wanted.sha256


def have(request: PushHaveRequest) -> PushHaveReply:
    cache = _load_cache()
    verified: Dict[str, Tuple[int, int, str]] = {}
    complete, partial = [], {}
    for wanted in request.files:
        final = _target(request.root, wanted.path)
        if _whole(final, wanted, cache, verified):
            complete.append(wanted.path)
            continue
        try:
            size = os.path.getsize(_part(final))
        except OSError:
            size = 0
        partial[wanted.path] = min(size, wanted.size)
    _remember(verified)
    handle, port = _listen(request.address) if partial else (0, 0)
    return PushHaveReply(complete=complete, partial=partial, handle=handle, port=port)


def _listen(address: str) -> Tuple[int, int]:
    server = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    server.bind((address, 0))
    server.listen(16)
    with _lock:
        handle = _next[0]
        _next[0] += 1
        _listeners[handle] = server

    def unused() -> None:  # a round that never came (the controller went away)
        with _lock:
            left = _listeners.pop(handle, None)
        if left is not None:
            left.close()

    timer = threading.Timer(600, unused)
    timer.daemon = True
    timer.start()
    return handle, server.getsockname()[1]


class _Forward:
    """The next node, fed from a bounded queue by a thread of its own: a slow next node
    slows the chain down (as it must), a failed one is dropped."""

    def __init__(self, sock: Optional[socket.socket]) -> None:
        self.sock = sock
        self.error: Optional[str] = None
        self.queue: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=32)
        self.thread = threading.Thread(target=self._run, daemon=True)
        if sock is not None:
            self.thread.start()

    def _run(self) -> None:
        while True:
            data = self.queue.get()
            if data is None:
                break
            if self.error is None:
                try:
                    self.sock.sendall(data)  # type: ignore[union-attr]
                except OSError as exc:
                    self.error = "the next node stopped taking the stream: %s" % (exc.strerror or exc)
        try:
            self.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        except OSError:
            pass

    def put(self, data: bytes) -> None:
        if self.sock is not None and self.error is None:
            self.queue.put(data)

    def close(self) -> None:
        if self.sock is None:
            return
        self.queue.put(None)
        self.thread.join()
        self.sock.close()


def _connect_forward(request: PushRequest) -> Tuple[Optional[socket.socket], Optional[str]]:
    target = request.forward
    if target is None:
        return None, None
    try:
        sock = socket.create_connection((target.address, target.port), timeout=10)
    except OSError as exc:
        return None, "cannot reach %s at %s:%d: %s" % (target.node, target.address, target.port, exc.strerror or exc)
    if not client_handshake(sock, request.forward_token, {"push": True}):
        sock.close()
        return None, "%s at %s:%d did not prove the push's token" % (target.node, target.address, target.port)
    sock.settimeout(request.stall_timeout)
    return sock, None


ACCEPT_WAIT = 60.0


def _authenticated(server: socket.socket, token: str, wait: float) -> Optional[socket.socket]:
    """The first connection that proves the push's token; strangers (a port scan, junk) are
    closed and waited past, never taken for the stream."""
    found: List[socket.socket] = []
    arrived = threading.Event()

    def take(conn: socket.socket, fields: Dict[str, object]) -> None:
        if arrived.is_set():
            conn.close()
            return
        found.append(conn)
        arrived.set()

    server.settimeout(0.5)
    loop = threading.Thread(target=accept_loop, args=(server, token, take, lambda: not arrived.is_set()),
                            daemon=True)
    loop.start()
    arrived.wait(wait)
    arrived.set()
    loop.join(2)
    server.close()
    return found[0] if found else None


def receive(request: PushRequest, emit: Callable[[object], None]) -> PushReply:
    with _lock:
        server = _listeners.pop(request.handle, None)
    if server is None:
        return PushReply(written={}, received=0, error="the listener for this push was gone (waited too long)")
    conn = _authenticated(server, request.token, ACCEPT_WAIT)
    if conn is None:
        return PushReply(written={}, received=0, error="no connection proved the push's token within %.0fs"
                                                       % ACCEPT_WAIT)
    conn.settimeout(request.stall_timeout)
    stream = conn.makefile("rb", buffering=CHUNK)
    written: Dict[str, str] = {}
    counted = [0]
    try:
        sock, forward_error = _connect_forward(request)
        forward = _Forward(sock)
        try:
            error = _take(stream, request, forward, written, counted, emit)
        finally:
            forward.close()
        return PushReply(written=written, received=counted[0], error=error,
                         forward_error=forward_error or forward.error)
    finally:
        stream.close()
        conn.close()


HEADER_LIMIT = 8192
"""A file's header line is a path and three numbers: a longer one is no header."""


def _take(stream, request: PushRequest, forward: _Forward, written: Dict[str, str],  # type: ignore[no-untyped-def]
          counted: List[int], emit: Callable[[object], None]) -> Optional[str]:
    """Read the stream to its end; None, or why it ended early."""
    last = [0.0]
    verified: Dict[str, Tuple[int, int, str]] = {}
    wanted = {f.path: f for f in request.files}

    def progress(final: bool = False) -> None:
        now = time.monotonic()
        if final or now - last[0] >= 0.5:
            last[0] = now
            emit(PushProgress(received=counted[0]))

    try:
        while True:
            line = stream.readline(HEADER_LIMIT + 1)
            if not line:
                return "the stream ended before its last file"
            if len(line) > HEADER_LIMIT or not line.endswith(b"\n"):
                return "a header line of the stream is longer than %d bytes" % HEADER_LIMIT
            forward.put(line)
            header = json.loads(line)
            if header.get("end"):
                progress(True)
                return None
            path, size, offset = header["path"], int(header["size"]), int(header["offset"])
            expected = wanted.get(path)
            mine = path in request.start
            if mine and (expected is None or size != expected.size or not 0 <= offset <= size):
                return "the stream's header for %s does not match what the controller sent" % path
            final = _target(request.root, path)
            handle, digest = None, hashlib.sha256()
            if mine:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                part = _part(final)
                handle = open(part, "r+b" if os.path.exists(part) else "w+b")
                handle.truncate(offset)
                handle.seek(0)
                left = offset
                while left > 0:  # what an earlier push wrote counts towards the checksum
                    chunk = handle.read(min(CHUNK, left))
                    if not chunk:
                        raise ValueError("%s: the part kept from before is shorter than %d bytes" % (path, offset))
                    digest.update(chunk)
                    left -= len(chunk)
                handle.seek(offset)
            remaining = size - offset
            try:
                while remaining > 0:
                    chunk = stream.read(min(CHUNK, remaining))
                    if not chunk:
                        return "the stream ended in %s, %d bytes short" % (path, remaining)
                    forward.put(chunk)
                    if handle is not None:
                        handle.write(chunk)
                        digest.update(chunk)
                    remaining -= len(chunk)
                    counted[0] += len(chunk)
                    progress()
                if handle is not None:
                    handle.flush()
                    os.fsync(handle.fileno())
            finally:
                if handle is not None:
                    handle.close()
            if mine:
                got = digest.hexdigest()
                written[path] = got
                if expected is not None and got == expected.sha256:
                    os.chmod(_part(final), expected.mode & 0o777)
                    os.replace(_part(final), final)
                    stat = os.stat(final)
                    verified[final] = (stat.st_size, stat.st_mtime_ns, got)
                else:
                    os.unlink(_part(final))  # a wrong copy is not kept, nor resumed from
    except socket.timeout:
        return "nothing arrived for %.0fs (the node before stalled)" % request.stall_timeout
    except OSError as exc:
        return "the stream broke: %s" % (exc.strerror or exc)
    finally:
        _remember(verified)
