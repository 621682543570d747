"""`trainfleet pull`: checkpoints and outputs back from the nodes."""

from __future__ import annotations

from pathlib import Path

import click

from trainfleet.cli.app import StatusLine, cli, fleet_option, load, run_async, select, status

PULLED = Path("trainfleet-runs") / "pulled"
"""Where pulls land by default: beside the runs' logs, which `sync` leaves out (a pulled
checkpoint in the project would go back to every node with the next sync)."""


@cli.command()
@fleet_option
@click.option("-n", "--nodes", "node_names", metavar="NODES",
              help="the nodes to pull from (a,b or node[0-3]); default: node 0")
@click.option("--all", "every", is_flag=True, help="pull from every node (each into a folder of its own)")
@click.option("--job", "job_id", metavar="JOB", default="", help="PATH is in this job's directory (its records "
              "and logs), not the project's")
@click.option("--to", "destination", type=click.Path(file_okay=False, path_type=Path), default=PULLED,
              show_default=True, help="the local folder to put it in")
@click.option("--sync-dir", "source", default=".", show_default=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="the project whose directory on the nodes PATH is in")
@click.option("--dry-run", is_flag=True, help="print what would be copied from where to where, and stop")
@click.argument("path")
def pull(fleet_file: str | None, node_names: str | None, every: bool, job_id: str, destination: Path, source: Path,
         dry_run: bool, path: str) -> None:
    """Copy PATH (a file or a folder in the project's directory on the nodes, e.g. the
    checkpoints the job wrote) back here. Only what changed travels again."""
    from trainfleet.errors import UsageError
    from trainfleet.ops.pull import plan_pull
    from trainfleet.ops.pull import pull as pull_nodes
    from trainfleet.ops.sync import project_for

    fleet = load(fleet_file)
    if every and node_names:
        raise UsageError("pull: --all and -n both say which nodes", fix="give one of them")
    nodes = fleet.nodes if every else select(fleet, node_names) if node_names else (fleet.head,)
    plan = plan_pull(fleet, nodes, path, project=project_for(source).name, job_id=job_id, destination=destination)
    if dry_run:
        for line in plan.lines(fleet):
            click.echo(line)
        return
    line = StatusLine("pull")
    try:
        result = run_async(pull_nodes(fleet, nodes, plan, progress=lambda node, percent: line.update(node, f"{percent}%")))
    finally:
        line.done()
    slowest = max(r.seconds for r in result.results)
    where = next(iter(plan.local.values())) if len(nodes) == 1 else destination / "NODE" / plan.relative
    status(f"pulled {path} from {len(nodes)} node(s) into {where} in {slowest:.1f}s")
