"""NCCL's own words about a failure, read from the ranks' output as it passes.

When a GPU link, a NIC or a peer fails, every rank of the job ends with much the same
error (a watchdog timeout, "unhandled system error", "remote process exited or there was
a network error"); the one line that names the culprit is the first `NCCL WARN` line, on
the node that saw it first, naming its transport (NET/IB, NET/Socket) and the peer's
address. trainfleet sets NCCL_DEBUG=WARN (unless the job sets it) so that NCCL prints
them. Stdlib only (runs on the nodes).
"""

import re
from typing import Optional

WARN = re.compile(r"NCCL WARN\s+(.*)$")
WATCHDOG = re.compile(r"Watchdog caught collective operation timeout: WorkNCCL\(SeqNum=(\d+), OpType=(\w+)")
PEER = re.compile(r"(?:peer|remote)\s+\[?([0-9A-Fa-f:.]*[0-9A-Fa-f])\]?<(\d+)>")
TRANSPORT = re.compile(r"\b(NET/[A-Za-z]+|NVLS|P2P/[A-Za-z]+|SHM)\b")

MARKERS = (b"NCCL WARN", b"Watchdog caught collective operation timeout")
"""What a line must hold to be looked at (a cheap test on every line the ranks print)."""


def problem(text: str) -> Optional[str]:
    """What NCCL said went wrong in `text` (one line of a rank's output), or None."""
    found = WARN.search(text)
    if found:
        return "NCCL WARN " + found.group(1).strip()
    found = WATCHDOG.search(text)
    if found:
        return "NCCL watchdog: collective %s (sequence number %s) timed out" % (found.group(2), found.group(1))
    return None


def peer(text: str) -> str:
    """The peer's address a line names ("10.0.0.12"), or ""."""
    found = PEER.search(text)
    return found.group(1) if found else ""


def transport(text: str) -> str:
    """The transport a line names (NET/IB, NET/Socket, ...), or ""."""
    found = TRANSPORT.search(text)
    return found.group(1) if found else ""
