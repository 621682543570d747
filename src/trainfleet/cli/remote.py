"""`trainfleet exec` and `sync`: commands and code on every node."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from trainfleet.cli.app import cli, echo_err, fleet_option, load, nodes_option, select, status


@cli.command(name="exec", context_settings={"ignore_unknown_options": True})
@fleet_option
@nodes_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON document with every node's result")
@click.option("--timeout", type=float, help="seconds before a node's command is abandoned")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(fleet_file: str | None, node_names: str | None, as_json: bool, timeout: float | None,
                 command: tuple[str, ...]) -> None:
    """Run a shell command on every node at once (like pdsh), in the workdir when it
    exists: `trainfleet exec -- nvidia-smi -L`."""
    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    from trainfleet.transport.ssh import start_tcp

    sockets = start_tcp(nodes[:fleet.ssh.fanout])  # before asyncssh is even imported
    from trainfleet.transport.session import FleetSession

    text = " ".join(command)

    def show(node: str, stream: str, line: str) -> None:
        click.echo(f"{node}: {line}", err=stream == "stderr")

    async def everywhere():  # type: ignore[no-untyped-def]
        async with await FleetSession.open(fleet, nodes, agents=False, sockets=sockets, wait=False) as session:
            return await session.run(text, on_output=None if as_json else show, timeout=timeout, cwd=fleet.workdir)

    result = asyncio.run(everywhere())
    if as_json:
        click.echo(json.dumps({"ok": result.ok, "nodes": [r.to_json() for r in result.results]}, indent=2))
    else:
        for nodes_folded, reason in result.grouped_failures():
            echo_err(f"trainfleet: {nodes_folded}: {reason}")
    sys.exit(result.exit_code())


@cli.command()
@fleet_option
@nodes_option
@click.argument("source", default=".", type=click.Path(file_okay=False, exists=True, path_type=Path))
def sync(fleet_file: str | None, node_names: str | None, source: Path) -> None:
    """Copy a directory (default: the current one) into every node's workdir with rsync."""
    from trainfleet.ops.sync import sync_project

    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    result = asyncio.run(sync_project(fleet, nodes, source))
    slowest = max(r.seconds for r in result.results)
    status(f"synced {source.resolve()} to {fleet.workdir} on {len(nodes)} node(s) in {slowest:.1f}s")
