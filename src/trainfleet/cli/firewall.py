"""`trainfleet firewall`: exactly the ports training needs, between fleet nodes."""

from __future__ import annotations

import click

from trainfleet.cli.app import cli, fleet_option, load, run_async


@cli.group(name="firewall")
def firewall_group() -> None:
    """Open exactly the ports training needs between fleet nodes (never `ufw disable`), and
    close them to everyone else."""


port_option = click.option("--port", type=int, default=29500, show_default=True, help="the rendezvous port on node 0")


@firewall_group.command(name="plan")
@fleet_option
@port_option
def firewall_plan(fleet_file: str | None, port: int) -> None:
    """Print the allow rules for every node, and the exact commands for each kind of firewall."""
    from trainfleet.plans.firewall import fleet_tag, render
    from trainfleet.ops.firewall import plan

    fleet = load(fleet_file)
    click.echo(render(run_async(plan(fleet, port)), fleet_tag(fleet)), nl=False)


def _report(fleet, outcome, action: str) -> None:  # type: ignore[no-untyped-def]
    for node in fleet.nodes:
        answer = outcome.replies.get(node.name)
        if answer is None:
            continue
        changes = answer.added if action == "apply" else answer.removed
        note = " (no firewall is active: nothing to open)" if answer.backend == "none" and action == "apply" else ""
        verb = "added" if action == "apply" else "removed"
        if answer.closed:
            note += (f"; the job's ports closed to everyone else ({', '.join(answer.closed)})" if action == "apply"
                     else f"; the job's ports no longer closed ({', '.join(answer.closed)})")
        if answer.still_open:
            note += f"; the job's ports stay OPEN to anyone: {answer.still_open}"
        click.echo(f"{node.name}: {answer.backend}: {len(changes)} rule(s) {verb}{note}")
    if outcome.error is not None:
        raise outcome.error


@firewall_group.command(name="apply")
@fleet_option
@port_option
def firewall_apply(fleet_file: str | None, port: int) -> None:
    """Insert the planned rules into each node's firewall (iptables, nftables or ufw), and close
    the job's ports to everyone outside the fleet (a chain or table of trainfleet's own); idempotent."""
    from trainfleet.ops.firewall import apply

    fleet = load(fleet_file)
    _report(fleet, run_async(apply(fleet, port)), "apply")


@firewall_group.command(name="revoke")
@fleet_option
def firewall_revoke(fleet_file: str | None) -> None:
    """Remove the rules `firewall apply` added, and nothing else."""
    from trainfleet.ops.firewall import revoke

    fleet = load(fleet_file)
    _report(fleet, run_async(revoke(fleet)), "revoke")
