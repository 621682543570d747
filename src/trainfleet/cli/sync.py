"""`trainfleet sync`: this directory into its own directory on every node."""

from __future__ import annotations

from pathlib import Path

import click

from trainfleet.cli.app import StatusLine, cli, fleet_option, load, nodes_option, run_async, select, status


@cli.command()
@fleet_option
@nodes_option
@click.option("--delete", is_flag=True, help="also delete files on the nodes that are gone here (not your "
              "nodes' own records; checkpoints the job wrote into the directory would go)")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN", help="rsync pattern not to copy (repeat)")
@click.argument("source", default=".", type=click.Path(file_okay=False, exists=True, path_type=Path))
def sync(fleet_file: str | None, node_names: str | None, delete: bool, excludes: tuple[str, ...],
         source: Path) -> None:
    """Copy a directory (default: the current one) into its own directory on every node."""
    from trainfleet.ops.sync import project_for, sync_nodes

    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    project = project_for(source)
    line = StatusLine("sync")

    try:
        result, listed = run_async(sync_nodes(fleet, nodes, project, excludes=excludes, delete=delete,
                                              progress=lambda node, percent: line.update(node, f"{percent}%")))
    finally:
        line.done()
    slowest = max(r.seconds for r in result.results)
    status(f"synced {project.source} ({len(listed.files)} files) to {project.remote(fleet)} on {len(nodes)} "
           f"node(s) in {slowest:.1f}s")
