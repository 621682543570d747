"""Allow rules in whichever firewall the node uses: iptables, native nftables or ufw.

The rules themselves are rendered on the controller (what `firewall plan` prints is
what is applied); this side picks the node's backend, runs the steps for it unless a
rule is already present, and on revoke finds every rule carrying the fleet's tag.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from typing import List, Optional, Tuple

from .protocol import FirewallReply, FirewallRequest, FirewallStep


def _privileged(argv: List[str]) -> List[str]:
    return argv if os.geteuid() == 0 else ["sudo", "-n"] + argv


def _run(argv: List[str]) -> Tuple[int, str]:
    try:
        done = subprocess.run(_privileged(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=30)
    except OSError as exc:
        return 127, str(exc)
    return done.returncode, done.stdout if done.returncode == 0 else (done.stderr or done.stdout).strip()


def _checked(argv: List[str]) -> str:
    code, out = _run(argv)
    if code != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv[:3]), out))
    return out


def nft_input_chains() -> List[Tuple[str, str, str]]:
    """Base chains hooked on input in ip/inet tables (native nftables rulesets)."""
    code, out = _run(["nft", "-j", "list", "ruleset"])
    if code != 0:
        return []
    try:
        ruleset = json.loads(out)
    except ValueError:
        return []
    chains = []
    for item in ruleset.get("nftables", []):
        chain = item.get("chain")
        # (trainfleet's own closing table is not the node's firewall)
        if chain and chain.get("hook") == "input" and chain.get("family") in ("ip", "inet") and \
                not str(chain.get("table", "")).startswith("trainfleet_"):
            chains.append((chain["family"], chain["table"], chain["name"]))
    return chains


def _iptables_input(tool: str = "iptables") -> Optional[List[str]]:
    code, out = _run([tool, "-w", "-S", "INPUT"])
    return out.splitlines() if code == 0 else None


def backend() -> str:
    code, out = _run(["ufw", "status"])
    if code == 0 and "Status: active" in out:
        return "ufw"  # its rules live in its own files; iptables rules would not survive a reload
    rules = _iptables_input()
    if rules is not None and (rules[:1] != ["-P INPUT ACCEPT"] or len(rules) > 1):
        return "iptables"
    if [c for c in nft_input_chains() if (c[0], c[1]) != ("ip", "filter")]:
        return "nft"
    return "none"


def _present(step: FirewallStep) -> bool:
    if not step.present:
        return False
    code, out = _run(step.present)
    return code == 0 and (not step.marker or step.marker in out)


def _nft_steps(steps: List[FirewallStep]) -> List[FirewallStep]:
    """The planned nft steps name `inet filter input`; a node's own input chain may be
    called otherwise: the same rules go into each of its input base chains."""
    chains = [c for c in nft_input_chains() if (c[0], c[1]) != ("ip", "filter")]
    placed = []
    for family, table, chain in chains:
        for step in steps:
            # `nft insert rule FAMILY TABLE CHAIN ...`: the chain's three words, this node's.
            apply = step.apply[:3] + [family, table, chain] + step.apply[6:]
            present = ["nft", "-a", "list", "chain", family, table, chain]
            placed.append(FirewallStep(apply=apply, present=present, marker=step.marker,
                                       describe="%s %s/%s: %s" % (family, table, chain, step.describe)))
    return placed


def apply(request: FirewallRequest, which: str) -> List[str]:
    steps = request.steps.get(which, []) if which != "none" else []
    if which == "nft":
        steps = _nft_steps(steps)
    added = []
    for step in steps:
        if _present(step):
            continue
        out = _checked(step.apply)
        if which == "ufw" and "Rule added" not in out:
            continue  # ufw's own "Skipping adding existing rule"
        added.append(step.describe)
    return added


def close(request: FirewallRequest, which: str) -> Tuple[List[str], str]:
    """Close the job's ports to everyone outside the fleet where this node's firewall lets
    anything in: returns the tools that hold the closing rules, and what is left open."""
    if "iptables-close" not in request.steps:
        return [], ""
    if which == "ufw":
        code, out = _run(["ufw", "status", "verbose"])
        if "deny (incoming)" in out or "reject (incoming)" in out:
            return ["ufw (denies what it was not told to allow)"], ""
        return [], "ufw lets anything in (`ufw default deny incoming` closes it)"
    done = []
    tools = ["nft"] if which == "nft" else ["iptables", "ip6tables"]
    if which == "none" and _iptables_input() is None:
        tools = ["nft"]
    for tool in tools:
        if tool != "nft" and _iptables_input(tool) is None:
            continue  # (no ip6tables: IPv6 is not filtered by this tool here)
        for step in request.steps.get("%s-close" % tool, []):
            if not _present(step):
                _checked(step.apply)
        done.append(tool)
    return done, "" if done else "no firewall tool found (iptables or nft): the job's ports stay open to anyone"


def revoke(tag: str) -> Tuple[List[str], List[str]]:
    """Every rule carrying the tag, and the closing chains and table: (rules removed,
    tools whose closing was removed)."""
    marker = "trainfleet:%s" % tag
    removed: List[str] = []
    reopened: List[str] = []
    code, out = _run(["ufw", "status", "numbered"])
    if code == 0:
        numbers = [int(line.split("]")[0].strip("[ ")) for line in out.splitlines()
                   if line.startswith("[") and line.rstrip().endswith("# " + marker)]
        for number in sorted(numbers, reverse=True):  # later numbers shift when earlier go
            _checked(["ufw", "--force", "delete", str(number)])
            removed.append("ufw rule %d" % number)
    chain = "TF-%s" % tag
    for tool in ("iptables", "ip6tables"):
        for line in _iptables_input(tool) or []:
            if marker in line and line.startswith("-A INPUT"):
                _checked([tool, "-w", "-D"] + shlex.split(line)[1:])
                if not line.endswith("-j %s" % chain):  # (the jump to the closing chain: below)
                    removed.append(line)
        if _run([tool, "-w", "-S", chain])[0] == 0:
            _checked([tool, "-w", "-F", chain])
            _checked([tool, "-w", "-X", chain])
            reopened.append(tool)
    for family, table, chain in nft_input_chains():
        listing = _checked(["nft", "-a", "list", "chain", family, table, chain])
        for line in listing.splitlines():
            if '"%s:' % marker in line and "# handle" in line:
                handle = line.rsplit("# handle", 1)[1].strip()
                _checked(["nft", "delete", "rule", family, table, chain, "handle", handle])
                removed.append("%s %s/%s handle %s" % (family, table, chain, handle))
    table = "trainfleet_%s" % tag
    if _run(["nft", "list", "table", "inet", table])[0] == 0:
        _checked(["nft", "delete", "table", "inet", table])
        reopened.append("nft")
    return removed, reopened


def firewall(request: FirewallRequest) -> FirewallReply:
    which = backend()
    if request.action == "apply":
        added = apply(request, which)
        closed, still_open = close(request, which)
        return FirewallReply(backend=which, added=added, closed=closed, still_open=still_open)
    removed, reopened = revoke(request.tag)
    return FirewallReply(backend=which, removed=removed, closed=reopened)
