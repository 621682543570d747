"""Listeners that a stranger on the network may reach: who may talk, and how much a stranger may say.

The job's mesh and push's chain listen on the training network, which on rented
machines is often a public one. Before anything else a peer proves it holds the job's
token without sending it: the listener sends a fresh nonce, the peer answers with an
HMAC of that nonce (and of what it says it is) under the token, and the listener proves
itself the same way over the peer's own nonce. A recorded hello is useless the next
time; the token never crosses the network. Until then a peer may send at most
HELLO_LIMIT bytes within HELLO_TIMEOUT seconds, and at most MAX_PENDING such peers are
heard at once; `accept_loop` survives running out of descriptors. Stdlib only, Python
3.8 syntax: the controller imports this module too (push's first hop).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Dict, Optional

HELLO_LIMIT = 4096
HELLO_TIMEOUT = 5.0
MAX_PENDING = 32
MESSAGE_LIMIT = 65536
"""The longest line an authenticated mesh peer may send."""
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _mac(token: str, *parts: bytes) -> str:
    return hmac.new(token.encode(), b"\0".join(parts), hashlib.sha256).hexdigest()


def nonce() -> str:
    return os.urandom(16).hex()


def challenge_line(server_nonce: str) -> bytes:
    return (json.dumps({"nonce": server_nonce}) + "\n").encode()


def parse_challenge(line: bytes) -> Optional[str]:
    found = _object(line)
    value = found.get("nonce") if found else None
    return value if isinstance(value, str) and len(value) == 32 else None


def hello_line(token: str, server_nonce: str, client_nonce: str, fields: Dict[str, Any]) -> bytes:
    """The peer's answer: what it says it is, its own nonce, and the proof over both."""
    body = json.dumps(dict(fields, nonce=client_nonce), sort_keys=True)
    return (json.dumps({"body": body, "mac": _mac(token, b"client", server_nonce.encode(), body.encode())})
            + "\n").encode()


def check_hello(token: str, server_nonce: str, line: bytes) -> Optional[Dict[str, Any]]:
    """The peer's fields if its proof holds (compared in constant time), else None."""
    found = _object(line)
    if not found or not isinstance(found.get("body"), str) or not isinstance(found.get("mac"), str):
        return None
    expected = _mac(token, b"client", server_nonce.encode(), found["body"].encode())
    if not _same(expected, found["mac"]):
        return None
    body = _object(found["body"].encode())
    return body if body and isinstance(body.get("nonce"), str) else None


def session_key(token: str, server_nonce: str, client_nonce: str) -> str:
    """The connection's own key, from the token and both nonces: each side knows it once
    the other has proven the token; nobody who has only watched the handshake does."""
    return _mac(token, b"session", server_nonce.encode(), client_nonce.encode())


class Sealed:
    """Lines after the handshake, each with a MAC under the connection's own key over its
    direction, its sequence number and its text: an on-path peer can neither inject a line
    (a forged stop, a heartbeat for a dead node), replay or reorder one, nor reflect one
    back. A line that fails is the end of the connection."""

    def __init__(self, sock: socket.socket, key: str, server: bool) -> None:
        self.sock = sock
        self.key = bytes.fromhex(key)
        self.outgoing, self.incoming = (b"s2c", b"c2s") if server else (b"c2s", b"s2c")
        self.sent = 0
        self.received = 0
        self.lock = threading.Lock()

    def _mac(self, direction: bytes, number: int, body: str) -> str:
        return hmac.new(self.key, b"\0".join([direction, str(number).encode(), body.encode()]),
                        hashlib.sha256).hexdigest()

    def send(self, message: Dict[str, Any]) -> bool:
        body = json.dumps(message)
        try:
            with self.lock:
                self.sent += 1
                line = json.dumps({"b": body, "n": self.sent, "m": self._mac(self.outgoing, self.sent, body)})
                self.sock.sendall((line + "\n").encode())
            return True
        except OSError:
            return False

    def open(self, line: bytes) -> Optional[Dict[str, Any]]:
        """The message, if the line is the next one the peer sent; else None."""
        found = _object(line)
        if not found or not isinstance(found.get("b"), str) or not isinstance(found.get("m"), str) or \
                found.get("n") != self.received + 1:
            return None
        if not _same(self._mac(self.incoming, self.received + 1, found["b"]), found["m"]):
            return None
        message = _object(found["b"].encode())
        if message is not None:
            self.received += 1
        return message

    def close(self) -> None:
        self.sock.close()


def proof_line(token: str, client_nonce: str) -> bytes:
    return (json.dumps({"mac": _mac(token, b"server", client_nonce.encode())}) + "\n").encode()


def check_proof(token: str, client_nonce: str, line: bytes) -> bool:
    found = _object(line)
    mac = found.get("mac") if found else None
    return isinstance(mac, str) and _same(_mac(token, b"server", client_nonce.encode()), mac)


def _same(expected: str, given: str) -> bool:
    """In constant time, as bytes: compare_digest raises on a str that is not ASCII (a
    stranger's junk was a traceback per attempt, and refused nothing)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def _object(line: bytes) -> Optional[Dict[str, Any]]:
    try:
        found = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return found if isinstance(found, dict) else None


def read_line(sock: socket.socket, limit: int, timeout: float) -> Optional[bytes]:
    """One line of at most `limit` bytes within `timeout` seconds (read a byte at a time
    past the line is never needed: the peer waits for our answer before it goes on)."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or len(data) > limit:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(1)
        except (OSError, socket.timeout):
            return None
        if not chunk:
            return None
        data += chunk
    return data


def serve_handshake(conn: socket.socket, token: str) -> Optional[Dict[str, Any]]:
    """The listener's side: the peer's fields once it has proven the token, else None."""
    mine = nonce()
    try:
        conn.settimeout(HELLO_TIMEOUT)
        conn.sendall(challenge_line(mine))
    except OSError:
        return None
    line = read_line(conn, HELLO_LIMIT, HELLO_TIMEOUT)
    fields = check_hello(token, mine, line) if line else None
    if fields is None:
        return None
    try:
        conn.sendall(proof_line(token, fields["nonce"]))
    except OSError:
        return None
    fields["_session"] = session_key(token, mine, fields["nonce"])  # (set here: never the peer's word)
    return fields


def client_session(sock: socket.socket, token: str, fields: Dict[str, Any],
                   timeout: float = HELLO_TIMEOUT) -> Optional[str]:
    """The connecting side: the connection's key once both have proven the token to each
    other, else None."""
    challenge = read_line(sock, HELLO_LIMIT, timeout)
    server_nonce = parse_challenge(challenge) if challenge else None
    if server_nonce is None:
        return None
    mine = nonce()
    try:
        sock.sendall(hello_line(token, server_nonce, mine, fields))
    except OSError:
        return None
    proof = read_line(sock, HELLO_LIMIT, timeout)
    if proof is None or not check_proof(token, mine, proof):
        return None
    return session_key(token, server_nonce, mine)


def client_handshake(sock: socket.socket, token: str, fields: Dict[str, Any],
                     timeout: float = HELLO_TIMEOUT) -> bool:
    """The connecting side: True once both have proven the token to each other."""
    return client_session(sock, token, fields, timeout) is not None


def _plain(address: str) -> str:
    """An IPv4 peer of a dual-stack socket, as IPv4 (`::ffff:10.0.0.2` is `10.0.0.2`)."""
    return address[7:] if address.startswith("::ffff:") and "." in address else address


def accept_loop(server: socket.socket, token: str, on_peer: Callable[[socket.socket, Dict[str, Any]], None],
                alive: Callable[[], bool], pending: int = MAX_PENDING,
                allowed: Optional[Callable[[str], bool]] = None) -> None:
    """Accept until `alive()` says stop or the socket is closed. A connection from an
    address `allowed` refuses is closed before it is read from or takes a slot (strangers
    cannot crowd out the fleet); each other proves the token in a thread of its own, at
    most `pending` at once (more are closed at once); those that do are handed to `on_peer`
    with their fields, the others closed. Out of descriptors (or memory) it waits a moment
    and goes on: a flood ends nothing."""
    slots = threading.BoundedSemaphore(pending)

    def run(conn: socket.socket) -> None:
        try:
            fields = serve_handshake(conn, token)
        finally:
            slots.release()
        if fields is None:
            conn.close()
            return
        on_peer(conn, fields)

    while alive():
        try:
            conn, peer = server.accept()
        except socket.timeout:
            continue
        except OSError as exc:
            if exc.errno in _RESOURCE_ERRORS:
                time.sleep(0.1)
                continue
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                continue
            return  # closed: the job is over
        if allowed is not None and not allowed(_plain(str(peer[0]))):
            conn.close()
            continue
        if not slots.acquire(blocking=False):
            conn.close()
            continue
        try:
            threading.Thread(target=run, args=(conn,), daemon=True).start()
        except RuntimeError:  # no thread to be had
            slots.release()
            conn.close()
