"""`trainfleet mount` and `umount`: the fleet file's `storage:` on every node."""

from __future__ import annotations

import sys

import click

from trainfleet.cli.app import cli, echo_err, fleet_option, load, nodes_option, run_async, secret_values, select, status


def _storage_command(fleet_file: str | None, node_names: str | None, action: str, dry_run: bool) -> None:
    from trainfleet.errors import UsageError
    from trainfleet.ops.mount import mount_lines, require_mounted, storage_nodes
    from trainfleet.plans.mounts import plan_mounts, render

    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    if not fleet.storage:
        raise UsageError(f"{fleet.source} has no `storage:`",
                         fix="add one, e.g. `storage: [{type: shared-dir, mount: /data}]` (docs/guide.md, Shared storage)")
    if dry_run:
        click.echo(render(plan_mounts(fleet, nodes)), nl=False)
        return
    secrets = secret_values(fleet) if action == "mount" else {}

    outcome = run_async(storage_nodes(fleet, nodes, action, secrets))
    for line in mount_lines(outcome):
        status(line)
    for node, reason in sorted(outcome.unreachable.items()):
        echo_err(f"trainfleet: {node}: {reason}")
    if action == "mount":
        require_mounted(fleet, outcome)
    elif outcome.failures:
        what, node, result = outcome.failures[0]
        echo_err(f"trainfleet: error: cannot unmount {what} on {node}: {result.detail}; fix: stop what uses it "
                 f"(`trainfleet exec -n {node} -- fuser -vm PATH`), then again")
        sys.exit(1)
    if outcome.unreachable:
        sys.exit(1)


@cli.command()
@fleet_option
@nodes_option
@click.option("--dry-run", is_flag=True, help="print each node's commands (secrets by name only) and do nothing")
def mount(fleet_file: str | None, node_names: str | None, dry_run: bool) -> None:
    """Mount the fleet file's `storage:` on every node where it is not mounted yet
    (shared-dir over sshfs, nfs, s3 with s3fs, cifs); keys and passwords come from
    `secrets:` and reach the mount helpers by environment only."""
    _storage_command(fleet_file, node_names, "mount", dry_run)


@cli.command()
@fleet_option
@nodes_option
def umount(fleet_file: str | None, node_names: str | None) -> None:
    """Unmount the fleet file's `storage:` on every node (what is served stays on its node)."""
    _storage_command(fleet_file, node_names, "umount", False)
