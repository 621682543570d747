"""doctor's RDMA ports (InfiniBand, RoCE): pure, from each node's ports (agent/rdma.py) and
the fleet's NCCL_IB_HCA to findings that name the node, the device and port, and the fix.

NCCL takes its fastest transport from these ports and, where none it may use is ACTIVE,
falls back to TCP sockets without a word: a job then trains many times slower, or a job
pinned to a down NIC fails at its first collective.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from trainfleet.agent.protocol import IbPort
from trainfleet.results import fold_nodes

CHECK_PORT = ("check the cable and the switch port (`ibstat {device}` on the node shows the link), or ask the "
              "provider; to train over Ethernet on purpose, set NCCL_IB_DISABLE=1 in the fleet's env")


def _port(port: IbPort) -> str:
    return f"{port.device} port {port.port}"


def _down(port: IbPort) -> str:
    return f"{_port(port)}: {port.state}" + (f" ({port.phys_state})" if port.phys_state else "")


def hca_selects(text: str, port: IbPort) -> bool:
    """Whether NCCL_IB_HCA (`mlx5_0:1,mlx5_1`, `^mlx5_3`, `=mlx5_0`) lets NCCL use `port`:
    names match as prefixes unless the list starts with `=`; `^` excludes those named."""
    spec = text.strip()
    exclude = spec.startswith("^")
    spec = spec.lstrip("^")
    exact = spec.startswith("=")
    spec = spec.lstrip("=")
    named = False
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        device, _, number = entry.partition(":")
        same = port.device == device if exact else port.device.startswith(device)
        if same and (not number or number == str(port.port)):
            named = True
    return named != exclude


def node_findings(node: str, ports: Sequence[IbPort], hca: str) -> list[tuple[str, str, str]]:
    """(verdict, summary, remedy) for one node's ports; nothing where it has none."""
    found: list[tuple[str, str, str]] = []
    # A port disabled at the device (an unused second port) is a choice, not a fault.
    usable = [p for p in ports if p.phys_state != "Disabled"]
    if hca:
        chosen = [p for p in usable if hca_selects(hca, p)]
        if ports and not chosen:
            found.append(("FAIL", f"NCCL_IB_HCA={hca} selects none of this node's RDMA ports "
                                  f"({', '.join(_port(p) for p in ports)})",
                          "correct NCCL_IB_HCA in the fleet's env (the device names are the node's "
                          "/sys/class/infiniband entries), or leave it out and let NCCL choose"))
            return found
        if not ports:
            return [("WARN", f"NCCL_IB_HCA={hca} is set but this node has no RDMA device: NCCL uses TCP sockets here",
                     "leave the node out with -n, or check its RDMA driver (`ls /sys/class/infiniband`)")]
        usable = chosen
    if not usable:
        return found
    active = [p for p in usable if p.state == "ACTIVE"]
    down = [p for p in usable if p.state != "ACTIVE"]
    if not active:
        found.append(("FAIL", f"no RDMA port NCCL may use is up ({'; '.join(_down(p) for p in down)}): NCCL falls "
                              f"back to TCP sockets, many times slower", CHECK_PORT.format(device=down[0].device)))
    elif down:
        found.append(("WARN", f"{'; '.join(_down(p) for p in down)}, while {len(active)} other port(s) are up: NCCL "
                              f"runs on fewer NICs (less bandwidth), and a job pinned to that NIC fails",
                      CHECK_PORT.format(device=down[0].device)))
    return found


RATE = re.compile(r"^([\d.]+)\s*Gb/sec")


def _gbps(rate: str) -> float | None:
    found = RATE.match(rate)
    return float(found.group(1)) if found else None


def fleet_findings(ports: Mapping[str, Sequence[IbPort]], hca: str = "") -> list[tuple[tuple[str, ...], str, str]]:
    """(nodes, summary, remedy): nodes whose fastest usable port is slower than the rest's
    (every collective goes at the slowest link), and nodes with no RDMA port up where
    others have one (NCCL talks to them over sockets)."""
    found: list[tuple[tuple[str, ...], str, str]] = []
    best: dict[str, float] = {}
    with_rdma = [n for n, listed in ports.items() if listed]
    for node, listed in ports.items():
        rates = [_gbps(p.rate) for p in listed if p.state == "ACTIVE" and (not hca or hca_selects(hca, p))]
        known = [r for r in rates if r is not None]
        if known:
            best[node] = max(known)
    if len(best) >= 2:
        top = max(best.values())
        slow = sorted(n for n, rate in best.items() if rate < top)
        if slow:
            rates = ", ".join(sorted({f"{best[n]:g}" for n in slow}))
            found.append((tuple(slow), f"{fold_nodes(slow)}: RDMA links at {rates} Gb/sec where the others run "
                                       f"{top:g} Gb/sec: every collective goes at the slowest link",
                          "a link that trained down: reseat the cable or change the switch port (`ibstat` shows the "
                          "rate), or ask the provider"))
    if best and len(best) < len(ports):
        without = sorted(n for n in ports if n not in best)
        some = "no RDMA port up" if any(n in with_rdma for n in without) else "no RDMA device"
        found.append((tuple(without), f"{fold_nodes(without)}: {some}, while {fold_nodes(sorted(best))} have one: "
                                      f"NCCL reaches {'it' if len(without) == 1 else 'them'} over TCP sockets, and "
                                      f"every collective waits for that", "leave them out with -n, or fix their RDMA "
                                                                          "ports (see the findings above)"))
    return found
