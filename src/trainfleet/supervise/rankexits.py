"""Which rank ended how, as a launcher's own output reports it (the plan says which report).

Signals are known only this way: a rank killed by SIGKILL writes nothing of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from trainfleet.job.plan import RANK_LINE, ExitReport, RankExit

_FAILURE_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_FAILURE_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
_FAILURE_TIME = re.compile(r"^\s*time\s*:\s*(\S+)")
_FAILURE_SIGNAL = re.compile(r"\((SIG[A-Z0-9]+)\)")


def rank_exits(report: ExitReport, node: str, lines: Sequence[str]) -> list[RankExit]:
    if report is ExitReport.TORCHELASTIC:
        return torchelastic_exits(node, lines)
    return []


def torchelastic_exits(node: str, lines: Sequence[str]) -> list[RankExit]:
    """The ranks in torchelastic's failure report ('Failures:' and 'Root Cause')."""
    exits: dict[int, RankExit] = {}
    rank: int | None = None
    code: int | None = None
    signal: str | None = None
    when = ""
    for raw in [*lines, "==="]:
        text = RANK_LINE.sub(r"\2", raw)
        if re.match(r"^\s*\[\d+\]:\s*$", text) or text.startswith("===") or text.startswith("---"):
            if rank is not None and code is not None:
                exits.setdefault(rank, RankExit(node=node, rank=rank, exit_code=code, signal=signal, time=when))
            rank, code, signal, when = None, None, None, ""
        elif match := _FAILURE_RANK.match(text):
            rank = int(match.group(1))
        elif match := _FAILURE_EXIT.match(text):
            code = int(match.group(1))
            named = _FAILURE_SIGNAL.search(text)
            signal = named.group(1) if named else None
        elif match := _FAILURE_TIME.match(text):
            when = match.group(1)
    return list(exits.values())
