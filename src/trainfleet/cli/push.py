"""`trainfleet push`: a large file or directory to every node, through a chain of nodes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from trainfleet.cli.app import StatusLine, cli, echo_err, fleet_option, load, nodes_option, run_async, select, status


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1024
    return f"{count:.1f} TiB"


@cli.command()
@fleet_option
@nodes_option
@click.option("--stall-timeout", type=float, default=20.0, show_default=True,
              help="seconds without data before a node's link is taken for broken")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("dest")
def push(fleet_file: str | None, node_names: str | None, stall_timeout: float, source: Path, dest: str) -> None:
    """Copy a large file or directory (a dataset, a model) to DEST on every node, through a
    chain of nodes so that your uplink carries it once; sha256-checked on every node,
    resumed where an earlier push stopped. A file goes to DEST (into DEST/ with a
    trailing slash), a directory's contents into DEST; a relative DEST is under the workdir."""
    from trainfleet.ops.push import plan_push
    from trainfleet.ops.push import push as push_files
    from trainfleet.results import fold_nodes

    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    plan = plan_push(source, dest, fleet.workdir)
    line = StatusLine("push")
    total = max(plan.size, 1)
    quarters: dict[str, int] = {}
    tty = sys.stderr.isatty()

    def progress(node: str, held: int, size: int) -> None:
        line.update(node, f"{100 * held // total}%")
        if not tty:  # in a log: a line at each quarter the slowest node passes
            quarter = 4 * held // total
            quarters[node] = quarter
            slowest = min(quarters.get(n.name, 0) for n in nodes)
            if slowest > quarters.get("", 0):
                quarters[""] = slowest
                if slowest < 4:
                    status(f"push: {25 * slowest}% on every node")

    status(f"pushing {source} ({_size(plan.size)}, {len(plan.files)} file(s)) to {plan.root} on "
           f"{fold_nodes([n.name for n in nodes])}")
    try:
        outcome = run_async(push_files(fleet, nodes, plan, progress, stall_timeout=stall_timeout))
    finally:
        line.done()
    resumed = {n: b for n, b in outcome.resumed.items() if b and n in outcome.done}
    if resumed and outcome.sent:
        status(f"already there: {'; '.join(f'{n} {_size(b)}' for n, b in sorted(resumed.items()))} (not sent again)")
    rate = outcome.sent / outcome.seconds / 1e6 if outcome.seconds else 0.0
    if outcome.done and not outcome.sent:
        status(f"nothing to send: {fold_nodes(outcome.done)} already hold {source} (sha256 checked)")
    elif outcome.done:
        status(f"pushed {source} to {fold_nodes(outcome.done)} in {outcome.seconds:.1f}s: sent {_size(outcome.sent)} "
               f"once ({rate:.1f} MB/s), sha256 checked on every node")
    for name, reason in sorted(outcome.failed.items()):
        echo_err(f"trainfleet: error: push to {name} failed: {reason}; fix: check the node (`trainfleet doctor`), "
                 f"then push again: it resumes")
    if outcome.failed:
        sys.exit(1)
