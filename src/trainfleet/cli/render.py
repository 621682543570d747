"""Terminal rendering of reports (tables); nothing here decides anything."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

from trainfleet.results import fold_nodes

if TYPE_CHECKING:
    from trainfleet.ops.doctor import DoctorReport
    from trainfleet.supervise.supervisor import RunOutcome

_STYLE = {"FAIL": "bold red", "warn": "yellow", "info": "cyan", "ok": "green"}


def doctor_table(report: DoctorReport, show_all: bool = False) -> str:
    from rich.console import Console
    from rich.table import Table

    shown = [f for f in report.findings if show_all or f.verdict.value != "ok"]
    table = Table(show_lines=False, header_style="bold", expand=False)
    for column in ("check", "result", "nodes", "finding", "fix"):
        table.add_column(column, overflow="fold")
    for finding in shown:
        style = _STYLE[finding.verdict.value]
        table.add_row(finding.check, f"[{style}]{finding.verdict.value}[/]", fold_nodes(finding.nodes),
                      finding.summary, finding.remedy)
    counts = {v: sum(1 for f in report.findings if f.verdict.value == v) for v in ("FAIL", "warn", "info", "ok")}
    nodes = len(report.gathered.fleet.nodes)
    buffer = io.StringIO()
    width = int(os.environ.get("COLUMNS", "160"))
    console = Console(file=buffer, width=width, force_terminal=bool(os.environ.get("FORCE_COLOR")),
                      highlight=False)
    choices = report.gathered.choices
    network = ", ".join(f"{n}={c.interface or '?'}({c.address})" for n, c in choices.items())
    if len(choices) > 8:  # by interface: one line, not one a node
        by_nic: dict[str, list[str]] = {}
        for name, choice in choices.items():
            by_nic.setdefault(choice.interface or "?", []).append(name)
        network = "; ".join(f"{nic} on {fold_nodes(names)}" for nic, names in by_nic.items()) + \
            " (each node's address: `doctor --json`)"
    if network:
        console.print(f"training network: {network}")
    if shown:
        console.print(table)
    verdict = "[bold red]problems found[/]" if not report.ok else "[green]ready to train[/]"
    notes = f", {counts['info']} note(s)" if counts["info"] else ""
    console.print(f"doctor: {nodes} node(s), {counts['FAIL']} failing, {counts['warn']} warning(s){notes}, "
                  f"{counts['ok']} passing check(s) in {report.seconds:.1f}s: {verdict}")
    return buffer.getvalue().rstrip("\n")


def run_summary(outcome: RunOutcome, logs: str) -> list[str]:
    """What `run` says when a job has ended: one line when it went well; the first
    failure with its traceback once, and its consequences in one line, when not."""
    job = f"job {outcome.job_id}"
    lines: list[str] = []
    if outcome.left_running:
        leftovers = "; ".join(f"{node}: pids {' '.join(str(p.pid) for p in procs)}"
                              for node, procs in outcome.left_running.items())
        lines.append(f"trainfleet: {job}: processes still running after teardown ({leftovers}); "
                     f"end them with `trainfleet exec -n NODE -- kill -9 PID`")
    lost = "; ".join(f"{node}: {why}" for node, why in outcome.unreachable.items())
    if outcome.cancelled:
        stopped = "stopped on every node" if not outcome.unreachable else f"stopped; not confirmed on {lost}"
        lines.append(f"trainfleet: {job} cancelled; {stopped}"
                     + ("" if outcome.left_running or outcome.unreachable else ", nothing left running"))
        return lines
    if outcome.link_lost:
        from trainfleet.supervise.supervisor import clock

        gone = ", ".join(f"{node} (since {clock(since)})" for node, since in outcome.link_lost.items())
        lines.append(f"trainfleet: lost contact with {gone} and could not get back; {job} goes on: "
                     f"`trainfleet logs {outcome.job_id} --follow` follows it, `trainfleet stop {outcome.job_id}` stops it")
        return lines
    root = outcome.root_cause
    if root is not None:
        code = f"exit code {root.first.exit_code}" + (f", {root.first.signal}" if root.first.signal else "")
        lines.append(f"trainfleet: {job} failed: {root.headline()}" + ("" if root.first.cause_only else f" ({code})"))
        detail = root.first.detail.rstrip("\n").splitlines()[-40:]
        lines += [f"  | {line}" for line in detail]
        others = root.others_line()
        if others:
            lines.append(f"trainfleet: {others}")
        lines.append(f"trainfleet: every node stopped; full logs in {logs}")
    elif outcome.unreachable:
        lines.append(f"trainfleet: {job} did not end well everywhere: {lost}; logs in {logs}")
    elif outcome.lost:
        gone = "; ".join(outcome.lost.values())
        took = [n for n, state in outcome.states.items() if state.spare == "joined"]
        if took:
            gone += f"; spare {fold_nodes(took)} took its place"
        lines.append(f"trainfleet: {job} finished on {fold_nodes(outcome.states)} in {outcome.seconds:.1f}s, "
                     f"after going on without a lost node ({gone})")
    else:
        lines.append(f"trainfleet: {job} finished on every node in {outcome.seconds:.1f}s")
    return lines
