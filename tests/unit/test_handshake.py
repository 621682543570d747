"""The listeners' handshake over real sockets: the token is proven, never sent; a recorded
hello is refused; a stranger is cut off within its byte and time budget; a flood of
strangers does not keep a peer out."""

from __future__ import annotations

import json
import socket
import threading
import time

from trainfleet.agent import handshake


def listener(token: str, accepted: list[dict[str, object]]) -> tuple[socket.socket, threading.Event]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    server.settimeout(0.2)
    stop = threading.Event()

    def on_peer(conn: socket.socket, fields: dict[str, object]) -> None:
        accepted.append(fields)
        conn.close()

    threading.Thread(target=handshake.accept_loop, args=(server, token, on_peer, lambda: not stop.is_set()),
                     daemon=True).start()
    return server, stop


def connect(server: socket.socket) -> socket.socket:
    return socket.create_connection(server.getsockname(), timeout=5)


def test_a_peer_with_the_token_is_let_in_and_the_token_never_crosses() -> None:
    accepted: list[dict[str, object]] = []
    server, stop = listener("s3cret-token", accepted)
    try:
        sock = connect(server)
        assert handshake.client_handshake(sock, "s3cret-token", {"hello": "node1"})
        said = handshake.hello_line("s3cret-token", handshake.nonce(), handshake.nonce(), {"hello": "node1"}) + \
            handshake.proof_line("s3cret-token", handshake.nonce())
        assert b"s3cret-token" not in said
        time.sleep(0.2)
        assert [a["hello"] for a in accepted] == ["node1"]
        wrong = connect(server)
        assert not handshake.client_handshake(wrong, "guessed", {"hello": "node1"})
        assert len(accepted) == 1
    finally:
        stop.set()
        server.close()


def test_a_recorded_hello_cannot_be_replayed() -> None:
    accepted: list[dict[str, object]] = []
    server, stop = listener("tok", accepted)
    try:
        first = connect(server)
        nonce = handshake.parse_challenge(handshake.read_line(first, 4096, 5) or b"")
        assert nonce is not None
        recorded = handshake.hello_line("tok", nonce, handshake.nonce(), {"hello": "node1"})
        first.sendall(recorded)
        assert handshake.read_line(first, 4096, 5)  # the proof: this one was let in
        again = connect(server)
        handshake.read_line(again, 4096, 5)  # a new nonce
        again.sendall(recorded)
        assert again.recv(100) == b""  # closed without a word
        assert len(accepted) == 1
    finally:
        stop.set()
        server.close()


def test_strangers_are_cut_off_and_a_flood_keeps_no_peer_out() -> None:
    accepted: list[dict[str, object]] = []
    server, stop = listener("tok", accepted)
    try:
        junk = connect(server)
        handshake.read_line(junk, 4096, 5)
        junk.sendall(b"x" * 100_000)  # no newline, past the limit: cut off
        junk.settimeout(5)
        try:
            rest = junk.recv(100)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
        not_an_object = connect(server)
        handshake.read_line(not_an_object, 4096, 5)
        not_an_object.sendall(b"[1, 2, 3]\n")
        assert not_an_object.recv(100) == b""
        idle = [connect(server) for _ in range(handshake.MAX_PENDING * 2)]  # more silent peers than are heard
        started = time.monotonic()
        while True:  # the silent ones are dropped within the hello timeout, and the real peer gets in
            peer = connect(server)
            if handshake.client_handshake(peer, "tok", {"hello": "node2"}):
                break
            assert time.monotonic() - started < handshake.HELLO_TIMEOUT * 3
            time.sleep(0.5)
        time.sleep(0.2)
        assert [a["hello"] for a in accepted] == ["node2"]
        for sock in idle:
            sock.close()
    finally:
        stop.set()
        server.close()


def test_a_non_ascii_mac_is_a_refusal_not_an_error() -> None:
    server_nonce = handshake.nonce()
    body = '{"nonce": "x", "hello": "node1"}'
    for mac in ("é" * 64, "\udcff", ""):
        line = (json.dumps({"body": body, "mac": mac}) + "\n").encode()
        assert handshake.check_hello("tok", server_nonce, line) is None
        assert handshake.check_proof("tok", server_nonce, json.dumps({"mac": mac}).encode()) is False


def test_an_address_outside_the_fleet_is_closed_before_a_byte_or_a_slot() -> None:
    """Strangers (here: every address but one that is not this machine's) are dropped unread,
    so a flood of them holds none of the slots the fleet's own peers need."""
    accepted: list[dict[str, object]] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    server.settimeout(0.2)
    stop = threading.Event()
    fleet = {"127.0.0.2"}  # (this test connects from 127.0.0.1: a stranger)

    def on_peer(conn: socket.socket, fields: dict[str, object]) -> None:
        accepted.append(fields)
        conn.close()

    threading.Thread(target=handshake.accept_loop, args=(server, "tok", on_peer, lambda: not stop.is_set()),
                     kwargs={"allowed": lambda address: address in fleet}, daemon=True).start()
    try:
        stranger = connect(server)
        stranger.settimeout(5)
        assert stranger.recv(100) == b""  # closed with no challenge sent
        assert not handshake.client_handshake(connect(server), "tok", {"hello": "node1"})
        fleet.add("127.0.0.1")  # now one of the fleet's
        assert handshake.client_handshake(connect(server), "tok", {"hello": "node1"})
        time.sleep(0.2)
        assert [a["hello"] for a in accepted] == ["node1"]
        assert handshake._plain("::ffff:10.0.0.2") == "10.0.0.2" and handshake._plain("2001:db8::1") == "2001:db8::1"
    finally:
        stop.set()
        server.close()


def test_after_the_handshake_each_line_is_the_peers_next_or_the_end() -> None:
    """A real connection: both sides derive the same key; a forged, replayed, reordered,
    reflected or altered line is refused; the key is never the peer's own word."""
    accepted: list[dict[str, object]] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def on_peer(conn: socket.socket, fields: dict[str, object]) -> None:
        accepted.append(fields)
        held.append(conn)

    threading.Thread(target=handshake.accept_loop, args=(server, "tok", on_peer, lambda: not stop.is_set()),
                     daemon=True).start()
    try:
        sock = connect(server)
        key = handshake.client_session(sock, "tok", {"hello": "node1", "_session": "00" * 32})
        deadline = time.monotonic() + 5
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert key is not None and accepted[0]["_session"] == key != "00" * 32
        client = handshake.Sealed(sock, key, server=False)
        listening = handshake.Sealed(held[0], str(accepted[0]["_session"]), server=True)
        for message in ({"beat": 1}, {"stop": "by the user"}):
            assert client.send(message)
        received = handshake.read_line(held[0], 65536, 5) or b""
        second = handshake.read_line(held[0], 65536, 5) or b""
        assert listening.open(received) == {"beat": 1}
        assert listening.open(received) is None  # replayed
        altered = json.loads(second)
        altered["b"] = json.dumps({"stop": "forged"})
        assert listening.open(json.dumps(altered).encode()) is None
        assert listening.open(second) == {"stop": "by the user"}
        # The server's own line sent back to it (reflected) is not the client's.
        assert listening.send({"beat": 2})
        reflected = handshake.read_line(sock, 65536, 5) or b""
        assert listening.open(reflected) is None and client.open(reflected) == {"beat": 2}
        # A line out of order (one skipped), even with a MAC made under the key, is refused too.
        skipped = json.dumps({"b": "{}", "n": 4, "m": client._mac(client.outgoing, 4, "{}")}).encode()
        assert listening.open(skipped) is None
        # Without the key (a token guessed wrong would give another), nothing is believed.
        stranger = handshake.Sealed(socket.socket(), "11" * 32, server=False)
        guessed = json.dumps({"b": "{}", "n": 3, "m": stranger._mac(stranger.outgoing, 3, "{}")}).encode()
        assert listening.open(guessed) is None
    finally:
        stop.set()
        server.close()
