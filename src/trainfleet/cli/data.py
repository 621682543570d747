"""`trainfleet push`, `mount`, `umount`: data on every node."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from trainfleet.cli.app import StatusLine, cli, echo_err, fleet_option, load, nodes_option, select, status


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
        outcome = asyncio.run(push_files(fleet, nodes, plan, progress, stall_timeout=stall_timeout))
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


def _storage_command(fleet_file: str | None, node_names: str | None, action: str, dry_run: bool) -> None:
    from trainfleet.cli.run import secret_values
    from trainfleet.errors import UsageError
    from trainfleet.ops.storage import apply, mount_lines, require_mounted
    from trainfleet.storage import plan_mounts, render
    from trainfleet.transport.session import FleetSession

    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    if not fleet.storage:
        raise UsageError(f"{fleet.source} has no `storage:`",
                         fix="add one, e.g. `storage: [{type: shared-dir, mount: /data}]` (see the README)")
    if dry_run:
        click.echo(render(plan_mounts(fleet, nodes)), nl=False)
        return
    secrets = secret_values(fleet) if action == "mount" else {}

    async def everywhere():  # type: ignore[no-untyped-def]
        async with await FleetSession.open(fleet, nodes) as session:
            return await apply(session, action, secrets)

    outcome = asyncio.run(everywhere())
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
