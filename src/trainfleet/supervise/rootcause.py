"""Which failure came first, from what every node reported: a pure function.

The rank wrapper records each rank's first exception with its time; launchers report
ranks that died of a signal. A failure that only follows from another (a lost peer,
a rank its launcher stopped) is a consequence: the root cause is the earliest failure
that is not one, and the consequences are folded into one line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trainfleet.agent.protocol import JobStatus, ErrorRecord, JobState, NcclLine
from trainfleet.job.plan import RankExit

_CONSEQUENCES = (
    ("Connection closed by peer", "connection closed by peer"),
    ("Connection reset by peer", "connection reset by peer"),
    ("Broken pipe", "broken pipe"),
    ("NCCL communicator was aborted", "NCCL communicator aborted"),
    ("recvValue failed", "lost the rendezvous store"),
    ("recvVector failed", "lost the rendezvous store"),
    ("DistNetworkError", "lost a peer"),
    ("Socket Timeout", "timed out waiting for a peer"),
    ("Watchdog caught collective operation timeout", "NCCL watchdog timeout"),
    ("unhandled system error", "NCCL system error"),
    ("remote process exiting", "NCCL: a peer exited or the network failed"),
    ("remote process exited", "NCCL: a peer exited or the network failed"),
)
_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


@dataclass(frozen=True)
class Failure:
    node: str
    rank: int | None
    exit_code: int
    summary: str
    detail: str
    """A traceback, or the last lines of output."""
    time: float | None = None
    consequence: str | None = None
    """Why this is only a consequence of another failure (None for a failure of its own)."""
    signal: str | None = None

    @property
    def who(self) -> str:
        return f"rank {self.rank} on {self.node}" if self.rank is not None else f"node {self.node}"

    @property
    def cause_only(self) -> bool:
        """The summary already says what happened to the node ("node2 was lost ...")."""
        return self.rank is None and self.summary.startswith((self.node, "hung"))


@dataclass(frozen=True)
class RootCause:
    first: Failure
    others: tuple[Failure, ...] = ()

    def headline(self) -> str:
        if self.first.cause_only:
            return self.first.summary
        return f"{self.first.who} failed first: {self.first.summary}"

    def others_line(self) -> str | None:
        if not self.others:
            return None
        reasons = sorted({f.consequence or f.summary for f in self.others})
        ranks: dict[str, list[int]] = {}
        for failure in self.others:
            ranks.setdefault(failure.node, [])
            if failure.rank is not None:
                ranks[failure.node].append(failure.rank)
        where = "; ".join(f"{node}: rank {','.join(str(r) for r in sorted(numbers))}" if numbers else node
                          for node, numbers in sorted(ranks.items()))
        count = len(self.others)
        kind = "rank" if any(f.rank is not None for f in self.others) else "node"
        return f"{count} other {kind}{'s' if count > 1 else ''} failed after it: {'; '.join(reasons)} ({where})"


def _consequence(text: str) -> str | None:
    for needle, reason in _CONSEQUENCES:
        if needle in text:
            return reason
    return None


def find_root_cause(states: Mapping[str, JobState], exits: Sequence[RankExit],
                    rank_tails: Mapping[tuple[str, int], Sequence[str]], node_tails: Mapping[str, Sequence[str]],
                    records: Mapping[str, Sequence[ErrorRecord]] | None = None,
                    lost: Mapping[str, str] | None = None) -> RootCause | None:
    """None when nothing failed (or everything was only stopped). `records`: failure
    records from nodes where the job's own runner started the ranks; `lost`: nodes lost
    while the job ran. A hang, or a lost node, comes before what followed from it."""
    ended = [s for s in states.values() if s.state != JobStatus.SUCCEEDED]
    if states and not ended and not (lost and len(lost) == len(states) + len(lost)):
        return None  # every node's part succeeded (after restarts, perhaps): earlier failures are history
    faulty = sorted((s for s in states.values() if s.gpu_faults),
                    key=lambda s: min((e.at or float("inf")) for e in s.gpu_faults))
    if faulty and ended:  # the GPU failed under the ranks: their exits, NCCL timeouts and a hang follow from it
        return RootCause(first=_gpu_failure(faulty[0], exits, rank_tails))
    hung = [s for s in states.values() if s.hang or s.reason.startswith("hung")]
    if hung and ended:
        why = next((s.reason for s in hung if s.reason.startswith("hung")), "hung")
        report = "\n".join(f"{s.node}: {s.hang}" for s in sorted(states.values(), key=lambda s: s.node) if s.hang)
        return RootCause(first=Failure(node=hung[0].node, rank=None, exit_code=1, summary=why, detail=report))
    full = sorted((s for s in states.values() if s.disk_full), key=lambda s: s.disk_full or 0.0)
    if full and ended:  # trainfleet's own records could not be written: the disk is the cause, not the ranks
        state = full[0]
        failed = _failed_ranks(state, exits)
        after = f"; rank {','.join(str(r) for r in failed)} failed after it" if failed else ""
        moment = time.strftime("%H:%M:%S", time.localtime(state.disk_full))
        tail = "\n".join(line for rank in failed for line in rank_tails.get((state.node, rank), ()))
        summary = (f"{state.node}: no space left on device in {state.disk_full_path} at {moment}{after}; fix: free "
                   f"space there (`trainfleet doctor` shows what is free where)")
        return RootCause(first=Failure(node=state.node, rank=None, exit_code=state.exit_code or 1, summary=summary,
                                       detail=tail or "\n".join(node_tails.get(state.node, ())), time=state.disk_full))
    gone = dict(lost or {})
    for state in states.values():
        for name in state.lost:
            gone.setdefault(name, state.reason if name in state.reason else f"{name} was lost")
    if gone and (ended or len(gone) == len(states) + len(gone)):
        name, why = next(iter(gone.items()))
        return RootCause(first=Failure(node=name, rank=None, exit_code=1, summary=why, detail=""))
    failures: dict[tuple[str, int], Failure] = {}
    found = [(node, record) for node, state in states.items() for record in state.errors]
    found += [(node, record) for node, listed in (records or {}).items() for record in listed]
    latest = max((record.attempt for _, record in found), default=0)
    found = [(node, record) for node, record in found if record.attempt == latest]
    for node, record in found:
        stopped = record.kind == "signal" and any(name in record.summary for name in _STOP_SIGNALS)
        failures[(node, record.rank)] = Failure(
            node=node, rank=record.rank, exit_code=record.exit_code, summary=record.summary,
            detail=record.traceback or "\n".join(rank_tails.get((node, record.rank), ())), time=record.time,
            consequence="stopped by its launcher" if stopped else _consequence(record.summary + "\n" + record.traceback),
            signal=record.summary.split()[-1] if record.kind == "signal" else None)
    for exit in exits:
        if (exit.node, exit.rank) in failures:
            continue
        tail = "\n".join(rank_tails.get((exit.node, exit.rank), ()))
        if exit.signal:
            summary = f"killed by {exit.signal}"
            consequence = "stopped by its launcher" if exit.signal in _STOP_SIGNALS else None
        else:
            summary = f"exited with status {exit.exit_code}"
            consequence = _consequence(tail)
        failures[(exit.node, exit.rank)] = Failure(node=exit.node, rank=exit.rank, exit_code=exit.exit_code,
                                                   summary=summary, detail=tail, consequence=consequence,
                                                   signal=exit.signal)
    ordered = sorted(failures.values(), key=lambda f: (f.consequence is not None, f.time is None,
                                                       f.time or 0.0, f.node, f.rank or 0))
    said = sorted(((line.at, node, line) for node, state in states.items() for line in state.nccl),
                  key=lambda found: (found[0], found[1]))
    if said and ended:
        at, node, line = said[0]
        # NCCL's first word names the link or peer, unless the ranks' own error came first (a bug).
        own = [f for f in ordered if f.consequence is None and "NCCL" not in f.summary and f.time is not None and
               f.time < at]
        if not own:
            return RootCause(first=_nccl_failure(node, line, [found[2] for found in said if found[1] == node]),
                             others=tuple(ordered))
    if failures:
        return RootCause(first=ordered[0], others=tuple(ordered[1:]))
    failed = sorted((s for s in states.values() if s.state in (JobStatus.FAILED, JobStatus.LOST)),
                    key=lambda s: s.ended or float("inf"))
    if not failed:
        return None
    first, *others = [Failure(node=s.node, rank=None, exit_code=s.exit_code or 1, summary=_node_summary(s),
                              detail="\n".join(node_tails.get(s.node, ())), signal=s.signal) for s in failed]
    return RootCause(first=first, others=tuple(others))


def _failed_ranks(state: JobState, exits: Sequence[RankExit]) -> list[int]:
    """The ranks of a node that failed, from its launcher's report and its ranks' own records."""
    return sorted({e.rank for e in exits if e.node == state.node} | {r.rank for r in state.errors})


def _gpu_failure(state: JobState, exits: Sequence[RankExit],
                 rank_tails: Mapping[tuple[str, int], Sequence[str]]) -> Failure:
    """`node1 GPU 3 (GPU-…, bus 0000:4e:00): Xid 79, fallen off the bus, at 12:03:04; rank 11 failed after it`."""
    from trainfleet.agent.gpu_health import HARDWARE_XIDS

    event = min(state.gpu_faults, key=lambda e: e.at or float("inf"))
    index, _, uuid = event.gpu.partition(" ")
    gpu = f"GPU {index} ({uuid + ', ' if uuid else ''}bus {event.bus_id})" if event.gpu else f"the GPU at bus {event.bus_id}"
    moment = f" at {time.strftime('%H:%M:%S', time.localtime(event.at))}" if event.at else ""
    failed = _failed_ranks(state, exits)
    after = f"; rank {','.join(str(r) for r in failed)} failed after it" if failed else ""
    summary = (f"{state.node} {gpu}: Xid {event.xid}, "
               f"{HARDWARE_XIDS.get(event.xid, 'a hardware fault')}{moment}{after}; fix: `trainfleet doctor` on "
               f"{state.node}, then reset the GPU or `trainfleet cordon {state.node}` and resume elsewhere")
    detail = "\n".join([e.text for e in state.gpu_faults[:5]] +
                        [line for rank in failed[:1] for line in rank_tails.get((state.node, rank), ())])
    return Failure(node=state.node, rank=None, exit_code=state.exit_code or 1, summary=summary, detail=detail,
                   time=event.at)


def _nccl_failure(node: str, line: NcclLine, lines: Sequence[NcclLine]) -> Failure:
    """`rank 3 on node1 failed first: NCCL WARN NET/IB : ... (NCCL's first word, at 12:03:04, over NET/IB, peer 10.0.0.12)`."""
    from trainfleet.agent import nccl

    moment = time.strftime("%H:%M:%S", time.localtime(line.at))
    over, peer = nccl.transport(line.text), nccl.peer(line.text)
    where = "".join([f", over {over}" if over else "", f", peer {peer}" if peer else ""])
    also = f" and on the node at {peer}" if peer else ""
    summary = (f"{line.text} (NCCL's first word of the failure, at {moment}{where}); fix: `trainfleet doctor` on "
               f"{node}{also} (GPUs, NICs, InfiniBand ports); `trainfleet bench net` measures the links")
    return Failure(node=node, rank=line.rank, exit_code=1, summary=summary,
                   detail="\n".join(other.text for other in lines), time=line.at)


def _node_summary(state: JobState) -> str:
    if state.reason:
        return state.reason
    return f"killed by {state.signal}" if state.signal else f"exited with status {state.exit_code}"

