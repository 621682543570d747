"""`trainfleet setup`: the fleet file's `setup:` commands, once per node."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from trainfleet.agent.protocol import JobStatus

from trainfleet.cli.app import (StatusLine, cli, echo_err, fleet_option, load, nodes_option, run_async, secret_values,
                               select, status)


@cli.command()
@fleet_option
@nodes_option
@click.option("--force", is_flag=True, help="run it again where it already succeeded")
@click.option("--sync-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=".",
              show_default=True, help="the project it is for (it runs in that project's directory)")
@click.option("--no-sync", is_flag=True, help="the code is already on the nodes")
def setup(fleet_file: str | None, node_names: str | None, force: bool, sync_dir: Path, no_sync: bool) -> None:
    """Run the fleet file's `setup:` commands on every node at once, where they have not
    succeeded yet: live state per node, each node's output in its own log."""
    import datetime as _dt

    from trainfleet.ops.setup import setup_nodes
    from trainfleet.ops.sync import project_for
    from trainfleet.results import fold_nodes

    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    project = project_for(sync_dir)
    secrets = secret_values(fleet)
    logs = Path("trainfleet-runs") / f"setup-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    line = StatusLine("setup")

    try:
        outcome = run_async(setup_nodes(fleet, nodes, project, synced=no_sync, force=force, secrets=secrets,
                                        log_dir=logs, on_step=line.update))
    finally:
        line.done()
    if outcome.skipped:
        status(f"setup {outcome.digest} already done on {fold_nodes(outcome.skipped)} (--force runs it again)")
    done = [n for n, s in outcome.states.items() if s.state == JobStatus.SUCCEEDED]
    if done:
        slowest = max((s.ended or s.started) - s.started for n, s in outcome.states.items() if n in done)
        status(f"setup {outcome.digest} succeeded on {fold_nodes(done)} in {slowest:.1f}s; output in {logs}")
    for node in outcome.failed:
        state = outcome.states.get(node)
        why = outcome.lost.get(node) or (f"exit status {state.exit_code}" if state else "failed")
        number, _, command = outcome.steps.get(node, "").partition("] ")
        at = f" at step {number} `{command}`" if command else ""
        echo_err(f"trainfleet: setup failed on {node}{at} ({why}); last output ({logs / (node + '.log')}):")
        for text in outcome.tails.get(node, [])[-10:]:
            echo_err(f"  | {text}")
    sys.exit(1 if outcome.failed else 0)
