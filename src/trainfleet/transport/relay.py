"""rsync's remote shell, riding a connection trainfleet already has open.

rsync runs `relay.py SOCKET HOST COMMAND...` where it would run `ssh HOST COMMAND...`.
This script hands HOST and the command to the trainfleet process listening on the unix
socket SOCKET, which runs the command on HOST over its existing SSH connection (host key
verified, no second handshake), and then carries the bytes: this side's stdin raw to
the socket; from the socket, frames of one type byte and a 4-byte length: `o` stdout
data, `e` stderr data, `x` the exit status (4 bytes). Stdlib only; started with -S.
"""

import json
import os
import socket
import struct
import sys
import threading


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _forward_stdin(sock: socket.socket) -> None:
    try:
        while True:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def main() -> int:
    path, host, command = sys.argv[1], sys.argv[2], sys.argv[3:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall((json.dumps({"node": host, "command": " ".join(command)}) + "\n").encode())
    threading.Thread(target=_forward_stdin, args=(sock,), daemon=True).start()
    try:
        while True:
            kind, size = struct.unpack("!cI", _read_exactly(sock, 5))
            data = _read_exactly(sock, size)
            if kind == b"o":
                _write_all(1, data)
            elif kind == b"e":
                _write_all(2, data)
            elif kind == b"x":
                return int(struct.unpack("!i", data)[0])
    except EOFError:
        sys.stderr.write("trainfleet relay: the connection to %s closed\n" % host)
        return 255


if __name__ == "__main__":
    sys.exit(main())
