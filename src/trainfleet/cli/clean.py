"""`trainfleet clean`: everything trainfleet left on the nodes and here, removed."""

from __future__ import annotations

import click

from trainfleet.cli.app import cli, fleet_option, load, nodes_option, run_async, select


@cli.command()
@fleet_option
@nodes_option
@click.option("--workdirs", is_flag=True, help="also remove the projects `sync` made on the nodes (your code there "
              "and what the jobs wrote: pull what you need first)")
@click.option("--dry-run", is_flag=True, help="list what would go and what stays, and change nothing")
def clean(fleet_file: str | None, node_names: str | None, workdirs: bool, dry_run: bool) -> None:
    """Remove what trainfleet left: on every node its caches, resident agents, job records,
    firewall rules, mounts and the fleet's SSH trust; here the fleet's key pair and notes.
    Your files stay: the projects' code and outputs on the nodes (unless --workdirs)."""
    from trainfleet.ops.clean import clean as clean_fleet
    from trainfleet.ops.clean import lines

    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    outcome = run_async(clean_fleet(fleet, nodes, workdirs=workdirs, dry_run=dry_run))
    for line in lines(fleet, outcome, dry_run):
        click.echo(line)
    if outcome.error is not None:
        raise outcome.error
