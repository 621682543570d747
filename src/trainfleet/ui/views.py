"""What the dashboard's pages show, as plain JSON-ready data: pure functions of what the
fleet answered (top, the jobs' records, their output) and of the latest doctor report and
`bench net` numbers. Nothing here reaches a node or the network."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainfleet.agent.protocol import JobStatus, TopReply
from trainfleet.fleet.model import Fleet
from trainfleet.job.plan import RANK_LINE
from trainfleet.ops.jobs import JobView
from trainfleet.agent.metrics import Series, parse_line
from trainfleet.supervise.output import on_screen, rank_node


def fleet_view(fleet: Fleet, answers: Mapping[str, TopReply], failures: Mapping[str, str], looked: float,
               doctor: dict[str, Any] | None, netbench: dict[str, Any] | None) -> dict[str, Any]:
    """Every node as `top` sees it now, the training network and findings of the latest
    doctor run, and the latest point-to-point matrix as a heatmap."""
    network = (doctor or {}).get("data", {}).get("network", {})
    nodes = []
    for node in fleet.nodes:
        row: dict[str, Any] = {"name": node.name, "host": node.host, "reachable": node.name in answers,
                               "error": failures.get(node.name, ""),
                               "network": network.get(node.name) or {"interface": node.interface or "",
                                                                     "address": node.address or ""}}
        answer = answers.get(node.name)
        if answer is not None:
            row.update(cpu_percent=round(answer.cpu_percent, 1), memory_used=answer.memory_used,
                       memory_total=answer.memory_total,
                       gpus=[{"index": g.index, "util": g.util, "memory_used": g.memory_used,
                              "memory_total": g.memory_total} for g in answer.gpus],
                       jobs=[{"job_id": j.job_id, "processes": j.processes, "steps_per_s": j.steps_per_s}
                             for j in answer.jobs])
        nodes.append(row)
    findings = None
    if doctor is not None:
        data = doctor["data"]
        findings = {"saved": doctor["saved"], "ok": data.get("ok"),
                    "items": [f for f in data.get("findings", []) if f.get("verdict") != "ok"]}
    shown = heatmap(netbench["data"], netbench["saved"]) if netbench else None
    if shown is None and doctor is not None:  # no `bench net` yet: the ring doctor measured
        shown = heatmap({"p2p": doctor["data"].get("ring") or []}, doctor["saved"])
        if shown is not None:
            shown["source"] = "doctor"
    return {"fleet": fleet.source, "looked": looked, "nodes": nodes, "doctor": findings, "heatmap": shown}


def heatmap(numbers: dict[str, Any], saved: float) -> dict[str, Any] | None:
    """The point-to-point matrix of `bench net` (row sends, column receives), in Gbit/s."""
    p2p = numbers.get("p2p") or []
    if not p2p:
        return None
    names = list(dict.fromkeys([str(r["src"]) for r in p2p] + [str(r["dst"]) for r in p2p]))
    cell = {(str(r["src"]), str(r["dst"])): float(r["gbit_s"]) for r in p2p}
    slow = numbers.get("slowest_link") or min(p2p, key=lambda r: float(r["gbit_s"]))
    return {"saved": saved, "nodes": names, "bytes": p2p[0].get("bytes"), "source": "bench net",
            "cells": [[None if src == dst else cell.get((src, dst)) for dst in names] for src in names],
            "slowest": {"src": slow["src"], "dst": slow["dst"], "gbit_s": float(slow["gbit_s"])}}


def job_row(view: JobView) -> dict[str, Any]:
    """One job in the jobs list: state, nodes, launcher, start, end, root cause."""
    row = view.to_json()
    states = list(view.nodes.values())
    row["launcher"] = next((s.launcher for s in states if s.launcher), "")
    row["processes"] = sum(s.nproc for s in states)
    return row


def timeline(view: JobView) -> list[dict[str, Any]]:
    """The job's events in time order: started, each node's end, nodes lost, each restart
    and when its ranks ran again, spares that took a place, the controller's link
    closing, a hang and where the ranks were, its root cause."""
    events: list[dict[str, Any]] = [{"time": view.started, "node": "", "text": "started on " +
                                     ", ".join(sorted(view.nodes))}]
    for node, state in sorted(view.nodes.items()):
        if state.hang:
            events.append({"time": state.ended or state.started, "node": node,
                           "text": "hung: " + state.hang.strip().splitlines()[0]})
        if state.ended is not None:
            how = f"exit {state.exit_code}" if state.exit_code is not None else (f"SIG{state.signal}" if state.signal
                                                                               else "")
            events.append({"time": state.ended, "node": node,
                           "text": f"{state.state}" + (f" ({how})" if how else "") +
                                   (f": {state.reason}" if state.reason else "")})
        if state.controller_gone is not None:
            events.append({"time": state.controller_gone, "node": node,
                           "text": "the controller's link closed: the job went on"})
    restarted = set()
    for number, restart in enumerate(view.restarts, 1):
        restarted.add(restart.lost)
        events.append({"time": restart.at, "node": restart.lost,
                       "text": f"restart {number}: {restart.cause}; went on with {', '.join(restart.nodes)}"})
        if restart.resumed is not None:
            events.append({"time": restart.resumed, "node": "", "text": f"restart {number}: ranks back "
                                                                        f"{restart.resumed - restart.at:.1f} s later"})
    for node, what in view.spares.items():
        if what == "joined":
            took = next((r for r in view.restarts if node in r.nodes), None)
            events.append({"time": took.at if took else view.started, "node": node,
                           "text": "spare: took a lost node's place"})
    lost = [n for n in view.lost if n not in restarted]
    if lost:
        moment = min((s.ended for s in view.nodes.values() if s.ended), default=view.started)
        events.append({"time": moment, "node": ", ".join(lost), "text": "lost: the job went on without it"
                       if view.state == JobStatus.RUNNING else JobStatus.LOST})
    root = view.root_cause()
    if root is not None:
        events.append({"time": view.ended or view.started, "node": root.first.node, "text": root.headline()})
    return sorted(events, key=lambda e: e["time"])


KEEP_LINES = 200_000
KEEP_POINTS = 200_000


@dataclass
class JobOutput:
    """A job's output as the dashboard keeps it: its lines (the user's, as `run` shows them)
    in arrival order, and the metrics found in them, both only ever appended to, so a
    page asks for what came after the last line or point it has. Only the newest
    KEEP_LINES lines and KEEP_POINTS points stay in memory (a job of weeks prints more than
    a browser tab shows); positions count from the job's first line all the same."""

    marked: bool
    rank_nodes: Sequence[str] = ()
    pattern: re.Pattern[str] | None = None
    lines: list[list[Any]] = field(default_factory=list)
    """[time, node, rank or None, text]"""
    points: list[list[Any]] = field(default_factory=list)
    """[node, rank, step, {metric: value}]"""
    _series: dict[tuple[str, int], Series] = field(default_factory=dict)
    dropped_lines: int = 0
    """Lines let go of (the oldest), so `lines[0]` is line number `dropped_lines`."""
    dropped_points: int = 0

    @property
    def line_count(self) -> int:
        return self.dropped_lines + len(self.lines)

    @property
    def point_count(self) -> int:
        return self.dropped_points + len(self.points)

    def after(self, lines: int, points: int, batch: int) -> tuple[list[list[Any]], list[list[Any]], int, int]:
        """What follows line `lines` and point `points` (at most `batch` lines), and the
        positions after it; a position already let go of reads from the oldest kept."""
        start = max(lines - self.dropped_lines, 0)
        chunk = self.lines[start:start + batch]
        first = max(points - self.dropped_points, 0)
        more = self.points[first:]
        return chunk, more, self.dropped_lines + start + len(chunk), self.dropped_points + first + len(more)

    def _bound(self) -> None:
        if len(self.lines) > KEEP_LINES + KEEP_LINES // 5:  # (in steps: not a copy per line)
            cut = len(self.lines) - KEEP_LINES
            del self.lines[:cut]
            self.dropped_lines += cut
        if len(self.points) > KEEP_POINTS + KEEP_POINTS // 5:
            cut = len(self.points) - KEEP_POINTS
            del self.points[:cut]
            self.dropped_points += cut

    def take(self, node: str, moment: float, text: str) -> None:
        if not on_screen(text, self.marked):
            return
        match = RANK_LINE.match(text)
        if match is None:  # the launcher's line, or any line where ranks are not marked (a command, mpirun)
            where, rank, body = node, None, text
        else:
            rank, body = int(match.group(1)), match.group(2)
            where = rank_node(self.rank_nodes, rank, node)
        self.lines.append([moment, where, rank, body])
        self._bound()
        if rank is None and self.marked:
            return  # metrics come from the ranks
        values = parse_line(body, self.pattern)
        if values:
            series = self._series.setdefault((where, -1 if rank is None else rank), Series())
            series.add(values)
            step = values.get("step", float(series.lines))
            self.points.append([where, rank, step, {k: v for k, v in values.items() if k != "step"}])
