"""Terminal rendering of reports (tables); nothing here decides anything."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

from trainfleet.results import fold_nodes

if TYPE_CHECKING:
    from trainfleet.doctor import DoctorReport

_STYLE = {"FAIL": "bold red", "warn": "yellow", "ok": "green"}


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
    counts = {v: sum(1 for f in report.findings if f.verdict.value == v) for v in ("FAIL", "warn", "ok")}
    nodes = len(report.gathered.fleet.nodes)
    buffer = io.StringIO()
    width = int(os.environ.get("COLUMNS", "160"))
    console = Console(file=buffer, width=width, force_terminal=bool(os.environ.get("FORCE_COLOR")),
                      highlight=False)
    network = ", ".join(f"{n}={c.interface or '?'}({c.address})" for n, c in report.gathered.choices.items())
    if network:
        console.print(f"training network: {network}")
    if shown:
        console.print(table)
    verdict = "[bold red]problems found[/]" if not report.ok else "[green]ready to train[/]"
    console.print(f"doctor: {nodes} node(s), {counts['FAIL']} failing, {counts['warn']} warning(s), "
                  f"{counts['ok']} passing check(s) in {report.seconds:.1f}s: {verdict}")
    return buffer.getvalue().rstrip("\n")
