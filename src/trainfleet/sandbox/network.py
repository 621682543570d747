"""The sandbox's address space: a /24 per sandbox from pools no real network uses
(RFC 2544's benchmarking range), never one already routed here."""

from __future__ import annotations

import ipaddress
import json

from trainfleet.errors import SandboxError
from trainfleet.sandbox.host import run

# RFC 2544's benchmarking range: meant for test networks, never routed on the internet.
PUBLIC_POOL = ipaddress.ip_network("198.18.0.0/16")


PRIVATE_POOL = ipaddress.ip_network("198.19.0.0/16")


# Rented clouds name NICs differently from one machine to the next; so does the sandbox.
PRIVATE_INTERFACE_NAMES = ("ens5", "enp6s0", "eth1", "ens7")


def networks_in_use() -> list[ipaddress.IPv4Network]:
    used: list[ipaddress.IPv4Network] = []
    for args in (["ip", "-4", "-j", "route", "show", "table", "all"], ["ip", "-4", "-j", "addr", "show"]):
        try:
            entries = json.loads(run(args, check=False).stdout or "[]")
        except json.JSONDecodeError:
            continue
        for entry in entries:
            candidates = [entry.get("dst")]
            candidates += [f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", [])]
            for text in candidates:
                if not text or text == "default":
                    continue
                try:
                    used.append(ipaddress.ip_network(text, strict=False))
                except ValueError:
                    continue
    return used


def pick_subnet(pool: ipaddress.IPv4Network, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for subnet in pool.subnets(new_prefix=24):
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise SandboxError(f"no free /24 left in {pool} for another sandbox",
                       fix="remove unused sandboxes with `trainfleet sandbox down --name NAME`")
