"""Where each rank was when a job hung, read from the stacks dumped into its log.

Two sources, one shape: `py-spy dump` of each rank where the node has py-spy, else the
rank wrapper's faulthandler dump (on STACK_SIGNAL); either way the lines reach the job's
log marked with the rank. For each rank this names the collective it waits in (the
innermost torch.distributed frame) and where the user's code called it; ranks waiting
alike are folded together.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
SPY_FRAME = re.compile(r"^\s+(?P<func>\S+) \((?P<file>[^()]+):(?P<line>\d+)\)$")
SPY_THREAD = re.compile(r'^Thread (0x)?[0-9A-Fa-f]+ \((\w+)\)(: "(?P<name>[^"]*)")?')
from .rankwrap import RANK_LINE as RANK
LIBRARY = ("site-packages", "dist-packages", "/lib/python", "<frozen", "tfagent", "trainfleet/agent")


def blocks(lines: List[str]) -> Dict[int, List[Tuple[bool, List[Tuple[str, int, str]]]]]:
    """rank -> its threads' stacks: (is the dumping thread, frames innermost first)."""
    found: Dict[int, List[Tuple[bool, List[Tuple[str, int, str]]]]] = {}
    for raw in lines:
        match = RANK.match(raw)
        if not match:
            continue
        rank, text = int(match.group(1)), match.group(2)
        if "(most recent call first):" in text:
            found.setdefault(rank, []).append((text.startswith("Current thread"), []))
            continue
        thread = SPY_THREAD.match(text)
        if thread:
            found.setdefault(rank, []).append((thread.group("name") in (None, "MainThread"), []))
            continue
        frame = FRAME.match(text) or SPY_FRAME.match(text)
        if frame and rank in found:
            found[rank][-1][1].append((frame.group("file"), int(frame.group("line")), frame.group("func")))
    return found


def collective(frames: List[Tuple[str, int, str]]) -> Optional[str]:
    """The torch.distributed call a stack is in (innermost first), or None."""
    names = []
    for path, _, func in frames:
        name = func.rsplit(".", 1)[-1]  # py-spy names a closure `record.<locals>.wrap.<locals>.wrapper`
        if "torch/distributed" in path and "torch/distributed/elastic" not in path and \
                name not in ("wrapper", "<module>"):
            names.append(name)
    # The API the user called (init_process_group), not its private helper (_new_process_group_helper).
    return next((n for n in names if not n.startswith("_")), names[0] if names else None)


def where(threads: List[Tuple[bool, List[Tuple[str, int, str]]]]) -> Optional[str]:
    """`all_reduce (train.py:42)`: the collective a rank waits in, and the user's line."""
    chosen = next((frames for _, frames in threads if collective(frames)), None)
    if chosen is None:
        chosen = next((frames for current, frames in threads if current), threads[0][1] if threads else [])
    if not chosen:
        return None
    user = next(((p, n, f) for p, n, f in chosen if not any(mark in p for mark in LIBRARY)), chosen[0])
    call = collective(chosen) or user[2]
    return "%s (%s:%d)" % (call, user[0].rsplit("/", 1)[-1], user[1])


def summarize(lines: List[str]) -> str:
    places: Dict[str, List[int]] = {}
    for rank, threads in sorted(blocks(lines).items()):
        place = where(threads)
        if place:
            places.setdefault(place, []).append(rank)
    parts = []
    for place, ranks in sorted(places.items(), key=lambda item: item[1]):
        label = "rank" if len(ranks) == 1 else "ranks"
        parts.append("%s %s in %s" % (label, ",".join(str(r) for r in ranks), place))
    return "; ".join(parts)


def find_py_spy(path: List[str]) -> Optional[str]:
    """py-spy on the job's PATH, or beside the Python running this (a venv's bin)."""
    search = os.pathsep.join([os.path.expanduser(p) for p in path] + [os.path.dirname(sys.executable),
                                                                       os.environ.get("PATH", "")])
    return shutil.which("py-spy", path=search)


def py_spy_dump(spy: str, pid: int, nonblocking: bool = False) -> Optional[List[str]]:
    """The process's stacks as py-spy prints them; None where it cannot (no ptrace
    permission, a process that is gone): the caller falls back to faulthandler.
    `nonblocking`: read without pausing the process (a sample of a running job)."""
    try:
        done = subprocess.run([spy, "dump", "--full-filenames", "--pid", str(pid)] + (["--nonblocking"] if nonblocking
                                                                                      else []),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0 or "Thread" not in done.stdout:
        return None
    lines = done.stdout.splitlines()
    # From the first thread on: the header repeats the process's command line (perhaps a secret).
    start = next((i for i, line in enumerate(lines) if SPY_THREAD.match(line)), len(lines))
    return ["py-spy dump of pid %d:" % pid] + lines[start:]


def waiting(lines: List[str]) -> Optional[bool]:
    """Whether a py-spy dump (unmarked lines) shows the process's main thread inside a
    torch.distributed collective; None for a dump with no main thread."""
    threads = blocks(["[tf:rank0] " + line for line in lines]).get(0, [])
    main = next((frames for current, frames in threads if current), None)
    return None if main is None else collective(main) is not None
