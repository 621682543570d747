"""The slow node of a synchronous job, from where its ranks were when looked at: a pure
function. Every rank of such a job runs at the slowest one's pace, so step times look the
same everywhere; but the others spend the difference waiting for it inside a collective,
and it does not. Evidence: each node's samples (agent/job_supervisor.py's `waits`)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from trainfleet.agent.protocol import JobState

MIN_SAMPLES = 8
"""Looks per rank before anything is said (40 s at one look every 5 s)."""
OTHERS_WAIT = 0.4
"""The others must wait at least this share of the time for a node to be called slow...
(a node's ranks that merely share a busy CPU wait a third of the time, now and then)."""
RATIO = 0.35
"""...and it must wait at most this fraction of what they do."""


def _ranks(numbers: list[int]) -> str:
    """`4-5`, `3,7`: a node's ranks, folded."""
    numbers = sorted(numbers)
    if len(numbers) > 1 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}-{numbers[-1]}"
    return ",".join(str(n) for n in numbers)


def slowest(states: Mapping[str, JobState]) -> str | None:
    """`node2 (ranks 4-5) is the slowest: the others wait for it 38% of the time`, or None
    when no node stands out (or there is too little evidence yet)."""
    shares: dict[str, float] = {}
    ranks: dict[str, list[int]] = {}
    for node, state in states.items():
        samples = sum(s for s, _ in state.waits.values())
        if samples < MIN_SAMPLES * max(1, len(state.waits)):
            continue
        shares[node] = sum(w for _, w in state.waits.values()) / samples
        ranks[node] = [int(r) for r in state.waits]
    if len(shares) < 2:
        return None
    node = min(shares, key=lambda n: shares[n])
    others = statistics.median(share for name, share in shares.items() if name != node)
    if others < OTHERS_WAIT or shares[node] > others * RATIO:
        return None
    label = "rank" if len(ranks[node]) == 1 else "ranks"
    return (f"{node} ({label} {_ranks(ranks[node])}) is the slowest: the others wait for it {others:.0%} of the time "
            f"(it waits {shares[node]:.0%})")
