"""Where each line of a job's output goes: the node's log file always, the screen when
it is the user's own output.

Launcher chatter (torchrun's banner and log lines, c10d's hostname warning, failure
reports) stays in the log files unless `--verbose`. A rank's traceback is held back for
a moment: if the job is failing, the summary shows the first failure's traceback once
and the rest stay in the logs; if not, the traceback is shown after all.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from trainfleet.agent.rankwrap import rank_mark, redact, secret_fragments
from trainfleet.job.plan import RANK_LINE, RELAYED_RANK_LINE

Printer = Callable[[str], None]
TAIL = 20

_CHATTER = (
    re.compile(r"\[c10d\] The hostname of the client socket cannot be retrieved"),
    re.compile(r"^\[Gloo\] Rank \d+ is connected to \d+ peer ranks"),
    # torch imported where numpy is not installed (torch does not need it): twice per rank.
    re.compile(r"UserWarning: Failed to initialize NumPy: No module named 'numpy'"),
    re.compile(r"^\s+cpu = _conversion_method_template\(device=torch\.device\(\"cpu\"\)\)$"),
    # A hung rank's stack dump (faulthandler's frames): the frames of the rank wrapper and runpy under the script's.
    re.compile(r'^\s+File "(<frozen runpy>|[^"]*/rankwrap\.py)", line \d+ in '),
    re.compile(r'^\s+\S+ \((<frozen runpy>|[^()]*/rankwrap\.py):\d+\)$'),  # the same, as py-spy prints them
)
_TORCH_PREFIX = re.compile(r"^\[rank\d+\]: ?")
_TRACEBACK_START = "Traceback (most recent call last):"
_TRACEBACK_CONTINUES = ("During handling of the above exception", "The above exception was the direct cause",
                        _TRACEBACK_START)


def chatter(body: str) -> bool:
    """A rank's line that is noise for the user (kept in the logs)."""
    return any(p.search(body) for p in _CHATTER)


def on_screen(text: str, ranks_marked: bool) -> bool:
    """Whether a line of a job's output is the user's (not its launcher's or torch's noise)."""
    match = RANK_LINE.match(text)
    if match is None:
        return not ranks_marked
    return not chatter(match.group(2))


def rank_node(rank_nodes: Sequence[str], rank: int, node: str) -> str:
    """The node a rank's line belongs to: where the plan placed the rank (one runner
    relaying every rank's output), else the node whose stream carried it."""
    return rank_nodes[rank] if 0 <= rank < len(rank_nodes) else node


@dataclass
class _Held:
    since: float
    lines: list[str] = field(default_factory=list)
    complete: bool = False


class OutputRouter:
    def __init__(self, log_dir: Path, nodes: Iterable[str], printer: Printer, *, ranks_marked: bool,
                 verbose: bool = False, redact: Iterable[str] = (), hold: float = 2.0,
                 rank_nodes: Sequence[str] = ()) -> None:
        self.print = printer
        self.rank_nodes = tuple(rank_nodes)
        self.ranks_marked = ranks_marked
        self.verbose = verbose
        self.hold = hold
        self.hidden = secret_fragments(redact)
        self.quiet = False
        """After Ctrl-C nothing more of the job reaches the screen."""
        self.failing = False
        self.logs: dict[str, IO[str]] = {}
        self.node_lines: dict[str, deque[str]] = {}
        self.rank_lines: dict[tuple[str, int], deque[str]] = {}
        self.held: dict[tuple[str, int], _Held] = {}
        log_dir.mkdir(parents=True, exist_ok=True)
        for node in nodes:
            self.logs[node] = open(log_dir / f"{node}.log", "a", buffering=1)
            self.node_lines[node] = deque(maxlen=400)

    def take(self, node: str, text: str) -> None:
        text = redact(text, self.hidden)
        match = RANK_LINE.match(text)
        rank = int(match.group(1)) if match else None
        body = match.group(2) if match else text
        relayed = None if match else RELAYED_RANK_LINE.match(text)
        if relayed and relayed.group(1) in self.logs:  # pdsh relaying another node's rank
            node, rank, body = relayed.group(1), int(relayed.group(2)), relayed.group(3)
            text = rank_mark(rank) + body
        elif rank is not None:
            node = rank_node(self.rank_nodes, rank, node)
        shown = f"[{node}:{rank}] {body}" if rank is not None else f"[{node}] {body}"
        self.logs[node].write(shown + "\n")
        self.node_lines[node].append(text)
        if rank is not None:
            self.rank_lines.setdefault((node, rank), deque(maxlen=TAIL)).append(body)
        if self.quiet:
            return
        if self.verbose:
            self.print(shown)
        elif rank is None:
            if not self.ranks_marked:
                self.print(shown)
        elif not chatter(body):
            self._rank_line((node, rank), body, shown)

    def _rank_line(self, key: tuple[str, int], body: str, shown: str) -> None:
        plain = _TORCH_PREFIX.sub("", body)
        held = self.held.get(key)
        if held is None or held.complete:
            if plain.startswith(_TRACEBACK_START):
                if held is None:
                    self.held[key] = held = _Held(since=time.monotonic())
                held.complete = False
                held.lines.append(shown)
                return
            self.print(shown)
            return
        held.lines.append(shown)
        if plain and not plain.startswith((" ", "\t")) and not plain.startswith(_TRACEBACK_CONTINUES):
            held.complete = True  # the exception's own line ends the traceback

    def tick(self) -> None:
        """Show tracebacks held long enough while nothing is failing."""
        if self.failing:
            self.held.clear()
            return
        now = time.monotonic()
        for key, held in list(self.held.items()):
            if held.complete and now - held.since >= self.hold:
                for line in held.lines:
                    self.print(line)
                del self.held[key]

    def job_failing(self) -> None:
        self.failing = True
        self.held.clear()

    def silence(self) -> None:
        self.quiet = True
        self.held.clear()

    def close(self) -> None:
        if not self.failing and not self.quiet:
            for held in self.held.values():
                for line in held.lines:
                    self.print(line)
        self.held.clear()
        for log in self.logs.values():
            log.close()

    def rank_tail(self, node: str, rank: int) -> list[str]:
        return list(self.rank_lines.get((node, rank), ()))

    def node_tail(self, node: str, lines: int = TAIL) -> list[str]:
        return [RANK_LINE.sub(r"[rank\1] \2", line) for line in list(self.node_lines.get(node, ()))[-lines:]]
