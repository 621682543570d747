"""A node's RDMA ports (InfiniBand, RoCE) as the kernel shows them, without any tool:
/sys/class/infiniband/DEVICE/ports/N/{state,phys_state,rate,link_layer}. NCCL uses these
for its fastest transport, and falls back to plain sockets, silently and much slower,
where no port is ACTIVE. Stdlib only (runs on the nodes)."""

import os
from typing import List

from .protocol import IbPort

SYSFS = "/sys/class/infiniband"


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _named(value: str) -> str:
    """`4: ACTIVE` -> `ACTIVE`; `5: LinkUp` -> `LinkUp`."""
    return value.split(":", 1)[1].strip() if ":" in value else value


def ib_ports(root: str = SYSFS) -> List[IbPort]:
    found: List[IbPort] = []
    try:
        devices = sorted(os.listdir(root))
    except OSError:
        return found  # no RDMA device (or no driver for one)
    for device in devices:
        ports = os.path.join(root, device, "ports")
        try:
            numbers = sorted(int(n) for n in os.listdir(ports) if n.isdigit())
        except OSError:
            continue
        for number in numbers:
            here = os.path.join(ports, str(number))
            found.append(IbPort(device=device, port=number, state=_named(_read(os.path.join(here, "state"))),
                                phys_state=_named(_read(os.path.join(here, "phys_state"))),
                                rate=_read(os.path.join(here, "rate")),
                                link_layer=_read(os.path.join(here, "link_layer"))))
    return found
